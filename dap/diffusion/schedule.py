"""The DDPM noise schedule, the forward process and the one-step reconstruction.

Paper: Zhang et al., "DiffusionAD: Norm-guided One-step Denoising Diffusion for Anomaly
Detection" (DiffusionAD), Sec. III-A, eqs. 1-6; Ho et al., "Denoising Diffusion Probabilistic
Models" (DDPM), eqs. 4, 7, 11. Taught in ``notebooks/01_forward_process`` (schedule, eq. 1) and
``notebooks/02_one_step_vs_iterative`` (eqs. 3 and 6).

Conventions (the same as diffusers, so learners can cross-reference):

* timesteps are integers ``t`` in ``[0, T-1]`` and ``alphas_cumprod[t] = prod_{s<=t} alpha_s``;
* images are ``(B, C, H, W)`` float tensors in ``[-1, 1]``;
* every schedule is computed in float64 and stored in float32.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from dap.config import ConfigError, DiffusionConfig


def as_timesteps(timesteps: int | Tensor, batch: int, device: torch.device) -> Tensor:
    """Timesteps as a ``(B,)`` int64 tensor on ``device`` (an int is broadcast)."""
    if isinstance(timesteps, Tensor):
        t = timesteps.to(device=device, dtype=torch.long).reshape(-1)
        if t.numel() == 1 and batch != 1:
            t = t.expand(batch)
        if t.numel() != batch:
            raise ValueError(f"got {t.numel()} timesteps for a batch of {batch}")
        return t
    return torch.full((batch,), int(timesteps), dtype=torch.long, device=device)


def linear_betas(num_train_timesteps: int, beta_start: float, beta_end: float) -> Tensor:
    """DDPM's linear schedule, float64: beta_t evenly spaced from beta_start to beta_end."""
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)


def scaled_linear_betas(num_train_timesteps: int, beta_start: float, beta_end: float) -> Tensor:
    """Latent Diffusion's "linear" schedule (diffusers: ``scaled_linear``), float64: sqrt(beta_t)
    evenly spaced from sqrt(beta_start) to sqrt(beta_end)::

        beta_t = (sqrt(beta_start) + t / (T - 1) (sqrt(beta_end) - sqrt(beta_start)))^2

    Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models" (CVPR 2022),
    ``make_beta_schedule("linear", ...)`` of its code; DiffAD's official configs/mvtec.yaml uses
    0.0015 -> 0.02. (LDM's own name ``sqrt_linear`` means the opposite: beta evenly spaced.)
    """
    return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps,
                          dtype=torch.float64) ** 2


