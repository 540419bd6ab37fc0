"""DDAD's configuration and presets (paper values as defaults).

Paper: Mousakhan, Brox, Tayyub, "Anomaly Detection with Conditioned Denoising Diffusion Models"
(DDAD), Sec. 3 and 4. Differences to the official code are options, each documented on
:class:`DDADConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from dap.config import ConfigError, DiffusionConfig, replace
from dap.methods.base import check_preset
from dap.models.denoiser import DenoiserConfig, denoiser_config
from dap.synthesis import SynthesisConfig

#: which network's features the map compares
Extractor = Literal["denoiser", "wide_resnet50_2"]
#: whether ``predict`` scores with the adapted extractor copy
Adaptation = Literal["auto", "require", "off"]


@dataclass
class DDADConfig:
    """Everything that defines a DDAD model (paper values as defaults).

    Attributes
    ----------
    denoiser, diffusion
        The noise predictor (paper: guided-diffusion U-Net, base 64 channels, ~33 M parameters)
        and its schedule (T = 1000, linear 1e-4 -> 0.02).
    synthesis
        Only for the *validation* set of synthetic anomalies that model selection uses;
        DDAD trains on normal images only.
    t_start, ddim_steps, w, eta
        Conditioned denoising: noise to t' = 250, 10 DDIM steps, weight 2, eta 1 (the official
        code's eta; the paper does not give it). eta = 0 makes the trajectory deterministic.
    clip_sample : clamp x0 estimates to [-1, 1] (the official code does not).
    extractor : ``"denoiser"`` (default: the trained denoiser's encoder, offline) or
        ``"wide_resnet50_2"`` (the paper's ImageNet backbone; needs ``extractor_weights``).
    extractor_weights : path of torchvision's ``wide_resnet50_2-95faca4d.pth`` (read once, with
        ``weights_only=True``; the weights then live in the method's checkpoints).
    extractor_levels : pyramid levels compared (1, 2) = WideResNet layer2 and layer3 (the
        paper), or the denoiser's 2nd and 3rd encoder resolutions.
    feature_t : the step the denoiser encoder is told when used as extractor (0 = clean image).
    feature_pool : side of the mean-pooled feature patches (3).
    wrn_base_width : 64 for the real WideResNet; smaller only for tests.
    v : weight of the pixel distance (1 on MVTec in the paper).
    blur_sigma : Gaussian blur of the map; None = 4 * image_size / 256 (the paper's 4 at 256 px,
        the same physical smoothing at other sizes: 1 at 64 px).
    domain_adaptation_steps : optimiser steps of the domain adaptation
        (:func:`dap.methods.ddad.adaptation.adapt`) run by ``DDAD.after_training`` (0: no
        domain adaptation; a copy of the extractor exists only when > 0).
    da_lambda, da_lr, da_batch_size : distillation weight (0.1 MVTec, 0.01 VisA), AdamW learning
        rate (1e-4) and batch of the adaptation.
    use_adaptation : ``"auto"`` scores with the adapted extractor once adaptation has run,
        ``"off"`` always with the frozen one, ``"require"`` refuses to score without it.
    calibration_images : normal images ``DDAD.calibrate`` estimates s = max f / max p on.
    inference_seed : seed of the reconstruction noise at prediction time.
    """

    denoiser: DenoiserConfig = field(
        default_factory=lambda: denoiser_config("paper", num_channels=64))
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    t_start: int = 250
    ddim_steps: int = 10
    w: float = 2.0
    eta: float = 1.0
    clip_sample: bool = False
    extractor: Extractor = "denoiser"
    extractor_weights: str | None = None
    extractor_levels: tuple[int, ...] = (1, 2)
    feature_t: int = 0
    feature_pool: int = 3
    wrn_base_width: int = 64
    v: float = 1.0
    blur_sigma: float | None = None
    domain_adaptation_steps: int = 0
    da_lambda: float = 0.1
    da_lr: float = 1e-4
    da_batch_size: int = 16
    use_adaptation: Adaptation = "auto"
    calibration_images: int = 64
    inference_seed: int = 0

    def __post_init__(self) -> None:
        T = self.diffusion.num_train_timesteps
        if not 0 < self.t_start < T:
            raise ConfigError(f"DDADConfig.t_start must lie in (0, {T}), got {self.t_start}")
        if self.ddim_steps < 1:
            raise ConfigError(f"DDADConfig.ddim_steps must be >= 1, got {self.ddim_steps}")
        if self.w < 0:
            raise ConfigError(f"DDADConfig.w must be >= 0, got {self.w}")
        if not 0.0 <= self.eta <= 1.0:
            raise ConfigError(f"DDADConfig.eta must lie in [0, 1], got {self.eta}")
        if not 0 <= self.feature_t < T:
            raise ConfigError(f"DDADConfig.feature_t must lie in [0, {T}), got {self.feature_t}")
        n_levels = 4 if self.extractor == "wide_resnet50_2" else len(self.denoiser.channel_mult)
        levels = self.extractor_levels
        if not levels or min(levels) < 0 or max(levels) >= n_levels or \
                len(set(levels)) != len(levels):
            raise ConfigError(f"DDADConfig.extractor_levels must be distinct levels in "
                              f"0..{n_levels - 1} for extractor {self.extractor!r}, got {levels}")
        if self.feature_pool < 1 or self.feature_pool % 2 == 0:
            raise ConfigError("DDADConfig.feature_pool must be odd and >= 1, got "
                              f"{self.feature_pool}")
        if self.wrn_base_width < 1:
            raise ConfigError("DDADConfig.wrn_base_width must be >= 1")
        if self.v < 0:
            raise ConfigError(f"DDADConfig.v must be >= 0, got {self.v}")
        if self.blur_sigma is not None and self.blur_sigma < 0:
            raise ConfigError(f"DDADConfig.blur_sigma must be >= 0 or None, got {self.blur_sigma}")
        for key in ("domain_adaptation_steps", "calibration_images"):
            if getattr(self, key) < 0:
                raise ConfigError(f"DDADConfig.{key} must be >= 0, got {getattr(self, key)}")
        if self.da_batch_size < 1 or self.da_lr <= 0 or self.da_lambda < 0:
            raise ConfigError("DDADConfig needs da_batch_size >= 1, da_lr > 0, da_lambda >= 0")

    @property
    def smoothing_sigma(self) -> float:
        """The blur actually used: ``blur_sigma``, or 4 * image_size / 256."""
        if self.blur_sigma is not None:
            return self.blur_sigma
        return 4.0 * self.denoiser.image_size / 256.0


def ddad_config(preset: str = "paper", **overrides: Any) -> DDADConfig:
    """A DDAD config for ``paper`` (256 px, base 64 channels), ``cpu`` (128 px) or ``ci`` (64 px).

    The small presets take dap's small denoisers (:func:`denoiser_config`) and a smaller
    adaptation batch; everything else keeps the paper's values.
    """
    check_preset(preset, "DDAD")
    den = denoiser_config(preset, num_channels=64) if preset == "paper" else \
        denoiser_config(preset)
    base = DDADConfig(denoiser=den, da_batch_size={"paper": 16, "cpu": 8, "ci": 4}[preset],
                      calibration_images={"paper": 64, "cpu": 32, "ci": 16}[preset])
    return replace(base, **overrides) if overrides else base


__all__ = ["DDADConfig", "ddad_config", "Extractor", "Adaptation"]
