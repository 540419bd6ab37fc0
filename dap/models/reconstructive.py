"""DRAEM's reconstructive sub-network: a plain convolutional encoder-decoder without skips.

DRAEM (Zavrtanik, Kristan, Skocaj, "DRAEM - A discriminatively trained reconstruction embedding
for surface anomaly detection", ICCV 2021, Sec. 3.1) trains this network to map an image with a
synthetic anomaly back to the anomaly-free image. Having no skip connections, it cannot copy the
anomaly from input to output through a shortcut; everything passes the bottleneck. The method is
:mod:`dap.methods.draem`; taught beside DiffusionAD in ``notebooks/06_train_and_evaluate``.

The network (``paper`` preset: base width 128, 256 x 256 -> 16 x 16 x 1024, 69.0 M parameters,
the official ``ReconstructiveSubNetwork``; the count is checked against a closed form in
``tests/test_draem.py``)::

    encoder: 5 blocks of 2 x (Conv3x3-BN-ReLU), widths 128/256/512/1024/1024,
             2x2 max-pool between blocks                            (256 -> 16 pixels)
    decoder: 4 stages, deep -> shallow, each
             bilinear x2 (align_corners) -> Conv3x3-BN-ReLU at the same width c
             -> Conv3x3-BN-ReLU at c -> Conv3x3-BN-ReLU to width d,
             with d = 512/256/128/128 (the encoder width one level shallower, as the segmenter)
    head:    Conv3x3 -> 3 channels, no activation (the official output is unbounded)

Official names: ``ReconstructiveSubNetwork(in_channels=3, out_channels=3, base_width=128)`` ->
``ReconstructiveConfig(in_channels, out_channels, base_width)``; the official encoder always has
five blocks, ``encoder_mult`` makes the depth a setting (the small presets use four).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from dap.config import ConfigError, replace
from dap.models.segmentation import conv_bn_relu


@dataclass
class ReconstructiveConfig:
    """Hyper-parameters of :class:`ReconstructiveAE`.

    Attributes
    ----------
    image_size : int
        Side of the square inputs; divisible by ``2 ** (len(encoder_mult) - 1)``.
    in_channels, out_channels : int
        3 and 3 (RGB in, RGB out).
    base_width : int
        Width of the first encoder block (DRAEM: 128).
    encoder_mult : tuple of int
        Width multiplier of each encoder block, one max-pool between consecutive blocks
        (DRAEM: 1, 2, 4, 8, 8).
    """

    image_size: int = 256
    in_channels: int = 3
    out_channels: int = 3
    base_width: int = 128
    encoder_mult: tuple[int, ...] = (1, 2, 4, 8, 8)

    def __post_init__(self) -> None:
        for key in ("image_size", "in_channels", "out_channels", "base_width"):
            if getattr(self, key) < 1:
                raise ConfigError(f"ReconstructiveConfig.{key} must be >= 1, "
                                  f"got {getattr(self, key)}")
        if len(self.encoder_mult) < 2 or min(self.encoder_mult) < 1:
            raise ConfigError("ReconstructiveConfig.encoder_mult needs >= 2 positive integers, "
                              f"got {self.encoder_mult}")
        if self.image_size % self.downsample_factor:
            raise ConfigError(
                f"ReconstructiveConfig.image_size={self.image_size} must be divisible by "
                f"2^(len(encoder_mult)-1) = {self.downsample_factor}")

    @property
    def downsample_factor(self) -> int:
        """2 ** (number of max-pools): image side / bottleneck side."""
        return 2 ** (len(self.encoder_mult) - 1)

    @property
    def encoder_widths(self) -> tuple[int, ...]:
        return tuple(self.base_width * m for m in self.encoder_mult)

    @property
    def decoder_widths(self) -> tuple[int, ...]:
        """Output width of each decoder stage, deep -> shallow: the encoder width one level
        shallower than the stage's resolution (512, 256, 128, 128 for the paper)."""
        enc = self.encoder_widths
        return tuple(enc[max(level - 1, 0)] for level in range(len(enc) - 2, -1, -1))


RECONSTRUCTIVE_PRESETS: dict[str, ReconstructiveConfig] = {
    # DRAEM's reconstructive sub-network (256 x 256 -> 16 x 16 x 1024 bottleneck).
    "paper": ReconstructiveConfig(),
    # ci: 64 x 64 -> 8 x 8 x 128 (4 blocks, base 16).
    "ci": ReconstructiveConfig(image_size=64, base_width=16, encoder_mult=(1, 2, 4, 8)),
    # cpu: 128 x 128 -> 8 x 8 x 256 (5 blocks, base 32).
    "cpu": ReconstructiveConfig(image_size=128, base_width=32, encoder_mult=(1, 2, 4, 8, 8)),
}


def reconstructive_config(preset: str = "paper", **overrides: Any) -> ReconstructiveConfig:
    """A validated copy of preset ``preset`` (``paper``, ``ci``, ``cpu``) with ``overrides``."""
    if preset not in RECONSTRUCTIVE_PRESETS:
        raise ConfigError(f"unknown reconstructive-network preset {preset!r}; "
                          f"valid: {sorted(RECONSTRUCTIVE_PRESETS)}")
    return replace(RECONSTRUCTIVE_PRESETS[preset], **overrides)


class DecoderStage(nn.Module):
    """Bilinear x2 -> Conv-BN-ReLU (c -> c) -> Conv-BN-ReLU (c -> c) -> Conv-BN-ReLU (c -> d)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.up = nn.Sequential(*conv_bn_relu(cin, cin))
        self.block = nn.Sequential(*conv_bn_relu(cin, cin), *conv_bn_relu(cin, cout))

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        return self.block(self.up(x))


class ReconstructiveAE(nn.Module):
    """I_r = g(f(I_a)): DRAEM's encoder-decoder, no skip connections.

    Parameters
    ----------
    config : ReconstructiveConfig
        See :func:`reconstructive_config` (``paper``, ``ci``, ``cpu``).
    """

    def __init__(self, config: ReconstructiveConfig) -> None:
        super().__init__()
        self.config = cfg = config
        blocks, cin = [], cfg.in_channels
        for w in cfg.encoder_widths:
            blocks.append(nn.Sequential(*conv_bn_relu(cin, w), *conv_bn_relu(w, w)))
            cin = w
        self.encoder = nn.ModuleList(blocks)
        stages = []
        for w in cfg.decoder_widths:
            stages.append(DecoderStage(cin, w))
            cin = w
        self.decoder = nn.ModuleList(stages)
        self.head = nn.Conv2d(cin, cfg.out_channels, 3, padding=1)

    def encode(self, x: Tensor) -> Tensor:
        """The bottleneck ``(B, base_width * encoder_mult[-1], H / f, W / f)``."""
        cfg = self.config
        f = cfg.downsample_factor
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"expected x of shape (B, {cfg.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        if x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(f"H and W must be divisible by {f}, got {tuple(x.shape[-2:])}")
        for i, block in enumerate(self.encoder):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
        return x

    def decode(self, z: Tensor) -> Tensor:
        """The reconstruction ``(B, out_channels, H, W)`` from a bottleneck (unbounded)."""
        for stage in self.decoder:
            z = stage(z)
        return self.head(z)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction of ``x`` ``(B, in_channels, H, W)`` (DRAEM: images in [0, 1]);
        the output has no activation."""
        return self.decode(self.encode(x))


__all__ = ["ReconstructiveConfig", "RECONSTRUCTIVE_PRESETS", "reconstructive_config",
           "ReconstructiveAE", "DecoderStage"]
