"""Is a bf16-trained DiffusionAD as good as an fp32-trained one after the same number of steps?

Trains the same model twice -- the ``ci`` preset at 64 px with the shipped models' segmenter and
schedule (``dap.experiments.ZOO_DIFFUSIONAD``), on the same data, seed and steps -- through the
public training API (``dap.experiments.train_run``): once on the plain path (``plain=True``:
float32, contiguous, eager, PyTorch's default Adam: the official recipe) and once on the fast
path that training uses by default (bf16 autocast, channels_last, fused kernels, fused Adam:
``amp="bf16"``). The two arms run in parallel as two processes with one CPU thread each. Both
report the last step's weights (``select_metric="last"``: no selection that could favour one
arm) on the validation split (normal images + synthetic anomalies, the same fixed set for both),
at every validation point; ``--test`` adds the test-split metrics of the final weights.
Validation and the test evaluation predict in float32 (the test one on the plain path,
``DAP_PLAIN=1``), so only the training differs.

    python benchmarks/bf16_vs_fp32.py                     # builtin:brick, 300 steps, ~10 min
    python benchmarks/bf16_vs_fp32.py --steps 800 --data builtin:grass --test
    python benchmarks/bf16_vs_fp32.py --quick             # 4 steps (smoke run)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# the shipped models' settings (dap.experiments.ZOO_DIFFUSIONAD), with this comparison's steps
ZOO_OVERRIDES = {"segmenter": {"base_width": 16, "encoder_mult": [1, 2, 4, 8]}}
ZOO_TRAIN = {"lr": 1e-3, "lr_schedule": "cosine", "warmup_steps": 50, "batch_size": 8}
METRICS = ("val_image_auroc", "val_pixel_auroc", "val_pixel_ap", "val_aupro", "val_mean")
TEST_METRICS = ("image_auroc", "pixel_auroc", "aupro", "pixel_ap", "f1_max")


def _train_run():
    """The public training entry point, wherever the package keeps it."""
    for module in ("dap.experiment", "dap.experiments", "dap.engine"):
        try:
            mod = __import__(module, fromlist=["train_run"])
        except ImportError:
            continue
        if hasattr(mod, "train_run"):
            return mod
    raise ImportError("no train_run in dap.experiment / dap.experiments / dap.engine")


def arm(amp: str, args) -> dict:
    from dap import runtime

    runtime.set_wait_policy()
    import torch

    torch.set_num_threads(1)
    api = _train_run()
    steps = args.steps
    path = {"amp": "off", "plain": True} if amp == "off" else {"amp": "bf16", "plain": False}
    train = {**ZOO_TRAIN, **path, "steps": steps, "seed": args.seed,
             "val_every": max(1, steps // args.validations), "select_metric": "last"}
    if steps < ZOO_TRAIN["warmup_steps"] * 2:
        train["warmup_steps"] = 0
    t0 = time.perf_counter()
    method, result, _ = api.train_run("diffusionad", args.data, profile="ci",
                                      out_dir=str(Path(args.out) / amp), overrides=ZOO_OVERRIDES,
                                      train_overrides=train, resume=False, progress=False)
    out = {"amp": amp, "seconds": time.perf_counter() - t0, "validations": result.validations,
           "final_loss": sum(h["loss"] for h in result.history[-20:])
           / len(result.history[-20:])}
    if args.test:
        os.environ["DAP_PLAIN"] = "1"  # both arms evaluated alike: float32, plain
        row, _ = api.evaluate_run(method, args.data, out_dir=None, fps=False, progress=False)
        out["test"] = {k: v for k, v in row.items() if isinstance(v, (int, float))}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="builtin:brick")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--validations", type=int, default=3, help="validation points per run")
    p.add_argument("--test", action="store_true", help="also the test split, final weights")
    p.add_argument("--out", default="runs/bf16_vs_fp32")
    p.add_argument("--quick", action="store_true", help="4 steps (smoke run)")
    p.add_argument("--arm", choices=("off", "bf16"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.validations = 4, 1
    if args.arm:
        print(json.dumps(arm(args.arm, args)), flush=True)
        return 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    env.pop("DAP_PLAIN", None)  # each arm chooses its path itself
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    extra = ["--test"] if args.test else []
    procs = {amp: subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--arm", amp, "--data", args.data,
         "--steps", str(args.steps), "--seed", str(args.seed), "--validations",
         str(args.validations), "--out", args.out, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for amp in ("off", "bf16")}
    print(f"training DiffusionAD (ci preset, 64 px, {args.data}, seed {args.seed}, "
          f"{args.steps} steps) twice in parallel, 1 thread each: float32 and bf16 autocast",
          flush=True)
    res = {}
    for amp, proc in procs.items():
        stdout, stderr = proc.communicate()
        lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            print(stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"the {amp} arm failed (exit {proc.returncode})")
        res[amp] = json.loads(lines[-1])
    f32, b16 = res["off"], res["bf16"]
    print(f"{'step':>5s} {'metric':18s} {'fp32':>7s} {'bf16':>7s} {'bf16-fp32':>9s}")
    for v32, v16 in zip(f32["validations"], b16["validations"]):
        for k in METRICS:
            if k in v32 and k in v16:
                print(f"{int(v32['step']):5d} {k:18s} {100 * v32[k]:7.1f} {100 * v16[k]:7.1f} "
                      f"{100 * (v16[k] - v32[k]):+9.1f}")
    if "test" in f32:
        for k in [k for k in TEST_METRICS if k in f32["test"] and k in b16["test"]]:
            print(f"test  {k:18s} {f32['test'][k]:7.3f} {b16['test'][k]:7.3f} "
                  f"{b16['test'][k] - f32['test'][k]:+9.3f}")
    print(f"final training loss (mean of the last 20 steps): fp32 {f32['final_loss']:.4f}, "
          f"bf16 {b16['final_loss']:.4f}")
    print(f"wall time (in parallel, 1 thread each): fp32 {f32['seconds']:.0f} s, bf16 "
          f"{b16['seconds']:.0f} s")
    from dap.report import provenance

    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "comparison.json").write_text(json.dumps(
        {"kind": "bf16-vs-fp32", "data": args.data, "steps": args.steps, "seed": args.seed,
         "arms": res, "made_by": provenance()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
