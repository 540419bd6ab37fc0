"""DiffAD's configuration, its latent denoisers and the presets (:func:`diffad_config`).

Where dap differs from the official code, and the option that restores the official setting, is
listed in :mod:`dap.methods.diffad.official` (rendered into :mod:`dap.methods.diffad`'s
docstring); the z_0 prediction of the small presets is explained there too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from dap.config import ConfigError, DiffusionConfig, from_dict, merge
from dap.methods.base import check_preset
from dap.methods.diffad.ops import sampling_timesteps, score_pool_size
from dap.methods.diffad.sampler import NOISY_FIXED_RANGE
from dap.models.autoencoder import AutoencoderConfig, autoencoder_config
from dap.models.denoiser import DenoiserConfig
from dap.models.segmentation import SegmenterConfig, segmenter_config
from dap.synthesis import SynthesisConfig

#: the condition of the DDIM sampler: c itself; c noised once to a t_c in [400, 500) and kept
#: for every step (the official alternative); c noised to each step's t (dap's own)
SampleCondition = Literal["clean", "noisy_fixed", "noisy_per_step"]
#: the DDIM timesteps: from T - 1 down (dap) or Latent Diffusion's grid (1, 1 + T/S, ...)
DDIMGrid = Literal["dap", "ldm"]


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
        every step after them (see :mod:`dap.methods.diffad.model`).
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
        Normalise latents to unit standard deviation, fitted on the first denoiser batch (LDM's
        ``scale_by_std``; the official DiffAD config leaves the latents unscaled: False).
    condition_source : {"synthetic", "input"}
        What the denoiser is conditioned on in training: the latent of a synthetic anomalous
        version of the image (eq. 12 synthesis, half of the samples left normal) while the target
        stays the normal latent (the official code: ``cond_stage_key: augmented_image``), or the
        latent of the normal image itself (``input``: target = condition).
    noisy_condition : bool
        Train with the noisy condition embedding (DiffAD) or the clean condition (ablation).
    condition_timestep : {"independent", "same"}
        The t of the noisy condition: drawn independently of the denoiser's t, t_c ~ U[0, T)
        (the official code), or the denoiser's own t (the equation as printed).
    sample_condition : {"clean", "noisy_fixed", "noisy_per_step"}
        Condition of the DDIM sampler: ``clean``, c itself at every step (the official code; in
        the training distribution when t_c is independent, since t_c near 0 is seen);
        ``noisy_fixed``, c noised *once* to t_c (:attr:`sample_condition_t`) and the same noisy
        condition at every step (the official alternative, commented out in its test script);
        ``noisy_per_step``, c noised to each step's own t with one fixed noise (dap's own
        variant: the training distribution of ``condition_timestep="same"``). A model trained
        with the clean condition must sample with it.
    sample_condition_t : int or None
        t_c of ``noisy_fixed``: None draws it from U[400, 500) with the inference generator
        (the official script's range; one draw shared by the batch at inference, one per image
        for the segmenter's training reconstructions), an int fixes it.
    prediction_type : {"epsilon", "sample"}
        What the denoiser predicts (diffusers' names): the noise eps (DDPM, LDM, DiffAD) or the
        clean latent z_0 (loss ||z_0 - f(concat(z_t, c), t)||^2, weighting the high-noise steps,
        where only the condition can tell what z_0 is, far more than the eps loss does).
    ddim_steps : int
        DDIM steps from z_T ~ N(0, I) at inference (paper: 50; official test script: 10).
    train_ddim_steps : int or None
        DDIM steps of the reconstructions the segmenter trains on (None: ``ddim_steps``).
    ddim_grid : {"dap", "ldm"}
        The DDIM timesteps: ``dap``, S steps evenly from T - 1 down (999, 899, ..., 100 for
        S = 10); ``ldm``, Latent Diffusion's uniform grid of the official code, 1 + k T // S
        (901, 801, ..., 1). Both end with a step to z_0 (abar = 1); the official sampler's last
        step ends at abar_0 = 1 - beta_0 instead.
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
    sample_condition_t: int | None = None
    prediction_type: Literal["epsilon", "sample"] = "epsilon"
    ddim_steps: int = 50
    train_ddim_steps: int | None = None
    ddim_grid: DDIMGrid = "dap"
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
        if max(self.ddim_steps, self.train_ddim_steps or 0) > self.diffusion.num_train_timesteps:
            raise ConfigError(f"DiffADConfig.ddim_steps and train_ddim_steps must be <= "
                              f"num_train_timesteps = {self.diffusion.num_train_timesteps}")
        for steps in {self.ddim_steps, self.train_ddim_steps or self.ddim_steps}:
            sampling_timesteps(self.diffusion.num_train_timesteps, steps, self.ddim_grid)
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
        if not self.noisy_condition and self.sample_condition != "clean":
            raise ConfigError("DiffADConfig: a model trained with the clean condition "
                              "(noisy_condition=False) never saw a noisy one; use "
                              "sample_condition='clean'")
        T = self.diffusion.num_train_timesteps
        if self.sample_condition_t is not None and not 0 <= self.sample_condition_t < T:
            raise ConfigError(f"DiffADConfig.sample_condition_t must lie in [0, {T}), got "
                              f"{self.sample_condition_t}")
        if self.sample_condition == "noisy_fixed" and self.sample_condition_t is None \
                and NOISY_FIXED_RANGE[1] > T:
            raise ConfigError(f"DiffADConfig: with {T} diffusion steps the official t_c range "
                              f"{NOISY_FIXED_RANGE} does not fit; set sample_condition_t")


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
    # paper: 32 x 32 x 4 latents; the official configs/mvtec.yaml unet_config (model_channels
    # 256, channel_mult 1 2 4, 2 res blocks, attention at down-sampling rates 4 2 1 = feature
    # maps 8, 16, 32 px, 32 channels per head, convolutional down/up-sampling): 257.7 M
    # parameters, as many as the official UNetModel (tests/test_diffad_official.py).
    "paper": latent_denoiser_config(_AE["paper"], num_channels=256, channel_mult=(1, 2, 4),
                                    num_res_blocks=2, attention_resolutions=(32, 16, 8),
                                    num_head_channels=32, resblock_updown=False),
}
# Phase lengths (ae, denoiser, segmenter) and DDIM steps (inference, training) per preset.
_SCHEDULE = {"ci": (400, 800, 300, 10, 5), "cpu": (2000, 4000, 2000, 20, 10),
             "paper": (20000, 40000, 20000, 50, 50)}
# What the latent denoiser predicts (see :mod:`dap.methods.diffad`).
_PREDICTION = {"ci": "sample", "cpu": "sample", "paper": "epsilon"}


def diffad_config(preset: str = "paper", **overrides: Any) -> DiffADConfig:
    """A DiffAD config for ``paper`` (256 px), ``cpu`` (128 px) or ``ci`` (64 px).

    The small presets shrink the networks, the phases and the DDIM steps and predict z_0
    (``prediction_type="sample"``); ``paper`` keeps eps prediction and 50 DDIM steps.
    Convenience (explicit overrides win): ``interpolated_channels=False`` also sets
    ``segmenter.in_channels`` to 6.
    """
    check_preset(preset, "DiffAD")
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
    return from_dict(DiffADConfig, merge(values, overrides))


__all__ = ["DiffADConfig", "diffad_config", "latent_denoiser_config", "DENOISER",
           "SampleCondition", "DDIMGrid"]
