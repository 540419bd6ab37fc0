"""GLAD: global and local adaptive diffusion, taught on dap's pixel-space denoiser.

Paper: Yao et al., "GLAD: Towards Better Reconstruction with Global and Local Adaptive Diffusion
Models for Unsupervised Anomaly Detection" (ECCV 2024). Taught in
``notebooks/08_adaptive_diffusion``.

GLAD fine-tunes Stable Diffusion v1-4 in its latent space and compares images with DINO
features. Neither set of weights is available offline, so dap teaches the same three ideas with
its own pixel-space noise predictor (:class:`~dap.models.denoiser.DenoiserUNet`) and that
denoiser's encoder features (:func:`dap.features.denoiser_features` at t = 0) in place of DINO.

1. **ATP, anomaly-aware training** (:func:`atp_blend`, :func:`atp_noise_target`). Train on
   synthetic anomalies S too (Perlin threshold 0.3, beta ~ U[0, 0.8), 8 x 8 grid shuffle:
   ``SynthesisConfig.preset("glad")``). With alpha = t / T, t in {0, ..., T-1},

       x_blend = alpha * S + (1 - alpha) * N                 (N: the normal image)
       x_t     = sqrt(abar_t) x_blend + sqrt(1 - abar_t) eps
       eps*    = (x_t - sqrt(abar_t) N) / sqrt(1 - abar_t)   (the regression target)

   Derivation: the one-step estimate (DiffusionAD eq. 6) of a perfect predictor is
   x0_hat = (x_t - sqrt(1 - abar_t) eps*) / sqrt(abar_t). Asking x0_hat = N and solving for eps*
   gives the line above; substituting x_t, eps* = eps + sqrt(abar_t / (1 - abar_t)) alpha (S - N):
   the ordinary noise plus the anomaly, scaled so that removing the noise also removes the
   anomaly. Normal samples (S = N) get the ordinary target eps. The blend keeps the target
   bounded: sqrt(abar_t / (1 - abar_t)) grows like t^(-1/2) as t -> 0 while alpha = t / T
   shrinks like t, so small steps are asked to remove only faint anomalies. The public code's
   sign of the correction flipped between commits; with it flipped,
   eps = eps - sqrt(abar_t / (1 - abar_t)) alpha (S - N) implies x0 = 2 x_blend - N
   (:func:`flipped_atp_noise_target`, kept to show the bug numerically).

2. **Global adaptivity, a per-sample denoising depth** (:func:`adaptive_denoise`). Noise the
   input x to ``t_start`` with eps0 and run DDIM (eta = 0). At every step t compare the
   trajectory's prediction x0_r = x0_hat(x_t) with the *input's own* prediction at the same
   step, x0_i = x0_hat(sqrt(abar_t) x + sqrt(1 - abar_t) eps0) (the same network output, so both
   carry the same denoising blur and only the repair differs): D = nearest-neighbour patch
   distance (:func:`patch_discrepancy`), score = mean of its top 10. A sample stops at the first
   step where the score passes its threshold (the repair is visible) or t <= ``min_step``
   (:func:`stopping_rule`); never at the first step, where x0_i = x0_r by construction. Defective samples tend to stop at large t, normal ones run to
   ``min_step`` and keep their detail. Thresholds are calibrated per step on the normal images
   of the *validation* split (:func:`calibrate`), never on the test split.

3. **SAFF, spatial-adaptive feature fusion** (:func:`saff_mask`, :func:`saff_blend`). At the stop
   step, x0 = m * x0_r + (1 - m) * x0_i with a smooth mask m in [0, 1] from D: upsampled,
   Gaussian-blurred, and ramped between two levels calibrated for that step on normal
   validation images, m = clip((D - mu) / (tau - mu), 0, 1): mu the mean patch discrepancy, tau
   the stop threshold (the level of a normal image's most discrepant patches). Typical normal
   regions keep the input's detail; regions as discrepant as the stop take the reconstruction.

Anomaly map: the same feature discrepancy between the input and the final reconstruction plus
the pixel distance mean_c |x - x_rec|, each divided by its mean over normal validation pixels
(1 before calibration), weighted, summed and Gaussian-smoothed. Image score: the mean of the
``top_k`` largest map values (``top_k = 1`` is the maximum).

Differences to the official code (each documented, two of them options):

* Pixel space, dap's denoiser and its encoder features instead of SD latents, a VAE and DINO.
* After its stop the official code replaces the sample's x0 and keeps running DDIM to t = 0;
  dap by default freezes the fused x0 as the reconstruction (``after_stop="freeze"``, which
  also skips the remaining network evaluations); ``after_stop="continue"`` is the official flow.
* The official SAFF mask is sigmoid(D), which lies in [0.5, 0.88] for D in [0, 2], and is used
  only for samples that passed the threshold (at the min step the input's x0 is taken whole);
  dap's mask is normalised by the calibrated threshold and used at every stop.
* Start step, min step and thresholds were tuned per class on the test set in the official
  code; dap fixes the steps in the config (t_start = 400 and min_step = 200, DiffusionAD's t_b
  and t_s, see ``notebooks/03_noise_scales``) and calibrates thresholds on validation only.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from dap.config import ConfigError, DiffusionConfig, replace
from dap.diffusion import NoiseSchedule, ddim_timesteps
from dap.features import denoiser_features
from dap.methods.base import AnomalyMethod, Prediction, TrainBatch, gaussian_blur, top_k_mean
from dap.models.denoiser import DenoiserConfig, DenoiserUNet, denoiser_config
from dap.synthesis import AnomalySynthesizer, SynthesisConfig

AfterStop = Literal["freeze", "continue"]


@dataclass
class GLADConfig:
    """Everything that defines a GLAD model in dap.

    Attributes
    ----------
    denoiser, diffusion : the noise predictor and the DDPM schedule (T = 1000, linear).
    synthesis : the anomaly synthesis for ATP and the validation set (GLAD's preset).
    atp : bool
        Anomaly-aware training (True) or plain DDPM training on normal images (False).
    t_start : int
        The input is noised to this step before DDIM (400 = DiffusionAD's t_b).
    num_inference_steps : int
        DDIM steps from ``t_start`` to 0 (:func:`dap.diffusion.ddim_timesteps`).
    min_step : int
        The latest stop: every sample stops at the first DDIM step t <= min_step (200).
    adaptive : bool
        Per-sample stop by the calibrated thresholds (True) or every sample at ``min_step``.
    saff : bool
        Fuse x0_r and x0_i at the stop (True) or keep the trajectory's x0_r.
    after_stop : {"freeze", "continue"}
        ``freeze``: the stop's x0 is the reconstruction; ``continue``: it replaces x0 in that
        DDIM step and denoising goes on to t = 0 (the official code).
    threshold_quantile : float
        Fraction of normal validation images that never stop early; sets the per-step
        thresholds (:meth:`GLAD.calibrate`, 0.95).
    discrepancy_top_k : int
        Patches averaged into the discrepancy score (GLAD: 10).
    feature_levels : tuple of int
        Encoder levels of the denoiser used as patch features (each L2-normalised, then joined).
    feature_size : int
        Side of the patch grid the features are resampled to.
    feature_weight, pixel_weight : weights of the two anomaly-map terms.
    smoothing_sigma : float
        Gaussian sigma in pixels for the SAFF mask and the anomaly map (4 at 256 px).
    top_k : int
        Pixels averaged into the image score (1 = the maximum).
    clip_sample : bool
        Clamp every x0 estimate to [-1, 1].
    inference_seed : int
        Seed of eps0 when ``predict`` gets no generator.
    """

    denoiser: DenoiserConfig = field(default_factory=lambda: denoiser_config("paper"))
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    synthesis: SynthesisConfig = field(default_factory=lambda: SynthesisConfig.preset("glad"))
    atp: bool = True
    t_start: int = 400
    num_inference_steps: int = 10
    min_step: int = 200
    adaptive: bool = True
    saff: bool = True
    after_stop: AfterStop = "freeze"
    threshold_quantile: float = 0.95
    discrepancy_top_k: int = 10
    feature_levels: tuple[int, ...] = (1, 2)
    feature_size: int = 32
    feature_weight: float = 1.0
    pixel_weight: float = 1.0
    smoothing_sigma: float = 4.0
    top_k: int = 50
    clip_sample: bool = True
    inference_seed: int = 0

    def __post_init__(self) -> None:
        T = self.diffusion.num_train_timesteps

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"GLADConfig: {msg}")

        need(0 <= self.min_step <= self.t_start < T,
             f"need 0 <= min_step <= t_start < {T}, got min_step={self.min_step}, "
             f"t_start={self.t_start}")
        need(self.num_inference_steps >= 1, "num_inference_steps must be >= 1")
        need(0.0 < self.threshold_quantile <= 1.0, "threshold_quantile must be in (0, 1]")
        need(self.discrepancy_top_k >= 1 and self.top_k >= 1, "top-k counts must be >= 1")
        n_levels = len(self.denoiser.channel_mult)
        need(len(self.feature_levels) > 0 and all(0 <= i < n_levels for i in self.feature_levels),
             f"feature_levels must be non-empty encoder levels in [0, {n_levels - 1}], "
             f"got {self.feature_levels}")
        need(self.feature_size >= 1, "feature_size must be >= 1")
        need(self.feature_weight >= 0 and self.pixel_weight >= 0
             and self.feature_weight + self.pixel_weight > 0,
             "feature_weight and pixel_weight must be >= 0, not both 0")
        need(self.smoothing_sigma >= 0, "smoothing_sigma must be >= 0")


def glad_config(preset: str = "paper", **overrides: Any) -> GLADConfig:
    """A GLAD config for ``paper`` (256 px), ``cpu`` (128 px) or ``ci`` (64 px).

    The small presets shrink the denoiser, the top-K (same image fraction), the smoothing and
    the patch grid; every step and threshold setting stays the same.
    """
    if preset not in ("paper", "cpu", "ci"):
        raise ConfigError(f"unknown GLAD preset {preset!r}; valid: ['ci', 'cpu', 'paper']")
    den = denoiser_config(preset)
    scale = den.image_size / 256
    base = GLADConfig(denoiser=den, top_k=max(1, round(50 * scale**2)),
                      smoothing_sigma=4.0 * scale, feature_size=64 if preset == "paper" else 32)
    return replace(base, **overrides) if overrides else base


# --------------------------------------------------------------------------------------------
# ATP: the training target (pure functions, tested to float64 precision)
# --------------------------------------------------------------------------------------------
def atp_blend(anomalous: Tensor, normal: Tensor, timesteps: Tensor, num_train_timesteps: int
              ) -> Tensor:
    """x_blend = alpha S + (1 - alpha) N with alpha = t / T per sample; ``(B, C, H, W)``."""
    alpha = (timesteps.to(anomalous.dtype) / num_train_timesteps).reshape(-1, 1, 1, 1)
    # x_blend = alpha * S + (1 - alpha) * N
    return alpha * anomalous + (1.0 - alpha) * normal


def atp_noise_target(schedule: NoiseSchedule, noisy: Tensor, normal: Tensor,
                     timesteps: Tensor) -> Tensor:
    """ATP's target eps* = (x_t - sqrt(abar_t) N) / sqrt(1 - abar_t): its implied x0 is N."""
    return schedule.noise_from_original(noisy, normal, timesteps)


def flipped_atp_noise_target(schedule: NoiseSchedule, noise: Tensor, blend: Tensor,
                             normal: Tensor, timesteps: Tensor) -> Tensor:
    """The sign-flipped target of the public code: eps - sqrt(abar/(1-abar)) (x_blend - N).

    Kept only to show the bug: its implied x0 is 2 x_blend - N, not N (notebook 08).
    """
    sa = schedule._at(schedule.sqrt_alphas_cumprod, timesteps, noise)
    s1a = schedule._at(schedule.sqrt_one_minus_alphas_cumprod, timesteps, noise)
    return noise - sa / s1a * (blend - normal)


# --------------------------------------------------------------------------------------------
# Patch discrepancy, the stop and SAFF (pure functions)
# --------------------------------------------------------------------------------------------
def patch_discrepancy(query: Tensor, reference: Tensor, chunk: int = 1 << 24) -> Tensor:
    """Nearest-neighbour patch distance: for every patch of ``query``, 1 - the largest cosine
    similarity to any patch of ``reference`` (GLAD's comparison of DINO tokens).

    query, reference : ``(B, C, h, w)`` features -> ``(B, h, w)`` in [0, 2].

    The query is the input (or its x0): a defect has no close patch in a repaired reconstruction,
    while the reverse direction would only find what the reconstruction invented.
    """
    b, c, h, w = query.shape
    q = F.normalize(query.flatten(2).float(), dim=1)          # (B, C, N)
    r = F.normalize(reference.flatten(2).float(), dim=1)      # (B, C, M)
    per = max(1, chunk // (q.shape[2] * r.shape[2]))
    out = [1.0 - torch.bmm(q[i:i + per].transpose(1, 2), r[i:i + per]).amax(dim=2)
           for i in range(0, b, per)]
    return torch.cat(out).reshape(b, h, w)


def stopping_rule(score: Tensor, threshold: float | Tensor, t: int, min_step: int,
                  last: bool = False) -> Tensor:
    """GLAD's stop, per sample: score > threshold, or t <= min_step (or the trajectory's last
    step). ``score`` ``(B,)`` -> ``(B,)`` bool. A NaN threshold (uncalibrated) never fires."""
    force = t <= min_step or last
    return (score > threshold) | torch.full_like(score, force, dtype=torch.bool)


def saff_mask(discrepancy: Tensor, low: float | Tensor, high: float | Tensor, size: int,
              sigma: float) -> Tensor:
    """SAFF's spatial mask ``(B, 1, size, size)`` in [0, 1] from a ``(B, h, w)`` discrepancy.

    m = clip((blur(up(D)) - low) / (high - low), 0, 1): 0 up to ``low`` (a typical normal patch),
    1 from ``high`` (the stop threshold) on. With a NaN level (uncalibrated) each map is min-max
    normalised instead.
    """
    d = F.interpolate(discrepancy[:, None].float(), size=(size, size), mode="bilinear",
                      align_corners=False)
    d = gaussian_blur(d, sigma, truncate=3.0)
    lo = torch.as_tensor(low, dtype=d.dtype, device=d.device)
    hi = torch.as_tensor(high, dtype=d.dtype, device=d.device)
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        lo = d.amin(dim=(2, 3), keepdim=True)
        hi = d.amax(dim=(2, 3), keepdim=True)
    # m = clip((D - low) / (high - low), 0, 1)
    return ((d - lo) / (hi - lo).clamp_min(1e-12)).clamp(0.0, 1.0)


def saff_blend(reconstruction: Tensor, input_x0: Tensor, mask: Tensor) -> Tensor:
    """SAFF: x0 = m * x0_r + (1 - m) * x0_i (mask 1: the reconstruction, 0: the input's x0)."""
    # x0 = m * x0_r + (1 - m) * x0_i
    return mask * reconstruction + (1.0 - mask) * input_x0


# --------------------------------------------------------------------------------------------
# The adaptive DDIM loop
# --------------------------------------------------------------------------------------------
class AdaptiveOutput(NamedTuple):
    """What :func:`adaptive_denoise` returns."""

    reconstruction: Tensor   # (B, C, H, W), the final reconstruction
    stop_step: Tensor        # (B,) int64, the DDIM timestep at which each sample stopped
    input_x0: Tensor         # (B, C, H, W), x0_i at each sample's stop step
    scores: Tensor           # (B, K) discrepancy score per step (NaN where not computed)
    timesteps: list[int]     # the K DDIM timesteps


Discrepancy = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
Fuse = Callable[[Tensor, Tensor, Tensor, int], Tensor]


def _ddim_update(schedule: NoiseSchedule, x0: Tensor, eps: Tensor, prev_t: int) -> Tensor:
    """x_{t'} = sqrt(abar_{t'}) x0 + sqrt(1 - abar_{t'}) eps (DDIM eq. 12, eta = 0); t' < 0: x0."""
    if prev_t < 0:
        return x0
    abar = float(schedule.alphas_cumprod[prev_t])
    return math.sqrt(abar) * x0 + math.sqrt(1.0 - abar) * eps


@torch.no_grad()
def adaptive_denoise(model: Callable[[Tensor, Tensor], Tensor], schedule: NoiseSchedule,
                     images: Tensor, timesteps: list[int], discrepancy: Discrepancy,
                     thresholds: Tensor | None = None, min_step: int = 0,
                     fuse: Fuse | None = None, after_stop: AfterStop = "freeze",
                     noise: Tensor | None = None, generator: torch.Generator | None = None,
                     clip_sample: bool = False) -> AdaptiveOutput:
    """GLAD's global adaptivity: DDIM from ``timesteps[0]`` with a per-sample stop.

    Parameters
    ----------
    model : ``(x_t, t) -> eps``
    images : ``(B, C, H, W)`` in [-1, 1], the inputs x
    timesteps : descending DDIM timesteps (the step after the last goes to x_0)
    discrepancy : ``(x0_i, x0_r) -> (D (n, h, w), score (n,))`` for the still-deciding samples
    thresholds : ``(K,)`` per-step thresholds; None or NaN = stop only at ``min_step``
    fuse : ``(x0_r, x0_i, D, k) -> x0`` at the stop (SAFF); None keeps x0_r
    after_stop : ``freeze`` (the stop's x0 is the result) or ``continue`` (DDIM to t = 0)
    noise : eps0 ``(B, C, H, W)``; drawn from ``generator`` when omitted

    Only the samples still running go through the network (a boolean mask, no Python loop over
    samples). Returns :class:`AdaptiveOutput`.
    """
    if after_stop not in ("freeze", "continue"):
        raise ValueError(f"after_stop must be 'freeze' or 'continue', got {after_stop!r}")
    b, K = images.shape[0], len(timesteps)
    if noise is None:
        noise = torch.randn(images.shape, generator=generator, device=images.device,
                            dtype=images.dtype)
    x = schedule.add_noise(images, noise, timesteps[0])
    deciding = torch.ones(b, dtype=torch.bool, device=images.device)
    stop_step = torch.full((b,), -1, dtype=torch.long, device=images.device)
    recon, input_x0 = torch.empty_like(images), torch.empty_like(images)
    scores = torch.full((b, K), float("nan"), device=images.device)
    for k, t in enumerate(timesteps):
        running = deciding if after_stop == "freeze" else torch.ones_like(deciding)
        idx = running.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        ts = torch.full((idx.numel(),), t, dtype=torch.long, device=images.device)
        x_t = x[idx]
        eps = model(x_t, ts)
        # x0_r: the trajectory's one-step prediction (DiffusionAD eq. 6)
        x0 = schedule.pred_original_sample(x_t, eps, ts, clip_sample)
        # x0_i: the input's own prediction: x noised with eps0 to t, the same eps removed
        x0_in = schedule.pred_original_sample(schedule.add_noise(images[idx], noise[idx], ts),
                                              eps, ts, clip_sample)
        check = deciding[idx]
        if check.any():
            d_map, score = discrepancy(x0_in[check], x0[check])
            rows = idx[check]
            scores[rows, k] = score.float()
            # at the first step x0_i = x0_r by construction (same x_t, same eps): no test there
            thr = float("nan") if thresholds is None or k == 0 else thresholds[k]
            stop = stopping_rule(score, thr, t, min_step, last=k == K - 1)
            if stop.any():
                pos = check.nonzero().squeeze(1)[stop]           # positions within idx
                x0_stop = x0[pos] if fuse is None else fuse(x0[pos], x0_in[pos], d_map[stop], k)
                x0 = x0.clone()
                x0[pos] = x0_stop.to(x0.dtype)
                done = idx[pos]
                stop_step[done], deciding[done] = t, False
                recon[done], input_x0[done] = x0_stop.to(recon.dtype), x0_in[pos]
        prev = timesteps[k + 1] if k + 1 < K else -1
        x[idx] = _ddim_update(schedule, x0, eps, prev)
    if after_stop == "continue":
        recon = x
    return AdaptiveOutput(recon, stop_step, input_x0, scores, list(timesteps))


# --------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------
class GLAD(AnomalyMethod):
    """GLAD in dap: an ATP-trained denoiser, adaptive DDIM stops and SAFF.

    ``forward(batch, generator)`` is the ATP (or plain) noise loss; ``predict(images)`` the
    anomaly map, the top-K score and the reconstruction; :meth:`reconstruct` also returns the
    stop steps. Call :meth:`calibrate` (or :func:`calibrate`) with validation images first.
    """

    name = "glad"
    config_class = GLADConfig
    extractor_name = "denoiser-encoder(t=0)"

    def __init__(self, config: GLADConfig | None = None) -> None:
        super().__init__()
        self.config = config or GLADConfig()
        self.denoiser = DenoiserUNet(self.config.denoiser)
        self.schedule = NoiseSchedule.from_config(self.config.diffusion)
        self.synthesizer = AnomalySynthesizer(self.config.synthesis)
        steps = self.timesteps
        # per-step thresholds and mean patch discrepancies of normal validation images (NaN =
        # not calibrated), the timesteps they were made for, and the mean feature / pixel term
        # of normal validation pixels (the anomaly map's normalisation)
        self.register_buffer("thresholds", torch.full((len(steps),), float("nan")))
        self.register_buffer("patch_means", torch.full((len(steps),), float("nan")))
        self.register_buffer("calibrated_timesteps", torch.tensor(steps, dtype=torch.long))
        self.register_buffer("map_scale", torch.ones(2))
        self._warned = False

    @property
    def timesteps(self) -> list[int]:
        """The DDIM timesteps from ``t_start`` (descending)."""
        return ddim_timesteps(self.config.t_start, self.config.num_inference_steps)

    def _schedule(self, device: torch.device) -> NoiseSchedule:
        if self.schedule.device != device:
            self.schedule.to(device)
        return self.schedule

    # -- training (ATP) ------------------------------------------------------------------------
    def forward(self, batch: TrainBatch, generator: torch.Generator | None = None
                ) -> dict[str, Tensor]:
        """The noise loss of one batch of normal images N.

        ATP: S = synthesis(N); t ~ U[0, T); x_blend = (t/T) S + (1 - t/T) N;
        x_t = sqrt(abar_t) x_blend + sqrt(1 - abar_t) eps; target eps* whose implied x0 is N.
        Plain (``atp=False``): x_t from N and target eps (DDPM). Loss: MSE over all samples.
        """
        c = self.config
        n = batch.images
        b, device = n.shape[0], n.device
        schedule = self._schedule(device)
        T = c.diffusion.num_train_timesteps
        if c.atp:
            syn = self.synthesizer(n, foreground=batch.foreground, generator=generator,
                                   is_texture=batch.is_texture)
        t = torch.randint(0, T, (b,), generator=generator, device=device)
        noise = torch.randn(n.shape, generator=generator, device=device)
        if c.atp:
            x_t = schedule.add_noise(atp_blend(syn.image, n, t, T), noise, t)
            target = atp_noise_target(schedule, x_t, n, t)
        else:
            x_t, target = schedule.add_noise(n, noise, t), noise
        loss = F.mse_loss(self.denoiser(x_t, t).float(), target.float())
        out = {"loss": loss, "loss_noise": loss.detach()}
        if c.atp:
            out["anomalous_fraction"] = syn.label.float().mean()
        return out

    # -- features and discrepancy --------------------------------------------------------------
    def features(self, images: Tensor) -> Tensor:
        """Patch features ``(B, C, s, s)``: the denoiser's encoder levels at t = 0, each
        L2-normalised per patch and resampled to ``feature_size``, then concatenated."""
        c = self.config
        out = []
        for f in denoiser_features(self.denoiser, images, 0, c.feature_levels):
            f = F.normalize(f.float(), dim=1)
            if f.shape[-1] > c.feature_size:
                f = F.adaptive_avg_pool2d(f, c.feature_size)
            elif f.shape[-1] < c.feature_size:
                f = F.interpolate(f, size=c.feature_size, mode="bilinear", align_corners=False)
            out.append(f)
        return torch.cat(out, dim=1)

    def discrepancy(self, query: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
        """D = :func:`patch_discrepancy` of the two images' features ``(B, s, s)`` and its top-10
        mean ``(B,)``."""
        f = self.features(torch.cat([query, reference]))
        d = patch_discrepancy(f[: len(query)], f[len(query):])
        return d, top_k_mean(d, self.config.discrepancy_top_k)

    # -- inference -------------------------------------------------------------------------------
    @property
    def calibrated(self) -> bool:
        """Whether thresholds exist for every step up to and including the first t <= min_step."""
        steps = self.timesteps
        k_min = next((k for k, t in enumerate(steps) if t <= self.config.min_step), len(steps) - 1)
        return (len(self.thresholds) == len(steps)
                and self.calibrated_timesteps.tolist() == steps
                and bool(torch.isfinite(self.thresholds[: k_min + 1]).all())
                and bool(torch.isfinite(self.patch_means[: k_min + 1]).all()))

    def _thresholds(self) -> Tensor | None:
        if self.calibrated:
            return self.thresholds
        if torch.isfinite(self.thresholds).any() and \
                self.calibrated_timesteps.tolist() != self.timesteps:
            raise ConfigError("GLAD's thresholds were calibrated for timesteps "
                              f"{self.calibrated_timesteps.tolist()}, not {self.timesteps}; "
                              "call calibrate(method, val_images) again")
        if not self._warned and (self.config.adaptive or self.config.saff):
            warnings.warn("GLAD is not calibrated: every sample stops at min_step and SAFF "
                          "masks are min-max normalised per image. Call "
                          "dap.methods.glad.calibrate(method, val_images) with validation "
                          "images.", stacklevel=3)
            self._warned = True
        return None

    @torch.no_grad()
    def reconstruct(self, images: Tensor, generator: torch.Generator | None = None,
                    adaptive: bool | None = None) -> AdaptiveOutput:
        """The adaptive (or fixed-step) reconstruction with stop steps, see
        :func:`adaptive_denoise`."""
        c = self.config
        schedule = self._schedule(images.device)
        if generator is None:
            generator = torch.Generator(images.device).manual_seed(c.inference_seed)
        thr = self._thresholds()
        adaptive = c.adaptive if adaptive is None else adaptive
        stop_thr = thr if adaptive and thr is not None else None

        def fuse(x0_r: Tensor, x0_i: Tensor, d: Tensor, k: int) -> Tensor:
            lo, hi = (float("nan"),) * 2 if thr is None else (self.patch_means[k], thr[k])
            m = saff_mask(d, lo, hi, images.shape[-1], c.smoothing_sigma)
            return saff_blend(x0_r, x0_i, m.to(x0_r.dtype))

        return adaptive_denoise(self.denoiser, schedule, images, self.timesteps,
                                self.discrepancy, stop_thr, c.min_step,
                                fuse if c.saff else None, c.after_stop, generator=generator,
                                clip_sample=c.clip_sample)

    def map_terms(self, images: Tensor, reconstruction: Tensor) -> tuple[Tensor, Tensor]:
        """The two raw anomaly-map terms ``(B, H, W)``: upsampled feature discrepancy of the
        input against the reconstruction, and mean_c |x - x_rec|."""
        d, _ = self.discrepancy(images, reconstruction)
        feat = F.interpolate(d[:, None], size=images.shape[-2:], mode="bilinear",
                             align_corners=False)[:, 0]
        return feat, (images - reconstruction).abs().mean(dim=1).float()

    def anomaly_map(self, images: Tensor, reconstruction: Tensor) -> Tensor:
        """(w_f feat / s_f + w_p pixel / s_p), Gaussian-smoothed: ``(B, H, W)``."""
        c = self.config
        feat, pix = self.map_terms(images, reconstruction)
        s_f, s_p = self.map_scale
        amap = c.feature_weight * feat / s_f + c.pixel_weight * pix / s_p
        return gaussian_blur(amap, c.smoothing_sigma, truncate=3.0)

    @torch.no_grad()
    def predict(self, images: Tensor, generator: torch.Generator | None = None) -> Prediction:
        """Anomaly map ``(B, H, W)``, top-K score ``(B,)``, reconstruction ``(B, 3, H, W)``."""
        rec = self.reconstruct(images, generator).reconstruction
        amap = self.anomaly_map(images, rec)
        return Prediction(amap, top_k_mean(amap, self.config.top_k), rec)

    # -- calibration on the validation split ---------------------------------------------------
    @torch.no_grad()
    def after_training(self, data: Any = None, val_set: dict | None = None,
                       progress: bool = False) -> dict[str, Any] | None:
        """What GLAD does once trained (called by ``dap.experiment.train_run``): :meth:`calibrate`
        on the *validation* set ``val_set`` (``{"image", "label"}`` tensors, the one training
        selected on). The training data ``data`` is not used. Returns the calibration summary,
        or None (with the usual not-calibrated warning later) when no validation set is given.
        """
        if val_set is None:
            return None
        return self.calibrate(val_set["image"], val_set.get("label"))

    def calibrate(self, val_images: Tensor, val_labels: Tensor | None = None,
                  batch_size: int = 16) -> dict[str, Any]:
        """Set the per-step thresholds and the map normalisation from *validation* images.

        val_images : ``(N, 3, H, W)`` in [-1, 1], the validation split (normal images, possibly
            with synthetic anomalies); val_labels : ``(N,)``, 1 = synthetic anomaly (ignored
            here), or None when all are normal. Only normal images are used:

        1. run every normal image to ``min_step`` without early stops, recording the
           discrepancy score s_k at each step k; rho_k = the median over images, mu_k = the
           mean patch discrepancy (SAFF's lower level);
        2. threshold_k = lambda rho_k, with lambda the ``threshold_quantile`` quantile of each
           image's max_k s_k / rho_k over the steps where a stop is tested (after the first,
           before min_step): that fraction of normal images never stops early;
        3. predict them with those thresholds; the mean feature and pixel terms over their
           pixels divide the two anomaly-map terms from then on.

        Returns a JSON-able summary (counts, thresholds, scales, stop steps).
        """
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
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        c = self.config
        steps = self.timesteps
        self.thresholds = torch.full((len(steps),), float("nan"), device=device)
        self.patch_means = torch.full((len(steps),), float("nan"), device=device)
        self.calibrated_timesteps = torch.tensor(steps, dtype=torch.long, device=device)
        self.map_scale = torch.ones(2, device=device)
        scores, means = [], []
        for i in range(0, len(normal), batch_size):
            step_means: list[Tensor] = []      # one call per step while every sample runs

            def discrepancy(x0_i: Tensor, x0_r: Tensor) -> tuple[Tensor, Tensor]:
                d, score = self.discrepancy(x0_i, x0_r)
                step_means.append(d.flatten(1).mean(1))
                return d, score

            # the same eps0 as predict() draws for the same batch
            gen = torch.Generator(device).manual_seed(c.inference_seed)
            out = adaptive_denoise(self.denoiser, self._schedule(device),
                                   normal[i:i + batch_size].to(device), steps, discrepancy,
                                   None, c.min_step, None, "freeze", generator=gen,
                                   clip_sample=c.clip_sample)
            scores.append(out.scores)
            means.append(torch.stack(step_means, dim=1))                  # (n, K_seen)
        scores = torch.cat(scores)                                        # (N, K)
        seen = torch.isfinite(scores).all(dim=0)                          # steps up to the stop
        rho = scores[:, seen].median(dim=0).values.clamp_min(1e-12)       # (K_seen,)
        tested = [k for k in range(1, int(seen.sum())) if steps[k] > c.min_step]
        lam = 1.0
        if tested:
            ratio = (scores[:, tested] / rho[tested]).amax(dim=1)         # (N,)
            lam = float(torch.quantile(ratio, c.threshold_quantile))
        self.thresholds[seen] = lam * rho
        self.patch_means[seen] = torch.cat(means).mean(dim=0)
        feat_sum = pix_sum = 0.0
        stops = []
        for i in range(0, len(normal), batch_size):
            x = normal[i:i + batch_size].to(device)
            out = self.reconstruct(x)
            feat, pix = self.map_terms(x, out.reconstruction)
            feat_sum += float(feat.mean()) * len(x)
            pix_sum += float(pix.mean()) * len(x)
            stops += out.stop_step.tolist()
        n = len(normal)
        self.map_scale = torch.tensor([max(feat_sum / n, 1e-8), max(pix_sum / n, 1e-8)],
                                      device=device)
        self.train(was_training)
        return {"normal_images": n, "quantile": c.threshold_quantile, "lambda": round(lam, 6),
                "timesteps": steps,
                "thresholds": [None if not math.isfinite(v) else round(v, 6)
                               for v in self.thresholds.tolist()],
                "patch_means": [None if not math.isfinite(v) else round(v, 6)
                                for v in self.patch_means.tolist()],
                "map_scale": [round(v, 6) for v in self.map_scale.tolist()],
                "normal_stop_steps": stops}


@torch.no_grad()
def calibrate(method: GLAD, val_images: Tensor, val_labels: Tensor | None = None,
              batch_size: int = 16) -> dict[str, Any]:
    """Calibrate ``method``'s thresholds and map scales on validation tensors only
    (:meth:`GLAD.calibrate`). The API takes tensors, never a dataset or a split name."""
    return method.calibrate(val_images, val_labels, batch_size)


@torch.no_grad()
def run_on(method: GLAD, images: Tensor, batch_size: int = 16) -> dict[str, Tensor]:
    """:meth:`GLAD.reconstruct` and the anomaly map over a stack of images, in batches.

    Returns ``reconstruction`` and ``input_x0`` ``(N, 3, H, W)``, ``stop_step`` ``(N,)``,
    ``scores`` ``(N, K)`` (discrepancy per step), ``anomaly_map`` ``(N, H, W)``, ``score``
    ``(N,)``; all on the CPU. Used by ``notebooks/08_adaptive_diffusion``.
    """
    device = next(method.parameters()).device
    parts: dict[str, list[Tensor]] = {}
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device)
        out = method.reconstruct(x)
        amap = method.anomaly_map(x, out.reconstruction)
        got = {"reconstruction": out.reconstruction, "input_x0": out.input_x0,
               "stop_step": out.stop_step, "scores": out.scores, "anomaly_map": amap,
               "score": top_k_mean(amap, method.config.top_k)}
        for k, v in got.items():
            parts.setdefault(k, []).append(v.cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


# The rows of `python -m dap benchmark` (dap.experiment.benchmark): the full method, the same
# trained model without the per-sample stop or without SAFF, and a model trained without ATP.
BENCHMARK_VARIANTS: dict[str, dict[str, Any]] = {
    "glad": {},
    "glad fixed-step": {"eval_overrides": {"adaptive": False}, "same_model_as": "glad"},
    "glad no-ATP": {"overrides": {"atp": False}},
    "glad no-SAFF": {"eval_overrides": {"saff": False}, "same_model_as": "glad"},
}

__all__ = [
    "GLADConfig", "glad_config", "GLAD", "calibrate", "atp_blend", "atp_noise_target",
    "flipped_atp_noise_target", "patch_discrepancy", "stopping_rule", "gaussian_blur",
    "saff_mask", "saff_blend", "adaptive_denoise", "AdaptiveOutput", "run_on",
    "BENCHMARK_VARIANTS",
]
