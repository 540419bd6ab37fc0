"""DiffAD's conditioned latent sampler: DDIM from pure noise, conditioned on the input's latent.

Paper: X. Zhang et al., "Unsupervised Surface Anomaly Detection with Diffusion Probabilistic
Model", ICCV 2023 (DiffAD): reconstruction by sampling from z_T ~ N(0, I) conditioned
on c = E(x); DDIM (Song et al., ICLR 2021, eq. 12) through dap's one
:func:`~dap.diffusion.denoise_loop`. Taught in ``notebooks/09_latent_diffusion``.

The three conditions of the sampler (``DiffADConfig.sample_condition``), at DDIM step t::

    clean           c' = c                                          (the official code)
    noisy_fixed     c' = sqrt(abar_tc) c + sqrt(1 - abar_tc) eps'   t_c ~ U[400, 500), made once
                                                                    (the official alternative)
    noisy_per_step  c' = sqrt(abar_t) c + sqrt(1 - abar_t) eps'     at each step's own t (dap's)
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from dap.config import ConfigError
from dap.diffusion import NoiseSchedule, denoise_loop
from dap.methods.diffad.ops import noisy_condition

#: the range [low, high) of the official noisy_fixed condition's t_c (its test script)
NOISY_FIXED_RANGE: tuple[int, int] = (400, 500)
SAMPLE_CONDITIONS: tuple[str, ...] = ("clean", "noisy_fixed", "noisy_per_step")


@torch.no_grad()
def sample_conditioned(denoiser: Callable[[Tensor, Tensor], Tensor], schedule: NoiseSchedule,
                       condition: Tensor, timesteps: list[int], *, mode: str = "clean",
                       condition_t: int | None = None, generator: torch.Generator | None = None,
                       shared_noise: bool = True, eta: float = 0.0,
                       prediction_type: str = "epsilon") -> Tensor:
    """z_r: DDIM from z_T ~ N(0, I) along ``timesteps`` to z_0, conditioned on ``condition``.

    Parameters
    ----------
    denoiser : callable ``f(concat(z_t, c'), t)`` on ``(B, 2C, h, w)`` and ``(B,)`` timesteps
    schedule : the noise schedule
    condition : ``(B, C, h, w)``, the condition latent c
    timesteps : descending DDIM timesteps (:func:`~dap.methods.diffad.ops.sampling_timesteps`)
    mode : ``clean``, ``noisy_fixed`` or ``noisy_per_step`` (see the module docs)
    condition_t : t_c of ``noisy_fixed``; None draws it from U[400, 500) with ``generator``
    shared_noise : one z_T (and eps', t_c) for every image of the batch, so a result does not
        depend on the batch composition (inference); False draws one per image (training)
    eta, prediction_type : as in :func:`~dap.diffusion.denoise_loop`

    Returns
    -------
    Tensor ``(B, C, h, w)``. Draw order: z_T, then t_c (when drawn) and eps', so z_T is the same
    in every mode.
    """
    if mode not in SAMPLE_CONDITIONS:
        raise ConfigError(f"unknown sample_condition {mode!r}; use one of "
                          f"{list(SAMPLE_CONDITIONS)}")
    device, b = condition.device, condition.shape[0]
    shape = (1, *condition.shape[1:]) if shared_noise else tuple(condition.shape)

    def draw(k: int | None = None) -> Tensor:
        n = torch.randn(shape, generator=generator, device=device)
        return n.expand_as(condition).to(condition.dtype)

    z_T = draw()
    cond_noise, fixed = None, None
    if mode == "noisy_per_step":
        cond_noise = draw()
    elif mode == "noisy_fixed":
        if condition_t is None:
            t_c = torch.randint(*NOISY_FIXED_RANGE, (shape[0],), generator=generator,
                                device=device).expand(b)
        else:
            t_c = torch.full((b,), int(condition_t), dtype=torch.long, device=device)
        # c' = sqrt(abar_tc) c + sqrt(1 - abar_tc) eps', once for the whole trajectory
        fixed = noisy_condition(schedule, condition, draw(), t_c)

    def model(z: Tensor, t: Tensor) -> Tensor:
        # f(concat(z_t, c'), t), c' = c, the one noisy c, or c noised to this step's t
        if fixed is not None:
            cond = fixed
        elif cond_noise is not None:
            cond = noisy_condition(schedule, condition, cond_noise, t)
        else:
            cond = condition
        return denoiser(torch.cat([z, cond], dim=1), t)

    z = denoise_loop(model, schedule, z_T, timesteps, sampler="ddim", eta=eta, noise=draw,
                     prediction_type=prediction_type).sample  # type: ignore[arg-type]
    if eta > 0:
        # the last step (to z_0) adds no noise (sigma = 0) and the loop draws none for it;
        # this sampler always drew one there, kept so the generator's stream is unchanged
        draw()
    return z


__all__ = ["sample_conditioned", "NOISY_FIXED_RANGE", "SAMPLE_CONDITIONS"]
