"""DDAD's equations as pure functions: the conditioned trajectory, the map, the adaptation loss.

Paper: Mousakhan, Brox, Tayyub, "Anomaly Detection with Conditioned Denoising Diffusion Models"
(DDAD). Taught in ``notebooks/07_conditioned_denoising``.

    Sec. 3.2  eps_hat = eps - sqrt(1 - abar_t) w (y_t - x_t)   (:func:`conditioned_reconstruct`;
              the guidance itself is :func:`dap.diffusion.conditioned_guidance`)
    Sec. 3.3  map = blur_sigma(f + v s p),  score = max(map)   (:func:`pixel_distance`,
              :func:`per_image_scale`, :func:`combine_map`; f is
              :func:`dap.features.feature_distance`)
    Sec. 3.4  L_DA = mean f(A(x0), A(y)) + lambda mean f(A(y), F(y))   (:func:`adaptation_loss`)
"""

from __future__ import annotations

import torch
from torch import Tensor

from dap.diffusion import (Denoised, NoiseSchedule, conditioned_guidance, ddim_timesteps,
                           denoise_loop)
from dap.diffusion.sampling import NoiseModel, Step
from dap.features import feature_distance
from dap.methods.base import gaussian_blur


# --------------------------------------------------------------------------------------------
# Conditioned denoising (DDAD Sec. 3.2)
# --------------------------------------------------------------------------------------------
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
) -> Denoised:
    """DDAD's conditioned DDIM trajectory: x noised to t', denoised while pulled towards y.

    Paper: DDAD, Sec. 3.2. For each step t -> t_prev of :func:`ddim_timesteps`
    ``(t_start, num_inference_steps)``::

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

    out = denoise_loop(model, schedule, x_t, ddim_timesteps(t_start, num_inference_steps),
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


# --------------------------------------------------------------------------------------------
# Domain adaptation (DDAD Sec. 3.4)
# --------------------------------------------------------------------------------------------
def adaptation_loss(adapted_rec: list[Tensor], adapted_target: list[Tensor],
                    frozen_target: list[Tensor], size: tuple[int, int], pool: int,
                    da_lambda: float) -> Tensor:
    """L = mean f(A(x0), A(y)) + lambda mean f(A(y), F(y)) (DDAD Sec. 3.4).

    adapted_rec, adapted_target : the adapted copy A's pyramids of the reconstructions x0 and of
    the targets y; frozen_target : the frozen extractor F's pyramid of y (not differentiated);
    f is :func:`dap.features.feature_distance` at ``size`` with ``pool x pool`` patches.
    """
    # L = mean f(A(x0), A(y)) + lambda mean f(A(y), F(y))
    return feature_distance(adapted_rec, adapted_target, size, pool).mean() + \
        da_lambda * feature_distance(adapted_target, [f.detach() for f in frozen_target], size,
                                     pool).mean()


def as_model_images(images: Tensor, device: torch.device | str) -> Tensor:
    """uint8 ``[0, 255]`` or float ``[-1, 1]`` images -> float32 [-1, 1] on ``device``."""
    x = images.to(device)
    return x.float() / 127.5 - 1.0 if x.dtype == torch.uint8 else x.float()


__all__ = ["draw_noise", "conditioned_reconstruct", "pixel_distance", "per_image_scale",
           "combine_map", "adaptation_loss", "as_model_images"]
