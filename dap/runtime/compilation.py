"""``torch.compile`` with a clean fallback to eager (no compiler, no Triton, a failed graph)."""

from __future__ import annotations

import os
import shutil
import warnings
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch
    from torch import nn


def compile_unavailable_reason(device: "torch.device | str" = "cpu") -> str | None:
    """Why ``torch.compile`` cannot work here, or None if it may.

    Inductor needs a C++ compiler for CPU code (``$CXX``, g++, c++ or clang++) and Triton for
    CUDA code; ``torch.compile`` itself is missing on old torch and on some Python versions.
    """
    import torch

    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if torch.device(device).type == "cpu":
        compilers = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
        if not any(c and shutil.which(c) for c in compilers):
            return "no C++ compiler found (set CXX or install g++/clang++)"
    elif torch.device(device).type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "triton is not installed"
    return None


def _warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def maybe_compile(module: "nn.Module", enabled: bool = True, device: "torch.device | str | None"
                  = None, warn: Callable[[str], None] = _warn_once, **options: Any
                  ) -> "nn.Module":
    """Compile ``module``'s forward with ``torch.compile`` in place, or leave it eager.

    The module object, its parameters and its state_dict keys stay the same (no
    ``_orig_mod.`` prefix), so checkpoints save and load as before. Falls back to eager with
    one warning line when compiling is impossible (no C++ compiler, no Triton, no
    ``torch.compile``) or fails: compilation is lazy, so a failure on the first call (or on a
    recompilation) is caught there, the eager forward is run instead, and eager is kept from
    then on. An error that the eager forward raises too is the caller's and propagates.

    Parameters
    ----------
    enabled : bool
        False returns ``module`` untouched (so call sites need no ``if``).
    device : optional
        Where it will run (default: where its first parameter lives).
    **options
        Passed to ``torch.compile`` (``mode``, ``dynamic``, ...).

    Notes
    -----
    Compiling the ``ci`` denoiser for training takes minutes on 2 CPU cores; the gain is
    measured in ``benchmarks/speed.py --compile``.
    """
    if not enabled:
        return module
    import torch

    if device is None:
        p = next(module.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    name = type(module).__name__
    reason = compile_unavailable_reason(device)
    if reason:
        warn(f"torch.compile skipped for {name}: {reason}; running eager")
        return module
    try:
        compiled = torch.compile(type(module).forward, **options)
    except Exception as exc:  # noqa: BLE001 - any failure means eager
        warn(f"torch.compile failed for {name} ({type(exc).__name__}: {exc}); running eager")
        return module
    import types

    module._dap_compile_state = {"compiled": True, "fn": compiled, "warn": warn}
    module.forward = types.MethodType(_compiled_forward, module)
    return module


def _compiled_forward(self: "nn.Module", *args: Any, **kwargs: Any) -> Any:
    """The forward :func:`maybe_compile` installs: compiled, or eager after a failure."""
    state = self._dap_compile_state
    eager = type(self).forward
    if not state["compiled"]:
        return eager(self, *args, **kwargs)
    try:
        # the class's forward compiled as a function of (self, ...): a deep copy of the module
        # (which copies this bound method and the state dict) runs the same compiled code
        return state["fn"](self, *args, **kwargs)
    except Exception as exc:  # noqa: BLE001
        out = eager(self, *args, **kwargs)  # an error here is the caller's: it propagates
        state["compiled"] = False
        first = str(exc).splitlines()[0] if str(exc) else ""
        state["warn"](f"torch.compile failed for {type(self).__name__} "
                      f"({type(exc).__name__}: {first[:200]}); running eager")
        return out


def is_compiled(module: "nn.Module") -> bool:
    """Whether :func:`maybe_compile` compiled ``module`` and it has not fallen back to eager."""
    state = getattr(module, "_dap_compile_state", None)
    return bool(state and state["compiled"])



__all__ = ["compile_unavailable_reason", "maybe_compile", "is_compiled"]
