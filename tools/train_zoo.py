"""Train every shipped model (dap/checkpoints/) with one command, in the background, resumably.

    python tools/train_zoo.py                       # every method x brick, grass, gravel
    python tools/train_zoo.py --methods diffusionad draem --jobs 2
    python tools/train_zoo.py --dry-run             # print the commands only

Each model is ``python -m dap train ... --export NAME --force`` with the recipe of
``dap.experiments.zoo_recipes`` (the exact command lands in the model's provenance file). Jobs
run ``--jobs`` at a time, one CPU thread each (a 2-thread process next to a busy one is slower
than two 1-thread processes), logs in ``runs/zoo/<method>-<category>.log``. Stop it any time:
run it again and every job continues from its ``last.pt``; a job whose model is already
exported from a finished run is skipped.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    from dap.experiments import ZOO_CATEGORIES, zoo_command, zoo_recipes

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(zoo_recipes()))
    parser.add_argument("--categories", nargs="+", default=list(ZOO_CATEGORIES))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default="runs/zoo")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)

    jobs = []
    for method in args.methods:
        for cat in args.categories:
            cmd = [sys.executable, "-m", "dap", *zoo_command(method, cat, args.out)]
            done = Path(args.out) / f"{method}-{cat}" / "exported"
            jobs.append((f"{method}-{cat}", cmd, done))
    if args.dry_run:
        for name, cmd, _ in jobs:
            print(name + ":", " ".join(cmd[1:]))
        return 0
    Path(args.out).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "TQDM_MININTERVAL": "30"}
    running: list[tuple[str, subprocess.Popen, Path, float]] = []
    failed = []
    queue = [j for j in jobs if not j[2].exists()]
    print(f"{len(jobs) - len(queue)} of {len(jobs)} models already exported; "
          f"{len(queue)} to train, {args.jobs} at a time")
    while queue or running:
        while queue and len(running) < args.jobs:
            name, cmd, done = queue.pop(0)
            log = open(Path(args.out) / f"{name}.log", "a")
            print(f"start {name}: {' '.join(cmd[1:])}", flush=True)
            running.append((name, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                                   stderr=subprocess.STDOUT), done, time.time()))
        time.sleep(5)
        for item in list(running):
            name, proc, done, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            minutes = (time.time() - t0) / 60
            if proc.returncode == 0:
                done.parent.mkdir(parents=True, exist_ok=True)
                done.write_text(f"{minutes:.1f} min\n")
                print(f"done  {name} in {minutes:.1f} min", flush=True)
            else:
                failed.append(name)
                print(f"FAIL  {name} (exit {proc.returncode}): see {args.out}/{name}.log",
                      flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
