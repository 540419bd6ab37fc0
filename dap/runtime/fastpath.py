"""The fast path or the plain path, chosen once for a training or evaluation run.

The **fast path** (the default of ``dap.engine.train`` and ``dap.engine.evaluate``):
bf16 autocast where the device computes bf16 natively (detected: :func:`autocast_dtype` with
``amp="auto"``; float32 elsewhere), and :func:`speed_up`'s options (channels_last, the fused
attention kernel, native bf16 GroupNorm, the bf16 weight-gradient convolutions on one thread);
in training also the fused Adam kernel with its step on one thread for small models; in
evaluation ``torch.inference_mode``. None of them changes a parameter or a state_dict key.

The **plain path**: float32, contiguous tensors, eager, PyTorch's default attention and Adam:
the official DiffusionAD code's recipe, and what the golden tests pin. Ask for it per run
(``TrainConfig(plain=True)``, ``evaluate(..., plain=True)``) or process-wide with
``DAP_PLAIN=1`` (``python -m dap --plain COMMAND`` sets it; subprocesses inherit it).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from dap.config import ConfigError
from dap.runtime.checkpointing import enable_gradient_checkpointing
from dap.runtime.precision import autocast_dtype
from dap.runtime.speedups import speed_up

if TYPE_CHECKING:
    import torch
    from torch import nn

#: the environment variable that asks for the plain path process-wide
PLAIN_ENV = "DAP_PLAIN"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def plain_requested() -> bool:
    """Whether ``DAP_PLAIN`` asks for the plain path (``1``/``true``; unset or ``0``: fast)."""
    value = os.environ.get(PLAIN_ENV, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{PLAIN_ENV}={value!r} is not understood: set it to 1 (plain path) or 0 "
                      "(fast path), or unset it")


def resolve_plain(plain: bool | None) -> bool:
    """``plain``, or :func:`plain_requested` when it is None."""
    return plain_requested() if plain is None else bool(plain)


def setup(module: "nn.Module", device: "torch.device | str", amp: str = "auto",
          plain: bool | None = None, *, channels_last: bool | None = None, compile: bool = False,
          gradient_checkpointing: bool = False) -> "torch.dtype | None":
    """Put ``module`` on the fast (or plain) path for ``device``; return the autocast dtype.

    Parameters
    ----------
    amp : str
        ``auto`` | ``bf16`` | ``fp16`` | ``off`` (:func:`autocast_dtype`). On the plain path
        ``auto`` means float32 and an explicit ``bf16`` / ``fp16`` is an error.
    plain : bool or None
        True: the plain path; None: :func:`plain_requested`.
    channels_last, compile
        Fast-path options (:func:`speed_up`; ``channels_last=None``: where it pays on
        ``device``); ``compile`` on the plain path is an error. Whether inputs should then go
        channels_last: :func:`uses_channels_last`.
    gradient_checkpointing : bool
        Memory, not speed: allowed on both paths (it recomputes, the numbers stay the same).

    The options are applied in place and are idempotent (a second call changes nothing).
    """
    import torch

    device = torch.device(device)
    if resolve_plain(plain):
        if amp in ("bf16", "fp16"):
            raise ConfigError(f"amp={amp!r} asks for mixed precision but the plain path (plain="
                              f"True or {PLAIN_ENV}=1) is float32: use amp='auto' or 'off', or "
                              "the fast path")
        if compile:
            raise ConfigError(f"compile=True asks for torch.compile but the plain path (plain="
                              f"True or {PLAIN_ENV}=1) is eager: drop one of them")
        if gradient_checkpointing:
            enable_gradient_checkpointing(module)
        return None
    dtype = autocast_dtype(device, amp)
    speed_up(module, channels_last=channels_last, gradient_checkpointing=gradient_checkpointing,
             compile=compile)
    return dtype


__all__ = ["PLAIN_ENV", "plain_requested", "resolve_plain", "setup"]
