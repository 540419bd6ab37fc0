"""Small pretrained models shipped inside the package, and their loader.

Each model ``NAME`` is two files in ``dap/checkpoints/``:

``NAME.pt``    a dap checkpoint (:mod:`dap.engine.checkpoint`, the format every run writes)
               holding the config and the weights, stored in float16 to stay small when that
               moves no validation metric by more than 0.1 point (:func:`half_precision_check`)
``NAME.json``  provenance: the ``python -m dap train ...`` command that made it, the config, the
               git commit, the training time and the *validation* metrics it was selected on.

>>> from dap import zoo
>>> zoo.available()                         # doctest: +SKIP
['diffusionad-builtin-brick', ...]
>>> method = zoo.load("diffusionad-builtin-brick")   # doctest: +SKIP
>>> pred = method.predict(images)           # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Callable

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


#: float16 weights are shipped only if no validation metric moves by more than this (points)
FP16_LIMIT_POINTS = 0.1


@torch.no_grad()
def half_precision_check(method: AnomalyMethod,
                         score: Callable[[AnomalyMethod], dict[str, float]]) -> dict[str, Any]:
    """Validation metrics of ``method`` as it is and with its weights rounded to float16.

    ``score`` is the validation scorer (:func:`dap.experiments.validation_scorer`). Returns both
    metric sets, the largest change in percentage points over the metrics in [0, 1] and whether
    it stays within :data:`FP16_LIMIT_POINTS`.
    """
    before = {k: float(v) for k, v in score(method).items()}
    rounded = copy.deepcopy(method)
    for v in rounded.state_dict().values():
        if v.is_floating_point():
            v.copy_(v.half().float())
    after = {k: float(v) for k, v in score(rounded).items()}
    keys = [k for k in before if k in after and 0.0 <= before[k] <= 1.0 and "threshold" not in k]
    change = max((abs(after[k] - before[k]) * 100 for k in keys), default=0.0)
    return {"metrics_fp32": before, "metrics_fp16": after, "max_change_points": change,
            "limit_points": FP16_LIMIT_POINTS, "fp16_ok": change <= FP16_LIMIT_POINTS}


def export(method: AnomalyMethod, name: str, provenance: dict[str, Any],
           directory: str | Path | None = None, force: bool = False,
           score: Callable[[AnomalyMethod], dict[str, float]] | None = None
           ) -> tuple[Path, Path]:
    """Write ``method`` as zoo model ``name`` (weights + provenance JSON), atomically.

    Weights are stored in float16 — unless ``score`` (a validation scorer) is given and the
    rounding moves a validation metric by more than :data:`FP16_LIMIT_POINTS`; then in float32
    — and the file is xz-compressed (:func:`dap.engine.checkpoint.save_checkpoint`).
    The check's numbers go into the provenance (``fp16_check``). ``name`` is a name, never a
    path (:func:`check_name`); an existing model of that name is replaced only with ``force``.
    """
    check_name(name)
    directory = Path(ZOO_DIR if directory is None else directory)
    pt, js = directory / f"{name}.pt", directory / f"{name}.json"
    if not force and (pt.exists() or js.exists()):
        raise ConfigError(f"a zoo model {name!r} exists already in {directory}; choose another "
                          "name, or pass --force to replace it")
    half = True
    provenance = dict(provenance)
    if score is not None:
        check = half_precision_check(method, score)
        half = check["fp16_ok"]
        provenance["fp16_check"] = check
    provenance["weights_dtype"] = "float16" if half else "float32"
    save_checkpoint(pt, model_payload(method, half=half), compress=True)
    atomic_write_text(js, json.dumps(provenance, indent=2, default=str))
    return pt, js
