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
from pathlib import Path
from typing import Any

import torch

from dap.engine.checkpoint import load_checkpoint, method_from_checkpoint, model_payload, save_checkpoint
from dap.io import atomic_write_text
from dap.methods import AnomalyMethod

ZOO_DIR = Path(__file__).resolve().parent / "checkpoints"


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
        raise KeyError(f"no shipped model {name!r}; available: {available()}")


def load(name: str, device: str | torch.device = "cpu") -> AnomalyMethod:
    """Model ``name`` rebuilt from its own config, in float32, in eval mode, ready to predict."""
    _check(name)
    ckpt = load_checkpoint(ZOO_DIR / f"{name}.pt", map_location="cpu")
    return method_from_checkpoint(ckpt).to(device).eval()


def export(method: AnomalyMethod, name: str, provenance: dict[str, Any],
           directory: str | Path = ZOO_DIR) -> tuple[Path, Path]:
    """Write ``method`` as a zoo model (float16 weights + provenance JSON), atomically."""
    directory = Path(directory)
    pt, js = directory / f"{name}.pt", directory / f"{name}.json"
    save_checkpoint(pt, model_payload(method, half=True))
    atomic_write_text(js, json.dumps(provenance, indent=2, default=str))
    return pt, js
