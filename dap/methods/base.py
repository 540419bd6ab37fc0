"""The interface every anomaly-detection method in dap follows — the whole contract, declared.

A method is an ``nn.Module`` with

* ``forward(batch, generator) -> dict`` — the training loss of one batch (``"loss"`` plus scalar
  logs). Making the loss the forward pass lets ``DistributedDataParallel`` wrap any method.
* ``reconstruct(images, generator) -> Reconstruction`` — the anomaly-free image ``sample``
  ``(B, 3, H, W)`` in [-1, 1] plus the method's named intermediates in ``extras`` (GLAD's stop
  steps, DiffAD's latents, ...). One output type for every method.
* ``predict(images, generator) -> Prediction`` — the anomaly map ``(B, H, W)``, the image score
  ``(B,)`` and the reconstruction. Higher = more anomalous.
* ``calibrate(train_images, val) -> dict | None`` — fit the statistics that make ``predict``'s
  score the reported one (DDAD: the pixel-term scale on *training* images; GLAD: stop thresholds
  and map scales on the *validation* set). Model selection calls it before every validation, so
  the checkpoint is chosen under the same scoring rule as the test. Default: nothing.
* ``after_training(train_images, val) -> dict | None`` — what the method does once its networks
  are trained and selected (DDAD: domain adaptation, then ``calibrate``). Default: ``calibrate``.
  Neither ever sees the test split.
* ``using(**changes)`` — a context in which the config is a validated copy with ``changes``
  (inference settings only: a change that would need other networks is refused).
* ``config`` — its dataclass config; ``name`` — the registry name; ``config_class``.

Shared helpers: :meth:`AnomalyMethod.schedule_on` (the noise schedule on a device),
:meth:`AnomalyMethod.inference_generator` (the seeded generator of the inference noise),
:func:`check_preset`, :func:`top_k_mean`, :func:`gaussian_blur`.

Data flows one way: a method never reads files, a metric never knows which method made a map.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dap.config import ConfigError, from_dict, replace, to_dict

#: the model presets every method offers (``paper`` is the published configuration)
PRESETS: tuple[str, ...] = ("ci", "cpu", "paper")


def check_preset(preset: str, method: str) -> str:
    """``preset`` if it is one of :data:`PRESETS`, else a :class:`ConfigError` naming them."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown {method} preset {preset!r}; valid: {list(PRESETS)}")
    return preset


class Prediction(NamedTuple):
    """What ``predict`` returns."""

    anomaly_map: Tensor            # (B, H, W) float, higher = more anomalous
    score: Tensor                  # (B,) float image score
    reconstruction: Tensor | None  # (B, 3, H, W) in [-1, 1], or None


@dataclass
class Reconstruction:
    """What ``reconstruct`` returns: the reconstruction and the method's named intermediates.

    sample : ``(B, 3, H, W)`` in [-1, 1]; extras : name -> Tensor with a leading batch axis
    (e.g. GLAD's ``stop_step`` ``(B,)``, DiffusionAD's ``x0_s`` / ``x0_b``).
    """

    sample: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)


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


@dataclass
class ValidationSet:
    """The validation split with synthetic anomalies (made once, with a fixed seed).

    image : ``(M, 3, H, W)`` in [-1, 1]; mask : ``(M, H, W)`` {0, 1}; label : ``(M,)`` 1 =
    anomalous. Model selection and calibration use it; the test split never.
    """

    image: Tensor
    mask: Tensor
    label: Tensor

    def __len__(self) -> int:
        return len(self.image)

    def normal_images(self) -> Tensor:
        """The images with label 0 ``(N, 3, H, W)``."""
        return self.image[(self.label.reshape(-1) == 0).to(self.image.device)]


