"""DiffAD: latent diffusion with a noisy condition embedding and interpolated channels.

Paper: X. Zhang, N. Li, J. Li, T. Dai, Y. Jiang, S.-T. Xia, "Unsupervised Surface Anomaly
Detection with Diffusion Probabilistic Model", ICCV 2023 (DiffAD). Taught in
``notebooks/09_latent_diffusion``.

Three parts, all in one :class:`DiffAD` module:

* a **KL autoencoder** E, D (:mod:`dap.models.autoencoder`) trained per category on normal images;
  the diffusion model lives in its latent space (Latent Diffusion, Rombach et al. 2022);
* a **latent denoiser** f(concat(z_t, c), t) (:class:`DenoiserUNet`, 2 x 4 input channels)
  conditioned by concatenating a condition latent c. With the **noisy condition embedding** the
  condition is itself noised during training, ``c_noisy = sqrt(abar_t') c + sqrt(1 - abar_t')
  eps'`` (:func:`noisy_condition`), so the model cannot solve the task by copying c.
  Reconstruction: DDIM from pure noise z_T ~ N(0, I), conditioned on c = E(x) of the test image;
* a **segmentation network** (DRAEM's discriminative U-Net, :class:`SegmentationUNet`) on
  ``concat(x_r, x_inter, x)`` (9 channels), where x_r = D(z_r) is the reconstruction and
  x_inter = D(lambda c + (1 - lambda) z_r) the **interpolated channel** (lambda = 0.5,
  :func:`interpolate_latents`), trained with the focal loss on synthetic anomalies
  (:mod:`dap.synthesis`). Image score: the maximum of the anomaly map average-pooled with a
  21 x 21 window at 256 px (DRAEM's score), scaled with the image size (:func:`score_pool_size`).

Paper text and public code (repository Loco-Roco/DiffAD, read for facts) differ; dap follows the
code where the text is silent or ambiguous and exposes the other reading as an option:

=============================  ==================================  =============================
option                         public code (dap default)           alternative
=============================  ==================================  =============================
``condition_source``           ``synthetic``: c = E(S) of a        ``input``: c = E(x), the
                               DRAEM-synthesised anomalous S,      target itself
                               target z_0 = E(x) (half of the S
                               left normal)
``condition_timestep``         ``independent``: t' ~ U[0, T)       ``same``: t' = t (the
                               drawn apart from the denoiser's t   equation as printed)
``sample_condition``           ``clean``: c at every DDIM step     ``noisy``: c noised to the
                                                                   step's t (one fixed eps')
=============================  ==================================  =============================

``prediction_type``: DiffAD (as LDM) predicts the noise eps. The ``ci`` and ``cpu`` presets predict
z_0 instead (``sample``): the eps loss barely rewards using the condition at the high-noise steps
where only the condition can tell what z_0 is, and after the ~1000 CPU steps of the small presets
an eps model sampled from pure noise ignored its condition (brick, 64 px: PSNR outside the
defects 16.7 dB with eps, 27.1 dB with z_0 prediction; autoencoder ceiling 31.4 dB).

Training in the shared loop (:func:`dap.train.train`) — the phase design
------------------------------------------------------------------------
DiffAD trains its parts one after the other (the autoencoder, then the diffusion model with the
autoencoder frozen, then the segmentation network on reconstructions of the frozen pipeline).
``forward(batch, generator)`` follows the same order and picks the phase from a step counter
kept as a *buffer* (``phase_step``, in the state dict), so a checkpoint resumes in the right
phase and an interrupted run reproduces an uninterrupted one:

==========================================  ==============================================
``phase_step`` in                           trains
==========================================  ==============================================
``[0, ae_steps)``                           autoencoder: L1 + kl_weight * KL (LDM)
``[ae_steps, ae_steps + denoiser_steps)``   latent denoiser: ||eps - f||^2 (or ||z_0 - f||^2)
``[ae_steps + denoiser_steps, ...)``        segmenter: focal loss (runs until training ends)
==========================================  ==============================================

Sequential phases rather than joint training with stop-gradients: each phase then costs only its
own part (the segmenter phase needs the DDIM reconstruction, the costly step, which is useless
while the denoiser is untrained), and the frozen parts are exactly what inference sees. The
counter advances once per ``forward`` in training mode. At the first denoiser step the latents
are normalised to unit variance (LDM's ``scale_by_std``; the ``latent_scale`` buffer). The
training loop's ``steps`` must exceed ``ae_steps + denoiser_steps`` (:attr:`DiffAD.train_steps`
gives the preset's total); validation before the segmenter phase is meaningless, so the
benchmark rows keep the last checkpoint (``select_metric="last"``).

Other differences: the perceptual (LPIPS) term of the autoencoder loss is off (no pretrained
weights offline, see :meth:`DiffAD.set_perceptual`) and LDM's patch discriminator is not used;
the schedule is DDPM's linear 1e-4 -> 0.02 (the public code: LDM's 0.0015 -> 0.02 in sqrt space);
the focal loss is DRAEM's (gamma = 2) on one logit per pixel with balanced alpha = 0.5 (DRAEM's
two-class focal loss is twice this value).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from dap.config import ConfigError, DiffusionConfig, from_dict
from dap.diffusion import NoiseSchedule, ddim_timesteps
from dap.losses import focal_loss, smooth_l1_loss
from dap.methods.base import AnomalyMethod, Prediction, TrainBatch
from dap.models.autoencoder import (AutoencoderConfig, AutoencoderKL, autoencoder_config,
                                    autoencoder_loss)
from dap.models.denoiser import DenoiserConfig, DenoiserUNet
from dap.models.segmentation import SegmentationUNet, SegmenterConfig, segmenter_config
from dap.synthesis import AnomalySynthesizer, SynthesisConfig

PHASES: tuple[str, ...] = ("autoencoder", "denoiser", "segmenter")
SampleCondition = Literal["clean", "noisy"]


# --------------------------------------------------------------------------------------------
# The three equations of DiffAD, as functions
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
def latent_denoiser_config(autoencoder: AutoencoderConfig, **kw: Any) -> DenoiserConfig:
    """A :class:`DenoiserConfig` for latents of ``autoencoder``: image_size = latent side,
    in = 2 x latent channels (z_t and the condition c), out = latent channels."""
    c = autoencoder.latent_channels
    return DenoiserConfig(image_size=autoencoder.latent_size, in_channels=2 * c, out_channels=c,
                          **kw)


@dataclass
class DiffADConfig:
    """Everything that defines a DiffAD model.

    Attributes
    ----------
    autoencoder, denoiser, segmenter, diffusion, synthesis
        Sub-network, schedule and synthesis configs. ``denoiser`` works on latents: its
        ``image_size`` is the latent side, ``in_channels`` 2 x latent channels (z_t, c),
        ``out_channels`` the latent channels. ``segmenter.in_channels`` is 9 with the
        interpolated channel, 6 without.
    ae_steps, denoiser_steps : int
        Length of the autoencoder and denoiser phases in training steps; the segmenter phase is
        every step after them (see the module docstring).
    segmenter_steps : int
        The segmenter steps of the preset: only used by :attr:`DiffAD.train_steps`.
    kl_weight : float
        Weight of KL(q(z|x) || N(0, I)) in the autoencoder loss, LDM's meaning (1e-6).
    ae_reconstruction : {"l1", "l2"}
        Reconstruction term of the autoencoder loss (LDM: l1).
    perceptual_weight : float
        Weight of a perceptual (LPIPS) term; 0 by default (needs pretrained weights; see
        :meth:`DiffAD.set_perceptual`).
    scale_latents : bool
        Normalise latents to unit standard deviation, fitted on the first denoiser batch (LDM).
    condition_source : {"synthetic", "input"}
        What the denoiser is conditioned on in training: the latent of a synthetic anomalous
        version of the image (eq. 12 synthesis, half of the samples left normal) while the target
        stays the normal latent (the public code: ``cond_stage_key: augmented_image``), or the
        latent of the normal image itself (``input``: target = condition).
    noisy_condition : bool
        Train with the noisy condition embedding (DiffAD) or the clean condition (ablation).
    condition_timestep : {"independent", "same"}
        The t of the noisy condition: drawn independently of the denoiser's t, t_c ~ U[0, T)
        (the public code), or the denoiser's own t (the equation as printed).
    sample_condition : {"clean", "noisy"}
        Condition of the DDIM sampler at step t: c itself (the public code; in the training
        distribution when t_c is independent, since t_c near 0 is seen), or c noised to step t
        with one fixed noise (the training distribution of ``condition_timestep="same"``). A
        model trained with the clean condition must sample with it.
    prediction_type : {"epsilon", "sample"}
        What the denoiser predicts (diffusers' names): the noise eps (DDPM, LDM, DiffAD) or the
        clean latent z_0 (loss ||z_0 - f(concat(z_t, c), t)||^2, weighting the high-noise steps,
        where only the condition can tell what z_0 is, far more than the eps loss does).
    ddim_steps : int
        DDIM steps from z_T ~ N(0, I) at inference (paper: 50).
    train_ddim_steps : int or None
        DDIM steps of the reconstructions the segmenter trains on (None: ``ddim_steps``).
    ddim_eta : float
        DDIM stochasticity (0: deterministic).
    interpolation_lambda : float
        lambda of z_inter = lambda c + (1 - lambda) z_r (paper: 0.5).
    interpolated_channels : bool
        Feed D(z_inter) to the segmenter (9 channels) or not (6 channels: x_r, x).
    focal_weight, focal_gamma, focal_alpha, smooth_l1_weight
        L_seg = focal_weight * Focal(gamma, alpha) + smooth_l1_weight * SmoothL1 (DRAEM: focal,
        gamma 2).
    score_pool : int
        Window of the average-pooled max image score (21 at 256 px; odd).
    inference_seed : int
        Seed of the inference noise; one noise is shared by every image, so a prediction does
        not depend on the batch it is in.
    """

    autoencoder: AutoencoderConfig = field(default_factory=lambda: autoencoder_config("paper"))
    denoiser: DenoiserConfig = field(default_factory=lambda: DENOISER["paper"])
    segmenter: SegmenterConfig = field(
        default_factory=lambda: segmenter_config("paper", in_channels=9))
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    ae_steps: int = 20000
    denoiser_steps: int = 40000
    segmenter_steps: int = 20000
    kl_weight: float = 1e-6
    ae_reconstruction: Literal["l1", "l2"] = "l1"
    perceptual_weight: float = 0.0
    scale_latents: bool = True
    condition_source: Literal["synthetic", "input"] = "synthetic"
    noisy_condition: bool = True
    condition_timestep: Literal["independent", "same"] = "independent"
    sample_condition: SampleCondition = "clean"
    prediction_type: Literal["epsilon", "sample"] = "epsilon"
    ddim_steps: int = 50
    train_ddim_steps: int | None = None
    ddim_eta: float = 0.0
    interpolation_lambda: float = 0.5
    interpolated_channels: bool = True
    focal_weight: float = 1.0
    focal_gamma: float = 2.0
    focal_alpha: float = 0.5
    smooth_l1_weight: float = 0.0
    score_pool: int = 21
    inference_seed: int = 0

    def __post_init__(self) -> None:
        ae, den = self.autoencoder, self.denoiser
        if ae.in_channels != 3:
            raise ConfigError("DiffADConfig.autoencoder.in_channels must be 3 (RGB)")
        if den.image_size != ae.latent_size:
            raise ConfigError(
                f"DiffADConfig.denoiser.image_size must be the latent side "
                f"{ae.image_size} / {ae.downsample_factor} = {ae.latent_size}, "
                f"got {den.image_size}")
        if den.in_channels != 2 * ae.latent_channels or den.out_channels != ae.latent_channels:
            raise ConfigError(
                f"DiffADConfig.denoiser sees concat(z_t, c): in_channels must be "
                f"{2 * ae.latent_channels} and out_channels {ae.latent_channels}, got "
                f"{den.in_channels} and {den.out_channels}")
        want = 9 if self.interpolated_channels else 6
        if self.segmenter.in_channels != want:
            what = "concat(x_r, x_inter, x)" if self.interpolated_channels else "concat(x_r, x)"
            raise ConfigError(f"DiffADConfig.segmenter sees {what}: in_channels must be {want}, "
                              f"got {self.segmenter.in_channels}")
        for key in ("ae_steps", "denoiser_steps", "segmenter_steps"):
            if getattr(self, key) < 0:
                raise ConfigError(f"DiffADConfig.{key} must be >= 0, got {getattr(self, key)}")
        if self.ddim_steps < 1 or (self.train_ddim_steps is not None and self.train_ddim_steps < 1):
            raise ConfigError("DiffADConfig.ddim_steps and train_ddim_steps must be >= 1")
        if not 0.0 <= self.interpolation_lambda <= 1.0:
            raise ConfigError("DiffADConfig.interpolation_lambda must lie in [0, 1], got "
                              f"{self.interpolation_lambda}")
        if self.score_pool < 1 or self.score_pool % 2 == 0:
            raise ConfigError(f"DiffADConfig.score_pool must be an odd integer >= 1, got "
                              f"{self.score_pool}")
        for key in ("kl_weight", "perceptual_weight", "ddim_eta", "focal_weight",
                    "smooth_l1_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"DiffADConfig.{key} must be >= 0, got {getattr(self, key)}")
        if not self.noisy_condition and self.sample_condition == "noisy":
            raise ConfigError("DiffADConfig: a model trained with the clean condition "
                              "(noisy_condition=False) never saw a noisy one; use "
                              "sample_condition='clean'")


# The latent denoisers (guided-diffusion U-Nets on latents).
_AE = {p: autoencoder_config(p) for p in ("ci", "cpu", "paper")}
DENOISER: dict[str, DenoiserConfig] = {
    # ci: 16 x 16 x 4 latents, 1.3 M parameters.
    "ci": latent_denoiser_config(_AE["ci"], num_channels=32, channel_mult=(1, 2, 2),
                                 num_res_blocks=1, attention_resolutions=(8,), num_heads=4,
                                 num_groups=8),
    # cpu: 32 x 32 x 4 latents.
    "cpu": latent_denoiser_config(_AE["cpu"], num_channels=32, channel_mult=(1, 2, 4),
                                  num_res_blocks=1, attention_resolutions=(16, 8), num_heads=4,
                                  num_groups=8),
    # paper: 32 x 32 x 4 latents; an LDM-sized U-Net (our choice: the reference notes do not
    # give DiffAD's widths).
    "paper": latent_denoiser_config(_AE["paper"], num_channels=128, channel_mult=(1, 2, 4),
                                    num_res_blocks=2, attention_resolutions=(16, 8),
                                    num_head_channels=32),
}
# Phase lengths (ae, denoiser, segmenter) and DDIM steps (inference, training) per preset.
_SCHEDULE = {"ci": (400, 800, 300, 10, 5), "cpu": (2000, 4000, 2000, 20, 10),
             "paper": (20000, 40000, 20000, 50, 50)}
# What the latent denoiser predicts (see the module docstring).
_PREDICTION = {"ci": "sample", "cpu": "sample", "paper": "epsilon"}


def diffad_config(preset: str = "paper", **overrides: Any) -> DiffADConfig:
    """A DiffAD config for ``paper`` (256 px), ``cpu`` (128 px) or ``ci`` (64 px).

    The small presets shrink the networks, the phases and the DDIM steps and predict z_0
    (``prediction_type="sample"``); ``paper`` keeps eps prediction and 50 DDIM steps.
    Convenience (explicit overrides win): ``interpolated_channels=False`` also sets
    ``segmenter.in_channels`` to 6.
    """
    if preset not in _SCHEDULE:
        raise ConfigError(f"unknown DiffAD preset {preset!r}; valid: ['ci', 'cpu', 'paper']")
    ae_steps, den_steps, seg_steps, ddim, train_ddim = _SCHEDULE[preset]
    interp = overrides.get("interpolated_channels", True)
    seg_kw: dict[str, Any] = {"in_channels": 9 if interp else 6}
    if preset == "ci":
        seg_kw["base_width"] = 16            # the width the shipped DiffusionAD models use
    values: dict[str, Any] = dict(
        autoencoder=_AE[preset], denoiser=DENOISER[preset],
        segmenter=segmenter_config(preset, **seg_kw),
        ae_steps=ae_steps, denoiser_steps=den_steps, segmenter_steps=seg_steps,
        ddim_steps=ddim, train_ddim_steps=train_ddim, prediction_type=_PREDICTION[preset],
        score_pool=score_pool_size(_AE[preset].image_size),
    )
    values.update(overrides)
    return from_dict(DiffADConfig, values)


# --------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------
class DiffAD(AnomalyMethod):
    """The DiffAD detector: autoencoder, latent denoiser, segmenter, schedule, synthesizer.

    ``forward(batch, generator)`` is the loss of the current training phase (dict with ``loss``
    and ``phase``); ``predict(images)`` returns the anomaly map, the pooled-max image score and
    the reconstruction x_r.
    """

    name = "diffad"
    config_class = DiffADConfig

    def __init__(self, config: DiffADConfig | None = None) -> None:
        super().__init__()
        self.config = config or DiffADConfig()
        self.autoencoder = AutoencoderKL(self.config.autoencoder)
        self.denoiser = DenoiserUNet(self.config.denoiser)
        self.segmenter = SegmentationUNet(self.config.segmenter)
        self.schedule = NoiseSchedule.from_config(self.config.diffusion)
        self.synthesizer = AnomalySynthesizer(self.config.synthesis)
        # training steps taken (decides the phase; saved with the weights, so resume works)
        self.register_buffer("phase_step", torch.zeros((), dtype=torch.long))
        # latents are multiplied by this before diffusion (1 / std, fitted once)
        self.register_buffer("latent_scale", torch.ones(()))
        self._perceptual: list[Callable[[Tensor, Tensor], Tensor]] = []

    # -- construction helpers ----------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return int(self.config.autoencoder.image_size)

    @property
    def train_steps(self) -> int:
        """ae_steps + denoiser_steps + segmenter_steps: the ``TrainConfig.steps`` to use."""
        c = self.config
        return c.ae_steps + c.denoiser_steps + c.segmenter_steps

    def param_groups(self, lr: float = 1e-4, lr_segmenter: float | None = None) -> list[dict]:
        return [
            {"params": list(self.autoencoder.parameters()), "lr": lr, "name": "autoencoder"},
            {"params": list(self.denoiser.parameters()), "lr": lr, "name": "denoiser"},
            {"params": list(self.segmenter.parameters()),
             "lr": lr if lr_segmenter is None else lr_segmenter, "name": "segmenter"},
        ]

    def set_perceptual(self, fn: Callable[[Tensor, Tensor], Tensor] | None) -> None:
        """Register a perceptual distance ``fn(x, x_hat) -> scalar`` (e.g. LPIPS) for the
        autoencoder loss, used when ``perceptual_weight > 0``. Not saved with the weights."""
        self._perceptual = [] if fn is None else [fn]

    def _schedule(self, device: torch.device) -> NoiseSchedule:
        if self.schedule.device != device:
            self.schedule.to(device)
        return self.schedule

    # -- phases -------------------------------------------------------------------------------
    def phase_of(self, step: int) -> str:
        """The phase that training step ``step`` belongs to."""
        c = self.config
        if step < c.ae_steps:
            return "autoencoder"
        if step < c.ae_steps + c.denoiser_steps:
            return "denoiser"
        return "segmenter"

    @property
    def phase(self) -> str:
        """The phase of the next training step."""
        return self.phase_of(int(self.phase_step))

    def start_phase(self, phase: str) -> None:
        """Jump to the first step of ``phase`` (e.g. to reuse an autoencoder trained elsewhere)."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; phases: {PHASES}")
        c = self.config
        first = {"autoencoder": 0, "denoiser": c.ae_steps,
                 "segmenter": c.ae_steps + c.denoiser_steps}[phase]
        self.phase_step.fill_(first)

    # -- latents ------------------------------------------------------------------------------
    def encode(self, images: Tensor) -> Tensor:
        """c = scale * mean of q(z | x): the (scaled) latent of ``images`` ``(B, 3, H, W)``."""
        return self.autoencoder.encode(images).mode() * self.latent_scale

    def decode(self, latents: Tensor) -> Tensor:
        """D(z / scale) clamped to [-1, 1]: ``(B, 3, H, W)``."""
        return self.autoencoder.decode(latents / self.latent_scale).clamp(-1.0, 1.0)

    def _fit_latent_scale(self, images: Tensor) -> None:
        """scale = 1 / std(z) on one batch (LDM's scale_by_std), averaged over DDP ranks."""
        with torch.no_grad():
            z = self.autoencoder.encode(images).mode().float()
            std = z.std().reshape(1)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(std)
                std /= torch.distributed.get_world_size()
            self.latent_scale.fill_(float(1.0 / std.clamp(min=1e-8)))

    # -- training -----------------------------------------------------------------------------
    def forward(self, batch: TrainBatch, generator: torch.Generator | None = None
                ) -> dict[str, Tensor]:
        """The loss of one batch of normal images in the current phase (see the module docs).

        * autoencoder: L = mean |x - D(z)| + kl_weight * KL / (3 H W), z ~ q(z | x);
        * denoiser: z0 = E(x) (scaled), t ~ U[0, T), z_t by eq. 1; c = E(S) of a synthetic
          anomalous S (or z0 itself), noised to t_c (:func:`noisy_condition`) or clean;
          L = ||eps - eps_theta(concat(z_t, c), t)||^2;
        * segmenter: S, M from :mod:`dap.synthesis`; x_r, x_inter from the frozen pipeline;
          L = focal(seg(concat(x_r, x_inter, S)), M).

        The phase counter advances by one per call in training mode.
        """
        step = int(self.phase_step)
        phase = self.phase_of(step)
        if phase == "autoencoder":
            out = self._autoencoder_loss(batch.images, generator)
        elif phase == "denoiser":
            if self.config.scale_latents and step == self.config.ae_steps:
                self._fit_latent_scale(batch.images)
            out = self._denoiser_loss(batch, generator)
        else:
            out = self._segmenter_loss(batch, generator)
        out["phase"] = torch.tensor(float(PHASES.index(phase)))
        if self.training:
            self.phase_step += 1
        return out

    def _autoencoder_loss(self, x: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
        c = self.config
        x_hat, posterior = self.autoencoder(x, generator=generator, sample_posterior=True)
        perceptual = None
        if c.perceptual_weight > 0:
            if not self._perceptual:
                raise RuntimeError("perceptual_weight > 0 but no perceptual distance is set; "
                                   "call method.set_perceptual(lpips_fn) first")
            perceptual = self._perceptual[0](x, x_hat)
        loss = autoencoder_loss(x, x_hat, posterior, c.kl_weight, c.ae_reconstruction,
                                perceptual, c.perceptual_weight)
        return {"loss": loss.total, "loss_rec": loss.reconstruction.detach(),
                "loss_kl": loss.kl.detach()}

    def _denoiser_loss(self, batch: TrainBatch, generator: torch.Generator | None
                       ) -> dict[str, Tensor]:
        c = self.config
        x = batch.images
        schedule = self._schedule(x.device)
        T = c.diffusion.num_train_timesteps
        with torch.no_grad():
            z0 = self.encode(x)
            if c.condition_source == "synthetic":
                syn = self.synthesizer(x, foreground=batch.foreground, generator=generator,
                                       is_texture=batch.is_texture)
                cond = self.encode(syn.image)
            else:
                cond = z0
        b = z0.shape[0]
        t = torch.randint(0, T, (b,), generator=generator, device=x.device)
        noise = torch.randn(z0.shape, generator=generator, device=x.device)
        z_t = schedule.add_noise(z0, noise, t)
        if c.noisy_condition:
            t_c = t if c.condition_timestep == "same" else \
                torch.randint(0, T, (b,), generator=generator, device=x.device)
            cond_noise = torch.randn(z0.shape, generator=generator, device=x.device)
            cond = noisy_condition(schedule, cond, cond_noise, t_c)
        out = self.denoiser(torch.cat([z_t, cond], dim=1), t).float()
        target = noise if c.prediction_type == "epsilon" else z0
        loss = (out - target).square().mean()
        return {"loss": loss, "loss_noise": loss.detach()}

    def _segmenter_loss(self, batch: TrainBatch, generator: torch.Generator | None
                        ) -> dict[str, Tensor]:
        c = self.config
        syn = self.synthesizer(batch.images, foreground=batch.foreground, generator=generator,
                               is_texture=batch.is_texture)
        with torch.no_grad():
            parts = self.reconstruct(syn.image, generator=generator, shared_noise=False,
                                     num_steps=c.train_ddim_steps or c.ddim_steps)
        logits = self.segmenter(self._segmenter_input(syn.image, parts)).float()
        mask = syn.mask.float()
        loss_focal = focal_loss(logits, mask, alpha=c.focal_alpha, gamma=c.focal_gamma,
                                from_logits=True)
        loss = c.focal_weight * loss_focal
        out = {"loss_focal": loss_focal.detach()}
        if c.smooth_l1_weight > 0:
            loss_sl1 = smooth_l1_loss(logits, mask, from_logits=True)
            loss = loss + c.smooth_l1_weight * loss_sl1
            out["loss_smooth_l1"] = loss_sl1.detach()
        return {"loss": loss, **out}

    # -- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def sample_latents(self, condition: Tensor, generator: torch.Generator | None = None,
                       num_steps: int | None = None, shared_noise: bool = True,
                       sample_condition: SampleCondition | None = None) -> Tensor:
        """z_r: DDIM from z_T ~ N(0, I) to z_0, conditioned on ``condition`` ``(B, 4, h, w)``.

        At each DDIM step t the denoiser sees concat(z_t, c_t) with c_t = c (``clean``) or
        c_t = sqrt(abar_t) c + sqrt(1 - abar_t) eps' (``noisy``, one eps' for all steps).
        ``shared_noise``: one z_T (and eps') for every image of the batch, so the result does
        not depend on the batch composition (inference); False draws one per image (training).
        """
        c = self.config
        schedule = self._schedule(condition.device)
        mode = sample_condition or c.sample_condition
        if generator is None:
            generator = torch.Generator(condition.device).manual_seed(c.inference_seed)
        shape = (1, *condition.shape[1:]) if shared_noise else tuple(condition.shape)

        def draw() -> Tensor:
            n = torch.randn(shape, generator=generator, device=condition.device)
            return n.expand_as(condition).to(condition.dtype)

        z = draw()
        cond_noise = draw() if mode == "noisy" else None
        steps = ddim_timesteps(c.diffusion.num_train_timesteps - 1, num_steps or c.ddim_steps)
        for i, t in enumerate(steps):
            prev = steps[i + 1] if i + 1 < len(steps) else -1
            cond = condition if cond_noise is None else \
                noisy_condition(schedule, condition, cond_noise, t)
            out = self.denoiser(torch.cat([z, cond], dim=1), t).to(z.dtype)
            # eps from a z_0 prediction: eps = (z_t - sqrt(abar_t) z_0) / sqrt(1 - abar_t)
            eps = out if c.prediction_type == "epsilon" else \
                schedule.noise_from_original(z, out, t)
            noise = draw() if c.ddim_eta > 0 else None
            z = schedule.ddim_step(eps, t, prev, z, eta=c.ddim_eta,
                                   noise=noise).prev_sample
        return z

    @torch.no_grad()
    def reconstruct(self, images: Tensor, generator: torch.Generator | None = None,
                    num_steps: int | None = None, shared_noise: bool = True
                    ) -> dict[str, Tensor]:
        """Every intermediate of DiffAD's reconstruction of ``images`` ``(B, 3, H, W)``.

        Returns ``condition`` c, ``latent`` z_r, ``interpolated_latent`` z_inter (scaled latents,
        ``(B, 4, h, w)``) and ``reconstruction`` x_r = D(z_r), ``interpolated`` x_inter =
        D(z_inter) (images in [-1, 1]).
        """
        cond = self.encode(images)
        z_r = self.sample_latents(cond, generator, num_steps, shared_noise)
        z_i = interpolate_latents(cond, z_r, self.config.interpolation_lambda)
        return {"condition": cond, "latent": z_r, "interpolated_latent": z_i,
                "reconstruction": self.decode(z_r), "interpolated": self.decode(z_i)}

    def _segmenter_input(self, images: Tensor, parts: dict[str, Tensor]) -> Tensor:
        """concat(x_r, x_inter, x) (9 channels) or concat(x_r, x) without interpolated channels."""
        chans = [parts["reconstruction"]]
        if self.config.interpolated_channels:
            chans.append(parts["interpolated"])
        chans.append(images)
        return torch.cat([ch.to(images.dtype) for ch in chans], dim=1)

    @torch.no_grad()
    def predict(self, images: Tensor, generator: torch.Generator | None = None) -> Prediction:
        """Anomaly map (B, H, W) in [0, 1], pooled-max image score (B,), reconstruction x_r."""
        if int(self.phase_step) < self.config.ae_steps + self.config.denoiser_steps:
            warnings.warn(f"DiffAD: the segmenter has not been trained yet (phase {self.phase!r}, "
                          f"step {int(self.phase_step)}); its anomaly maps are meaningless",
                          stacklevel=2)
        parts = self.reconstruct(images, generator)
        logits = self.segmenter(self._segmenter_input(images, parts))
        amap = torch.sigmoid(logits.float())[:, 0]
        return Prediction(amap, pooled_max_score(amap, self.config.score_pool),
                          parts["reconstruction"])


