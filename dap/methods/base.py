"""The interface every anomaly-detection method in dap follows.

A method is an ``nn.Module`` with

* ``forward(batch, generator) -> dict`` — the training loss of one batch (``"loss"`` plus scalar
  logs). Making the loss the forward pass lets ``DistributedDataParallel`` wrap any method.
* ``predict(images) -> Prediction`` — the anomaly map ``(B, H, W)``, the image score ``(B,)`` and
  the reconstruction ``(B, 3, H, W)`` (or None for methods without one). Higher = more anomalous.
* ``config`` — its dataclass config; ``name`` — the registry name.

Data flows one way: a method never reads files, a metric never knows which method made a map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dap.config import from_dict, to_dict


class Prediction(NamedTuple):
    """What ``predict`` returns."""

    anomaly_map: Tensor            # (B, H, W) float, higher = more anomalous
    score: Tensor                  # (B,) float image score
    reconstruction: Tensor | None  # (B, 3, H, W) in [-1, 1], or None


@dataclass
class TrainBatch:
    """One training batch of normal images and what synthesis needs to know about them.

    images : (B, 3, H, W) float in [-1, 1]; foreground : (B, 1, H, W) {0, 1} or None;
    is_texture : whether the category is a texture (DiffusionAD picks anomaly sources by it).
    """

    images: Tensor
    foreground: Tensor | None = None
    is_texture: bool = True

    def to(self, device: torch.device | str) -> "TrainBatch":
        fg = None if self.foreground is None else self.foreground.to(device, non_blocking=True)
        return TrainBatch(self.images.to(device, non_blocking=True), fg, self.is_texture)


class AnomalyMethod(nn.Module):
    """Base class: subclasses implement ``forward`` (training loss) and ``predict``."""

    name: str = "method"
    #: the method's config dataclass (set by each subclass); checkpoints store it as a dict
    config_class: type = object

    @property
    def image_size(self) -> int:
        """The square input size the method was built for."""
        return int(self.config.denoiser.image_size)  # type: ignore[attr-defined]

    @classmethod
    def from_config_dict(cls, d: dict) -> "AnomalyMethod":
        """A fresh method from a config dict (a checkpoint's ``method_config``), strictly parsed."""
        return cls(from_dict(cls.config_class, d))

    def config_dict(self) -> dict:
        """The config as a JSON-able dict (what checkpoints store)."""
        return to_dict(self.config)  # type: ignore[attr-defined]

    def param_groups(self, lr: float = 1e-4, lr_segmenter: float | None = None) -> list[dict]:
        """Optimiser parameter groups (override to give sub-networks their own learning rates)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]

    @torch.no_grad()
    def predict(self, images: Tensor) -> Prediction:  # pragma: no cover - abstract
        raise NotImplementedError


def top_k_mean(maps: Tensor, k: int) -> Tensor:
    """Image score: the mean of the ``k`` largest pixel scores of each map (DiffusionAD Sec. III-D).

    maps : (B, H, W) or (B, 1, H, W) -> (B,)
    """
    flat = maps.reshape(maps.shape[0], -1)
    k = min(k, flat.shape[1])
    return flat.topk(k, dim=1).values.mean(dim=1)


def gaussian_blur(maps: Tensor, sigma: float, truncate: float = 4.0) -> Tensor:
    """Separable Gaussian blur of anomaly maps over their last two axes, reflect padding.

    maps : ``(B, H, W)`` or ``(B, 1, H, W)``, returned in the same shape. The kernel radius is
    ``int(truncate * sigma + 0.5)`` (scipy.ndimage's rule; ``mode="mirror"`` there), capped at
    the map size - 1; ``sigma <= 0`` returns ``maps`` itself. DDAD smooths its map with
    truncate 4, GLAD its map and SAFF mask with truncate 3.
    """
    if sigma <= 0:
        return maps
    h, w = maps.shape[-2:]
    radius = min(int(truncate * sigma + 0.5), h - 1, w - 1)
    k = torch.arange(-radius, radius + 1, device=maps.device, dtype=torch.float32)
    k = torch.exp(-0.5 * (k / sigma) ** 2)
    k = (k / k.sum()).to(maps.dtype)
    x = F.pad(maps.reshape(-1, 1, h, w), (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(F.conv2d(x, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))
    return x.reshape(maps.shape)