class AnomalyMethod(nn.Module):
    """Base class: subclasses implement ``forward``, ``reconstruct`` and ``predict``."""

    name: str = "method"
    #: the method's config dataclass (set by each subclass); checkpoints store it as a dict
    config_class: type = object
    #: what the benchmark table prints in its ``extractor`` column
    extractor_name: str = ""

    @property
    def image_size(self) -> int:
        """The square input size the method was built for."""
        return int(self.config.denoiser.image_size)  # type: ignore[attr-defined]

    # -- config ------------------------------------------------------------------------------
    @classmethod
    def from_config_dict(cls, d: dict) -> "AnomalyMethod":
        """A fresh method from a config dict (a checkpoint's ``method_config``), strictly parsed."""
        return cls(from_dict(cls.config_class, d))

    def config_dict(self) -> dict:
        """The config as a JSON-able dict (what checkpoints store)."""
        return to_dict(self.config)  # type: ignore[attr-defined]

    @contextlib.contextmanager
    def using(self, **changes: Any) -> Iterator["AnomalyMethod"]:
        """Run with a validated copy of the config that has ``changes``; restore it after.

        Only settings that leave the networks as they are may change (sub-configs such as
        ``denoiser`` must stay equal): ``with method.using(reconstruction="ddim"): ...``.
        """
        old = self.config  # type: ignore[has-type]
        new = replace(old, **changes)
        for f in dataclasses.fields(old):
            if dataclasses.is_dataclass(getattr(old, f.name)) and \
                    getattr(new, f.name) != getattr(old, f.name):
                raise ConfigError(f"{type(self).__name__}.using({f.name}=...) would need other "
                                  "networks; build a new model instead")
        self.config = new
        try:
            yield self
        finally:
            self.config = old

    # -- shared helpers ------------------------------------------------------------------------
    def schedule_on(self, device: torch.device | str):
        """The method's :class:`~dap.diffusion.NoiseSchedule` with its tables on ``device``."""
        schedule = self.schedule  # type: ignore[attr-defined]
        if schedule.device != torch.device(device):
            schedule.to(device)
        return schedule

    def inference_generator(self, device: torch.device | str,
                            generator: torch.Generator | None = None) -> torch.Generator:
        """``generator``, or a fresh one seeded with ``config.inference_seed`` on ``device``:
        the same images always get the same inference noise."""
        if generator is not None:
            return generator
        seed = int(getattr(self.config, "inference_seed", 0))  # type: ignore[attr-defined]
        return torch.Generator(device).manual_seed(seed)

    def param_groups(self, lr: float = 1e-4, lr_segmenter: float | None = None) -> list[dict]:
        """Optimiser parameter groups (override to give sub-networks their own learning rates)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]

    # -- the contract ------------------------------------------------------------------------
    def forward(self, batch: TrainBatch, generator: torch.Generator | None = None
                ) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def reconstruct(self, images: Tensor, generator: torch.Generator | None = None
                    ) -> Reconstruction:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, images: Tensor, generator: torch.Generator | None = None
                ) -> Prediction:  # pragma: no cover - abstract
        raise NotImplementedError

    def calibrate(self, train_images: Tensor, val: ValidationSet | None = None
                  ) -> dict[str, Any] | None:
        """Fit what ``predict``'s scoring rule needs from training / validation data; default:
        nothing to fit.

        train_images : ``(N, 3, H, W)`` uint8 or float in [-1, 1], normal *training* images;
        val : the validation set. Returns JSON-able facts, or None.
        """
        return None

    def after_training(self, train_images: Tensor, val: ValidationSet | None = None,
                       progress: bool = False) -> dict[str, Any] | None:
        """The method's own step once its networks are trained and selected; default:
        :meth:`calibrate`. Returns JSON-able facts for the provenance record, or None."""
        return self.calibrate(train_images, val)


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
    truncate 4; GLAD's map and SAFF mask use ``GLADConfig.smoothing_truncate`` (dap's default 3;
    the official GLAD map truncate 4, its SAFF mask unblurred).
    """
    if sigma <= 0:
        return maps
    h, w = maps.shape[-2:]
    radius = min(int(truncate * sigma + 0.5), h - 1, w - 1)
    k = torch.arange(-radius, radius + 1, device=maps.device, dtype=torch.float32)
    # g(x) = exp(-x^2 / (2 sigma^2)), normalised to sum 1
    k = torch.exp(-0.5 * (k / sigma) ** 2)
    k = (k / k.sum()).to(maps.dtype)
    x = F.pad(maps.reshape(-1, 1, h, w), (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(F.conv2d(x, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))
    return x.reshape(maps.shape)


__all__ = ["PRESETS", "check_preset", "Prediction", "Reconstruction", "TrainBatch",
           "ValidationSet", "AnomalyMethod", "top_k_mean", "gaussian_blur"]
