"""Do the shipped models' test metrics move when evaluation takes the fast path?

``python -m dap demo`` evaluates on the fast path by default (bf16 autocast where the CPU has
native bf16, channels_last, fused kernels, ``torch.inference_mode``: :func:`dap.runtime.setup`);
``python -m dap --plain demo`` on the plain path (float32, eager). This script evaluates every
shipped model both ways, each with several inference seeds (the seed of the noise that the
norm-guided reconstruction adds, ``inference_seed``), and compares the change of a metric
between the paths with its run-to-run noise: the spread of the same metric over the seeds on
the plain path. A fresh copy of the model is loaded for each path, so neither sees the other's
options.

    python benchmarks/demo_paths.py --out runs/demo_paths/demo-paths.json   # ~5 min, 1 thread
    python benchmarks/demo_paths.py --seeds 0 --quick                      # one model, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
from pathlib import Path

from dap import runtime

runtime.set_wait_policy_quiet()  # before torch is imported

from dap.io import atomic_write_text  # noqa: E402
from dap.report import provenance  # noqa: E402  (records the commit this process starts with)

METRICS = ("image_auroc", "pixel_auroc", "aupro", "pixel_ap", "f1_max")
#: the printed verdict of :func:`compare`'s ``within_noise``
VERDICT = {True: "within noise", False: "OUTSIDE noise", None: "one evaluation"}


def evaluate_path(name: str, plain: bool, seeds: list[int], fps: bool) -> dict:
    """Metrics of shipped model ``name`` on one path, per inference seed (+ FPS at batch 1)."""
    from dap import zoo
    from dap.engine.evaluate import measure_fps
    from dap.experiments import evaluate_run

    method = zoo.load(name)
    data = zoo.info(name)["data"]
    before = os.environ.get(runtime.PLAIN_ENV)
    os.environ[runtime.PLAIN_ENV] = "1" if plain else "0"
    try:
        per_seed = []
        # a method whose inference draws no noise (DRAEM) is evaluated once: no seed to vary
        seeded = hasattr(method.config, "inference_seed")
        for seed in seeds if seeded else [None]:
            with method.using(inference_seed=seed) if seeded else contextlib.nullcontext():
                row, _ = evaluate_run(method, data, out_dir=None, fps=False, progress=False)
            per_seed.append({k: float(row[k]) for k in METRICS})
        speed = measure_fps(method, method.image_size, batch_size=16) if fps else {}
    finally:
        if before is None:
            os.environ.pop(runtime.PLAIN_ENV, None)
        else:
            os.environ[runtime.PLAIN_ENV] = before
    return {"data": data, "per_seed": per_seed, **speed}


def compare(plain: dict, fast: dict) -> dict:
    """Per metric: the plain path's mean and spread over seeds, the fast path's mean, the change
    of the mean, and whether it is within the spread (the run-to-run noise). With a single
    evaluation (a method without inference noise) there is no spread: noise and verdict None."""
    out = {}
    for k in METRICS:
        p = [r[k] for r in plain["per_seed"]]
        f = [r[k] for r in fast["per_seed"]]
        noise = max(p) - min(p) if len(p) > 1 else None
        change = statistics.fmean(f) - statistics.fmean(p)
        out[k] = {"plain_mean": statistics.fmean(p), "fast_mean": statistics.fmean(f),
                  "change": change, "noise": noise,
                  "within_noise": None if noise is None else abs(change) <= noise}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="the first model, no FPS")
    p.add_argument("--out", default=None, help="write the comparison as JSON here")
    args = p.parse_args(argv)
    runtime.configure_threads(args.threads)
    import torch

    from dap import zoo

    names = zoo.available()[:1] if args.quick else zoo.available()
    if not names:
        raise SystemExit("no shipped models in dap/checkpoints")
    print(f"shipped models on the plain vs the fast path, inference seeds {args.seeds}, "
          f"{torch.get_num_threads()} thread(s), fast-path dtype "
          f"{runtime.autocast_dtype('cpu', 'auto')}", flush=True)
    models = []
    for name in names:
        plain = evaluate_path(name, True, args.seeds, not args.quick)
        fast = evaluate_path(name, False, args.seeds, not args.quick)
        cmp = compare(plain, fast)
        models.append({"model": name, "data": plain["data"], "plain": plain, "fast": fast,
                       "metrics": cmp})
        print(f"--- {name} ({plain['data']})")
        for k, c in cmp.items():
            noise = "  —  " if c["noise"] is None else f"{100 * c['noise']:5.2f}"
            print(f"    {k:12s} plain {100 * c['plain_mean']:6.2f}  fast {100 * c['fast_mean']:6.2f}"
                  f"  change {100 * c['change']:+6.2f}  noise (seed range) {noise}"
                  f"  -> {VERDICT[c['within_noise']]}", flush=True)
        if "fps_batch1" in plain:
            print(f"    FPS at batch 1: plain {plain['fps_batch1']:.1f}, fast "
                  f"{fast['fps_batch1']:.1f} ({fast['fps_batch1'] / plain['fps_batch1']:.2f}x); "
                  f"batched: {plain['throughput']:.1f} -> {fast['throughput']:.1f} img/s", flush=True)
        if args.out:  # after every model, so a stopped run keeps what it measured
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.out, json.dumps(
                {"kind": "demo-paths", "seeds": args.seeds, "models": models,
                 "made_by": provenance()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
