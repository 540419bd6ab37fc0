"""The one checkpoint format of dap, for training runs and the shipped zoo alike.

A checkpoint is a ``torch.save``'d dict that loads with ``torch.load(weights_only=True)``:

``format``         :data:`CHECKPOINT_FORMAT`
``method``         the registry name (``diffusionad``, ``ddad``, ...)
``method_config``  the method's config as a dict (the model is rebuilt from it, strictly)
``model``          the state dict (float32, or float16 in the zoo to stay small)

Training runs add ``train_config``, ``optimizer``, ``scaler``, ``rng``, ``step``, ``history``,
``validations``, ``best``, ``metrics``, ``git_commit``, ``dap_version``, ``extra``,
``world_size``. Every write goes through a temp file and a rename (:mod:`dap.io`).
"""

from __future__ import annotations

import io
import json
import lzma
import subprocess
from pathlib import Path
from typing import Any

import torch

from dap.config import ConfigError
from dap.io import atomic_path
from dap.methods import AnomalyMethod, method_class

CHECKPOINT_FORMAT = "dap-checkpoint-v1"


#: the first bytes of an xz stream: a checkpoint saved with ``compress=True``
_XZ_MAGIC = b"\xfd7zXZ\x00"


def save_checkpoint(path: str | Path, payload: dict[str, Any], compress: bool = False) -> Path:
    """Write ``payload`` with torch.save to a temp file, then rename it into place (atomic).

    ``compress``: xz-compress the torch.save bytes (the shipped models: about 13 % smaller);
    :func:`load_checkpoint` reads both forms.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        if compress:
            buf = io.BytesIO()
            torch.save(payload, buf)
            Path(tmp).write_bytes(lzma.compress(buf.getvalue(), preset=9))
        else:
            torch.save(payload, tmp)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a dap checkpoint safely (``weights_only=True``) and check its format."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with open(path, "rb") as fh:
            compressed = fh.read(len(_XZ_MAGIC)) == _XZ_MAGIC
        source = io.BytesIO(lzma.decompress(path.read_bytes())) if compressed else path
        ckpt = torch.load(source, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{path} is not a readable dap checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a dap checkpoint (format {CHECKPOINT_FORMAT} expected)")
    missing = [k for k in ("method", "method_config", "model") if k not in ckpt]
    if missing:
        raise ValueError(f"{path} is a damaged dap checkpoint: it lacks {missing}")
    return ckpt


def model_payload(method: AnomalyMethod, half: bool = False) -> dict[str, Any]:
    """The minimal checkpoint of ``method``: format, name, config and weights (fp16 if ``half``)."""
    state = {k: v.detach().cpu() for k, v in method.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    return {"format": CHECKPOINT_FORMAT, "method": method.name,
            "method_config": method.config_dict(), "model": state}


def method_from_checkpoint(ckpt: dict[str, Any]) -> AnomalyMethod:
    """Rebuild the method a loaded checkpoint describes (its own config) and load its weights
    (float16 zoo weights come back as float32)."""
    method = method_class(ckpt["method"]).from_config_dict(ckpt["method_config"])
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    try:
        method.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ValueError(f"the checkpoint's weights do not fit its own {ckpt['method']} config "
                         f"({first[1].strip() if len(first) > 1 else first[0]}); the file is "
                         "damaged or was edited") from exc
    return method


def load_method(path: str | Path, map_location: str | torch.device = "cpu") -> AnomalyMethod:
    """A checkpoint file as a ready-to-predict method (eval mode, on ``map_location``)."""
    method = method_from_checkpoint(load_checkpoint(path, "cpu"))
    return method.to(map_location).eval()


def check_same_config(ckpt: dict, method_name: str, config: dict, path: str | Path) -> None:
    """A clear error when a checkpoint was made for another method or config."""
    if ckpt["method"] != method_name:
        raise ConfigError(f"{path} holds a {ckpt['method']!r} model, not {method_name!r}")
    if ckpt["method_config"] != json.loads(json.dumps(config)):
        diff = dict_diff(ckpt["method_config"], config)
        raise ConfigError(
            f"{path} was trained with another config ({'; '.join(diff[:5])}). Build the method "
            "from the checkpoint's own config (dap.zoo.load / dap.engine.checkpoint.load_method)"
            " or start a new run directory."
        )


def dict_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """The leaves where two nested dicts differ, as ``key: checkpoint A vs now B`` lines."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += dict_diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        a, b = list(a), list(b)
    return [] if a == b else [f"{prefix.rstrip('.')}: checkpoint {a!r} vs now {b!r}"]


def git_commit() -> str:
    """The git commit of the dap code that runs: ``$DAP_GIT_COMMIT`` if set, else git's HEAD of
    the dap checkout, else 'unknown'.

    The variable is for a copy of the code sent to another machine (a lent GPU): there a
    ``.git`` folder, if any, may be older than the working tree that travelled with it, and
    its HEAD would name the wrong commit.
    """
    import os

    if os.environ.get("DAP_GIT_COMMIT"):
        return os.environ["DAP_GIT_COMMIT"]
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except Exception:  # noqa: BLE001 - no git is fine
        return "unknown"


def dap_version() -> str:
    from dap import __version__

    return __version__


__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint", "model_payload",
           "method_from_checkpoint", "load_method", "check_same_config", "dict_diff",
           "git_commit", "dap_version"]
