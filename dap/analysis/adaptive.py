"""GLAD's adaptive reconstruction over a stack of test images, for notebook 08.

* :func:`run_adaptive` -- :meth:`GLAD.reconstruct <dap.methods.glad.GLAD.reconstruct>` and the
  anomaly map in batches: reconstructions, stop steps, per-step discrepancy scores, maps and
  image scores, all on the CPU. Taught in ``notebooks/08_adaptive_diffusion``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from dap.methods.base import top_k_mean

if TYPE_CHECKING:  # pragma: no cover
    from dap.methods.glad import GLAD


@torch.no_grad()
def run_adaptive(method: "GLAD", images: Tensor, batch_size: int = 16) -> dict[str, Tensor]:
    """GLAD's reconstruction and anomaly map over ``images`` ``(N, 3, H, W)``, in batches.

    Returns ``reconstruction`` and ``input_x0`` ``(N, 3, H, W)``, ``stop_step`` ``(N,)``,
    ``scores`` ``(N, K)`` (discrepancy per step), ``anomaly_map`` ``(N, H, W)``, ``score``
    ``(N,)``; all on the CPU. The method's current config decides the mode (use
    ``with method.using(saff=False): ...`` for another).
    """
    device = next(method.parameters()).device
    parts: dict[str, list[Tensor]] = {}
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device)
        rec = method.reconstruct(x)
        amap = method.anomaly_map(x, rec.sample)
        got = {"reconstruction": rec.sample, "input_x0": rec.extras["input_x0"],
               "stop_step": rec.extras["stop_step"], "scores": rec.extras["scores"],
               "anomaly_map": amap, "score": top_k_mean(amap, method.config.top_k)}
        for k, v in got.items():
            parts.setdefault(k, []).append(v.cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


__all__ = ["run_adaptive"]
