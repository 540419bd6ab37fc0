"""Peak memory of one DiffusionAD training step, each configuration in a fresh process.

The question (issue #18): does the paper's configuration -- the ``paper`` preset (131.7 M +
28.4 M parameters, 256 x 256) at the paper's batch 16 -- fit in 24 GB once the memory options
are on? Users of the official code report batch 3-4 at most in 24 GB.

Every configuration runs in its own child process (a fresh interpreter, so nothing of another
run stays in the heap): build the method with ``dap.methods.build_method("diffusionad",
preset)``, an AdamW optimiser, a batch of real texture crops, then ONE full training step
(synthesis + ``method.forward`` + backward + AdamW step, so the optimiser state exists). The
child reports its peak resident set size (``VmHWM``; the parent cross-checks
``getrusage(RUSAGE_CHILDREN).ru_maxrss``) and the RSS before the step (weights only). A
watchdog kills a child whose RSS passes ``--max-rss-gb`` (default 9) so that a shared machine
never runs out of memory: its row then says "killed".

Configurations:

* ``fp32``: the plain path (float32, contiguous, eager, PyTorch's default AdamW).
* ``bf16+ckpt``: :func:`dap.runtime.speed_up` with ``gradient_checkpointing=True`` (both
  networks recompute their blocks in the backward pass), bf16 autocast, fused AdamW.
* ``bf16``, ``fp32+ckpt``: each option alone (``--configs``).

Peak = a + b * batch is fitted by least squares over the measured batches of a configuration
and extrapolated to batch 16. CPU RSS is an upper bound for what a GPU needs: it includes the
allocator's free lists, oneDNN's scratch buffers and the process itself, where
``torch.cuda.max_memory_allocated`` counts tensors only (``benchmarks/gpu.py`` measures that on a
GPU).

    python benchmarks/memory.py                     # paper preset: bf16+ckpt at 1, 2, 4; fp32 at 1
    python benchmarks/memory.py --configs fp32 bf16 fp32+ckpt bf16+ckpt --batches 1 2
    python benchmarks/memory.py --quick             # ci preset, seconds (the smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = ("fp32", "bf16", "fp32+ckpt", "bf16+ckpt")


# --------------------------------------------------------------------------------------------
# The child: one training step
# --------------------------------------------------------------------------------------------
def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _watchdog(limit_kb: int) -> None:
    def watch() -> None:
        while True:
            if _status_kb("VmRSS") > limit_kb:
                sys.stdout.write(json.dumps({"killed": True, "rss_kb": _status_kb("VmRSS")}) + "\n")
                sys.stdout.flush()
                os._exit(3)
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()


def child(preset: str, config: str, batch: int, threads: int, limit_gb: float) -> None:
    from dap import runtime

    runtime.set_wait_policy()
    if Path("/proc/self/status").exists():
        _watchdog(int(limit_gb * 2**20))
    import torch

    from dap.methods import build_method
    from dap.methods.base import TrainBatch

    runtime.configure_threads(threads)
    torch.manual_seed(0)
    method = build_method("diffusionad", preset)
    size = method.image_size
    bf16, ckpt = config.startswith("bf16"), config.endswith("+ckpt")
    dtype = runtime.autocast_dtype("cpu", "bf16") if bf16 else None
    if bf16:
        runtime.speed_up(method, gradient_checkpointing=ckpt)
    elif ckpt:
        runtime.enable_gradient_checkpointing(method)
    kw = runtime.optimizer_kwargs("cpu") if bf16 else {}
    opt = torch.optim.AdamW(method.parameters(), lr=1e-4, weight_decay=0.0, **kw)
    sys.path.insert(0, str(HERE))
    import synthesis as numpy_reference  # benchmarks/synthesis.py: real texture crops

    images, _ = numpy_reference.make_inputs(batch, size)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous() * 2 - 1
    if bf16:
        x = runtime.channels_last_input(x)
    before = _status_kb("VmRSS")
    method.train()
    t0 = time.perf_counter()
    with runtime.autocast("cpu", dtype):
        loss = method(TrainBatch(x), torch.Generator().manual_seed(0))["loss"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    seconds = time.perf_counter() - t0
    print(json.dumps({"preset": preset, "config": config, "batch": batch, "size": size,
                      "peak_kb": _status_kb("VmHWM"), "before_step_kb": before,
                      "seconds": seconds, "loss": float(loss.detach()),
                      "params_m": sum(p.numel() for p in method.parameters()) / 1e6}), flush=True)


# --------------------------------------------------------------------------------------------
# The parent: one child per row, then the fit
# --------------------------------------------------------------------------------------------
def measure(preset: str, config: str, batch: int, threads: int, limit_gb: float,
            timeout: float) -> dict:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", preset,
                           config, str(batch), "--threads", str(threads),
                           "--max-rss-gb", str(limit_gb)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"{config} batch {batch} failed:\n{proc.stdout}\n{proc.stderr}")
    row = json.loads(lines[-1])
    row.update(config=config, batch=batch)
    # RUSAGE_CHILDREN is the max over all children so far: informative when it grew
    row["rusage_children_kb"] = children_kb if children_kb > before else None
    return row


def fit(rows: list[dict]) -> tuple[float, float] | None:
    """Least squares peak_GB = a + b * batch over ``rows`` (None with < 2 distinct batches)."""
    pts = [(r["batch"], r["peak_kb"] / 2**20) for r in rows if not r.get("killed")]
    if len({b for b, _ in pts}) < 2:
        return None
    n = len(pts)
    mb, mp = sum(b for b, _ in pts) / n, sum(p for _, p in pts) / n
    b = sum((x - mb) * (y - mp) for x, y in pts) / sum((x - mb) ** 2 for x, _ in pts)
    return mp - b * mb, b


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", nargs=3, metavar=("PRESET", "CONFIG", "BATCH"),
                   help=argparse.SUPPRESS)
    p.add_argument("--preset", default="paper", choices=("ci", "cpu", "paper"))
    p.add_argument("--configs", nargs="+", default=["bf16+ckpt", "fp32"], choices=CONFIGS)
    p.add_argument("--batches", type=int, nargs="+", default=None,
                   help="default: 1 2 4 for configurations with checkpointing, 1 otherwise")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-rss-gb", type=float, default=9.0,
                   help="kill a child above this RSS (protects a shared machine)")
    p.add_argument("--predict", type=int, default=16, help="extrapolate to this batch")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--quick", action="store_true", help="ci preset, batches 1 and 2")
    p.add_argument("--out", default=None, help="write the rows and fits as JSON here")
    args = p.parse_args(argv)
    if args.child:
        preset, config, batch = args.child
        child(preset, config, int(batch), args.threads, args.max_rss_gb)
        return 0
    if args.quick:
        args.preset, args.batches = "ci", [1, 2]
    print(f"peak RSS of one training step (forward + backward + AdamW step), preset "
          f"{args.preset!r}, fresh process per row, {args.threads} threads, children killed "
          f"above {args.max_rss_gb:g} GB", flush=True)
    print(f"{'config':11s} {'batch':>5s} {'peak GB':>8s} {'weights GB':>10s} {'step s':>7s}",
          flush=True)
    rows: list[dict] = []
    for config in args.configs:
        batches = args.batches or ([1, 2, 4] if config.endswith("+ckpt") else [1])
        for batch in batches:
            row = measure(args.preset, config, batch, args.threads, args.max_rss_gb, args.timeout)
            rows.append(row)
            if row.get("killed"):
                print(f"{config:11s} {batch:5d}   killed above {args.max_rss_gb:g} GB", flush=True)
                break  # larger batches need more
            print(f"{config:11s} {batch:5d} {row['peak_kb'] / 2**20:8.2f} "
                  f"{row['before_step_kb'] / 2**20:10.2f} {row['seconds']:7.1f}", flush=True)
    fits = {}
    for config in args.configs:
        f = fit([r for r in rows if r["config"] == config])
        if f is None:
            continue
        a, b = f
        fits[config] = {"a_gb": a, "b_gb_per_image": b, "predicted_gb": a + b * args.predict}
        print(f"fit {config}: peak = {a:.2f} GB + {b:.2f} GB x batch -> batch {args.predict}: "
              f"{a + b * args.predict:.1f} GB", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        from dap.report import provenance

        Path(args.out).write_text(json.dumps({"kind": "memory", "preset": args.preset,
                                              "predict_batch": args.predict, "rows": rows,
                                              "fits": fits, "made_by": provenance()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
