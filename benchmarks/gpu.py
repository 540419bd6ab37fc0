"""The paper's configuration on a GPU: training img/s and peak memory, inference FPS.

The ``paper`` preset (131.7 M + 28.4 M parameters, 256 x 256) at the paper's batch 16, one
training step = synthesis + ``method.forward`` + backward + AdamW step, in each of:

* ``fp32``: the plain model (float32, contiguous, eager);
* ``bf16``: the fast path, :func:`dap.runtime.speed_up` with its defaults for the device
  (on CUDA: contiguous NCHW tensors, native bf16 GroupNorm, fused attention) + bf16 autocast
  (fp16 + a gradient scaler on GPUs without native bf16, e.g. a T4) + fused AdamW;
* ``+cl`` forces channels_last and ``+upcastgn`` the float32 GroupNorm (``bf16+cl+upcastgn``
  is the CPU's fast path on a GPU): what each fast-path default buys there;
* each with and without gradient checkpointing (``+ckpt``) and ``torch.compile``
  (``+compile``; falls back to eager with a warning where it cannot compile).

For each: images/s (median of the timed steps, after warm-up steps that include compiling)
and the peak of ``torch.cuda.max_memory_allocated`` (tensors only; the CUDA context and the
caching allocator's slack come on top). Out-of-memory rows say so and the run continues.
Then inference FPS of ``method.predict`` (norm-guided x0_g + segmenter) at batch 1 (the
paper: 23.5 FPS on an A100 at 256 px) and batched, plain vs fast.

    python benchmarks/gpu.py                       # on a GPU: all rows, ~10 min on an A100
    python benchmarks/gpu.py --configs bf16+ckpt bf16 --out runs/gpu.json
    python benchmarks/gpu.py --tiny                # CPU, ci preset, batch 2, 1 step (smoke test)

With ``--out``, the results file (``kind: "gpu"``, rendered by ``tools/results_tables.py``) is
rewritten after every row, atomically, so a run stopped at a time limit keeps what it measured.

On the CPU, the peak column is the process's peak RSS so far (VmHWM), which only grows: use
``benchmarks/memory.py`` for per-configuration CPU memory.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dap import runtime  # noqa: E402  (imports no torch)

WAIT_POLICY_IN_TIME = runtime.set_wait_policy_quiet()

import torch  # noqa: E402

from dap.methods import build_method  # noqa: E402
from dap.methods.base import TrainBatch  # noqa: E402
from dap.io import atomic_write_text  # noqa: E402
from dap.report import provenance  # noqa: E402

ALL_CONFIGS = ("fp32", "fp32+ckpt", "bf16", "bf16+ckpt", "bf16+cl", "bf16+upcastgn",
               "bf16+cl+upcastgn", "fp32+compile", "fp32+ckpt+compile", "bf16+compile",
               "bf16+ckpt+compile")
PAPER_FPS = 23.5  # Table VI/VII, VisA, A100, batch 1


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def reset(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def texture_batch(batch: int, size: int, device: torch.device) -> torch.Tensor:
    """Real texture crops in [-1, 1] (``benchmarks/synthesis.py``'s inputs)."""
    import synthesis as numpy_reference

    images, _ = numpy_reference.make_inputs(batch, size)
    return (torch.from_numpy(images).permute(0, 3, 1, 2).contiguous() * 2 - 1).to(device)


def prepare(base, config: str, device: torch.device):
    """A copy of ``base`` set up for ``config``; returns (method, autocast dtype, fast?)."""
    method = copy.deepcopy(base).to(device)
    fast = config.startswith("bf16")
    ckpt, comp = "+ckpt" in config, "+compile" in config
    if fast:
        runtime.speed_up(method, gradient_checkpointing=ckpt, compile=comp,
                         channels_last=True if "+cl" in config else None,
                         native_bf16_norm=False if "+upcastgn" in config else None)
        amp = "auto" if device.type == "cuda" else "bf16"
        dtype = runtime.autocast_dtype(device, amp)
    else:
        if ckpt:
            runtime.enable_gradient_checkpointing(method)
        for net in runtime.networks(method) if comp else []:
            runtime.maybe_compile(net)
        dtype = None
    return method, dtype, fast


def train_row(base, config: str, batch: int, device: torch.device, warmup: int, reps: int
              ) -> dict:
    reset(device)
    method, dtype, fast = prepare(base, config, device)
    kw = runtime.optimizer_kwargs(device) if fast else {}
    opt = torch.optim.AdamW(method.parameters(), lr=1e-4, weight_decay=0.0, **kw)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    x = texture_batch(batch, method.image_size, device)
    if runtime.uses_channels_last(method):
        x = runtime.channels_last_input(x)
    method.train()

    def step(i: int) -> None:
        gen = torch.Generator(device).manual_seed(i)
        with runtime.autocast(device, dtype):
            loss = method(TrainBatch(x), gen)["loss"]
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    row = {"config": config, "batch": batch,
           "dtype": str(dtype or torch.float32).replace("torch.", "")}
    try:
        t0 = time.perf_counter()
        for i in range(warmup):
            step(i)
        sync(device)
        row["warmup_s"] = time.perf_counter() - t0
        times = []
        for i in range(reps):
            t0 = time.perf_counter()
            step(warmup + i)
            sync(device)
            times.append(time.perf_counter() - t0)
        row["img_per_s"] = batch / statistics.median(times)
        row["peak_gb"] = peak_gb(device)
        row["compiled"] = all(runtime.is_compiled(n) for n in runtime.networks(method)) \
            if "+compile" in config else None
    except torch.cuda.OutOfMemoryError:
        row["oom"] = True
    del method, opt
    reset(device)
    return row


INFER_PATHS = {"plain": ("plain fp32", "fp32"), "fast": ("fast", "bf16"),
               "fast+compile": ("fast+compile", "bf16+compile")}


def inference_rows(base, device: torch.device, batched: int, reps: int, paths: list[str],
                   done=lambda row: None) -> list[dict]:
    rows = []
    for name, config in (INFER_PATHS[p] for p in paths):
        reset(device)
        method, dtype, fast = prepare(base, config, device)
        method.eval()
        row = {"path": name}
        for b in (1, batched):
            x = texture_batch(b, method.image_size, device)
            if runtime.uses_channels_last(method):
                x = runtime.channels_last_input(x)

            def run() -> None:
                if fast:
                    with runtime.inference(device, dtype):
                        method.predict(x)
                else:
                    method.predict(x)

            for _ in range(2):
                run()
            sync(device)
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                run()
                sync(device)
                times.append(time.perf_counter() - t0)
            row[f"fps_batch{b}"] = b / statistics.median(times)
        rows.append(row)
        done(row)
        del method
    reset(device)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", default="paper", choices=("ci", "cpu", "paper"))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--infer-batch", type=int, default=16, help="the batched inference size")
    p.add_argument("--configs", nargs="+", default=None, choices=ALL_CONFIGS,
                   help="default: all on CUDA; without +compile elsewhere")
    p.add_argument("--inference", nargs="*", default=None, choices=list(INFER_PATHS),
                   help="inference paths to time (default: plain fast, and fast+compile on "
                        "CUDA; none: skip the inference part)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: cores)")
    p.add_argument("--tiny", action="store_true",
                   help="ci preset, batch 2, one step, on this device (the smoke test)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.tiny:
        args.preset, args.batch, args.infer_batch = "ci", 2, 2
        args.warmup, args.reps = 1, 1
    if args.configs is None:
        args.configs = list(ALL_CONFIGS) if device.type == "cuda" else \
            ["fp32", "fp32+ckpt", "bf16", "bf16+ckpt"]
    if args.inference is None:
        args.inference = ["plain", "fast"] + (["fast+compile"] if device.type == "cuda"
                                              and not args.tiny else [])
    threads = runtime.configure_threads(args.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"gpu benchmark: preset {args.preset!r}, device {device} ({name}), torch "
          f"{torch.__version__}, {threads['num_threads']} CPU threads; bf16 rows use autocast "
          f"{runtime.autocast_dtype(device, 'auto' if device.type == 'cuda' else 'bf16')}",
          flush=True)
    if device.type != "cuda":
        print("    (no CUDA: CPU run; 'peak GB' is the process's peak RSS so far, which only "
              "grows -- see benchmarks/memory.py)", flush=True)
    torch.manual_seed(0)
    base = build_method("diffusionad", args.preset)
    print(f"[1] training, batch {args.batch} ({args.warmup} warm-up + {args.reps} timed steps)",
          flush=True)
    print(f"    {'config':20s} {'dtype':9s} {'img/s':>8s} {'peak GB':>8s} {'warm-up s':>9s}",
          flush=True)
    train: list[dict] = []
    infer: list[dict] = []

    def save(_row=None) -> None:
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.out, json.dumps({
                "kind": "gpu", "device": name, "preset": args.preset, "batch": args.batch,
                "infer_batch": args.infer_batch, "warmup": args.warmup, "reps": args.reps,
                "torch": torch.__version__, "threads": threads["num_threads"],
                "train": train, "inference": infer, "made_by": provenance()}, indent=1))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        for config in args.configs:
            row = train_row(base, config, args.batch, device, args.warmup, args.reps)
            train.append(row)
            save()
            if row.get("oom"):
                print(f"    {config:20s} {row['dtype']:9s} out of memory", flush=True)
                continue
            note = "" if row["compiled"] in (None, True) else "  (compile fell back to eager)"
            print(f"    {config:20s} {row['dtype']:9s} {row['img_per_s']:8.2f} "
                  f"{row['peak_gb']:8.2f} {row['warmup_s']:9.1f}{note}", flush=True)
    ok = {r["config"]: r for r in train if not r.get("oom")}
    if "fp32" in ok:
        for r in ok.values():
            if r["config"] != "fp32":
                print(f"    {r['config']}: {r['img_per_s'] / ok['fp32']['img_per_s']:.2f}x the "
                      f"images/s of fp32, {r['peak_gb'] / ok['fp32']['peak_gb']:.2f}x its peak",
                      flush=True)
    if not args.inference:
        return 0
    print(f"[2] inference (predict: norm-guided x0_g + segmenter), FPS at batch 1 and "
          f"{args.infer_batch} (paper: {PAPER_FPS} FPS at batch 1 on an A100, 256 px)",
          flush=True)
    def show(r: dict) -> None:
        infer.append(r)
        save()
        print(f"    {r['path']:14s} batch 1: {r['fps_batch1']:7.1f} FPS   batch "
              f"{args.infer_batch}: {r[f'fps_batch{args.infer_batch}']:7.1f} img/s", flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        inference_rows(base, device, args.infer_batch, args.reps, args.inference, done=show)
    return 0



if __name__ == "__main__":
    raise SystemExit(main())
