"""Optimiser settings: the fused / multi-tensor Adam kernels and the threads of its step."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@functools.lru_cache(maxsize=None)
def _fused_adam_works(device_type: str) -> bool:
    import torch

    try:
        p = torch.nn.Parameter(torch.zeros(2, device=device_type))
        p.grad = torch.ones(2, device=device_type)
        torch.optim.AdamW([p], lr=1e-3, fused=True).step()
        return True
    except Exception:  # noqa: BLE001
        return False


def optimizer_kwargs(device: "torch.device | str", fused: bool | None = None) -> dict[str, Any]:
    """Keyword arguments that make ``torch.optim.Adam`` / ``AdamW`` fast on ``device``.

    ``{"fused": True}`` where PyTorch has a fused Adam kernel for the device (CUDA, and the CPU
    since torch 2.4): one kernel for all parameters instead of ~8 small ops per tensor, which
    on the small ``ci`` model is a sizeable part of the step. Otherwise ``{"foreach": True}``
    (multi-tensor ops). ``fused=False`` forces foreach. Same update up to float rounding
    (float32 reassociation), so a run is still exactly reproducible with the same setting.
    """
    import torch

    dev = torch.device(device).type
    if fused is not False and _fused_adam_works(dev):
        return {"fused": True}
    return {"foreach": True}


def optimizer_threads(params: Any, small: int = 1 << 16) -> int | None:
    """Threads for ``optimizer.step()``: 1 when the parameters are many small tensors, else None.

    A fused or per-tensor Adam step splits each tensor above PyTorch's grain size (32768
    elements) over the threads, and for tensors of a few ten thousand elements waking the
    other thread costs more than the work: the ``ci`` model's step (270 tensors, 3 k elements
    on average) took 2.7 ms fused on one thread and 19 ms on two (2 vCPUs). Returns 1 when the
    mean tensor has fewer than ``small`` elements (``ci``, ``cpu`` presets), None (keep all
    threads) otherwise (the ``paper`` preset: ~230 k). Use as
    ``with runtime.num_threads(runtime.optimizer_threads(params) or torch.get_num_threads()):
    optimizer.step()``.
    """
    sizes = [p.numel() for p in params]
    if not sizes:
        return None
    return 1 if sum(sizes) / len(sizes) < small else None



def limit_step_threads(optimizer: "torch.optim.Optimizer", threads: int | None = None) -> int | None:
    """Run every ``optimizer.step()`` on ``threads`` threads (default: :func:`optimizer_threads`).

    Installed as step pre/post hooks, so the training loop's ``optimizer.step()`` (or a
    ``GradScaler.step``) is unchanged. Returns the thread count used, or None when nothing was
    installed (large tensors: the step keeps all threads). For CPU training; on a GPU the step's
    work is on the device.
    """
    import torch

    if threads is None:
        threads = optimizer_threads([p for g in optimizer.param_groups for p in g["params"]])
    if threads is None:
        return None
    saved: list[int] = []

    def before(opt: Any, args: Any, kwargs: Any) -> None:
        saved.append(torch.get_num_threads())
        if threads < saved[-1]:
            torch.set_num_threads(threads)

    def after(opt: Any, args: Any, kwargs: Any) -> None:
        if saved:
            torch.set_num_threads(saved.pop())

    optimizer.register_step_pre_hook(before)
    optimizer.register_step_post_hook(after)
    return threads


__all__ = ["optimizer_kwargs", "optimizer_threads", "limit_step_threads"]