# --------------------------------------------------------------------------------------------
# The side-by-side table (python -m dap benchmark --methods diffad --profile ci)
# --------------------------------------------------------------------------------------------
#: Training for the benchmark rows, sized for the ``ci`` preset (64 px): 400 autoencoder + 800
#: denoiser + 300 segmenter steps at batch 8. The last checkpoint is kept: validation before the
#: segmenter phase cannot select anything meaningful.
BENCHMARK_TRAIN = {"steps": sum(_SCHEDULE["ci"][:3]), "batch_size": 8, "lr": 5e-4,
                   "val_every": 0, "select_metric": "last"}
BENCHMARK_VARIANTS: dict[str, dict[str, Any]] = {
    "diffad": {"train_overrides": BENCHMARK_TRAIN},
    # the same model, sampled with the condition noised to each DDIM step
    "diffad noisy-sample": {"same_model_as": "diffad",
                            "eval_overrides": {"sample_condition": "noisy"}},
    # trained with the clean condition (no noisy condition embedding)
    "diffad clean-cond": {"overrides": {"noisy_condition": False},
                          "train_overrides": BENCHMARK_TRAIN},
    # the segmenter sees concat(x_r, x) only (6 channels)
    "diffad no-interp": {"overrides": {"interpolated_channels": False},
                         "train_overrides": BENCHMARK_TRAIN},
}


__all__ = ["DiffAD", "DiffADConfig", "diffad_config", "noisy_condition", "interpolate_latents",
           "score_pool_size", "pooled_max_score", "latent_denoiser_config", "PHASES",
           "BENCHMARK_VARIANTS", "BENCHMARK_TRAIN", "DENOISER"]
