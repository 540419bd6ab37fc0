"""DDAD's equations as pure functions: the conditioned trajectory, the map, the adaptation loss.

Paper: Mousakhan, Brox, Tayyub, "Anomaly Detection with Conditioned Denoising Diffusion Models"
(DDAD). Taught in ``notebooks/07_conditioned_denoising``.

    Sec. 3.2  eps_hat = eps - sqrt(1 - abar_t) w (y_t - x_t)   (:func:`conditioned_reconstruct`
              on the grid of :func:`ddad_timesteps`; the guidance itself is
              :func:`dap.diffusion.conditioned_guidance`)
    Sec. 3.3  map = blur_sigma(f + v s p),  score = max of its centre   (:func:`pixel_distance`,
              :func:`per_image_scale`, :func:`combine_map`, :func:`crop_score`; f is
              :func:`dap.features.feature_distance`)
    Sec. 3.4  L_DA = sum_l d(A_l(x0), A_l(y)) + lambda d(A_l(y), F_l(y))
                     + lambda d(A_l(x0), F_l(x0))   (:func:`adaptation_loss`)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dap.config import ConfigError
from dap.diffusion import (Denoised, NoiseSchedule, conditioned_guidance, ddim_timesteps,
                           denoise_loop)
from dap.diffusion.sampling import NoiseModel, Step
from dap.features import feature_distance
from dap.methods.base import gaussian_blur
from dap.methods.ddad.config import Distance, Grid


# --------------------------------------------------------------------------------------------
# Conditioned denoising (DDAD Sec. 3.2)
# --------------------------------------------------------------------------------------------
def ddad_timesteps(t_start: int, num_steps: int, grid: Grid = "official") -> list[int]:
    """The descending steps at which the conditioned trajectory evaluates the network.

    The input is noised to ``t_start`` = t' in both grids; with skip = t' / k (k = ``num_steps``):

    * ``"official"`` (the official code's ``range(0, t', skip)``, reversed): t' - skip, ...,
      skip, 0 — 225, 200, ..., 0 for t' = 250, k = 10. The first evaluation is told t' - skip
      for a sample noised to t'; the last step goes from t = 0 to x_0.
    * ``"dap"`` (:func:`dap.diffusion.ddim_timesteps`): t', ..., skip — 250, 225, ..., 25;
      each sample is evaluated at its own noise level, the last step goes from skip to x_0.

    A skip that is not an integer is rounded per step (the official config has integer skips).
    """
    if grid == "dap":
        return ddim_timesteps(t_start, num_steps)
    if grid != "official":
        raise ConfigError(f"unknown DDAD grid {grid!r}; choose 'official' or 'dap'")
    if not 1 <= num_steps <= t_start:
        raise ConfigError(f"the official grid needs 1 <= num_steps <= t_start, got {num_steps} "
                          f"steps from {t_start}")
    # t_i = t' - (i + 1) t' / k,  i = 0 .. k-1  (ends at 0)
    return [int(round(t_start - (i + 1) * t_start / num_steps)) for i in range(num_steps)]


def draw_noise(shape: torch.Size, like: Tensor, generator: torch.Generator | None,
               shared: bool) -> Tensor:
    """Standard normal noise of ``shape``; with ``shared`` one draw ``(1, ...)`` for the batch
    (expanded, so every image of the batch gets the same noise: "common random numbers")."""
    draw = (1, *shape[1:]) if shared else shape
    z = torch.randn(draw, generator=generator, device=like.device, dtype=like.dtype)
    return z.expand(shape) if shared else z


def conditioned_reconstruct(
    model: NoiseModel,
    schedule: NoiseSchedule,
    x: Tensor,
    y: Tensor | None = None,
    t_start: int = 250,
    num_inference_steps: int = 10,
    w: float = 2.0,
    eta: float = 1.0,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    shared_noise: bool = False,
    clip_sample: bool = False,
    grid: Grid = "official",
) -> Denoised:
    """DDAD's conditioned DDIM trajectory: x noised to t', denoised while pulled towards y.

    Paper: DDAD, Sec. 3.2. For each step t -> t_prev of :func:`ddad_timesteps`
    ``(t_start, num_inference_steps, grid)`` (official: 225, 200, ..., 0, then x_0)::

        eps     = eps_theta(x_t, t)
        eps_hat = eps - sqrt(1 - abar_t) w (y_t - x_t),  y_t = sqrt(abar_t) y + sqrt(1 - abar_t) eps
        x0_t    = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)
        x_prev  = sqrt(abar_prev) x0_t + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z

    (DDIM eq. 12 with eps_hat; sigma from ``eta``, 0 at the last step to x_0.) The loop is
    :func:`dap.diffusion.denoise_loop` with :func:`dap.diffusion.conditioned_guidance` as its
    eps hook.

    Parameters
    ----------
    model : callable ``(x_t, t) -> eps``
    schedule : NoiseSchedule
    x : Tensor ``(B, C, H, W)`` in [-1, 1], the image to reconstruct
    y : Tensor, optional, the target (default: ``x``, as at test time)
    t_start, num_inference_steps : t' and the number of DDIM steps (DDAD: 250 and 10)
    w : conditioning weight (DDAD: 2; 0 is plain DDIM)
    eta : DDIM stochasticity (the official code: 1; 0 is deterministic)
    noise : Tensor, optional, the forward noise (drawn from ``generator`` when omitted)
    shared_noise : bool
        Draw every noise tensor once, ``(1, C, H, W)``, for the whole batch: an image's
        reconstruction then does not depend on its batch (DDAD in dap uses this).
    clip_sample : clamp every x0 estimate to [-1, 1]
    grid : ``"official"`` or ``"dap"`` (:func:`ddad_timesteps`)

    Returns
    -------
    Denoised
        ``sample`` (B, C, H, W), the starting ``noisy`` x_t', ``num_model_evals``.
    """
    y = x if y is None else y
    b = x.shape[0]
    if noise is None:
        noise = draw_noise(x.shape, x, generator, shared_noise)
    # x_t' = sqrt(abar_t') x + sqrt(1 - abar_t') eps   (eq. 1)
    x_t = schedule.add_noise(x, noise.expand_as(x), t_start)

    def step_noise(k: int) -> Tensor:
        # z of a DDIM step with eta > 0 that does not go to x_0, in the order of the steps
        return draw_noise(x.shape, x, generator, shared_noise)

    def guide(step: Step) -> Tensor:
        # eps_hat = eps - sqrt(1 - abar_t) w (y_t - x_t)
        target = y if step.index.numel() == b else y[step.index]
        return conditioned_guidance(schedule, step.x_t, step.eps, target, step.timesteps, w)

    out = denoise_loop(model, schedule, x_t, ddad_timesteps(t_start, num_inference_steps, grid),
                       sampler="ddim", eta=eta, noise=step_noise, clip_sample=clip_sample,
                       eps_hook=guide)
    return Denoised(out.sample, x_t, out.num_model_evals)


# --------------------------------------------------------------------------------------------
# The anomaly map (DDAD Sec. 3.3)
# --------------------------------------------------------------------------------------------
def pixel_distance(reconstruction: Tensor, images: Tensor) -> Tensor:
    """p = mean_c |x0 - x| (DDAD Sec. 3.3): ``(B, 3, H, W)`` x2 -> ``(B, H, W)`` float32."""
    return (reconstruction.float() - images.float()).abs().mean(1)


def per_image_scale(feature: Tensor, pixel: Tensor) -> Tensor:
    """s = max f / max p of each image ``(B,)`` (the official code takes the batch's maxima,
    which makes an image's score depend on its batch). feature, pixel : ``(B, H, W)``."""
    return feature.amax(dim=(1, 2)) / pixel.amax(dim=(1, 2)).clamp_min(1e-8)


def combine_map(feature: Tensor, pixel: Tensor, scale: Tensor, v: float, sigma: float) -> Tensor:
    """map = blur_sigma(f + v s p) (DDAD Sec. 3.3).

    feature, pixel : ``(B, H, W)``; scale : ``(B,)`` s per image; v : the pixel weight; sigma :
    the Gaussian blur (truncated at 4 sigma). The image score is the map's max.
    """
    # map = blur(f + v * s * p)
    return gaussian_blur(feature + v * scale[:, None, None] * pixel, sigma)


def crop_score(anomaly_map: Tensor, fraction: float) -> Tensor:
    """The image score: the max of the map's central ``fraction`` of each side ``(B,)``.

    The official code centre-crops its 256 px maps to 224 px before taking the max
    (torchvision's ``CenterCrop``: side ``round(H * fraction)``, offset ``round((H - side) / 2)``);
    ``fraction = 1`` is the max of the whole map. anomaly_map : ``(B, H, W)``.
    """
    h, w = anomaly_map.shape[-2:]
    th, tw = max(1, int(round(h * fraction))), max(1, int(round(w * fraction)))
    top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
    return anomaly_map[..., top:top + th, left:left + tw].amax(dim=(-2, -1))


# --------------------------------------------------------------------------------------------
# Domain adaptation (DDAD Sec. 3.4)
# --------------------------------------------------------------------------------------------
def global_cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    """d(a, b) = mean over the batch of 1 - cos(flatten(a_i), flatten(b_i)): each image's whole
    feature map ``(C, H, W)`` as one vector (the official adaptation loss). a, b : ``(B, ...)``."""
    return (1.0 - F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1, eps=1e-8)).mean()


