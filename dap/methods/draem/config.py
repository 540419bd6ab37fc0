"""DRAEM's configuration and presets (the paper's / official code's values as defaults).

Paper: Zavrtanik, Kristan, Skocaj, "DRAEM - A discriminatively trained reconstruction embedding
for surface anomaly detection", ICCV 2021, Sec. 3. Where dap differs from the official code
(VitjanZ/DRAEM), :mod:`dap.methods.draem.official` says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from dap.config import ConfigError, replace
from dap.methods.base import check_preset
from dap.models.reconstructive import ReconstructiveConfig, reconstructive_config
from dap.models.segmentation import SegmenterConfig, segmenter_config
from dap.synthesis import SynthesisConfig

#: how the two networks are initialised: DRAEM's ``weights_init`` or PyTorch's defaults
Init = Literal["official", "pytorch"]

#: side of the box filter of the image score at each preset (the paper's 21 px at 256 px,
#: scaled with the image side to the nearest odd size)
SCORE_WINDOWS: dict[str, int] = {"paper": 21, "cpu": 11, "ci": 5}


@dataclass
class DRAEMConfig:
    """Everything that defines a DRAEM model.

    Attributes
    ----------
    reconstructive, segmenter, synthesis
        The reconstructive auto-encoder, the discriminative U-Net (the one DiffusionAD uses) and
        the anomaly synthesis (DiffusionAD's, :mod:`dap.synthesis`).
    ssim_weight : float
        lambda of L_rec = L2 + lambda * L_SSIM (Sec. 3.1, eq. 2; official code: 1).
    ssim_window, ssim_sigma : int, float
        The Gaussian window of SSIM (Wang et al. 2004: 11 x 11, sigma 1.5; the official code).
    focal_gamma : float
        Focusing parameter of the focal loss L_seg (official ``FocalLoss``: 2).
    seg_weight : float
        L = L_rec + seg_weight * L_seg (paper and official: 1).
    score_window : int
        Side of the box filter (``avg_pool2d``, stride 1, zero padding counted) whose maximum
        over the mask is the image score (official: 21 at 256 px; presets scale it).
    init : ``"official"`` or ``"pytorch"``
        ``official``: DRAEM's ``weights_init`` (conv weights N(0, 0.02), BatchNorm weights
        N(1, 0.02) and biases 0); ``pytorch``: the layers' default initialisation.
    """

    reconstructive: ReconstructiveConfig = field(
        default_factory=lambda: reconstructive_config("paper"))
    segmenter: SegmenterConfig = field(default_factory=lambda: segmenter_config("paper"))
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    ssim_weight: float = 1.0
    ssim_window: int = 11
    ssim_sigma: float = 1.5
    focal_gamma: float = 2.0
    seg_weight: float = 1.0
    score_window: int = 21
    init: Init = "official"

    def __post_init__(self) -> None:
        r = self.reconstructive
        if self.segmenter.in_channels != r.in_channels + r.out_channels:
            raise ConfigError("the segmenter sees concat(reconstruction, input): "
                              "segmenter.in_channels must be reconstructive.in_channels + "
                              f"reconstructive.out_channels = {r.in_channels + r.out_channels}")
        if self.segmenter.out_channels != 1:
            raise ConfigError("DRAEM's segmenter predicts one anomaly logit per pixel: "
                              "segmenter.out_channels must be 1, got "
                              f"{self.segmenter.out_channels}")
        factor = 2 ** (len(self.segmenter.encoder_mult) - 1)
        if r.image_size % factor:
            raise ConfigError(f"reconstructive.image_size={r.image_size} must be divisible by the "
                              f"segmenter's down-sampling factor {factor}")
        for key in ("ssim_weight", "seg_weight", "focal_gamma"):
            if getattr(self, key) < 0:
                raise ConfigError(f"DRAEMConfig.{key} must be >= 0, got {getattr(self, key)}")
        if self.ssim_window < 1 or self.ssim_window % 2 == 0:
            raise ConfigError(f"DRAEMConfig.ssim_window must be odd and >= 1, got "
                              f"{self.ssim_window}")
        if self.ssim_sigma <= 0:
            raise ConfigError(f"DRAEMConfig.ssim_sigma must be > 0, got {self.ssim_sigma}")
        if self.score_window < 1 or self.score_window % 2 == 0 \
                or self.score_window > r.image_size:
            raise ConfigError(f"DRAEMConfig.score_window must be odd, >= 1 and <= the image size "
                              f"{r.image_size}, got {self.score_window}")


def draem_config(preset: str = "paper", **overrides: Any) -> DRAEMConfig:
    """A DRAEM config for ``paper`` (256 px), ``cpu`` (128 px) or ``ci`` (64 px).

    The small presets shrink the two networks and the score window (in proportion to the image
    side); every other value is the paper's.
    """
    check_preset(preset, "DRAEM")
    base = DRAEMConfig(reconstructive=reconstructive_config(preset),
                       segmenter=segmenter_config(preset), score_window=SCORE_WINDOWS[preset])
    return replace(base, **overrides) if overrides else base


__all__ = ["DRAEMConfig", "draem_config", "Init", "SCORE_WINDOWS"]
