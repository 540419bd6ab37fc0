"""DDAD's configuration and presets (the official code's values as defaults).

Paper: Mousakhan, Brox, Tayyub, "Anomaly Detection with Conditioned Denoising Diffusion Models"
(DDAD), Sec. 3 and 4. Differences to the official code are options, each listed with its option
in :mod:`dap.methods.ddad.official`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from dap.config import ConfigError, DiffusionConfig, replace
from dap.methods.base import check_preset
from dap.models.denoiser import DenoiserConfig, denoiser_config
from dap.synthesis import SynthesisConfig

#: which network's features the map compares (the official config: ``wide_resnet101_2``)
Extractor = Literal["denoiser", "wide_resnet50_2", "wide_resnet101_2"]
#: whether ``predict`` scores with the adapted extractor copy
Adaptation = Literal["auto", "require", "off"]
#: the timesteps of the conditioned trajectory (:func:`dap.methods.ddad.ops.ddad_timesteps`)
Grid = Literal["official", "dap"]
#: how the noise loss reduces the squared errors of one image
Reduction = Literal["mean", "sum"]
#: what domain adaptation reconstructs towards what (:func:`dap.methods.ddad.adaptation.adapt`)
Pairing = Literal["halves", "self"]
#: the distance of the adaptation loss (:func:`dap.methods.ddad.ops.adaptation_loss`)
Distance = Literal["global", "map"]
#: the BatchNorm mode of the extractor copy while it adapts
BatchNormMode = Literal["train", "eval"]
#: Adam's epsilon in the official code (torch's default), for the summed loss
ADAM_EPS = 1e-8


@dataclass
class DDADConfig:
    """Everything that defines a DDAD model (the official code's values as defaults).

    Differences to the official code are listed in :mod:`dap.methods.ddad.official`, each with
    the option that restores the official setting.

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
    grid : ``"official"``: the network is evaluated at t' - skip, ..., skip, 0 (225, 200, ..., 0
        for t' = 250 and 10 steps; skip = t' / ddim_steps), the first step on the sample noised
        to t'; ``"dap"``: at t', ..., skip (250, ..., 25), each step on a sample of its own noise
        level. Both take ``ddim_steps`` network evaluations.
    clip_sample : clamp x0 estimates to [-1, 1] (the official code does not).
    extractor : ``"denoiser"`` (default: the trained denoiser's encoder, offline),
        ``"wide_resnet101_2"`` (the official config's ImageNet backbone) or ``"wide_resnet50_2"``;
        the WideResNets need ``extractor_weights``.
    extractor_weights : path of torchvision's ``wide_resnet101_2-32ee1156.pth`` or
        ``wide_resnet50_2-95faca4d.pth`` (read once, with ``weights_only=True``; the weights then
        live in the method's checkpoints).
    extractor_levels : pyramid levels the map compares: (1, 2) = WideResNet layer2 and layer3
        (the official code), or the denoiser's 2nd and 3rd encoder resolutions.
    feature_t : the step the denoiser encoder is told when used as extractor (0 = clean image).
    feature_pool : side of the mean-pooled feature patches (3).
    align_corners : bilinear upsampling of the feature distances with ``align_corners=True``
        (the official code) or False.
    wrn_base_width : 64 for the real WideResNet; smaller only for tests.
    v : weight of the pixel distance (1 on MVTec in the paper).
    blur_sigma : Gaussian blur of the map; None = 4 * image_size / 256 (the paper's 4 at 256 px,
        the same physical smoothing at other sizes: 1 at 64 px).
    score_crop : the image score is the max of the map's central ``score_crop`` fraction of
        each side (the official code: 224 of 256); 1.0 takes the whole map.
    loss_reduction : the noise loss per image: ``"mean"`` of the squared errors (dap) or their
        ``"sum"`` over C x H x W (the official code); both averaged over the batch.
    weight_decay : Adam's coupled L2 decay *for the summed loss* (the official 0.05). With
        ``"mean"`` the denoiser's parameter group gets ``weight_decay / (3 H W)`` and Adam's eps
        ``1e-8 / (3 H W)``, which makes the optimiser steps those of the summed loss (Adam is
        invariant to the loss scale otherwise; :attr:`loss_scale`). It replaces
        ``TrainConfig.weight_decay`` for the denoiser.
    domain_adaptation_steps : optimiser steps of the domain adaptation
        (:func:`dap.methods.ddad.adaptation.adapt`) run by ``DDAD.after_training`` (0: no
        domain adaptation; a copy of the extractor exists only when > 0).
    da_lambda, da_lr, da_batch_size : distillation weight (0.1 MVTec, 0.01 VisA), AdamW learning
        rate (1e-4) and batch of the adaptation.
    da_pairing : ``"halves"`` (official): each batch's second half is reconstructed towards its
        first half; ``"self"``: every image towards itself, as at test time.
    da_w : the conditioning weight of the adaptation's reconstructions (official ``w_DA`` = 3).
    da_levels : the pyramid levels of the adaptation loss (official: layer1-3 = (0, 1, 2)).
    da_distance : ``"global"`` (official): 1 - cos of each image's flattened feature map;
        ``"map"``: the mean of the map's feature distance.
    da_distill_reconstruction : add lambda d(A(x0), F(x0)) to the loss (the official code).
    da_batchnorm : the copy's BatchNorm layers in ``"train"`` mode while adapting (official:
        batch statistics, running statistics updated) or ``"eval"`` (stored statistics).
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
    grid: Grid = "official"
    clip_sample: bool = False
    extractor: Extractor = "denoiser"
    extractor_weights: str | None = None
    extractor_levels: tuple[int, ...] = (1, 2)
    feature_t: int = 0
    feature_pool: int = 3
    align_corners: bool = True
    wrn_base_width: int = 64
    v: float = 1.0
    blur_sigma: float | None = None
    score_crop: float = 224 / 256
    loss_reduction: Reduction = "mean"
    weight_decay: float = 0.05
    domain_adaptation_steps: int = 0
    da_lambda: float = 0.1
    da_lr: float = 1e-4
    da_batch_size: int = 16
    da_pairing: Pairing = "halves"
    da_w: float = 3.0
    da_levels: tuple[int, ...] = (0, 1, 2)
    da_distance: Distance = "global"
    da_distill_reconstruction: bool = True
    da_batchnorm: BatchNormMode = "train"
    use_adaptation: Adaptation = "auto"
    calibration_images: int = 64
    inference_seed: int = 0

    def __post_init__(self) -> None:
        T = self.diffusion.num_train_timesteps
        if not 0 < self.t_start < T:
            raise ConfigError(f"DDADConfig.t_start must lie in (0, {T}), got {self.t_start}")
        if self.ddim_steps < 1:
            raise ConfigError(f"DDADConfig.ddim_steps must be >= 1, got {self.ddim_steps}")
        if self.grid == "official" and self.ddim_steps > self.t_start:
            raise ConfigError(f"DDADConfig.ddim_steps ({self.ddim_steps}) must not exceed t_start "
                              f"({self.t_start}) with grid='official' (225, ..., 0 needs distinct "
                              "steps); use grid='dap' or fewer steps")
        for key in ("w", "da_w", "v", "weight_decay"):
            if getattr(self, key) < 0:
                raise ConfigError(f"DDADConfig.{key} must be >= 0, got {getattr(self, key)}")
        if not 0.0 <= self.eta <= 1.0:
            raise ConfigError(f"DDADConfig.eta must lie in [0, 1], got {self.eta}")
        if not 0 <= self.feature_t < T:
            raise ConfigError(f"DDADConfig.feature_t must lie in [0, {T}), got {self.feature_t}")
        n_levels = 4 if self.extractor != "denoiser" else len(self.denoiser.channel_mult)
        for key in ("extractor_levels", "da_levels"):
            levels = getattr(self, key)
            if not levels or min(levels) < 0 or max(levels) >= n_levels or \
                    len(set(levels)) != len(levels):
                raise ConfigError(f"DDADConfig.{key} must be distinct levels in 0..{n_levels - 1} "
                                  f"for extractor {self.extractor!r}, got {levels}")
        if self.feature_pool < 1 or self.feature_pool % 2 == 0:
            raise ConfigError("DDADConfig.feature_pool must be odd and >= 1, got "
                              f"{self.feature_pool}")
        if self.wrn_base_width < 1:
            raise ConfigError("DDADConfig.wrn_base_width must be >= 1")
        if self.blur_sigma is not None and self.blur_sigma < 0:
            raise ConfigError(f"DDADConfig.blur_sigma must be >= 0 or None, got {self.blur_sigma}")
        if not 0.0 < self.score_crop <= 1.0:
            raise ConfigError(f"DDADConfig.score_crop must lie in (0, 1] (a fraction of the map's "
                              f"side; official 224/256 = 0.875), got {self.score_crop}")
        for key in ("domain_adaptation_steps", "calibration_images"):
            if getattr(self, key) < 0:
                raise ConfigError(f"DDADConfig.{key} must be >= 0, got {getattr(self, key)}")
        if self.da_batch_size < 1 or self.da_lr <= 0 or self.da_lambda < 0:
            raise ConfigError("DDADConfig needs da_batch_size >= 1, da_lr > 0, da_lambda >= 0")
        if self.da_pairing == "halves" and self.da_batch_size % 2:
            raise ConfigError(f"DDADConfig.da_batch_size must be even with da_pairing='halves' "
                              f"(one half is the targets of the other), got {self.da_batch_size}")

    @property
    def smoothing_sigma(self) -> float:
        """The blur actually used: ``blur_sigma``, or 4 * image_size / 256."""
        if self.blur_sigma is not None:
            return self.blur_sigma
        return 4.0 * self.denoiser.image_size / 256.0

    @property
    def all_levels(self) -> tuple[int, ...]:
        """Every level an extractor must return: the map's and the adaptation loss's, sorted."""
        return tuple(sorted(set(self.extractor_levels) | set(self.da_levels)))

    @property
    def loss_scale(self) -> float:
        """The official (summed) loss divided by this config's: 1 for ``"sum"``, 3 H W for
        ``"mean"``. Adam on L / c with decay wd / c and eps 1e-8 / c takes the steps of Adam on L
        with wd and 1e-8."""
        if self.loss_reduction == "sum":
            return 1.0
        return float(self.denoiser.in_channels * self.denoiser.image_size ** 2)


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


__all__ = ["DDADConfig", "ddad_config", "Extractor", "Adaptation", "Grid", "Reduction", "Pairing",
           "Distance", "BatchNormMode", "ADAM_EPS"]
