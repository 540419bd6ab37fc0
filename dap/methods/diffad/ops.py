"""DiffAD's equations, as pure functions.

Paper: X. Zhang, N. Li, J. Li, T. Dai, Y. Jiang, S.-T. Xia, "Unsupervised Surface Anomaly
Detection with Diffusion Probabilistic Model", ICCV 2023 (DiffAD); the image score is DRAEM's
(Zavrtanik et al., ICCV 2021)::

    c_noisy = sqrt(abar_t) c + sqrt(1 - abar_t) eps'      the noisy condition embedding
    z_inter = lambda c + (1 - lambda) z_r                 the interpolated latent
    score   = max avg_pool_k(M),  k = 21 at 256 px        the pooled-max image score

and the two DDIM grids (dap's, and Latent Diffusion's uniform grid of the official code).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from dap.config import ConfigError
from dap.diffusion import NoiseSchedule, ddim_timesteps


def noisy_condition(schedule: NoiseSchedule, condition: Tensor, noise: Tensor,
                    timesteps: int | Tensor) -> Tensor:
    """The noisy condition embedding of DiffAD: the condition latent noised to step t.

    c_noisy = sqrt(abar_t) c + sqrt(1 - abar_t) eps'

    the forward process q(c_t | c) applied to the condition, with a noise eps' independent of the
    one that made z_t (with the same noise and t, c_noisy would equal z_t for a normal image); t
    is the denoiser's own step or an independent draw (``DiffADConfig.condition_timestep``). At
    t = 0 it is c up to sqrt(beta_0) = 1 % noise; at t = T - 1 it is nearly N(0, I).

    condition, noise : ``(B, C, h, w)``; timesteps : int or ``(B,)``.
    """
    # c_noisy = sqrt(abar_t) c + sqrt(1 - abar_t) eps'
    return schedule.add_noise(condition, noise, timesteps)


def interpolate_latents(condition: Tensor, reconstruction: Tensor, lam: float = 0.5) -> Tensor:
    """DiffAD's interpolated latent z_inter = lambda c + (1 - lambda) z_r.

    ``lam = 1`` gives the input's latent c, ``lam = 0`` the reconstruction's z_r; decoded, it is an
    image between the input and its anomaly-free reconstruction (the "interpolated channels").
    """
    # z_inter = lambda c + (1 - lambda) z_r
    return lam * condition + (1.0 - lam) * reconstruction


def score_pool_size(image_size: int, at_256: int = 21) -> int:
    """The average-pooling window of the image score: 21 at 256 px (DRAEM), scaled, odd.

    ``round(21 * image_size / 256)``, made odd so the window is centred: 64 px -> 5, 128 -> 11.
    """
    k = max(1, round(at_256 * image_size / 256))
    return k if k % 2 else k + 1


def pooled_max_score(anomaly_map: Tensor, pool: int) -> Tensor:
    """Image score: max of the map average-pooled with a ``pool x pool`` window (DRAEM / DiffAD).

    anomaly_map : ``(B, H, W)`` -> ``(B,)``. Zero padding counted in the average at the border
    (``F.avg_pool2d``'s default, as DRAEM's code).
    """
    pooled = F.avg_pool2d(anomaly_map[:, None].float(), pool, stride=1, padding=pool // 2)
    return pooled.flatten(1).max(dim=1).values


def sampling_timesteps(num_train_timesteps: int, num_steps: int, grid: str = "dap") -> list[int]:
    """The descending DDIM timesteps of DiffAD's sampler (the step after the last goes to z_0).

    ``dap``: ``ddim_timesteps(T - 1, S)``, S steps evenly from T - 1 (999, 899, ..., 100 for
    T = 1000, S = 10). ``ldm``: Latent Diffusion's uniform grid, which the official code samples
    on (``make_ddim_timesteps``), t_k = k * (T // S) + 1 for k = S - 1, ..., 0 (901, 801, ...,
    1). The official sampler's last step lands on abar_0 = 1 - beta_0 rather than on z_0; dap's
    loop always ends on z_0.
    """
    T, S = num_train_timesteps, num_steps
    if grid == "dap":
        return ddim_timesteps(T - 1, S)
    if grid != "ldm":
        raise ConfigError(f"unknown DDIM grid {grid!r}; use 'dap' or 'ldm'")
    if S < 1 or (S - 1) * (T // S) + 1 >= T:
        raise ConfigError(f"the 'ldm' DDIM grid needs 1 <= S and (S - 1) * (T // S) + 1 < T; "
                          f"got S = {S}, T = {T}")
    # t_k = k * floor(T / S) + 1   (Latent Diffusion's "uniform" discretisation)
    return [k * (T // S) + 1 for k in range(S - 1, -1, -1)]


__all__ = ["noisy_condition", "interpolate_latents", "score_pool_size", "pooled_max_score",
           "sampling_timesteps"]