def adaptation_loss(adapted_rec: list[Tensor], adapted_target: list[Tensor],
                    frozen_target: list[Tensor], frozen_rec: list[Tensor] | None,
                    da_lambda: float, distance: Distance = "global",
                    size: tuple[int, int] | None = None, pool: int = 3,
                    align_corners: bool = True) -> Tensor:
    """DDAD's domain-adaptation loss (Sec. 3.4), term by term as in the official code::

        L = sum_l  d(A_l(x0), A_l(y)) + lambda d(A_l(y), F_l(y)) + lambda d(A_l(x0), F_l(x0))

    A is the adapted copy, F the frozen extractor, x0 the reconstructions, y their targets;
    the last term is left out when ``frozen_rec`` is None. ``distance="global"`` (official):
    d = :func:`global_cosine_distance`; ``"map"``: d(a, b) = mean of
    :func:`dap.features.feature_distance` of level l at ``size`` (``pool`` x ``pool`` patches,
    per-position cosine, upsampled).

    adapted_rec, adapted_target, frozen_target, frozen_rec : per-level lists of
    ``(B, C_l, H_l, W_l)`` (the frozen ones are not differentiated). Returns a scalar.
    """
    if distance == "global":
        def d(a: Tensor, b: Tensor) -> Tensor:
            return global_cosine_distance(a, b)
    elif distance == "map":
        if size is None:
            raise ConfigError("adaptation_loss(distance='map') needs the image size")

        def d(a: Tensor, b: Tensor) -> Tensor:
            return feature_distance([a], [b], size, pool, align_corners).mean()
    else:
        raise ConfigError(f"unknown adaptation distance {distance!r}; choose 'global' or 'map'")
    loss = adapted_rec[0].new_zeros(())
    for level, (a_rec, a_tgt, f_tgt) in enumerate(zip(adapted_rec, adapted_target, frozen_target)):
        # d(A(x0), A(y)) + lambda d(A(y), F(y))
        loss = loss + d(a_rec, a_tgt) + da_lambda * d(a_tgt, f_tgt.detach())
        if frozen_rec is not None:
            # + lambda d(A(x0), F(x0))
            loss = loss + da_lambda * d(a_rec, frozen_rec[level].detach())
    return loss


def as_model_images(images: Tensor, device: torch.device | str) -> Tensor:
    """uint8 ``[0, 255]`` or float ``[-1, 1]`` images -> float32 [-1, 1] on ``device``."""
    x = images.to(device)
    return x.float() / 127.5 - 1.0 if x.dtype == torch.uint8 else x.float()


__all__ = ["ddad_timesteps", "draw_noise", "conditioned_reconstruct", "pixel_distance",
           "per_image_scale", "combine_map", "crop_score", "global_cosine_distance",
           "adaptation_loss", "as_model_images"]
