"""GLAD's calibration on the validation split: the checks and the per-step thresholds.

Paper: GLAD (Yao et al., ECCV 2024) tunes its stop thresholds per class on the *test* set; dap
sets them from the normal images of the *validation* split instead (:meth:`GLAD.calibrate`, which
runs the networks; the functions here are its checks and its arithmetic). Taught in
``notebooks/08_adaptive_diffusion``, section 3.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


def normal_validation_images(val_images: Tensor, val_labels: Tensor | None = None) -> Tensor:
    """The normal images (label 0) of a validation stack ``(N, 3, H, W)``; all of them when
    ``val_labels`` is None. Refuses anything but a tensor (never a dataset or a split name),
    mismatched labels, and fewer than 2 normal images."""
    if not isinstance(val_images, Tensor) or val_images.ndim != 4:
        raise TypeError("calibrate takes a (N, 3, H, W) tensor of validation images, got "
                        f"{type(val_images).__name__}; never pass the test split")
    normal = val_images
    if val_labels is not None:
        labels = torch.as_tensor(val_labels).reshape(-1)
        if len(labels) != len(val_images):
            raise ValueError(f"{len(labels)} labels for {len(val_images)} images")
        normal = val_images[(labels == 0).to(val_images.device)]
    if len(normal) < 2:
        raise ValueError(f"calibration needs at least 2 normal validation images, got "
                         f"{len(normal)}")
    return normal


def stop_thresholds(scores: Tensor, timesteps: list[int], min_step: int, quantile: float,
                    first: int = 1) -> tuple[float, Tensor, Tensor]:
    """Per-step thresholds from the discrepancy scores of normal images run without early stops.

    scores : ``(N, K)`` score s_k of each image at each step (NaN after its stop). Returns
    (lambda, seen, thresholds): ``seen`` ``(K,)`` the steps every image reached, and for those

        rho_k = median_n s_nk,   threshold_k = lambda rho_k,

    lambda the ``quantile`` of max_k s_nk / rho_k over the steps where a stop is tested (from
    index ``first``, 1 unless the first step is tested too; before ``min_step``): that fraction
    of the images never stops early. lambda = 1 when no step is tested.
    """
    seen = torch.isfinite(scores).all(dim=0)                          # steps up to the stop
    rho = scores[:, seen].median(dim=0).values.clamp_min(1e-12)       # (K_seen,)
    tested = [k for k in range(first, int(seen.sum())) if timesteps[k] > min_step]
    lam = 1.0
    if tested:
        ratio = (scores[:, tested] / rho[tested]).amax(dim=1)         # (N,)
        lam = float(torch.quantile(ratio, quantile))
    # threshold_k = lambda * rho_k
    return lam, seen, lam * rho


def _rounded(values: list[float]) -> list[float | None]:
    return [None if not math.isfinite(v) else round(v, 6) for v in values]


def calibration_summary(normal_images: int, quantile: float, lam: float, timesteps: list[int],
                        thresholds: Tensor, patch_means: Tensor, map_scale: Tensor,
                        stops: list[int]) -> dict[str, Any]:
    """The JSON-able record of one calibration (None for a step never reached)."""
    return {"normal_images": normal_images, "quantile": quantile, "lambda": round(lam, 6),
            "timesteps": timesteps,
            "thresholds": _rounded(thresholds.tolist()),
            "patch_means": _rounded(patch_means.tolist()),
            "map_scale": [round(v, 6) for v in map_scale.tolist()],
            "normal_stop_steps": stops}


__all__ = ["normal_validation_images", "stop_thresholds", "calibration_summary"]
