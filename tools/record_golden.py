"""(Re)record the golden values of ``tests/test_golden.py`` into ``tests/golden/``.

    python tools/record_golden.py                 # every case
    python tools/record_golden.py predict_glad    # some cases
    python tools/record_golden.py --check         # compute, compare with the files, write nothing

Each case is computed twice and must come out bit-identical (determinism check) before it is
written. Every buffer of every method is checked not to depend on the global RNG (the by-name
weights must cover all randomness). Run with one thread:
``OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python tools/record_golden.py``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402

import golden_cases as G  # noqa: E402


def assert_identical(a: dict, b: dict, name: str) -> None:
    assert a.keys() == b.keys(), f"{name}: the two runs give different keys"
    for k in a:
        same = torch.equal(a[k], b[k]) or (
            a[k].is_floating_point() and torch.equal(a[k].isnan(), b[k].isnan())
            and torch.equal(a[k].nan_to_num(), b[k].nan_to_num()))
        assert same, f"{name}: {k} differs between two identical runs (not deterministic)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", nargs="*", help="cases to record (default: all)")
    ap.add_argument("--check", action="store_true", help="compare with the files, write nothing")
    ap.add_argument("--once", action="store_true", help="skip the second (determinism) run")
    args = ap.parse_args()
    names = args.cases or G.case_names()
    unknown = set(names) - set(G.case_names())
    if unknown:
        ap.error(f"unknown cases {sorted(unknown)}; cases: {G.case_names()}")
    torch.set_num_threads(1)
    for method in G.method_names():
        G.check_buffers_deterministic(method)
    G.check_buffers_deterministic("ddad", domain_adaptation_steps=G.DDAD_DA_STEPS)
    G.GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in names:
        t0 = time.perf_counter()
        values = G.compute_case(name)
        took = time.perf_counter() - t0
        if not args.once:
            assert_identical(values, G.compute_case(name), name)
        if args.check:
            try:
                G.assert_matches(values, G.load_golden(name))
                status = "matches"
            except (AssertionError, FileNotFoundError) as exc:
                failed.append(name)
                status = f"DIFFERS\n{exc}"
        else:
            torch.save(values, G.golden_path(name))
            status = f"written ({G.golden_path(name).stat().st_size / 1024:.0f} KiB)"
        print(f"{name}: {len(values)} values, {took:.1f} s, {status}", flush=True)
    if not args.check:
        meta = {"torch": torch.__version__, "python": platform.python_version(),
                "machine": platform.machine(), "recorded": time.strftime("%Y-%m-%d"),
                "cases": G.case_names()}
        (G.GOLDEN_DIR / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
