"""Run the notebooks under one profile, one at a time, and record how long each takes.

    python tools/time_notebooks.py --profile ci                 # every notebook
    python tools/time_notebooks.py --profile cpu 06 09          # some of them
    python tools/time_notebooks.py --profile ci --no-write 02   # just print (and the cell times)

Each notebook runs top to bottom in a fresh ``python3`` kernel (nbclient, as nbmake does), with
``DAP_PROFILE`` set, one CPU thread (``OMP_NUM_THREADS=1``, the passive OpenMP wait policy),
``MPLBACKEND=Agg`` and quiet progress bars. The time is the wall clock from the kernel's start
to the last cell's end; each row also keeps the machine's load average when it ended (on a
shared machine other jobs stretch the wall clock). The slowest cells are printed, so a notebook that runs too long shows
where.

The results go into ``results/notebook-times.json`` (atomically), one section per profile with
its own ``made_by`` (:func:`dap.report.provenance`); running one profile keeps the others, and
running some notebooks keeps the rest of that profile's rows. ``tools/results_tables.py
--write`` renders the README's table from it. The point of the file: the README's promise
"``cpu`` means minutes" (DESIGN: each notebook at most 10 minutes) is a measured number.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
OUT = ROOT / "results" / "notebook-times.json"
#: the budget each profile promises per notebook (seconds), printed beside each time
BUDGET = {"ci": 300, "cpu": 600}


def notebook_paths(selected: list[str]) -> list[Path]:
    """``notebooks/NN_*.ipynb`` whose number or name starts with one of ``selected`` (all if
    empty). A selection that matches nothing is an error, not an empty run."""
    every = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if not selected:
        return every
    chosen = [p for p in every if any(p.stem.startswith(s) for s in selected)]
    missing = [s for s in selected if not any(p.stem.startswith(s) for p in every)]
    if missing:
        raise SystemExit(f"no notebook matches {missing}; the notebooks are "
                         f"{', '.join(p.stem for p in every)}")
    return chosen


def _seconds(cell: dict, start: str, end: str) -> float | None:
    timing = cell.get("metadata", {}).get("execution", {})
    if start not in timing or end not in timing:
        return None
    parse = datetime.datetime.fromisoformat
    return (parse(timing[end].replace("Z", "+00:00"))
            - parse(timing[start].replace("Z", "+00:00"))).total_seconds()


def run_notebook(path: Path, profile: str, timeout: int, executed: Path | None = None) -> dict:
    """Execute one notebook in a fresh kernel; its wall seconds, status and slowest cells.

    ``executed``: a folder to save the executed notebook in (outputs included), e.g. under the
    git-ignored ``runs/``."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    env = {"DAP_PROFILE": profile, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
           "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg", "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    status = "ok"
    start = time.perf_counter()
    try:
        client.execute()
    except CellTimeoutError:
        status = f"timeout after {timeout} s in one cell"
    except CellExecutionError as exc:
        status = "error: " + str(exc).strip().splitlines()[-1][:200]
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    seconds = time.perf_counter() - start
    if executed is not None:
        executed.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, executed / f"{path.stem}-{profile}.ipynb")
    cells = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            s = _seconds(cell, "iopub.execute_input", "shell.execute_reply")
            if s is not None:
                first = next((ln for ln in cell.source.splitlines() if ln.strip()), "")
                cells.append((s, i, first[:60]))
    return {"notebook": path.stem, "seconds": round(seconds, 1), "status": status,
            # the machine's 5-minute load average when it ended: other jobs slow a run down
            "load_average": round(os.getloadavg()[1], 1) if hasattr(os, "getloadavg") else None,
            "slowest_cells": [{"cell": i, "seconds": round(s, 1), "starts": text}
                              for s, i, text in sorted(cells, reverse=True)[:5]]}


def _dirty() -> bool | None:
    """Whether notebooks/ or dap/ differ from the commit (then the commit alone does not say
    what ran); None outside a git checkout."""
    import subprocess

    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", "notebooks", "dap"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return bool(out.strip())


def merge(old: dict, profile: str, rows: list[dict], made_by: dict) -> dict:
    """``old`` (the file's content, or {}) with ``rows`` replacing this profile's rows of the
    same notebooks; the profile's ``made_by`` becomes the new one."""
    profiles = dict(old.get("profiles", {}))
    section = dict(profiles.get(profile, {}))
    kept = {r["notebook"]: r for r in section.get("rows", [])}
    kept.update({r["notebook"]: r for r in rows})
    section["rows"] = [kept[k] for k in sorted(kept)]
    section["made_by"] = made_by
    profiles[profile] = section
    return {"profiles": dict(sorted(profiles.items()))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", help="numbers or names (default: all)")
    parser.add_argument("--profile", required=True, help="ci, cpu, ... (dap.profiles.PROFILES)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--executed", type=Path, default=None,
                        help="save the executed notebooks here (e.g. runs/notebooks)")
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # provenance records this process's threads
    from dap.io import atomic_write_text
    from dap.profiles import PROFILES
    from dap.report import provenance

    if args.profile not in PROFILES:
        raise SystemExit(f"--profile {args.profile!r}: choose one of {', '.join(PROFILES)}")
    import torch

    torch.set_num_threads(1)
    made_by = {**provenance(), "threads": 1, "uncommitted_changes": _dirty()}
    rows = []
    for path in notebook_paths(args.notebooks):
        print(f"{path.stem} under {args.profile} ...", flush=True)
        row = run_notebook(path, args.profile, args.timeout, args.executed)
        row["git_commit"] = made_by["git_commit"]  # rows of earlier runs keep their own
        rows.append(row)
        budget = BUDGET.get(args.profile)
        note = f" (budget {budget} s)" if budget else ""
        print(f"  {row['seconds']:.0f} s{note}, {row['status']}; slowest cells: " + ", ".join(
            f"#{c['cell']} {c['seconds']:.0f} s" for c in row["slowest_cells"][:3]), flush=True)
    if not args.no_write:
        old = json.loads(args.out.read_text()) if args.out.exists() else {}
        atomic_write_text(args.out, json.dumps(merge(old, args.profile, rows, made_by),
                                               indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
