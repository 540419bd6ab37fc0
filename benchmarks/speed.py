"""DiffusionAD training and inference speed: dap's fast path vs the plain path, in one run.

Both paths run the same model (same weights, same batch) in the same process, interleaved
repetition by repetition, so a busy neighbour on the machine slows both alike; the figures are
medians over the repetitions (a mean-based ratio is printed beside each).

* **plain**: what the official DiffusionAD code does (and dap does by default): float32,
  contiguous (NCHW) tensors, eager mode, PyTorch's default attention path, ``torch.optim.AdamW``
  with its default (per-tensor) implementation, and, for the training step, the anomaly
  synthesis done per sample in numpy as the official data loader does
  (``benchmarks/synthesis.py``'s reference of the same recipe, imported).
* **fast**: :func:`dap.runtime.speed_up` + :func:`dap.runtime.autocast`: bf16 autocast where
  the CPU has native bf16 (detected), channels_last, the fused attention kernel, native bf16
  GroupNorm at inference, fused AdamW (its step on one thread for the small presets:
  :func:`dap.runtime.optimizer_threads`), the bf16 weight-gradient convolutions on one thread
  (see :func:`dap.runtime.set_conv_weight_grad_threads`), dap's batched synthesis, and
  ``torch.inference_mode`` for inference. ``--compile`` adds a third path with
  ``torch.compile`` (compile time printed separately).

Measured: [1] the denoiser's forward + backward, [2] one joint training step (synthesis +
``method.forward`` + backward + AdamW step), [3] inference (``method.predict``: norm-guided
x0_g + segmenter), at 64 px with the ``ci`` preset (the size of the shipped models) and at
128 px with the ``cpu`` preset; batch 8; 2 threads. ``--ablate`` adds [4]: the options added
one at a time, each with its own ratio to plain.

    python benchmarks/speed.py                 # 64 and 128 px, ~10 min on 2 shared cores
    python benchmarks/speed.py --ablate        # + what each option buys
    python benchmarks/speed.py --sizes 64 --compile
    python benchmarks/speed.py --quick         # seconds (the smoke test)

What the ratios depend on (all measured with this script on 2 vCPUs with AMX, see the README):
how busy the machine is. These models are small (0.85 M and 4.4 M parameters), so bf16 makes
the arithmetic cheap and what is left is per-operation overhead and thread synchronisation.
On one thread the fast path is ~2.0-2.4x (training) and ~2.7-2.9x (inference)
(``results/speed.json``). Two threads were measured before the per-shape kernel choices of
``benchmarks/cpu_kernels.py``: on a quiet machine the plain path gains ~1.3x from the second
thread and the fast path almost nothing, so the ratios dropped to ~1.3x / ~1.7-2.0x; on a busy
machine they were ~1.7-2.2x / ~2.0-2.6x (``--fast-threads auto`` lets the fast path leave busy
cores alone).
Interleaving makes each ratio fair within a run; between runs the load differs, so compare
ratios, not img/s, and look at the load average printed at the start and the end.

Set-up: ``OMP_WAIT_POLICY=PASSIVE`` is put into the environment before torch is imported
(:func:`dap.runtime.set_wait_policy`; a value you export is kept), and the thread count comes
from :func:`dap.runtime.configure_threads` (``--threads``, default 2).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dap import runtime  # noqa: E402  (imports no torch)

# before torch is imported (see dap.runtime); False when a test imported torch first
WAIT_POLICY_IN_TIME = runtime.set_wait_policy_quiet()

import numpy as np  # noqa: E402
import torch  # noqa: E402

import synthesis as numpy_reference  # noqa: E402  benchmarks/synthesis.py
from dap.methods import build_method  # noqa: E402
from dap.methods.base import TrainBatch  # noqa: E402
from dap.synthesis import SynthesisOutput, TextureBank  # noqa: E402

#: image size -> model preset (64 px: the shipped models' size)
PRESET_FOR_SIZE = {64: "ci", 128: "cpu", 256: "paper"}


# --------------------------------------------------------------------------------------------
# The plain path's synthesis: the official recipe, one sample at a time in numpy
# --------------------------------------------------------------------------------------------
class NumpyReferenceSynthesizer:
    """A drop-in for :class:`dap.synthesis.AnomalySynthesizer` that runs
    ``benchmarks/synthesis.py``'s per-sample numpy reference of the official recipe: each
    sample normal with probability 0.5 (the official code), else eq. 12 with a Perlin mask and
    an augmented texture-bank source. Includes the tensor <-> numpy conversions a data loader
    and its collate function do."""

    def __init__(self, size: int, seed: int = 0) -> None:
        bank = TextureBank.from_skimage()
        self.bank_np = list(bank.tensor(size).permute(0, 2, 3, 1).numpy())
        self.rng = np.random.default_rng(seed)

    def __call__(self, images, foreground=None, generator=None, is_texture=True,
                 return_source=False) -> SynthesisOutput:
        normal = ((images.float() + 1) / 2).permute(0, 2, 3, 1).numpy()
        fg = None if foreground is None else foreground[:, 0].float().numpy()
        samples = [numpy_reference.np_synthesize(
            img, None if fg is None else fg[i], self.bank_np, is_texture,
            bool(self.rng.random() < 0.5), self.rng) for i, img in enumerate(normal)]
        image = torch.from_numpy(np.stack([s[0] for s in samples])).permute(0, 3, 1, 2) * 2 - 1
        mask = torch.from_numpy(np.stack([s[1] for s in samples]))[:, None]
        label = torch.tensor([s[2] for s in samples], dtype=torch.float32)
        b = len(samples)
        return SynthesisOutput(image.contiguous().float(), mask.float(), label, None,
                               torch.ones(b), label.long(), torch.zeros(b, 0, dtype=torch.bool))


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------
class SpeedPath:
    """One way of running the same model: its copy of the method, dtype and options."""

    def __init__(self, name: str, method, dtype, channels_last: bool, fused_opt: bool,
                 inference_mode: bool) -> None:
        self.name, self.method, self.dtype = name, method, dtype
        self.channels_last, self.inference_mode = channels_last, inference_mode
        kw = runtime.optimizer_kwargs("cpu") if fused_opt else {}
        self.optimizer = torch.optim.AdamW(method.parameters(), lr=1e-4, weight_decay=0.0, **kw)
        # the fast path steps many small tensors on one thread (dap.runtime.optimizer_threads)
        self.opt_threads = runtime.optimizer_threads(list(method.parameters())) \
            if fused_opt else None
        self.seed = 0
        self.threads: int | None = None  # None: the process's thread count

    def threaded(self):
        return runtime.num_threads(self.threads or torch.get_num_threads())

    def input(self, x: torch.Tensor) -> torch.Tensor:
        return runtime.channels_last_input(x) if self.channels_last else x

    def denoiser_step(self, x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> float:
        with self.threaded():
            return self._denoiser_step(x, t, noise)

    def _denoiser_step(self, x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> float:
        den = self.method.denoiser
        den.train()
        with runtime.autocast("cpu", self.dtype):
            eps = den(self.input(x), t)
        loss = (eps.float() - noise).square().mean()
        loss.backward()
        den.zero_grad(set_to_none=True)
        return float(loss.detach())

    def train_step(self, images: torch.Tensor) -> float:
        with self.threaded():
            return self._train_step(images)

    def _train_step(self, images: torch.Tensor) -> float:
        self.method.train()
        self.seed += 1
        gen = torch.Generator().manual_seed(self.seed)
        with runtime.autocast("cpu", self.dtype):
            loss = self.method(TrainBatch(self.input(images)), gen)["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with runtime.num_threads(self.opt_threads or torch.get_num_threads()):
            self.optimizer.step()
        return float(loss.detach())

    def predict(self, images: torch.Tensor):
        with self.threaded():
            return self._predict(images)

    def _predict(self, images: torch.Tensor):
        self.method.eval()
        if self.inference_mode:
            with runtime.inference("cpu", self.dtype):
                return self.method.predict(self.input(images))
        with runtime.autocast("cpu", self.dtype):
            return self.method.predict(self.input(images))


#: the fast path's options, in the order --ablate adds them (name, speed_up kwargs, extras).
#: The conv weight-gradient setting comes right after bf16: without it the bf16 weight-gradient
#: kernel stalls on a shared machine and hides what every later option buys.
_W = {"conv_weight_grad_threads": "auto"}
ABLATION = [
    ("+ bf16 autocast", {}, {"bf16": True}),
    ("+ conv weight grad on 1 thread", {**_W}, {"bf16": True}),
    ("+ channels_last", {**_W, "channels_last": True}, {"bf16": True}),
    ("+ fused attention kernel", {**_W, "channels_last": True, "attention": "fused"},
     {"bf16": True}),
    ("+ native bf16 GroupNorm", {**_W, "channels_last": True, "attention": "fused",
                                 "native_bf16_norm": True}, {"bf16": True}),
    ("+ fused AdamW, inference_mode (= fast)", {**_W, "channels_last": True,
                                                "attention": "fused", "native_bf16_norm": True},
     {"bf16": True, "fused_opt": True, "inference_mode": True}),
]


def make_path(name: str, base, size: int, *, bf16: bool = False, fused_opt: bool = False,
              inference_mode: bool = False, numpy_synthesis: bool = False,
              **speed_options) -> SpeedPath:
    """A deep copy of ``base`` with ``speed_options`` applied (none: the plain model)."""
    method = copy.deepcopy(base)
    options = {"channels_last": False, "attention": None, "native_bf16_norm": False,
               "conv_weight_grad_threads": None, **speed_options}
    runtime.speed_up(method, **options)
    if numpy_synthesis:
        method.synthesizer = NumpyReferenceSynthesizer(size)
    dtype = runtime.autocast_dtype("cpu", "auto") if bf16 else None
    return SpeedPath(name, method, dtype, options["channels_last"], fused_opt, inference_mode)


def plain_path(base, size: int) -> SpeedPath:
    """fp32, contiguous, eager, default attention and AdamW, numpy per-sample synthesis."""
    return make_path("plain", base, size, numpy_synthesis=True)


def fast_path(base, size: int, compile: bool = False) -> SpeedPath:
    """What ``dap.engine`` trains and evaluates with by default (:func:`dap.runtime.setup`:
    :func:`dap.runtime.speed_up` and the autocast dtype), with fused AdamW."""
    method = copy.deepcopy(base)
    dtype = runtime.setup(method, "cpu", "auto", plain=False, compile=compile)
    return SpeedPath("fast+compile" if compile else "fast", method, dtype, True, True, True)


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------
def interleaved(fns: dict[str, callable], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each function per repetition; the order alternates between repetitions."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(reps):
        for k in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return times


def summarise(label: str, times: dict[str, list[float]], batch: int, base: str = "plain",
              goal: float | None = None, results: list | None = None, part: str = "",
              size: int = 0) -> None:
    med = {k: statistics.median(v) for k, v in times.items()}
    mean = {k: statistics.fmean(v) for k, v in times.items()}
    parts = [f"{k} {batch / med[k]:7.1f} img/s" for k in times]
    ratios = []
    for k in times:
        if k == base:
            continue
        ratios.append(f"{k}/{base} {med[base] / med[k]:.2f}x (mean-based {mean[base] / mean[k]:.2f}x)")
    goal_txt = f" (goal >= {goal:g}x)" if goal else ""
    print(f"{label}: " + " | ".join(parts) + " -> ratio " + "; ".join(ratios) + goal_txt,
          flush=True)
    if results is not None:
        results.append({"what": label, "batch": batch, "part": part, "size": size,
                        "img_per_s": {k: batch / med[k] for k in times},
                        "ratio": {k: med[base] / med[k] for k in times if k != base},
                        "seconds": times})


def inputs(size: int, batch: int, seed: int = 0) -> torch.Tensor:
    """Real texture crops (brick, grass, gravel) in [-1, 1], ``(batch, 3, size, size)``."""
    images, _ = numpy_reference.make_inputs(batch, size)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous() * 2 - 1


def run_size(size: int, args, results: list) -> None:
    preset = args.preset or PRESET_FOR_SIZE[size]
    torch.manual_seed(0)
    base = build_method("diffusionad", preset)
    if base.image_size != size:
        raise SystemExit(f"preset {preset!r} is built for {base.image_size} px, not {size} px")
    n_params = sum(p.numel() for p in base.parameters()) / 1e6
    x = inputs(size, args.batch)
    g = torch.Generator().manual_seed(1)
    t = torch.randint(0, 1000, (args.batch,), generator=g)
    noise = torch.randn(x.shape, generator=g)
    paths = [plain_path(base, size), fast_path(base, size)]
    paths[1].threads = args.fast_threads
    if args.compile:
        t0 = time.perf_counter()
        comp = fast_path(base, size, compile=True)
        comp.threads = args.fast_threads
        if "train" in args.parts:
            comp.train_step(x)
        if "denoiser" in args.parts:
            comp.denoiser_step(x, t, noise)
        if "predict" in args.parts:
            comp.predict(x)
        seconds = time.perf_counter() - t0
        compiled = all(runtime.is_compiled(n) for n in runtime.networks(comp.method))
        print(f"    torch.compile: first calls (compiling the graphs of {', '.join(args.parts)}) "
              f"{seconds:.0f} s; compiled: {compiled}", flush=True)
        results.append({"what": f"torch.compile, {size} px", "part": "compile", "size": size,
                        "seconds": seconds, "compiled": compiled})
        paths.append(comp)
    print(f"--- {size} px: preset {preset!r} ({n_params:.2f} M parameters), batch {args.batch}, "
          f"{args.reps} interleaved repetitions", flush=True)
    label = f"{size} px"
    if "denoiser" in args.parts:
        summarise(f"[1] denoiser fwd+bwd, {label}",
                  interleaved({p.name: (lambda p=p: p.denoiser_step(x, t, noise)) for p in paths},
                              args.reps), args.batch, results=results, part="denoiser",
                  size=size)
    if "train" in args.parts:
        summarise(f"[2] training step (synthesis + forward + backward + AdamW), {label}",
                  interleaved({p.name: (lambda p=p: p.train_step(x)) for p in paths}, args.reps),
                  args.batch, goal=2.0, results=results, part="train", size=size)
    if "predict" in args.parts:
        summarise(f"[3] inference (predict: norm-guided x0_g + segmenter), {label}",
                  interleaved({p.name: (lambda p=p: p.predict(x)) for p in paths}, args.reps),
                  args.batch, goal=2.5, results=results, part="predict", size=size)
    if args.ablate:
        variants = [make_path("plain", base, size, numpy_synthesis=True),
                    make_path("dap synthesis", base, size)]
        variants += [make_path(name, base, size, **extra, **opts) for name, opts, extra in ABLATION]
        print(f"[4] ablation, {label}: each row adds one option to the row above; ratio to "
              "plain (median over repetitions)", flush=True)
        for what, fn in (("training step", lambda p: p.train_step(x)),
                         ("inference", lambda p: p.predict(x))):
            if what == "inference":
                variants = [v for v in variants if v.name != "dap synthesis"]
            times = interleaved({v.name: (lambda v=v: fn(v)) for v in variants}, args.reps)
            med = {k: statistics.median(v) for k, v in times.items()}
            for k in times:
                print(f"    {what:13s} {k:42s} {args.batch / med[k]:7.1f} img/s  "
                      f"{med['plain'] / med[k]:5.2f}x", flush=True)
            results.append({"what": f"[4] ablation {what}, {label}",
                            "img_per_s": {k: args.batch / med[k] for k in times},
                            "ratio": {k: med["plain"] / med[k] for k in times}})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128],
                   help="image sizes; 64 -> ci preset (the shipped models), 128 -> cpu preset")
    p.add_argument("--preset", default=None, help="force one model preset for every size")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fast-threads", default=None,
                   help="threads of the fast path: a number, or 'auto' = dap.runtime's "
                        "busy-aware choice (physical cores minus the cores other processes "
                        "keep busy, at least 1); default: --threads, like the plain path")
    p.add_argument("--reps", type=int, default=None, help="interleaved repetitions (default 6)")
    p.add_argument("--parts", nargs="+", default=["denoiser", "train", "predict"],
                   choices=["denoiser", "train", "predict"])
    p.add_argument("--ablate", action="store_true", help="[4]: what each option buys")
    p.add_argument("--compile", action="store_true", help="also a torch.compile path")
    p.add_argument("--quick", action="store_true", help="64 px, batch 2, 1 repetition")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.batch, args.reps = [64], 2, args.reps or 1
    args.reps = args.reps or 6
    busy = runtime.busy_cores()  # before this process adds to the load
    threads = runtime.configure_threads(args.threads)
    if args.fast_threads == "auto":
        args.fast_threads = max(1, min(args.threads, runtime.physical_cores() - busy))
    elif args.fast_threads is not None:
        args.fast_threads = int(args.fast_threads)
    dtype = runtime.autocast_dtype("cpu", "auto")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"speed: fast vs plain path, torch {torch.__version__}, {threads['num_threads']} "
          f"threads, OMP_WAIT_POLICY={threads['omp_wait_policy']} (set before torch loaded: "
          f"{WAIT_POLICY_IN_TIME}), CPU native bf16: "
          f"{runtime.cpu_supports_bf16()} -> fast-path autocast dtype {dtype}; "
          f"load average {load:.1f} on {os.cpu_count()} CPUs", flush=True)
    if dtype is None:
        print("    (no native bf16 on this CPU: the fast path stays float32)")
    if args.fast_threads not in (None, args.threads):
        print(f"    the fast path runs on {args.fast_threads} thread(s), the plain path on "
              f"{args.threads} (--fast-threads; other processes keep {busy} core(s) busy)")
    results: list = []
    for size in args.sizes:
        run_size(size, args, results)
    if hasattr(os, "getloadavg"):
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        from dap.report import provenance

        Path(args.out).write_text(json.dumps({"kind": "speed", "threads": threads,
                                              "dtype": str(dtype), "batch": args.batch,
                                              "reps": args.reps, "results": results,
                                              "made_by": provenance()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
