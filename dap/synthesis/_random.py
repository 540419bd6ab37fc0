"""Seeded random draws that work with a generator on any device.

Every random number in :mod:`dap.synthesis` goes through these helpers, so a batch is a pure
function of the ``torch.Generator`` state: regenerate it by re-seeding the generator. The
numbers are drawn on the generator's own device (the images' device is the natural choice; a
CPU generator with CUDA images also works and then gives the same draws as on the CPU) and moved
to ``device``. Only small parameter tensors are drawn (never per-pixel noise), so the move is
cheap.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _source_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return generator.device if generator is not None else torch.device(device)


def rand(shape: tuple[int, ...], generator: torch.Generator | None,
         device: torch.device | str) -> Tensor:
    """``U[0, 1)`` float32 of ``shape`` drawn with ``generator``, returned on ``device``."""
    device = torch.device(device)
    out = torch.rand(shape, generator=generator, device=_source_device(generator, device))
    return out if out.device == device else out.to(device)


def uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator | None,
            device: torch.device | str) -> Tensor:
    """``U[low, high)`` float32 of ``shape``."""
    return low + (high - low) * rand(shape, generator, device)


def randint(low: int, high: int, shape: tuple[int, ...], generator: torch.Generator | None,
            device: torch.device | str) -> Tensor:
    """Integers in ``[low, high)`` (int64) of ``shape``."""
    device = torch.device(device)
    out = torch.randint(low, high, shape, generator=generator,
                        device=_source_device(generator, device))
    return out if out.device == device else out.to(device)


def permutations(n: int, k: int, generator: torch.Generator | None,
                 device: torch.device | str) -> Tensor:
    """``n`` independent random permutations of ``range(k)``, shape ``(n, k)`` int64."""
    return rand((n, k), generator, device).argsort(dim=1)
