"""Typed, strict configuration: dataclasses built by :func:`from_dict`, and the data root.

Every config in dap is a dataclass built through :func:`from_dict`, which rejects unknown keys
and wrong types with a message that names the valid keys. This is the clean counterpart of the
official DiffusionAD code's ``defaultdict(str)`` configs, where a misspelt key silently became
``""``. Configs are not changed in place: :func:`replace` makes a validated copy (and
``AnomalyMethod.using`` swaps one in for a while). The profile switch is :mod:`dap.profiles`.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass
from typing import Any, Mapping, TypeVar

DATA_ENV = "DAP_DATA"


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message says what to do instead."""


def data_root() -> str:
    """The one data root: ``$DAP_DATA`` if set; else ``data/`` of the dap checkout (git-ignored)
    when dap runs from a clone, whatever the working directory (notebooks run in
    ``notebooks/``); else ``~/.cache/dap/data`` (an installed package, e.g. on Colab)."""
    env = os.environ.get(DATA_ENV, "").strip()
    if env:
        return os.path.abspath(os.path.expanduser(env))
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.exists(os.path.join(checkout, "pyproject.toml")):
        return os.path.join(checkout, "data")
    return os.path.join(os.path.expanduser("~"), ".cache", "dap", "data")


# --------------------------------------------------------------------------------------------
# Strict dataclass construction
# --------------------------------------------------------------------------------------------
C = TypeVar("C")


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a (simple) type annotation; convert lists to tuples when asked."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in args:
            try:
                return _check_type(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} matches none of {annotation}")
    if annotation is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected None, got {value!r}")
        return value
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"{where}: expected a tuple/list, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check_type(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_check_type(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if isinstance(value, Mapping):
            return from_dict(annotation, value, where=where)
        raise ConfigError(f"{where}: expected a mapping for {annotation.__name__}, got {value!r}")
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if isinstance(annotation, type):
        if not isinstance(value, annotation):
            raise ConfigError(
                f"{where}: expected {annotation.__name__}, got {type(value).__name__} {value!r}"
            )
        return value
    return value


def from_dict(cls: type[C], values: Mapping[str, Any], where: str | None = None) -> C:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types.

    Nested dataclass fields accept nested mappings. Missing keys take the field defaults.

    Examples
    --------
    >>> from dap.config import DiffusionConfig, from_dict
    >>> from_dict(DiffusionConfig, {"num_train_timesteps": 1000}).beta_schedule
    'linear'
    """
    where = where or cls.__name__
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown}. Valid keys: {sorted(known)}"
        )
    kwargs = {k: _check_type(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def check_fields(cfg: Any) -> None:
    """Check every field of dataclass instance ``cfg`` against its annotation (types and
    ``Literal`` values), as :func:`from_dict` does; for configs built directly. Lists become
    tuples where a tuple is annotated."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = _check_type(getattr(cfg, f.name), hints[f.name], f"{type(cfg).__name__}.{f.name}")
        object.__setattr__(cfg, f.name, value)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, JSON-serialisable dict of a config dataclass (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def merge(values: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` updated with ``changes``, where a mapping given for a field that holds a
    dataclass config changes only the keys it names (``denoiser={"dropout": 0.1}`` keeps the
    rest of the preset's denoiser), validated like :func:`from_dict`."""
    out = dict(values)
    for key, change in changes.items():
        current = out.get(key)
        if dataclasses.is_dataclass(current) and not isinstance(current, type) \
                and isinstance(change, Mapping):
            change = replace(current, **change)
        out[key] = change
    return out


def replace(cfg: C, **changes: Any) -> C:
    """Return a copy of ``cfg`` with ``changes``, validated like :func:`from_dict`.

    A mapping for a nested config changes only the keys it names (see :func:`merge`).
    """
    current = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.init}
    return from_dict(type(cfg), merge(current, changes))


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------
@dataclass
class DiffusionConfig:
    """The DDPM noise schedule (DiffusionAD paper, Sec. III-A: T = 1000, linear 1e-4 -> 0.02).

    Keys follow diffusers (``num_train_timesteps``, ``beta_schedule``, ``beta_start``,
    ``beta_end``) so learners can cross-reference.
    """

    num_train_timesteps: int = 1000
    beta_schedule: typing.Literal["linear", "scaled_linear", "cosine"] = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def __post_init__(self) -> None:
        if self.num_train_timesteps < 2:
            raise ConfigError("DiffusionConfig.num_train_timesteps must be >= 2")
        if not 0.0 < self.beta_start < self.beta_end < 1.0:
            raise ConfigError(
                "DiffusionConfig needs 0 < beta_start < beta_end < 1, got "
                f"{self.beta_start} and {self.beta_end}"
            )


# The official DiffusionAD code's config keys and their dap names (STYLE.md practice 7).
# Keys the official code defines but never reads are mapped to None.
OFFICIAL_KEY_MAP: dict[str, str | None] = {
    "T": "DiffusionConfig.num_train_timesteps",
    "beta_schedule": "DiffusionConfig.beta_schedule",
    "channels": "DenoiserConfig.in_channels",
    "base_channels": "DenoiserConfig.num_channels",
    "channel_mults": "DenoiserConfig.channel_mult",
    "num_heads": "DenoiserConfig.num_heads",
    "num_head_channels": "DenoiserConfig.num_head_channels",
    "dropout": "DenoiserConfig.dropout",
    "img_size": "DenoiserConfig.image_size",
    "Batch_Size": "TrainConfig.batch_size",
    "EPOCHS": "TrainConfig.steps",          # dap counts optimiser steps, not epochs
    "diffusion_lr": "TrainConfig.lr",
    "seg_lr": "TrainConfig.lr_segmenter",
    "weight_decay": "TrainConfig.weight_decay",
    "eval_normal_t": "DiffusionADConfig.t_s",
    "eval_noisier_t": "DiffusionADConfig.t_b",
    "condition_w": "DiffusionADConfig.w",
    "noise_fn": None,          # always Gaussian
    "trajectory_steps": None,  # read nowhere in the training loop
    "save_imgs": None,
    "save_vids": None,
}


__all__ = [
    "DATA_ENV",
    "ConfigError",
    "data_root",
    "from_dict",
    "to_dict",
    "replace",
    "merge",
    "check_fields",
    "DiffusionConfig",
    "OFFICIAL_KEY_MAP",
]
