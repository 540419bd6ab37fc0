"""Small pretrained models shipped inside the package, and their loader.

Each model ``NAME`` is two files in ``dap/checkpoints/``:

``NAME.pt``    a dap checkpoint (:mod:`dap.engine.checkpoint`, the format every run writes)
               holding the config and the weights, stored in float16 to stay small
``NAME.json``  provenance: the ``python -m dap train ...`` command that made it, the config, the
               git commit, the training time and the *validation* metrics it was selected on.

>>> from dap import zoo
>>> zoo.available()                         # doctest: +SKIP
['diffusionad-builtin-brick', ...]
>>> method = zoo.load("diffusionad-builtin-brick")   # doctest: +SKIP
>>> pred = method.predict(images)           # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from dap.config import ConfigError
from dap.engine.checkpoint import load_checkpoint, method_from_checkpoint, model_payload, save_checkpoint
from dap.io import atomic_write_text
from dap.methods import AnomalyMethod

ZOO_DIR = Path(__file__).resolve().parent / "checkpoints"
#: a zoo name: lower-case letters, digits, '.', '_' and '-', not starting with '.' or '-'
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,99}")


def available() -> list[str]:
    """Names of the shipped models (those with both a ``.pt`` and a ``.json``)."""
    if not ZOO_DIR.exists():
        return []
    return sorted(p.stem for p in ZOO_DIR.glob("*.json") if p.with_suffix(".pt").exists())


def info(name: str) -> dict[str, Any]:
    """The provenance record of model ``name``."""
    _check(name)
    return json.loads((ZOO_DIR / f"{name}.json").read_text())


def _check(name: str) -> None:
    if name not in available():
        raise ConfigError(f"no shipped model {name!r}; available: {available()}")


def check_name(name: str) -> str:
    """``name`` if it is a valid zoo name (a name, never a path), else a :class:`ConfigError`."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or ".." in name:
        raise ConfigError(f"zoo name {name!r} is not a name: use lower-case letters, digits, "
                          "'.', '_' and '-' (e.g. diffusionad-builtin-brick), not a path")
    return name


def load(name: str, device: str | torch.device = "cpu") -> AnomalyMethod:
    """Model ``name`` rebuilt from its own config, in float32, in eval mode, ready to predict."""
    _check(name)
    ckpt = load_checkpoint(ZOO_DIR / f"{name}.pt", map_location="cpu")
    return method_from_checkpoint(ckpt).to(device).eval()


def export(method: AnomalyMethod, name: str, provenance: dict[str, Any],
           directory: str | Path = ZOO_DIR, force: bool = False) -> tuple[Path, Path]:
    """Write ``method`` as zoo model ``name`` (float16 weights + provenance JSON), atomically.

    ``name`` is a name, never a path (:func:`check_name`); an existing model of that name is
    replaced only with ``force``.
    """
    check_name(name)
    directory = Path(directory)
    pt, js = directory / f"{name}.pt", directory / f"{name}.json"
    if not force and (pt.exists() or js.exists()):
        raise ConfigError(f"a zoo model {name!r} exists already in {directory}; choose another "
                          "name, or pass --force to replace it")
    save_checkpoint(pt, model_payload(method, half=True))
    atomic_write_text(js, json.dumps(provenance, indent=2, default=str))
    return pt, js
