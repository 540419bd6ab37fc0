"""Anomaly-detection methods, one package each, all with the contract of :mod:`dap.methods.base`.

``build_method(name, preset, **overrides)`` makes a fresh model; ``method_class(name)`` is the
class a checkpoint names (:mod:`dap.engine.checkpoint` rebuilds models from checkpoints).

=============  =========================================================  ==============
name           method                                                     notebook
=============  =========================================================  ==============
diffusionad    DiffusionAD: norm-guided one-step denoising + segmenter    06
ddad           DDAD: conditioned denoising, feature + pixel distance      07
glad           GLAD: adaptive steps, anomaly-aware training, SAFF         08
diffad         DiffAD: latent diffusion, noisy condition, interpolation   09
draem          DRAEM: reconstructive auto-encoder + segmenter (baseline)  06
=============  =========================================================  ==============
"""

from __future__ import annotations

import importlib
from typing import Any

from dap.config import ConfigError
from dap.methods.base import (PRESETS, AnomalyMethod, Prediction, Reconstruction, TrainBatch,
                              ValidationSet, check_preset, top_k_mean)

# name -> (package, class, preset-config function)
REGISTRY: dict[str, tuple[str, str, str]] = {
    "diffusionad": ("dap.methods.diffusionad", "DiffusionAD", "diffusionad_config"),
    "ddad": ("dap.methods.ddad", "DDAD", "ddad_config"),
    "glad": ("dap.methods.glad", "GLAD", "glad_config"),
    "diffad": ("dap.methods.diffad", "DiffAD", "diffad_config"),
    "draem": ("dap.methods.draem", "DRAEM", "draem_config"),
}


def _entry(name: str):
    if name not in REGISTRY:
        raise ConfigError(f"unknown method {name!r}; available: {sorted(REGISTRY)}")
    module, cls, cfg_fn = REGISTRY[name]
    mod = importlib.import_module(module)
    return getattr(mod, cls), getattr(mod, cfg_fn)


def method_class(name: str) -> type[AnomalyMethod]:
    """The class of method ``name`` (a :class:`ConfigError` lists the known names)."""
    return _entry(name)[0]


def method_config(name: str, preset: str = "paper", **overrides: Any):
    """The config of method ``name`` at ``preset`` (``ci``, ``cpu``, ``paper``) with overrides."""
    return _entry(name)[1](preset, **overrides)


def build_method(name: str, preset: str = "paper", **overrides: Any) -> AnomalyMethod:
    """A fresh method ``name`` from its ``preset`` (``ci``, ``cpu``, ``paper``) config."""
    cls, cfg_fn = _entry(name)
    return cls(cfg_fn(preset, **overrides))


__all__ = ["AnomalyMethod", "Prediction", "Reconstruction", "TrainBatch", "ValidationSet",
           "PRESETS", "check_preset", "top_k_mean", "REGISTRY", "method_class",
           "method_config", "build_method"]
