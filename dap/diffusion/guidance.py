"""Norm guidance (DiffusionAD eqs. 7-8).

Paper: DiffusionAD, Sec. III-C. Taught in ``notebooks/04_norm_guidance``.

The input is perturbed at a small step t_s and a big step t_b, each with its own noise. The
big-step one-step prediction x0_b (which repairs large anomalies but loses detail) guides the
small-step prediction x0_s (which keeps detail but may copy the anomaly):

    n_ts  = sqrt(abar_ts) x0_b + sqrt(1 - abar_ts) eps_theta(x_ts, t_s)        (eq. 7)
    eps_g = eps_theta(x_ts, t_s) - sqrt(1 - abar_ts) w (n_ts - x_ts)
    x0_g  = (x_ts - sqrt(1 - abar_ts) eps_g) / sqrt(abar_ts)                   (eq. 8)

Without clamping this is the convex-looking blend

    x0_g = x0_s + w (1 - abar_ts) (x0_b - x0_s),

so at w = 1, t_s = 200 on the linear schedule x0_g ~ 0.66 x0_s + 0.34 x0_b.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from dap.diffusion.sampling import NoiseModel
from dap.diffusion.schedule import NoiseSchedule, as_timesteps


class NormGuidedOutput(NamedTuple):
    """Everything norm guidance computes; all ``(B, C, H, W)``."""

    x0_g: Tensor      # the norm-guided reconstruction (eq. 8)
    x0_s: Tensor      # one-step prediction from t_s
    x0_b: Tensor      # one-step prediction from t_b
    eps_s: Tensor     # eps_theta(x_ts, t_s)
    eps_b: Tensor     # eps_theta(x_tb, t_b)
    x_ts: Tensor      # the input noised to t_s
    x_tb: Tensor      # the input noised to t_b


def norm_guided(
    model: NoiseModel,
    schedule: NoiseSchedule,
    images: Tensor,
    t_s: int | Tensor = 200,
    t_b: int | Tensor = 400,
    w: float = 1.0,
    noise_s: Tensor | None = None,
    noise_b: Tensor | None = None,
    generator: torch.Generator | None = None,
    clip_sample: bool = False,
    single_pass: bool = True,
) -> NormGuidedOutput:
    """Norm-guided one-step denoising (DiffusionAD eqs. 7-8).

    Parameters
    ----------
    model : callable ``(x_t, t) -> eps``
    schedule : NoiseSchedule
    images : Tensor ``(B, C, H, W)`` in [-1, 1]
        The (possibly anomalous) input x, the image both scales are noised from.
    t_s, t_b : int or Tensor ``(B,)``
        Small and big steps (paper inference: 200 and 400; training: U[0, 300) and U[300, 1000)).
    w : float
        Guidance weight (paper: 1).
    noise_s, noise_b : Tensor, optional
        The forward noise at each scale (drawn from ``generator`` when omitted).
    clip_sample : bool
        Clamp x0_s and x0_b to [-1, 1] before guiding, and x0_g after (the official code clamps).
        The identity in the module docstring holds only without clamping.
    single_pass : bool
        Evaluate both scales in one network call of batch 2B (faster; same result).

    Returns
    -------
    NormGuidedOutput
    """
    b = images.shape[0]
    ts = as_timesteps(t_s, b, images.device)
    tb = as_timesteps(t_b, b, images.device)
    if noise_s is None:
        noise_s = torch.randn(images.shape, generator=generator, device=images.device,
                              dtype=images.dtype)
    if noise_b is None:
        noise_b = torch.randn(images.shape, generator=generator, device=images.device,
                              dtype=images.dtype)
    # eq. 1 at both scales
    x_ts = schedule.add_noise(images, noise_s, ts)
    x_tb = schedule.add_noise(images, noise_b, tb)
    if single_pass:
        eps_s, eps_b = model(torch.cat([x_ts, x_tb]), torch.cat([ts, tb])).split(b)
    else:
        eps_s, eps_b = model(x_ts, ts), model(x_tb, tb)
    # eq. 6 at both scales
    x0_s = schedule.pred_original_sample(x_ts, eps_s, ts, clip_sample)
    x0_b = schedule.pred_original_sample(x_tb, eps_b, tb, clip_sample)
    sa = schedule.coefficient("sqrt_alphas_cumprod", ts, images)
    s1a = schedule.coefficient("sqrt_one_minus_alphas_cumprod", ts, images)
    # eq. 7: n_ts = sqrt(abar_ts) x0_b + sqrt(1 - abar_ts) eps_theta(x_ts)  (predicted noise, not fresh)
    n_ts = sa * x0_b + s1a * eps_s
    # eq. 7: eps_g = eps_theta(x_ts) - sqrt(1 - abar_ts) w (n_ts - x_ts)
    eps_g = eps_s - s1a * w * (n_ts - x_ts)
    # eq. 8: x0_g = (x_ts - sqrt(1 - abar_ts) eps_g) / sqrt(abar_ts)
    x0_g = (x_ts - s1a * eps_g) / sa
    if clip_sample:
        x0_g = x0_g.clamp(-1.0, 1.0)
    return NormGuidedOutput(x0_g, x0_s, x0_b, eps_s, eps_b, x_ts, x_tb)


def conditioned_guidance(
    schedule: NoiseSchedule,
    x_t: Tensor,
    eps: Tensor,
    y: Tensor,
    t: int | Tensor,
    w: float = 2.0,
) -> Tensor:
    """DDAD's conditioned noise estimate: pull eps_theta towards the target image y.

    Paper: Mousakhan, Brox, Tayyub, "Anomaly Detection with Conditioned Denoising Diffusion
    Models" (DDAD), Sec. 3. Taught in ``notebooks/07_conditioned_denoising``; used at every step
    of :func:`dap.methods.ddad.conditioned_reconstruct`.

    The target is noised *with the predicted noise* (as in norm guidance's eq. 7), and the noise
    estimate is corrected by the gap between the noisy target and the current sample:

        y_t     = sqrt(abar_t) y + sqrt(1 - abar_t) eps_theta(x_t, t)
        eps_hat = eps_theta(x_t, t) - sqrt(1 - abar_t) w (y_t - x_t)

    This is :func:`norm_guided`'s form with a different target: there x0_b (the big-step
    repair) pulls the detailed small-step estimate, here the input y pulls the repaired
    estimate. Without clamping, the x0 implied by eps_hat is the blend

        x0_hat = x0_theta + w (1 - abar_t) (y - x0_theta),

    x0_theta = (x_t - sqrt(1 - abar_t) eps_theta) / sqrt(abar_t), so the pull is strong at large
    t (1 - abar_250 ~ 0.48 on the linear schedule) and fades towards t = 0.

    Parameters
    ----------
    schedule : NoiseSchedule
    x_t : Tensor ``(B, C, H, W)``, the current sample
    eps : Tensor ``(B, C, H, W)``, eps_theta(x_t, t)
    y : Tensor ``(B, C, H, W)`` in [-1, 1], the target (the input image at test time)
    t : int or Tensor ``(B,)``
    w : float
        Conditioning weight (DDAD default 2; 0 gives back eps_theta, plain DDIM).

    Returns
    -------
    Tensor ``(B, C, H, W)``: eps_hat.
    """
    sa = schedule.coefficient("sqrt_alphas_cumprod", t, x_t)
    s1a = schedule.coefficient("sqrt_one_minus_alphas_cumprod", t, x_t)
    # y_t = sqrt(abar_t) y + sqrt(1 - abar_t) eps_theta   (predicted noise, not fresh)
    y_t = sa * y + s1a * eps
    # eps_hat = eps_theta - sqrt(1 - abar_t) w (y_t - x_t)
    return eps - s1a * w * (y_t - x_t)
