"""Reconstruction by denoising: one step (eq. 6), DDPM iterative (eq. 3) or DDIM — one loop.

Paper: DiffusionAD, Sec. III-B (Observation I: a one-step reconstruction from t <= 400 is close
to the iterative one, at a fraction of the cost). Taught in
``notebooks/02_one_step_vs_iterative``.

Every iterative reconstruction in dap runs through :func:`denoise_loop`: DiffusionAD's DDPM /
DDIM ablations (:func:`reconstruct`), DDAD's conditioned trajectory (an *eps hook*), DiffAD's
latent sampler (a wrapped model and ``prediction_type="sample"``) and GLAD's per-sample stop
(an *x0 hook* that may replace x0 and stop samples). One step of the loop, for the samples still
running::

    eps   = eps_theta(x_t, t)                       (or from an x0 prediction, eq. 1 solved)
    eps   = eps_hook(step)                          (DDAD: conditioned guidance)
    x0    = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)      (eq. 6, optionally clamped)
    x0, stop = x0_hook(step)                        (GLAD: SAFF fusion and the stop rule)
    x_t'  = DDIM eq. 12 (or the DDPM posterior, eq. 3) from x0 and eps

A *noise model* is any callable ``model(x_t, timesteps) -> output`` with ``x_t`` of shape
``(B, C, H, W)`` and ``timesteps`` a ``(B,)`` int64 tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, NamedTuple

import torch
from torch import Tensor

from dap.diffusion.schedule import NoiseSchedule

NoiseModel = Callable[[Tensor, Tensor], Tensor]
Sampler = Literal["one_step", "ddpm", "ddim"]
SAMPLERS: tuple[str, ...] = ("one_step", "ddpm", "ddim")


class Denoised(NamedTuple):
    """A reconstruction by :func:`reconstruct` and its cost."""

    sample: Tensor          # (B, C, H, W), the reconstructed x_0
    noisy: Tensor           # (B, C, H, W), x_t the reconstruction started from
    num_model_evals: int    # network evaluations per image


@dataclass
class Step:
    """What a hook of :func:`denoise_loop` sees at one step (``n`` = samples running).

    k, t, prev_t : the step's index in ``timesteps``, its timestep and the next one (-1: x_0)
    index : ``(n,)`` rows of the batch that run this step
    deciding : ``(n,)`` bool, rows that have not stopped yet (all True unless
        ``after_stop="continue"`` keeps stopped rows running)
    timesteps : ``(n,)`` int64, t for every running row
    x_t, eps, x0 : ``(n, C, H, W)`` the current sample, noise estimate and x0 estimate
    """

    k: int
    t: int
    prev_t: int
    index: Tensor
    deciding: Tensor
    timesteps: Tensor
    x_t: Tensor
    eps: Tensor
    x0: Tensor | None = None


class LoopOutput(NamedTuple):
    """What :func:`denoise_loop` returns."""

    sample: Tensor        # (B, C, H, W): x_0, or each stopped row's x0 at its stop ("freeze")
    stop_step: Tensor     # (B,) int64, the timestep at which each row stopped (-1: never)
    num_model_evals: int  # network evaluations of the rows that ran longest


EpsHook = Callable[[Step], Tensor]
X0Hook = Callable[[Step], "tuple[Tensor, Tensor | None]"]
NoiseFn = Callable[[int], Tensor]


def ddim_timesteps(t: int, num_inference_steps: int) -> list[int]:
    """The descending DDIM timesteps from ``t``: ``k`` evenly spaced values t, ..., > 0.

    The step after the last one goes to x_0 (abar = 1). Example: t = 250, k = 10 gives
    250, 225, ..., 25.
    """
    if num_inference_steps < 1:
        raise ValueError("num_inference_steps must be >= 1")
    if num_inference_steps >= t + 1:
        return list(range(t, -1, -1))
    k = num_inference_steps
    return [int(round(t - i * t / k)) for i in range(k)]


@torch.no_grad()
def denoise_loop(
    model: NoiseModel,
    schedule: NoiseSchedule,
    x_t: Tensor,
    timesteps: list[int],
    *,
    sampler: Literal["ddpm", "ddim"] = "ddim",
    eta: float = 0.0,
    noise: NoiseFn | None = None,
    prediction_type: Literal["epsilon", "sample"] = "epsilon",
    clip_sample: bool = False,
    use_clipped_model_output: bool = True,
    eps_hook: EpsHook | None = None,
    x0_hook: X0Hook | None = None,
    after_stop: Literal["freeze", "continue"] = "freeze",
) -> LoopOutput:
    """Denoise ``x_t`` along the descending ``timesteps`` (the step after the last goes to x_0).

    Parameters
    ----------
    model : callable ``(x_t, t) -> output``, run only on the rows still running
    schedule : NoiseSchedule
    x_t : Tensor ``(B, C, H, W)``, the sample at ``timesteps[0]``
    timesteps : descending ints; DDPM takes t, t-1, ..., 0
    sampler : ``ddim`` (DDIM eq. 12) or ``ddpm`` (DDPM eq. 3 / the posterior of eq. 7)
    eta : DDIM stochasticity (0: deterministic; ignored by ``ddpm``)
    noise : ``noise(k) -> z`` of shape ``(B, C, H, W)``, called at every DDPM step and at every
        DDIM step with ``eta > 0`` that does not go to x_0; ``None`` draws from the global
        generator
    prediction_type : what ``model`` predicts (diffusers' names): the noise eps, or x_0
        (converted to eps by eq. 1 solved for eps)
    clip_sample : clamp every x0 estimate to [-1, 1]
    use_clipped_model_output : DDIM steps along the eps implied by the clamped x0 (True) or
        along the network's own eps (False, diffusers' default)
    eps_hook : ``hook(step) -> eps`` — corrects the noise estimate before x0 is formed
    x0_hook : ``hook(step) -> (x0, stop)`` — may replace x0 and stop rows (``stop`` ``(n,)``
        bool or None); a stopped row keeps its x0 as its result (``after_stop="freeze"``, no
        further network evaluations) or keeps denoising from it (``"continue"``)

    Returns
    -------
    LoopOutput
    """
    if sampler not in ("ddpm", "ddim"):
        raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
    if after_stop not in ("freeze", "continue"):
        raise ValueError(f"after_stop must be 'freeze' or 'continue', got {after_stop!r}")
    b, device = x_t.shape[0], x_t.device
    x = x_t.clone()
    out = torch.empty_like(x) if x0_hook is not None else None
    deciding = torch.ones(b, dtype=torch.bool, device=device)
    stop_step = torch.full((b,), -1, dtype=torch.long, device=device)
    evals = 0
    K = len(timesteps)
    for k, t in enumerate(timesteps):
        prev = timesteps[k + 1] if k + 1 < K else -1
        running = deciding if after_stop == "freeze" else torch.ones_like(deciding)
        all_rows = bool(running.all())
        idx = torch.arange(b, device=device) if all_rows else running.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        evals += 1
        draw = sampler == "ddpm" or (eta > 0 and prev >= 0)
        z = noise(k) if draw and noise is not None else None
        if draw and z is None:
            z = torch.randn(x.shape, device=device, dtype=x.dtype)
        xs = x if all_rows else x[idx]
        ts = torch.full((idx.numel(),), t, dtype=torch.long, device=device)
        output = model(xs, ts).to(xs.dtype)
        # eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t) when the model predicts x0
        eps = output if prediction_type == "epsilon" else \
            schedule.noise_from_original(xs, output, ts)
        step = Step(k, t, prev, idx, deciding[idx], ts, xs, eps)
        if eps_hook is not None:
            step.eps = eps = eps_hook(step)
        # x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)   (DiffusionAD eq. 6)
        x0 = schedule.pred_original_sample(xs, eps, ts, clip_sample=clip_sample)
        if clip_sample and use_clipped_model_output:
            # the noise direction consistent with the clamped x0_hat
            eps = ((xs - schedule.coefficient("alphas_cumprod", ts, xs).sqrt() * x0)
                   / schedule.coefficient("sqrt_one_minus_alphas_cumprod", ts, xs))
        if x0_hook is not None:
            step.x0 = x0
            x0, stop = x0_hook(step)
            if stop is not None and bool(stop.any()):
                rows = idx[stop]
                stop_step[rows], deciding[rows] = t, False
                out[rows] = x0[stop].to(out.dtype)
        zs = None if z is None else (z if all_rows else z[idx])
        if sampler == "ddpm":
            new = schedule.ddpm_update(x0, ts, xs, noise=zs)
        else:
            new = schedule.ddim_update(x0, eps, ts, prev, eta=eta if zs is not None else 0.0,
                                       noise=zs)
        if all_rows:
            x = new
        else:
            x[idx] = new
    if out is None or after_stop == "continue":
        return LoopOutput(x, stop_step, evals)
    # rows that never stopped ran to x_0
    never = stop_step < 0
    out[never] = x[never]
    return LoopOutput(out, stop_step, evals)


@torch.no_grad()
def reconstruct(
    model: NoiseModel,
    schedule: NoiseSchedule,
    x0: Tensor,
    t: int,
    sampler: Sampler = "one_step",
    num_inference_steps: int = 10,
    eta: float = 0.0,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    clip_sample: bool = False,
) -> Denoised:
    """Noise ``x0`` to step ``t`` (eq. 1) and denoise it back to an estimate of x_0.

    Parameters
    ----------
    model : callable ``(x_t, t) -> eps``
    schedule : NoiseSchedule
    x0 : Tensor ``(B, C, H, W)`` in [-1, 1]
    t : int
        The step the input is noised to (paper: 200 or 400).
    sampler : {"one_step", "ddpm", "ddim"}
        ``one_step``: eq. 6, one network evaluation. ``ddpm``: eq. 3 from t down to 0,
        t + 1 evaluations. ``ddim``: ``num_inference_steps`` DDIM steps (eta parameter).
    noise : Tensor, optional
        The forward-process noise; drawn from ``generator`` when omitted.
    clip_sample : bool
        Clamp every x0 estimate to [-1, 1].

    Returns
    -------
    Denoised
        ``sample`` (B, C, H, W), the starting ``noisy`` x_t and ``num_model_evals``.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    b = x0.shape[0]
    x_t = schedule.add_noise(x0, noise, t)
    if sampler == "one_step":
        ts = torch.full((b,), int(t), dtype=torch.long, device=x0.device)
        eps = model(x_t, ts)
        return Denoised(schedule.pred_original_sample(x_t, eps, ts, clip_sample), x_t, 1)

    def draw(k: int) -> Tensor:
        return torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)

    steps = list(range(t, -1, -1)) if sampler == "ddpm" else ddim_timesteps(t, num_inference_steps)
    out = denoise_loop(model, schedule, x_t, steps, sampler=sampler, eta=eta, noise=draw,
                       clip_sample=clip_sample)
    return Denoised(out.sample, x_t, out.num_model_evals)


__all__ = ["NoiseModel", "Sampler", "SAMPLERS", "Denoised", "Step", "LoopOutput",
           "ddim_timesteps", "denoise_loop", "reconstruct"]
