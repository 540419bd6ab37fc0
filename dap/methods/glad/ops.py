"""GLAD's equations as pure functions: ATP's target, the patch discrepancy, the stop and SAFF.

Paper: Yao et al., "GLAD: Towards Better Reconstruction with Global and Local Adaptive Diffusion
Models for Unsupervised Anomaly Detection" (ECCV 2024): the anomaly-oriented training paradigm
(ATP), the adaptive denoising step (the per-sample stop) and spatial-adaptive feature fusion
(SAFF). Each function states the equation it computes in dap's notation (abar_t: the cumulative
product of the schedule's alphas; DiffusionAD eq. 1 for the forward process, eq. 6 for the
one-step estimate of x0). Taught in ``notebooks/08_adaptive_diffusion``; tested to float64
precision in ``tests/test_glad.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dap.diffusion import NoiseSchedule
from dap.methods.base import gaussian_blur


# --------------------------------------------------------------------------------------------
# ATP: the training target
# --------------------------------------------------------------------------------------------
def atp_blend(anomalous: Tensor, normal: Tensor, timesteps: Tensor, num_train_timesteps: int
              ) -> Tensor:
    """GLAD, ATP: x_blend = alpha S + (1 - alpha) N with alpha = t / T per sample.

    anomalous S, normal N : ``(B, C, H, W)``; timesteps : ``(B,)`` -> ``(B, C, H, W)``. Small t
    blends in only a faint anomaly.
    """
    alpha = (timesteps.to(anomalous.dtype) / num_train_timesteps).reshape(-1, 1, 1, 1)
    # x_blend = alpha * S + (1 - alpha) * N
    return alpha * anomalous + (1.0 - alpha) * normal


def atp_noise_target(schedule: NoiseSchedule, noisy: Tensor, normal: Tensor,
                     timesteps: Tensor) -> Tensor:
    """GLAD, ATP: the regression target eps* = (x_t - sqrt(abar_t) N) / sqrt(1 - abar_t).

    DiffusionAD eq. 6 solved for the noise with x0_hat = N: a perfect predictor's implied x0 is
    the normal image. With x_t = sqrt(abar_t) x_blend + sqrt(1 - abar_t) eps (eq. 1) this is
    eps* = eps + sqrt(abar_t / (1 - abar_t)) alpha (S - N); S = N gives the ordinary eps.
    """
    # eps* = (x_t - sqrt(abar_t) N) / sqrt(1 - abar_t)
    return schedule.noise_from_original(noisy, normal, timesteps)


def flipped_atp_noise_target(schedule: NoiseSchedule, noise: Tensor, blend: Tensor,
                             normal: Tensor, timesteps: Tensor) -> Tensor:
    """The sign-flipped ATP target of the public GLAD code:
    eps_bug = eps - sqrt(abar_t / (1 - abar_t)) (x_blend - N).

    Kept only to show the bug: by DiffusionAD eq. 6 its implied x0 is 2 x_blend - N, not N
    (notebook 08).
    """
    sa = schedule.coefficient("sqrt_alphas_cumprod", timesteps, noise)
    s1a = schedule.coefficient("sqrt_one_minus_alphas_cumprod", timesteps, noise)
    # eps_bug = eps - sqrt(abar_t) / sqrt(1 - abar_t) * (x_blend - N)
    return noise - sa / s1a * (blend - normal)


# --------------------------------------------------------------------------------------------
# The adaptive stop
# --------------------------------------------------------------------------------------------
def patch_discrepancy(query: Tensor, reference: Tensor, chunk: int = 1 << 24) -> Tensor:
    """GLAD, adaptive denoising step: the nearest-neighbour patch distance
    D(p) = 1 - max_q cos(f_query(p), f_reference(q)) (GLAD compares DINO tokens this way).

    query, reference : ``(B, C, h, w)`` features -> ``(B, h, w)`` in [0, 2]. ``chunk`` bounds
    the similarity matrices computed at once (a memory knob; the result does not depend on it).

    The query is the input (or its x0): a defect has no close patch in a repaired reconstruction,
    while the reverse direction would only find what the reconstruction invented.
    """
    b, c, h, w = query.shape
    q = F.normalize(query.flatten(2).float(), dim=1)          # (B, C, N)
    r = F.normalize(reference.flatten(2).float(), dim=1)      # (B, C, M)
    per = max(1, chunk // (q.shape[2] * r.shape[2]))
    # D = 1 - max over reference patches of the cosine similarity
    out = [1.0 - torch.bmm(q[i:i + per].transpose(1, 2), r[i:i + per]).amax(dim=2)
           for i in range(0, b, per)]
    return torch.cat(out).reshape(b, h, w)


def stopping_rule(score: Tensor, threshold: float | Tensor, t: int, min_step: int,
                  last: bool = False) -> Tensor:
    """GLAD, adaptive denoising step, per sample: stop = (score > threshold_t) or
    (t <= min_step) (or the trajectory's last step).

    ``score`` ``(B,)`` -> ``(B,)`` bool. A NaN threshold (uncalibrated) never fires.
    """
    force = t <= min_step or last
    # stop = score > threshold  or  t <= min_step
    return (score > threshold) | torch.full_like(score, force, dtype=torch.bool)


# --------------------------------------------------------------------------------------------
# SAFF
# --------------------------------------------------------------------------------------------
def _upsampled(discrepancy: Tensor, size: int, sigma: float, truncate: float) -> Tensor:
    """D ``(B, h, w)`` -> ``(B, 1, size, size)``: bilinear upsampling, then a Gaussian blur
    (``sigma <= 0``: none)."""
    d = F.interpolate(discrepancy[:, None].float(), size=(size, size), mode="bilinear",
                      align_corners=False)
    return gaussian_blur(d, sigma, truncate=truncate)


def saff_mask(discrepancy: Tensor, low: float | Tensor, high: float | Tensor, size: int,
              sigma: float, truncate: float = 3.0) -> Tensor:
    """GLAD, SAFF's spatial mask (dap's form) ``(B, 1, size, size)`` in [0, 1] from a
    ``(B, h, w)`` discrepancy: m = clip((blur(up(D)) - low) / (high - low), 0, 1).

    0 up to ``low`` (a typical normal patch), 1 from ``high`` (the stop threshold) on. With a NaN
    level (uncalibrated) each map is min-max normalised instead. ``sigma <= 0``: no blur. The
    official mask is :func:`sigmoid_saff_mask`.
    """
    d = _upsampled(discrepancy, size, sigma, truncate)
    lo = torch.as_tensor(low, dtype=d.dtype, device=d.device)
    hi = torch.as_tensor(high, dtype=d.dtype, device=d.device)
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        lo = d.amin(dim=(2, 3), keepdim=True)
        hi = d.amax(dim=(2, 3), keepdim=True)
    # m = clip((D - low) / (high - low), 0, 1)
    return ((d - lo) / (hi - lo).clamp_min(1e-12)).clamp(0.0, 1.0)


def sigmoid_saff_mask(discrepancy: Tensor, size: int, sigma: float = 0.0,
                      truncate: float = 4.0) -> Tensor:
    """GLAD, SAFF's mask as the official code forms it: m = sigmoid(D), ``(B, 1, size, size)``.

    D = 1 - cos lies in [0, 2], so m lies in [0.5, sigmoid(2)]: every pixel takes at least half
    of the reconstruction. The official mask is neither upsampled nor blurred (D's grid is the
    latent grid there); dap upsamples D bilinearly to the image and blurs only if ``sigma > 0``.
    """
    # m = 1 / (1 + exp(-D))
    return torch.sigmoid(_upsampled(discrepancy, size, sigma, truncate))


def saff_blend(reconstruction: Tensor, input_x0: Tensor, mask: Tensor) -> Tensor:
    """GLAD, SAFF: x0 = m x0_r + (1 - m) x0_i (mask 1: the reconstruction, 0: the input's x0)."""
    # x0 = m * x0_r + (1 - m) * x0_i
    return mask * reconstruction + (1.0 - mask) * input_x0


__all__ = ["atp_blend", "atp_noise_target", "flipped_atp_noise_target", "patch_discrepancy",
           "stopping_rule", "saff_mask", "sigmoid_saff_mask", "saff_blend"]