def cosine_betas(num_train_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal's cosine schedule (Improved DDPM, eq. 17), float64.

    abar(t) = f(t) / f(0) with f(t) = cos(((t / T) + s) / (1 + s) * pi / 2)^2, and
    beta_t = 1 - abar(t + 1) / abar(t), clipped at ``max_beta``.
    """
    steps = torch.arange(num_train_timesteps + 1, dtype=torch.float64)
    f = torch.cos(((steps / num_train_timesteps) + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    # beta_t = 1 - abar_{t+1} / abar_t
    betas = 1.0 - abar[1:] / abar[:-1]
    return betas.clamp(max=max_beta)


class StepOutput(NamedTuple):
    """What a reverse step returns (diffusers' names)."""

    prev_sample: Tensor
    pred_original_sample: Tensor


class NoiseSchedule:
    """A DDPM noise schedule with the forward process, one-step x0 and the reverse steps.

    Parameters
    ----------
    num_train_timesteps : int
        T, the number of diffusion steps (paper: 1000).
    beta_schedule : {"linear", "cosine"}
        ``linear``: beta from ``beta_start`` to ``beta_end`` (paper: 1e-4 -> 0.02).
    beta_start, beta_end : float
        Ends of the linear schedule.

    Attributes
    ----------
    betas, alphas, alphas_cumprod, alphas_cumprod_prev : Tensor, ``(T,)`` float32
        beta_t, alpha_t = 1 - beta_t, abar_t = prod_{s<=t} alpha_s and abar_{t-1} (1 at t = 0).
    posterior_variance : Tensor, ``(T,)`` float32
        beta~_t = (1 - abar_{t-1}) / (1 - abar_t) * beta_t (DDPM eq. 7).
    sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod : Tensor, ``(T,)`` float32
        sqrt(abar_t) and sqrt(1 - abar_t), taken in float64 before the cast.

    Notes
    -----
    All tables are computed in float64 and cast to float32 once; :meth:`to` moves them.
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
    ) -> None:
        self.config = DiffusionConfig(num_train_timesteps, beta_schedule, beta_start, beta_end)  # type: ignore[arg-type]
        if beta_schedule == "linear":
            betas64 = linear_betas(num_train_timesteps, beta_start, beta_end)
        elif beta_schedule == "scaled_linear":
            betas64 = scaled_linear_betas(num_train_timesteps, beta_start, beta_end)
        elif beta_schedule == "cosine":
            betas64 = cosine_betas(num_train_timesteps)
        else:
            raise ConfigError(f"unknown beta_schedule {beta_schedule!r}; use 'linear', "
                              "'scaled_linear' or 'cosine'")
        self.num_train_timesteps = num_train_timesteps
        # alpha_t = 1 - beta_t
        alphas64 = 1.0 - betas64
        # abar_t = prod_{s <= t} alpha_s   (DDPM eq. 4 / DiffusionAD eq. 1)
        abar64 = torch.cumprod(alphas64, dim=0)
        abar_prev64 = torch.cat([torch.ones(1, dtype=torch.float64), abar64[:-1]])
        # beta~_t = (1 - abar_{t-1}) / (1 - abar_t) * beta_t   (DDPM eq. 7)
        post_var64 = (1.0 - abar_prev64) / (1.0 - abar64) * betas64
        self._tables64 = {
            "betas": betas64,
            "alphas": alphas64,
            "alphas_cumprod": abar64,
            "alphas_cumprod_prev": abar_prev64,
            "posterior_variance": post_var64,
            # square roots taken in float64: 1 - abar_t in float32 loses digits near t = 0
            "sqrt_alphas_cumprod": abar64.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - abar64).sqrt(),
            # posterior mean coefficients of x0 and x_t (DDPM eq. 7), exact 1 and 0 at t = 0
            "posterior_mean_coef1": abar_prev64.sqrt() * betas64 / (1.0 - abar64),
            "posterior_mean_coef2": alphas64.sqrt() * (1.0 - abar_prev64) / (1.0 - abar64),
        }
        self.device = torch.device("cpu")
        self._cast()

    @classmethod
    def from_config(cls, config: DiffusionConfig) -> "NoiseSchedule":
        return cls(config.num_train_timesteps, config.beta_schedule, config.beta_start,
                   config.beta_end)

    def _cast(self) -> None:
        for name, table in self._tables64.items():
            setattr(self, name, table.to(device=self.device, dtype=torch.float32))

    def to(self, device: str | torch.device) -> "NoiseSchedule":
        """Move the float32 tables to ``device`` (in place; returns self)."""
        self.device = torch.device(device)
        self._cast()
        return self

    def __repr__(self) -> str:
        c = self.config
        return (f"NoiseSchedule(num_train_timesteps={c.num_train_timesteps}, "
                f"beta_schedule={c.beta_schedule!r}, beta_start={c.beta_start}, "
                f"beta_end={c.beta_end})")

    # ----------------------------------------------------------------------------------------
    #: the per-step tables :meth:`coefficient` reads (diffusers' names)
    TABLES: tuple[str, ...] = ("betas", "alphas", "alphas_cumprod", "alphas_cumprod_prev",
                               "posterior_variance", "sqrt_alphas_cumprod",
                               "sqrt_one_minus_alphas_cumprod", "posterior_mean_coef1",
                               "posterior_mean_coef2")

    def coefficient(self, name: str, timesteps: int | Tensor, like: Tensor) -> Tensor:
        """The table ``name`` at ``timesteps``, shaped to broadcast over ``like``.

        ``schedule.coefficient("sqrt_alphas_cumprod", t, x)`` is sqrt(abar_t) as a
        ``(B, 1, 1, 1)`` tensor of ``x``'s dtype and device, for a ``(B, C, H, W)`` ``x``;
        ``name`` is one of :attr:`TABLES`.
        """
        if name not in self.TABLES:
            raise ValueError(f"unknown schedule table {name!r}; tables: {list(self.TABLES)}")
        return self._at(getattr(self, name), timesteps, like)

    def _at(self, table: Tensor, timesteps: int | Tensor, like: Tensor) -> Tensor:
        """table[t] reshaped to broadcast over ``like`` (B, 1, 1, ...)."""
        t = as_timesteps(timesteps, like.shape[0], like.device)
        if int(t.min()) < 0 or int(t.max()) >= self.num_train_timesteps:
            raise ValueError(
                f"timesteps must lie in [0, {self.num_train_timesteps - 1}], "
                f"got min {int(t.min())}, max {int(t.max())}"
            )
        out = table.to(like.device)[t].to(like.dtype)
        return out.reshape(-1, *([1] * (like.ndim - 1)))

    def snr(self, timesteps: Tensor | None = None) -> Tensor:
        """Signal-to-noise ratio abar_t / (1 - abar_t) (all t when ``timesteps`` is None)."""
        abar = self.alphas_cumprod if timesteps is None else self.alphas_cumprod[timesteps]
        return abar / (1.0 - abar)

    def matching_timestep(self, t: int, variance_ratio: float) -> int:
        """The timestep whose SNR, for a signal ``variance_ratio`` times as strong, equals the
        SNR at ``t`` — e.g. ``matching_timestep(200, 4.0)``: the t in [-1, 1] units that is as
        noisy as t = 200 is for [0, 1] images (whose variance is a quarter).

        Signal-to-noise of x_t = sqrt(abar) x0 + sqrt(1 - abar) eps with Var(x0) = v:
        SNR_v(t) = v abar_t / (1 - abar_t); returns argmin_t' |log SNR_{rv}(t') - log SNR_v(t)|
        (SNR falls monotonically with t).
        """
        if not 0 <= t < self.num_train_timesteps or variance_ratio <= 0:
            raise ValueError(f"need 0 <= t < {self.num_train_timesteps} and variance_ratio > 0, "
                             f"got t={t}, variance_ratio={variance_ratio}")
        log_snr = torch.log(self.snr().double())
        target = log_snr[t] - math.log(variance_ratio)
        return int(torch.argmin((log_snr - target).abs()))

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: int | Tensor) -> Tensor:
        """Sample q(x_t | x_0) with the given noise (DiffusionAD eq. 1, DDPM eq. 4).

        x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps

        Parameters
        ----------
        original_samples : Tensor, ``(B, C, H, W)`` in [-1, 1]
        noise : Tensor, same shape, standard normal
        timesteps : int or Tensor ``(B,)``
        """
        sa = self._at(self.sqrt_alphas_cumprod, timesteps, original_samples)
        s1a = self._at(self.sqrt_one_minus_alphas_cumprod, timesteps, original_samples)
        # x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
        return sa * original_samples + s1a * noise

    def pred_original_sample(self, sample: Tensor, model_output: Tensor,
                             timesteps: int | Tensor, clip_sample: bool = False) -> Tensor:
        """One-step reconstruction from a noise prediction (DiffusionAD eq. 6).

        x0_hat = (x_t - sqrt(1 - abar_t) eps_theta(x_t, t)) / sqrt(abar_t)

        With an oracle that returns the true noise this recovers x_0 exactly.
        ``clip_sample`` clamps the result to [-1, 1] (the official code does).
        """
        sa = self._at(self.sqrt_alphas_cumprod, timesteps, sample)
        s1a = self._at(self.sqrt_one_minus_alphas_cumprod, timesteps, sample)
        # x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
        x0 = (sample - s1a * model_output) / sa
        return x0.clamp(-1.0, 1.0) if clip_sample else x0

    def noise_from_original(self, sample: Tensor, original_sample: Tensor,
                            timesteps: int | Tensor) -> Tensor:
        """The noise that maps ``original_sample`` to ``sample`` at t (eq. 1 solved for eps).

        eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t)
        """
        sa = self._at(self.sqrt_alphas_cumprod, timesteps, sample)
        s1a = self._at(self.sqrt_one_minus_alphas_cumprod, timesteps, sample)
        return (sample - sa * original_sample) / s1a

    def ddpm_step(self, model_output: Tensor, timestep: int | Tensor, sample: Tensor,
                  noise: Tensor | None = None, generator: torch.Generator | None = None,
                  clip_sample: bool = False) -> StepOutput:
        """One ancestral DDPM step x_t -> x_{t-1} (DiffusionAD eq. 3, DDPM eq. 11).

        x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps_theta) / sqrt(alpha_t) + sigma_t z,
        sigma_t^2 = beta~_t (the posterior variance); no noise is added at t = 0.

        Computed in the equivalent posterior-mean form
        mu = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x0_hat + sqrt(alpha_t)(1 - abar_{t-1})/(1 - abar_t) x_t
        (DDPM eq. 7), which equals eq. 3 exactly when ``clip_sample`` is False.

        Returns
        -------
        StepOutput
            ``prev_sample`` x_{t-1} and ``pred_original_sample`` x0_hat.
        """
        t = as_timesteps(timestep, sample.shape[0], sample.device)
        x0 = self.pred_original_sample(sample, model_output, t, clip_sample=clip_sample)
        return StepOutput(self.ddpm_update(x0, t, sample, noise, generator), x0)

    def ddpm_update(self, pred_original_sample: Tensor, timestep: int | Tensor, sample: Tensor,
                    noise: Tensor | None = None, generator: torch.Generator | None = None
                    ) -> Tensor:
        """x_{t-1} from x_t and an x0 estimate: the posterior mean plus sigma_t z (DDPM eq. 7).

        The second half of :meth:`ddpm_step`, for loops that correct x0 before stepping.
        """
        t = as_timesteps(timestep, sample.shape[0], sample.device)
        x0 = pred_original_sample
        # mu = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t
        mean = (self._at(self.posterior_mean_coef1, t, sample) * x0
                + self._at(self.posterior_mean_coef2, t, sample) * sample)
        var = self._at(self.posterior_variance, t, sample)
        if noise is None:
            noise = torch.randn(sample.shape, generator=generator, device=sample.device,
                                dtype=sample.dtype)
        nonzero = (t > 0).to(sample.dtype).reshape(-1, *([1] * (sample.ndim - 1)))
        # x_{t-1} = mu + sigma_t z  (sigma_t = 0 at t = 0)
        return mean + nonzero * var.sqrt() * noise

    def ddim_step(self, model_output: Tensor, timestep: int | Tensor,
                  prev_timestep: int | Tensor, sample: Tensor, eta: float = 0.0,
                  noise: Tensor | None = None, generator: torch.Generator | None = None,
                  clip_sample: bool = False) -> StepOutput:
        """One DDIM step x_t -> x_{t'} with t' < t (Song et al., DDIM eq. 12).

        x_{t'} = sqrt(abar_{t'}) x0_hat + sqrt(1 - abar_{t'} - sigma^2) eps_theta + sigma z,
        sigma = eta sqrt((1 - abar_{t'}) / (1 - abar_t)) sqrt(1 - abar_t / abar_{t'}).
        ``prev_timestep`` < 0 means abar_{t'} = 1 (the final step to x_0).
        eta = 0 is deterministic DDIM; eta = 1 matches DDPM's variance.
        """
        t = as_timesteps(timestep, sample.shape[0], sample.device)
        x0 = self.pred_original_sample(sample, model_output, t, clip_sample=clip_sample)
        # the noise direction consistent with the (possibly clipped) x0_hat
        # eps = (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t)
        eps = ((sample - self._at(self.alphas_cumprod, t, sample).sqrt() * x0)
               / self._at(self.sqrt_one_minus_alphas_cumprod, t, sample)) if clip_sample \
            else model_output
        return StepOutput(self.ddim_update(x0, eps, t, prev_timestep, eta, noise, generator), x0)

    def ddim_update(self, pred_original_sample: Tensor, pred_epsilon: Tensor,
                    timestep: int | Tensor, prev_timestep: int | Tensor, eta: float = 0.0,
                    noise: Tensor | None = None, generator: torch.Generator | None = None
                    ) -> Tensor:
        """x_{t'} from an x0 estimate and a noise direction (DDIM eq. 12, the second half of
        :meth:`ddim_step`), for loops that correct x0 or eps before stepping.

        x_{t'} = sqrt(abar_{t'}) x0 + sqrt(1 - abar_{t'} - sigma^2) eps + sigma z;
        ``prev_timestep`` < 0 means abar_{t'} = 1.
        """
        x0, eps = pred_original_sample, pred_epsilon
        t = as_timesteps(timestep, x0.shape[0], x0.device)
        tp = as_timesteps(prev_timestep, x0.shape[0], x0.device)
        abar = self._at(self.alphas_cumprod, t, x0)
        # a negative prev_timestep means the final step to x_0: abar = 1
        table = self.alphas_cumprod.to(x0.device)
        abar_prev = torch.where(tp >= 0, table[tp.clamp(min=0)], torch.ones_like(table[:1]))
        abar_prev = abar_prev.to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
        # sigma = eta sqrt((1 - abar_prev)/(1 - abar_t)) sqrt(1 - abar_t/abar_prev)
        sigma = eta * ((1.0 - abar_prev) / (1.0 - abar)).sqrt() * (1.0 - abar / abar_prev).sqrt()
        # x_{t'} = sqrt(abar_{t'}) x0 + sqrt(1 - abar_{t'} - sigma^2) eps
        prev = abar_prev.sqrt() * x0 + (1.0 - abar_prev - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0:
            if noise is None:
                noise = torch.randn(x0.shape, generator=generator, device=x0.device,
                                    dtype=x0.dtype)
            prev = prev + sigma * noise
        return prev
