"""GLAD's adaptive reconstruction over a stack of test images, for notebook 08.

* :func:`run_adaptive` -- :meth:`GLAD.reconstruct <dap.methods.glad.GLAD.reconstruct>` and the
  anomaly map in batches: reconstructions, stop steps, per-step discrepancy scores, maps and
  image scores, all on the CPU.
* :func:`glad_with_denoiser_of` -- a GLAD model around the denoiser of a shipped zoo model
  (DiffusionAD's), of matching config: GLAD's inference on a better denoiser than the course
  budget trains.
* :func:`stop_step_histogram` -- how many normal and defective images stop at each step.

Taught in ``notebooks/08_adaptive_diffusion``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from dap.methods import build_method
from dap.methods.base import PRESETS, top_k_mean
from dap.models.denoiser import denoiser_config

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

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


def glad_with_denoiser_of(model_name: str, device: str | torch.device = "cpu",
                          **overrides: Any) -> "GLAD":
    """A GLAD model (eval mode, not calibrated) whose denoiser is that of zoo model
    ``model_name``: the GLAD preset of the donor's image size with the donor's denoiser and
    diffusion configs, the donor's denoiser weights, and ``overrides``.

    The donor was trained without ATP; everything GLAD adds at inference (the stop, SAFF, the
    map) runs unchanged on it. Calibrate it on a validation split before predicting.
    """
    from dap import zoo

    donor = zoo.load(model_name)
    den = donor.config.denoiser
    preset = next((p for p in PRESETS if denoiser_config(p).image_size == den.image_size),
                  "paper")
    method = build_method("glad", preset, denoiser=den, diffusion=donor.config.diffusion,
                          **overrides)
    method.denoiser.load_state_dict(donor.denoiser.state_dict())
    return method.to(device).eval()


def stop_step_histogram(stop_steps: Tensor, labels: Tensor, steps: list[int],
                        ax: "Axes | None" = None) -> "Figure":
    """Bars of how many normal (label 0) and defective (label 1) images stopped at each of
    ``steps`` (descending DDIM timesteps), side by side; the x axis runs as DDIM does, from
    large t to small."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    width = 0.4 * (abs(steps[0] - steps[1]) if len(steps) > 1 else 1)
    for off, lab, name in ((-width / 2, 0, "normal"), (width / 2, 1, "defective")):
        mask = labels == lab
        counts = [int((stop_steps[mask] == s).sum()) for s in steps]
        ax.bar(np.array(steps) + off, counts, width=width, label=f"{name} ({int(mask.sum())})")
    ax.set_xlabel("stop step t (DDIM runs from right to left)")
    ax.set_ylabel("images")
    if not ax.xaxis_inverted():
        ax.invert_xaxis()
    ax.legend()
    return ax.figure


__all__ = ["run_adaptive", "glad_with_denoiser_of", "stop_step_histogram"]
