"""GLAD's global adaptivity: DDIM from ``t_start`` with a per-sample stop, on dap's one loop.

Paper: GLAD (Yao et al., ECCV 2024), the adaptive denoising step and SAFF. Taught in
``notebooks/08_adaptive_diffusion``.

The input x is noised to ``start_t`` (default ``timesteps[0]``) with eps0 (DiffusionAD eq. 1)
and denoised by :func:`dap.diffusion.denoise_loop` (DDIM, eta = 0) along ``timesteps``. Its x0
hook, at every step t, for the samples still deciding:

    x0_r = x0_hat(x_t)                                       the trajectory's estimate (eq. 6)
    x0_i = x0_hat(sqrt(abar_t) x + sqrt(1 - abar_t) eps0)    the input's own, same network eps
    D, score = discrepancy(x0_i, x0_r)                       (:func:`~.ops.patch_discrepancy`)
    stop = score > threshold_t or t <= min_step              (:func:`~.ops.stopping_rule`)
    x0 = fuse(x0_r, x0_i, D) for the stopped samples         (SAFF, :func:`~.ops.saff_blend`)

A stopped sample's x0 is its reconstruction (``after_stop="freeze"``, no further network
evaluations) or it keeps denoising from that x0 to t = 0 (``"continue"``, the official flow).
DDIM steps along the network's raw eps (``use_clipped_model_output=False``), as the official
code does; dap clamps pixel-space x0 estimates to [-1, 1] by default (``clip_sample``), the
official code clamps nothing (its x0 are SD latents).

:func:`leading_timesteps` is the official code's grid (diffusers' "leading" spacing over
[0, t_start), steps_offset 1): its first step lies below ``start_t``, so x0_i and x0_r differ
from the first step on and a stop can be tested there (``test_first_step``).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from dap.diffusion import NoiseSchedule, Step, denoise_loop
from dap.methods.glad.config import AfterStop
from dap.methods.glad.ops import stopping_rule


class AdaptiveOutput(NamedTuple):
    """What :func:`adaptive_denoise` returns."""

    reconstruction: Tensor   # (B, C, H, W), the final reconstruction
    stop_step: Tensor        # (B,) int64, the DDIM timestep at which each sample stopped
    input_x0: Tensor         # (B, C, H, W), x0_i at each sample's stop step
    scores: Tensor           # (B, K) discrepancy score per step (NaN where not computed)
    timesteps: list[int]     # the K DDIM timesteps


#: ``(x0_i, x0_r) -> (D (n, h, w), score (n,))`` for the samples still deciding
Discrepancy = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
#: ``(x0_r, x0_i, D, k, passed) -> x0`` for the samples stopping at step index k (SAFF);
#: ``passed`` ``(n,)`` bool: the score passed the threshold (False: stopped by ``min_step``)
Fuse = Callable[[Tensor, Tensor, Tensor, int, Tensor], Tensor]


def leading_timesteps(t_start: int, num_inference_steps: int, steps_offset: int = 1
                      ) -> list[int]:
    """The official GLAD grid: diffusers' DDIM "leading" spacing with ``num_train_timesteps``
    set to ``t_start`` (the official code overwrites it so), descending.

    step = t_start // K;  timesteps = (K - 1) step, ..., step, 0, each + ``steps_offset``.
    ``t_start = 750``, K = 25: 721, 691, ..., 31, 1 (Stable Diffusion v1's scheduler config
    has steps_offset 1). Checked against ``diffusers.DDIMScheduler.set_timesteps``.
    """
    k = num_inference_steps
    if k < 1 or t_start // k < 1:
        raise ValueError(f"leading spacing needs 1 <= num_inference_steps <= t_start, got "
                         f"{k} steps below {t_start}")
    step = t_start // k
    # t_i = (K - 1 - i) * (t_start // K) + steps_offset
    return [(k - 1 - i) * step + steps_offset for i in range(k)]


@torch.no_grad()
def adaptive_denoise(model: Callable[[Tensor, Tensor], Tensor], schedule: NoiseSchedule,
                     images: Tensor, timesteps: list[int], discrepancy: Discrepancy,
                     thresholds: Tensor | None = None, min_step: int = 0,
                     fuse: Fuse | None = None, after_stop: AfterStop = "freeze",
                     noise: Tensor | None = None, generator: torch.Generator | None = None,
                     clip_sample: bool = False, start_t: int | None = None,
                     test_first_step: bool = False) -> AdaptiveOutput:
    """GLAD's global adaptivity: DDIM from ``timesteps[0]`` with a per-sample stop.

    Parameters
    ----------
    model : ``(x_t, t) -> eps``
    images : ``(B, C, H, W)`` in [-1, 1], the inputs x
    timesteps : descending DDIM timesteps (the step after the last goes to x_0)
    discrepancy : ``(x0_i, x0_r) -> (D (n, h, w), score (n,))`` for the still-deciding samples
    thresholds : ``(K,)`` per-step thresholds; None or NaN = stop only at ``min_step``
    fuse : ``(x0_r, x0_i, D, k, passed) -> x0`` at the stop (SAFF); None keeps x0_r
    after_stop : ``freeze`` (the stop's x0 is the result) or ``continue`` (DDIM to t = 0)
    noise : eps0 ``(B, C, H, W)``; drawn from ``generator`` when omitted
    start_t : the step the input is noised to (default ``timesteps[0]``; the official grid
        starts below it, :func:`leading_timesteps`)
    test_first_step : test the stop at the first step too (skipped by default: with
        ``start_t = timesteps[0]`` x0_i = x0_r there by construction)

    Only the samples still running go through the network (a boolean mask, no Python loop over
    samples). Every sample stops by the last step. Returns :class:`AdaptiveOutput`.
    """
    if after_stop not in ("freeze", "continue"):
        raise ValueError(f"after_stop must be 'freeze' or 'continue', got {after_stop!r}")
    b, K = images.shape[0], len(timesteps)
    if noise is None:
        noise = torch.randn(images.shape, generator=generator, device=images.device,
                            dtype=images.dtype)
    input_x0 = torch.empty_like(images)
    scores = torch.full((b, K), float("nan"), device=images.device)

    def score_stop_fuse(step: Step) -> tuple[Tensor, Tensor]:
        idx, ts, x0 = step.index, step.timesteps, step.x0
        assert x0 is not None
        # x0_i: the input's own prediction: x noised with eps0 to t, the same eps removed
        x0_in = schedule.pred_original_sample(schedule.add_noise(images[idx], noise[idx], ts),
                                              step.eps, ts, clip_sample)
        check = step.deciding
        stop = torch.zeros_like(check)
        if not check.any():
            return x0, stop
        d_map, score = discrepancy(x0_in[check], x0[check])
        scores[idx[check], step.k] = score.float()
        # with start_t = timesteps[0], x0_i = x0_r at the first step (same x_t, same eps)
        skip = thresholds is None or (step.k == 0 and not test_first_step)
        thr = float("nan") if skip else thresholds[step.k]
        hit = stopping_rule(score, thr, step.t, min_step, last=step.k == K - 1)
        if hit.any():
            pos = check.nonzero().squeeze(1)[hit]                # positions within idx
            passed = (score > thr)[hit]                          # False: stopped by min_step
            x0_stop = x0[pos] if fuse is None else \
                fuse(x0[pos], x0_in[pos], d_map[hit], step.k, passed)
            x0 = x0.clone()
            x0[pos] = x0_stop.to(x0.dtype)
            input_x0[idx[pos]] = x0_in[pos]
            stop[pos] = True
        return x0, stop

    x_t = schedule.add_noise(images, noise, timesteps[0] if start_t is None else start_t)
    out = denoise_loop(model, schedule, x_t, list(timesteps), sampler="ddim", eta=0.0,
                       clip_sample=clip_sample, use_clipped_model_output=False,
                       x0_hook=score_stop_fuse, after_stop=after_stop)
    return AdaptiveOutput(out.sample, out.stop_step, input_x0, scores, list(timesteps))


__all__ = ["AdaptiveOutput", "Discrepancy", "Fuse", "leading_timesteps", "adaptive_denoise"]
