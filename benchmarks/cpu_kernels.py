"""The CPU kernel choices inside the denoiser's fast path, measured side by side in one run.

For every GroupNorm input shape of a preset's denoiser (batch 16: the two noise scales of a
batch of 8), in bf16 and channels_last as the fast path runs them, this prints the time of each
way :class:`dap.models.denoiser.GroupNorm32` can normalise it, and which one
:func:`dap.models.denoiser.cpu_bf16_norm_route` picks:

* inference (no gradients): ``native`` (PyTorch's mixed-precision kernel on the channels_last
  tensor), ``float32`` (cast up, float32 kernel, cast down), ``nchw``
  (:class:`dap.models.denoiser.NCHWGroupNorm`: the kernel on an NCHW copy);
* training (forward + backward): ``float32`` and ``nchw``.

Then the time-embedding add of :class:`dap.models.denoiser.ResBlock`: ``h + bias`` against
:func:`dap.models.denoiser.add_per_channel`, forward, for each feature-map shape.

The last lines sum each column over the network (each shape times its count), so the total of
the picked route can be compared with always taking one kernel.

    python benchmarks/cpu_kernels.py                  # ci and cpu presets, ~2 min, 1 thread
    python benchmarks/cpu_kernels.py --presets ci --quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dap import runtime  # noqa: E402  (imports no torch)

runtime.set_wait_policy_quiet()  # before torch is imported

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dap.models import DenoiserUNet, denoiser_config  # noqa: E402
from dap.models.denoiser import (GroupNorm32, NCHWGroupNorm, ResBlock,  # noqa: E402
                                 add_per_channel, cpu_bf16_norm_route)

CL = torch.channels_last


def median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def norm_shapes(preset: str, batch: int) -> tuple[Counter, Counter]:
    """(GroupNorm input shape, groups) -> count, and ResBlock feature-map shape -> count."""
    net = DenoiserUNet(denoiser_config(preset))
    size = net.config.image_size
    norms: Counter = Counter()
    adds: Counter = Counter()
    hooks = [m.register_forward_hook(
        lambda mod, inp, out: norms.update([(tuple(inp[0].shape), mod.num_groups)]))
        for m in net.modules() if isinstance(m, GroupNorm32)]
    hooks += [m.out_norm.register_forward_hook(
        lambda mod, inp, out: adds.update([tuple(inp[0].shape)]))
        for m in net.modules() if isinstance(m, ResBlock)]
    with torch.no_grad():
        net(torch.zeros(batch, 3, size, size), torch.zeros(batch, dtype=torch.long))
    for h in hooks:
        h.remove()
    return norms, adds


def norm_routes(x: torch.Tensor, groups: int, reps: int) -> dict[str, float]:
    c = x.shape[1]
    w, b = torch.rand(c) + 0.5, torch.randn(c)

    def native(x, w, b):
        return F.group_norm(x, groups, w, b)

    def float32(x, w, b):
        return F.group_norm(x.float(), groups, w, b).to(x.dtype)

    def nchw(x, w, b):
        return NCHWGroupNorm.apply(x, w, b, groups, 1e-5)

    out = {}
    with torch.inference_mode():
        for name, fn in (("native", native), ("float32", float32), ("nchw", nchw)):
            out[f"infer {name}"] = median_ms(lambda fn=fn: fn(x, w, b), reps)
    xg, wg, bg = x.clone().requires_grad_(), w.requires_grad_(), b.requires_grad_()
    grad = torch.randn_like(x)
    for name, fn in (("float32", float32), ("nchw", nchw)):
        out[f"train {name}"] = median_ms(
            lambda fn=fn: torch.autograd.grad(fn(xg, wg, bg), (xg, wg, bg), grad), reps)
    return out


def run(preset: str, batch: int, reps: int) -> None:
    norms, adds = norm_shapes(preset, batch)
    print(f"--- preset {preset!r}: {sum(norms.values())} GroupNorms, batch {batch}, bf16 "
          f"channels_last, median of {reps} (ms)", flush=True)
    cols = ["infer native", "infer float32", "infer nchw", "train float32", "train nchw"]
    print(f"{'shape':>22} {'n':>3} " + " ".join(f"{c:>13}" for c in cols)
          + "   picked (infer / train)")
    totals: Counter = Counter()
    for (shape, groups), count in sorted(norms.items(), key=lambda kv: kv[0][0][1:]):
        x = torch.randn(shape, dtype=torch.bfloat16).contiguous(memory_format=CL)
        t = norm_routes(x, groups, reps)
        picked = (cpu_bf16_norm_route(x, groups, grad=False),
                  cpu_bf16_norm_route(x, groups, grad=True))
        for c in cols:
            totals[c] += t[c] * count
        totals["infer picked"] += t[f"infer {picked[0]}"] * count
        totals["train picked"] += t[f"train {picked[1]}"] * count
        print(f"{str(shape):>22} {count:>3} " + " ".join(f"{t[c]:13.2f}" for c in cols)
              + f"   {picked[0]} / {picked[1]}", flush=True)
    print(f"{'network total':>26} " + " ".join(f"{totals[c]:13.1f}" for c in cols))
    for what in ("infer", "train"):
        always = "native" if what == "infer" else "float32"
        print(f"    {what}: picked routes {totals[what + ' picked']:.1f} ms vs always {always} "
              f"{totals[what + ' ' + always]:.1f} ms -> ratio "
              f"{totals[what + ' ' + always] / totals[what + ' picked']:.2f}x", flush=True)
    print("time-embedding add, forward (ms): h + bias | add_per_channel", flush=True)
    plain_total = routed_total = 0.0
    for shape, count in sorted(adds.items(), key=lambda kv: kv[0][1:]):
        h = torch.randn(shape, dtype=torch.bfloat16).contiguous(memory_format=CL)
        bias = torch.randn(shape[0], shape[1], 1, 1, dtype=torch.bfloat16)
        with torch.inference_mode():
            plain = median_ms(lambda: h + bias, reps)
            routed = median_ms(lambda: add_per_channel(h, bias), reps)
        plain_total += plain * count
        routed_total += routed * count
        print(f"{str(shape):>22} {count:>3} {plain:13.2f} {routed:13.2f}", flush=True)
    print(f"    network total {plain_total:.1f} ms vs {routed_total:.1f} ms -> ratio "
          f"{plain_total / routed_total:.2f}x", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["ci", "cpu"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="ci preset, batch 2, 2 repetitions")
    args = p.parse_args(argv)
    if args.quick:
        args.presets, args.batch, args.reps = ["ci"], 2, 2
    threads = runtime.configure_threads(args.threads)
    print(f"cpu_kernels: torch {torch.__version__}, {threads['num_threads']} thread(s), "
          f"OMP_WAIT_POLICY={threads['omp_wait_policy']}, native bf16: "
          f"{runtime.cpu_supports_bf16()}", flush=True)
    for preset in args.presets:
        run(preset, args.batch, args.reps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
