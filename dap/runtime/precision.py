"""Precision: is bf16 native here (detected), which autocast dtype an ``amp`` setting means,
and the autocast / inference contexts."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from dap.config import ConfigError

if TYPE_CHECKING:  # torch is imported lazily (dap.runtime must not import it)
    import torch

#: Values :func:`autocast_dtype` accepts (``TrainConfig.amp``).
AMP_CHOICES: tuple[str, ...] = ("auto", "bf16", "fp16", "off")


def _cpu_flags() -> set[str]:
    """CPU feature flags: ``flags`` (x86) or ``Features`` (ARM) of /proc/cpuinfo; macOS sysctl."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            if key.strip() in ("flags", "Features"):
                return set(val.split())
    except OSError:
        pass
    if sys.platform == "darwin":
        import subprocess

        try:
            out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"],
                                 capture_output=True, text=True, timeout=5).stdout.strip()
            return {"bf16"} if out == "1" else set()
        except (OSError, subprocess.SubprocessError):
            return set()
    return set()


#: CPU flags that mean native bfloat16 arithmetic (x86 AMX / AVX-512 BF16, ARMv8.6 BF16).
BF16_CPU_FLAGS: frozenset[str] = frozenset({"amx_bf16", "avx512_bf16", "bf16"})


@functools.lru_cache(maxsize=None)
def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (so bf16 autocast pays), detected.

    True when the CPU reports a native bf16 flag (``amx_bf16`` or ``avx512_bf16`` on x86,
    ``bf16`` on ARM) AND a tiny bf16 matmul and conv run and agree with float32 (a broken or
    emulated kernel fails the check). Without native bf16, PyTorch still runs bf16 by
    converting to float32 inside each kernel, which is usually slower than float32.
    ``torch.backends.cpu.get_cpu_capability()`` only names the vector ISA (e.g. ``AVX512``), so
    the flags decide. ``DAP_CPU_BF16=0`` or ``1`` overrides the detection.
    """
    env = os.environ.get("DAP_CPU_BF16")
    if env in ("0", "1"):
        return env == "1"
    if not (_cpu_flags() & BF16_CPU_FLAGS) and not _capability_says_bf16():
        return False
    return _bf16_smoke_check()


def _capability_says_bf16() -> bool:
    """Whether torch's CPU capability string names bf16 or AMX (some builds report it)."""
    import torch

    try:
        cap = str(torch.backends.cpu.get_cpu_capability()).upper()
    except Exception:  # noqa: BLE001 - old torch
        return False
    return "BF16" in cap or "AMX" in cap


def _bf16_smoke_check() -> bool:
    import torch
    import torch.nn.functional as F

    try:
        g = torch.Generator().manual_seed(0)
        a = torch.randn(64, 64, generator=g)
        ref = a @ a
        got = (a.bfloat16() @ a.bfloat16()).float()
        x, w = torch.randn(1, 8, 8, 8, generator=g), torch.randn(8, 8, 3, 3, generator=g)
        cref = F.conv2d(x, w, padding=1)
        cgot = F.conv2d(x.bfloat16(), w.bfloat16(), padding=1).float()
        ok = lambda r, o: bool(((o - r).abs().max() / r.abs().max()) < 5e-2)  # noqa: E731
        return ok(ref, got) and ok(cref, cgot)
    except Exception:  # noqa: BLE001 - any failure means "do not use bf16"
        return False


def cuda_supports_bf16(device: "torch.device | str | int | None" = None) -> bool:
    """Native bf16 on a CUDA device: compute capability >= 8.0 (Ampere, e.g. A100; not a T4).

    ``torch.cuda.is_bf16_supported()`` also says True on older GPUs where bf16 is emulated
    (slower than fp16), so the capability decides. ROCm devices: torch's own answer.
    """
    import torch

    if not torch.cuda.is_available():
        return False
    if getattr(torch.version, "hip", None):
        return bool(torch.cuda.is_bf16_supported())
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def autocast_dtype(device: "torch.device | str", amp: "str | bool | None | torch.dtype" = "auto"
                   ) -> "torch.dtype | None":
    """Resolve an ``amp`` setting to the autocast dtype for ``device`` (None = float32).

    ========  =====================================  ==================  ================
    amp       CUDA, native bf16 (capability >= 8.0)  CUDA, older (T4)    CPU
    ========  =====================================  ==================  ================
    auto      bfloat16                               float16             bfloat16 if
                                                                         :func:`cpu_supports_bf16`,
                                                                         else None
    bf16      bfloat16                               bfloat16 (emulated) bfloat16
    fp16      float16                                float16             ConfigError
    off       None                                   None                None
    ========  =====================================  ==================  ================

    Other devices (mps, xpu): ``auto`` -> None, ``bf16`` / ``fp16`` as asked. ``True`` means
    ``auto``, ``False`` / None mean ``off``; a ``torch.dtype`` is returned as is (float32 ->
    None). float16 needs a gradient scaler in training (``torch.amp.GradScaler``).
    """
    import torch

    device = torch.device(device)
    if isinstance(amp, torch.dtype):
        return None if amp == torch.float32 else amp
    if amp is True:
        amp = "auto"
    if amp is False or amp is None:
        amp = "off"
    if amp not in AMP_CHOICES:
        raise ConfigError(f"amp must be one of {AMP_CHOICES}, got {amp!r}")
    if amp == "off":
        return None
    if device.type == "cuda":
        if amp == "auto":
            return torch.bfloat16 if cuda_supports_bf16(device) else torch.float16
        return torch.bfloat16 if amp == "bf16" else torch.float16
    if device.type == "cpu":
        if amp == "fp16":
            raise ConfigError("amp='fp16' needs a CUDA device; use 'bf16', 'auto' or 'off' on "
                              "the CPU")
        if amp == "auto":
            return torch.bfloat16 if cpu_supports_bf16() else None
        return torch.bfloat16
    if amp == "auto":
        return None
    return torch.bfloat16 if amp == "bf16" else torch.float16


def autocast(device: "torch.device | str", dtype: "torch.dtype | None"
             ) -> contextlib.AbstractContextManager:
    """``torch.autocast(device.type, dtype)``, or a do-nothing context when ``dtype`` is None.

    Matmuls and convolutions run in ``dtype``; losses, softmax and dap's GroupNorm statistics
    stay float32. Use it around the forward pass only (not around ``backward``).
    """
    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)



@contextlib.contextmanager
def inference(device: "torch.device | str", dtype: "torch.dtype | None") -> Iterator[None]:
    """``torch.inference_mode()`` plus :func:`autocast`: the context for fast evaluation.

    Under ``inference_mode`` autocast does not cache its weight casts (every call casts every
    weight again; under ``no_grad`` it casts each once per context). Measured here with
    ``no_grad`` instead: DiffAD at batch 1 (about ten network passes per image) 3 % faster,
    DiffusionAD at batch 8 (``benchmarks/speed.py``) 5 % slower, so ``inference_mode`` stays.
    """
    import torch

    with torch.inference_mode(), autocast(device, dtype):
        yield



__all__ = ["AMP_CHOICES", "BF16_CPU_FLAGS", "cpu_supports_bf16", "cuda_supports_bf16",
           "autocast_dtype", "autocast", "inference"]
