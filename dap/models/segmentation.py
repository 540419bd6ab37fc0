"""The segmentation sub-network: a DRAEM-style discriminative U-Net on concat(x, x0_g).

DiffusionAD's segmentation sub-network (Zhang et al., Sec. III) predicts the anomaly mask M_hat
from the input image x_0 and its norm-guided one-step reconstruction x0_g, stacked into 6
channels. The official
code reuses the discriminative network of DRAEM (Zavrtanik et al., "DRAEM - A discriminatively
trained reconstruction embedding for surface anomaly detection", ICCV 2021). Taught in
``notebooks/06_train_and_evaluate``.

The network (``paper`` preset, base width 64, 28.4 M parameters)::

    encoder: 6 blocks of 2 x (Conv3x3-BN-ReLU), widths 64/128/256/512/512/512,
             2x2 max-pool between blocks                         (256 -> 8 pixels)
    decoder: 5 stages, deep -> shallow, each
             bilinear x2 (align_corners) -> Conv3x3-BN-ReLU to width d
             -> concat the encoder block of that size -> 2 x (Conv3x3-BN-ReLU) at width d,
             with d = 512/256/128/64/64
    head:    Conv3x3 -> 1 channel: logits; sigmoid -> mask in [0, 1]

DRAEM's decoder width pattern is "the encoder width one level shallower than the skip"
(skip level j gets ``base_width * encoder_mult[max(j - 1, 0)]``); ``decoder_mult=None`` applies
it, an explicit tuple overrides it.

The official network ends in a sigmoid; dap's :meth:`SegmentationUNet.forward` returns logits
(numerically safer losses, see :mod:`dap.losses`) and :meth:`SegmentationUNet.predict_mask`
returns the sigmoid mask. Official names: ``SegmentationSubNetwork(in_channels=6,
out_channels=1, base_channels=64)`` -> ``SegmenterConfig(in_channels, out_channels, base_width)``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from dap.config import ConfigError, replace
from dap.models.common import cat_channels


@dataclass
class SegmenterConfig:
    """Hyper-parameters of :class:`SegmentationUNet`.

    Attributes
    ----------
    in_channels : int
        6: the image x_0 and its reconstruction x0_g, concatenated along channels.
    out_channels : int
        1: one anomaly logit per pixel.
    base_width : int
        Width of the first encoder block (DRAEM: 64).
    encoder_mult : tuple of int
        Width multiplier of each encoder block; ``len(encoder_mult)`` blocks, one max-pool
        between consecutive blocks (DRAEM: 1, 2, 4, 8, 8, 8).
    decoder_mult : tuple of int or None
        Width multiplier of each decoder stage, deep -> shallow, ``len(encoder_mult) - 1``
        entries; None applies DRAEM's rule (8, 4, 2, 1, 1 for the paper).
    """

    in_channels: int = 6
    out_channels: int = 1
    base_width: int = 64
    encoder_mult: tuple[int, ...] = (1, 2, 4, 8, 8, 8)
    decoder_mult: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for key in ("in_channels", "out_channels", "base_width"):
            if getattr(self, key) < 1:
                raise ConfigError(f"SegmenterConfig.{key} must be >= 1, got {getattr(self, key)}")
        if len(self.encoder_mult) < 2 or min(self.encoder_mult) < 1:
            raise ConfigError("SegmenterConfig.encoder_mult needs >= 2 positive integers, got "
                              f"{self.encoder_mult}")
        if self.decoder_mult is not None and (
            len(self.decoder_mult) != len(self.encoder_mult) - 1 or min(self.decoder_mult) < 1
        ):
            raise ConfigError(
                f"SegmenterConfig.decoder_mult needs len(encoder_mult) - 1 = "
                f"{len(self.encoder_mult) - 1} positive integers (deep -> shallow), got "
                f"{self.decoder_mult}; or None for DRAEM's rule"
            )

    @property
    def encoder_widths(self) -> tuple[int, ...]:
        return tuple(self.base_width * m for m in self.encoder_mult)

    @property
    def decoder_widths(self) -> tuple[int, ...]:
        """Decoder stage widths, deep -> shallow (512, 256, 128, 64, 64 for the paper)."""
        if self.decoder_mult is not None:
            return tuple(self.base_width * m for m in self.decoder_mult)
        skips = range(len(self.encoder_mult) - 2, -1, -1)
        return tuple(self.base_width * self.encoder_mult[max(j - 1, 0)] for j in skips)


SEGMENTER_PRESETS: dict[str, SegmenterConfig] = {
    # DRAEM's discriminative network as used by DiffusionAD (256 x 256 -> 8 x 8 bottleneck).
    "paper": SegmenterConfig(),
    # ci: 4 levels, base 8 (64 x 64 -> 8 x 8 bottleneck).
    "ci": SegmenterConfig(base_width=8, encoder_mult=(1, 2, 4, 8)),
    # cpu: 5 levels, base 16 (128 x 128 -> 8 x 8 bottleneck).
    "cpu": SegmenterConfig(base_width=16, encoder_mult=(1, 2, 4, 8, 8)),
}


def segmenter_config(preset: str = "paper", **overrides: Any) -> SegmenterConfig:
    """A validated copy of preset ``preset`` (``paper``, ``ci``, ``cpu``) with ``overrides``."""
    if preset not in SEGMENTER_PRESETS:
        raise ConfigError(f"unknown segmenter preset {preset!r}; "
                          f"valid: {sorted(SEGMENTER_PRESETS)}")
    return replace(SEGMENTER_PRESETS[preset], **overrides)


def conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    """Conv3x3 (with bias, as DRAEM) -> BatchNorm -> ReLU."""
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class UpStage(nn.Module):
    """One decoder stage: up x2 + Conv-BN-ReLU, concat the skip, 2 x Conv-BN-ReLU."""

    def __init__(self, cin: int, skip: int, cout: int) -> None:
        super().__init__()
        self.up = nn.Sequential(*conv_bn_relu(cin, cout))
        self.block = nn.Sequential(*conv_bn_relu(cout + skip, cout), *conv_bn_relu(cout, cout))

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return self.block(cat_channels([self.up(x), skip]))


@contextlib.contextmanager
def _frozen_batchnorm_stats(module: nn.Module) -> Iterator[None]:
    """Run ``module`` without touching its BatchNorm running statistics.

    Used while gradient checkpointing recomputes a block in the backward pass: the forward
    pass has already updated ``running_mean`` / ``running_var`` / ``num_batches_tracked``, and a
    second update would change them. momentum = 0 leaves the running averages bit-identical
    (``(1 - 0) * r + 0 * batch``); the counter is restored afterwards.
    """
    saved = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats \
                and m.momentum is not None:
            saved.append((m, m.momentum, m.num_batches_tracked.clone()))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, count in saved:
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


class SegmentationUNet(nn.Module):
    """M_hat = sigmoid(f(concat(x_0, x0_g))): the DRAEM discriminative U-Net.

    Parameters
    ----------
    config : SegmenterConfig
        See :func:`segmenter_config` (``paper``, ``ci``, ``cpu``).

    Notes
    -----
    Speed and memory options (none changes the state_dict keys or, when off, the outputs):
    :meth:`enable_gradient_checkpointing` recomputes each encoder block and decoder stage in
    the backward pass, with the BatchNorm running statistics updated once, as without it
    (tested); channels_last, autocast and ``torch.compile`` come from :mod:`dap.runtime`.

    ``float32_inference`` (default True, not saved): without gradients the network predicts
    in float32 even under autocast. Its output is the anomaly map itself, and in bf16 the map
    moved: on the synthetic-anomaly validation split of the shipped models, the bf16 fast path
    against float32 changed DRAEM gravel's pixel AP by -2.3 points and DiffusionAD brick's by
    -0.08 (seed range 0.18); with the segmenter in float32, by -0.04 and +0.03. The denoiser,
    where the inference time goes, stays in bf16. Training keeps bf16 (``benchmarks/
    bf16_vs_fp32.py``: a bf16-trained model is as good).
    """

    #: recompute every encoder block and decoder stage in the backward pass
    gradient_checkpointing: bool = False
    #: predict in float32 under bf16/fp16 autocast (not while training): see the Notes
    float32_inference: bool = True

    def __init__(self, config: SegmenterConfig) -> None:
        super().__init__()
        self.config = cfg = config
        enc = cfg.encoder_widths
        blocks, cin = [], cfg.in_channels
        for w in enc:
            blocks.append(nn.Sequential(*conv_bn_relu(cin, w), *conv_bn_relu(w, w)))
            cin = w
        self.encoder = nn.ModuleList(blocks)
        stages = []
        for skip_level, w in zip(range(len(enc) - 2, -1, -1), cfg.decoder_widths):
            stages.append(UpStage(cin, enc[skip_level], w))
            cin = w
        self.decoder = nn.ModuleList(stages)
        self.head = nn.Conv2d(cin, cfg.out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """Anomaly logits.

        Parameters
        ----------
        x : Tensor, ``(B, in_channels, H, W)``
            ``torch.cat([x_0, x0_g], dim=1)``; H, W divisible by ``2 ** (len(encoder_mult) - 1)``.

        Returns
        -------
        Tensor, ``(B, out_channels, H, W)``: logits (apply ``torch.sigmoid`` for M_hat in [0, 1]).
        """
        if self.float32_inference and not torch.is_grad_enabled() \
                and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return self._logits(x.float())
        return self._logits(x)

    def _logits(self, x: Tensor) -> Tensor:
        cfg = self.config
        factor = 2 ** (len(cfg.encoder_mult) - 1)
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"expected x of shape (B, {cfg.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(f"H and W must be divisible by {factor}, got {tuple(x.shape[-2:])}")
        run = self._checkpointed if self._checkpointing() else _call
        skips = []
        for i, block in enumerate(self.encoder):
            if i:
                x = F.max_pool2d(x, 2)
            x = run(block, x)
            skips.append(x)
        skips.pop()  # the bottleneck is the decoder's input, not a skip
        for stage in self.decoder:
            x = run(stage, x, skips.pop())
        return self.head(x)

    def enable_gradient_checkpointing(self) -> "SegmentationUNet":
        """Recompute each encoder block and decoder stage in the backward pass.

        Keeps only their inputs (and the skips); BatchNorm running statistics are updated once
        per forward pass, exactly as without checkpointing. Outputs and gradients unchanged
        (tested to 1e-6). Active only while gradients are enabled; not stored in checkpoints.
        """
        self.gradient_checkpointing = True
        return self

    def disable_gradient_checkpointing(self) -> "SegmentationUNet":
        """Store activations again (the default)."""
        self.gradient_checkpointing = False
        return self

    def _checkpointing(self) -> bool:
        return self.gradient_checkpointing and torch.is_grad_enabled()

    @staticmethod
    def _checkpointed(module: nn.Module, *args: Tensor) -> Tensor:
        def contexts() -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
            return contextlib.nullcontext(), _frozen_batchnorm_stats(module)

        if torch.compiler.is_compiling():
            # torch.compile traces the checkpoint as one graph and recomputes only its pure
            # operations, so the running statistics are updated once without the context (which
            # dynamo cannot trace)
            return checkpoint(module, *args, use_reentrant=False)
        return checkpoint(module, *args, use_reentrant=False, context_fn=contexts)

    def predict_mask(self, x: Tensor) -> Tensor:
        """M_hat = sigmoid(logits), ``(B, out_channels, H, W)`` in [0, 1] (the official output)."""
        return torch.sigmoid(self(x))


def _call(module: nn.Module, *args: Tensor) -> Tensor:
    return module(*args)


__all__ = [
    "SegmenterConfig",
    "SEGMENTER_PRESETS",
    "segmenter_config",
    "SegmentationUNet",
]
