"""Speed and memory settings in one place: threads, autocast, channels_last, compile, checkpointing.

Nothing here changes what a model computes by default: every dap network is float32,
contiguous and eager unless one of these helpers is called, so the same weights give the same
outputs everywhere. The helpers make the *fast path* that ``benchmarks/speed.py`` measures
against the plain one (ratios side by side in one run) and that ``benchmarks/gpu.py`` measures
on a GPU. Taught in ``notebooks/06_train_and_evaluate`` (training cost, FPS).

The pieces, in the order a training or evaluation entry point uses them::

    from dap import runtime
    runtime.set_wait_policy()                 # FIRST, before anything imports torch
    import torch
    runtime.configure_threads()               # physical cores (or OMP_NUM_THREADS)
    dtype = runtime.autocast_dtype(device, "auto")   # bf16 / fp16 / None, detected
    runtime.speed_up(method, channels_last=True, compile=False)
    opt = torch.optim.AdamW(groups, lr=lr, **runtime.optimizer_kwargs(device))
    with runtime.autocast(device, dtype):
        loss = method(batch, generator)["loss"]

OpenMP wait policy
------------------
PyTorch's CPU kernels run on an OpenMP thread team. By default (GNU libgomp) idle team threads
*spin* for a while before sleeping. On a machine whose cores are shared with other busy
processes (CI runners, a laptop running a notebook and a test suite, JupyterHub), a spinning
thread holds a core the partner thread needs, and every parallel region then waits for a
descheduled thread: a 2-thread run next to one other busy process was measured 20-30x slower.
``OMP_WAIT_POLICY=PASSIVE`` makes idle threads sleep at once and removes the slowdown. It is
a trade: every parallel region then wakes its partner thread through the kernel, and on a
quiet machine a bf16 ``ci`` training step was ~30 % faster with libgomp's default spinning
(measured on 2 vCPUs: 14.0 img/s PASSIVE vs 19.9 default, plain float32 9.8 vs 12.1; with one
busy neighbour: 4.4 vs 0.8). PASSIVE is the safe default for laptops, CI runners and shared
servers; on a dedicated machine ``export OMP_WAIT_POLICY=ACTIVE`` (or a ``GOMP_SPINCOUNT``)
before starting Python is faster, and :func:`set_wait_policy` keeps a value you set.

libgomp reads the variable once, when it is loaded, and ``import torch`` loads it. So the
variable must be in the environment *before torch is imported*: :func:`set_wait_policy` puts
it into ``os.environ`` (it imports nothing heavy) and says whether it came in time. Where to
set it: the first lines of ``dap/__main__.py`` (the CLI) and of every benchmark script, the
first code cell of a notebook (before ``import torch``), ``conftest.py`` for the test suite,
and the ``env`` of any subprocess or Jupyter kernel started from Python (children inherit
``os.environ``). An explicit value the user set is never overridden.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from dap.config import ConfigError

if TYPE_CHECKING:  # torch is imported lazily so that set_wait_policy() can run before it
    import torch
    from torch import nn

#: Values :func:`autocast_dtype` accepts (``TrainConfig.amp``).
AMP_CHOICES: tuple[str, ...] = ("auto", "bf16", "fp16", "off")


# --------------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------------
def set_wait_policy(policy: str = "PASSIVE") -> bool:
    """Put ``OMP_WAIT_POLICY=policy`` into ``os.environ`` unless the user set it already.

    Returns True when the setting is effective for this process: torch (and with it the
    OpenMP runtime, which reads the variable once when loaded) has not been imported yet, or
    the variable was already set before. Returns False (with a warning) when torch was
    imported first; subprocesses started afterwards still inherit the variable. See the module
    docstring for why and where to call it.
    """
    if "OMP_WAIT_POLICY" in os.environ:
        return True
    os.environ["OMP_WAIT_POLICY"] = policy
    if "torch" in sys.modules:
        warnings.warn(
            "dap.runtime.set_wait_policy() ran after torch was imported: OMP_WAIT_POLICY="
            f"{policy} applies to subprocesses only. Call it (or export OMP_WAIT_POLICY="
            f"{policy}) before importing torch.", RuntimeWarning, stacklevel=2)
        return False
    return True


def _allowed_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def _cgroup_cpu_limit() -> int | None:
    """CPUs allowed by a cgroup v2 quota (containers), or None without a quota."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def physical_cores() -> int:
    """Physical cores this process may use (hyper-threads counted once), at least 1.

    Read from ``/proc/cpuinfo`` (``physical id`` / ``core id`` of the CPUs in the affinity
    mask), capped by a cgroup CPU quota; elsewhere ``os.cpu_count()``.
    """
    allowed = _allowed_cpus()
    cores: set[tuple[str, str]] = set()
    try:
        proc, phys, core = None, "0", None
        for line in Path("/proc/cpuinfo").read_text().splitlines() + [""]:
            key, _, val = (part.strip() for part in line.partition(":"))
            if key == "processor":
                proc = int(val)
            elif key == "physical id":
                phys = val
            elif key == "core id":
                core = val
            elif not key and proc is not None:
                if proc in allowed:
                    cores.add((phys, core if core is not None else str(proc)))
                proc, phys, core = None, "0", None
    except (OSError, ValueError):
        cores = set()
    n = len(cores) or len(allowed) or os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    return max(1, min(n, limit) if limit else n)


def busy_cores() -> int:
    """Cores other processes keep busy: the 1-minute load average, rounded down (0 if unknown).

    Call it before this process starts heavy work (its own threads count in the average).
    """
    try:
        return int(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0


def configure_threads(num_threads: int | None = None, interop: int | None = None,
                      busy_aware: bool = False) -> dict[str, Any]:
    """Set torch's intra-op (and optionally inter-op) CPU threads; return what is in effect.

    Parameters
    ----------
    num_threads : int, optional
        Intra-op threads. Default: ``$OMP_NUM_THREADS`` when set (the user's choice, e.g.
        one thread per notebook kernel or pytest worker), else :func:`physical_cores` —
        hyper-thread siblings share one core's vector units and only add contention here.
    interop : int, optional
        Inter-op threads (torch.jit.fork, parallel autograd of independent branches). Only
        settable before torch's first parallel work; a late call is skipped with a note in the
        returned dict. Default: leave torch's choice.
    busy_aware : bool
        With the default ``num_threads``: leave the cores that other processes keep busy
        (:func:`busy_cores`) to them, at least one thread. On an oversubscribed machine every
        parallel region waits for a partner thread that is not running, and one thread was
        measured up to 1.8x faster than two on 2 shared cores (``benchmarks/speed.py
        --fast-threads auto``). Off by default: the thread count then never depends on what
        else happens to run.

    Also calls :func:`set_wait_policy` (effective only if torch is not imported yet; see the
    module docstring).

    Returns
    -------
    dict with ``num_threads``, ``interop_threads``, ``omp_wait_policy`` and ``notes``.
    """
    notes: list[str] = []
    if not set_wait_policy_quiet():
        notes.append("OMP_WAIT_POLICY set after torch was imported: not effective in this "
                     "process")
    import torch

    if num_threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        if env.isdigit() and int(env) > 0:
            num_threads = int(env)
        else:
            num_threads = physical_cores()
            if busy_aware:
                num_threads = max(1, num_threads - busy_cores())
    if num_threads < 1:
        raise ConfigError(f"num_threads must be >= 1, got {num_threads}")
    torch.set_num_threads(num_threads)
    if interop is not None:
        try:
            torch.set_num_interop_threads(interop)
        except RuntimeError as exc:  # already started: keep torch's value
            notes.append(f"interop threads unchanged ({exc})")
    return {"num_threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"), "notes": notes}


def set_wait_policy_quiet(policy: str = "PASSIVE") -> bool:
    """:func:`set_wait_policy` without the warning (its result says whether it was in time)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return set_wait_policy(policy)


# --------------------------------------------------------------------------------------------
# Precision
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# Memory format, attention, norms, checkpointing, compile
# --------------------------------------------------------------------------------------------
def to_channels_last(module: "nn.Module") -> "nn.Module":
    """Store every 4-D weight of ``module`` as channels_last (NHWC) in place; return it.

    oneDNN (CPU) and cuDNN (tensor cores) run convolutions fastest in NHWC; feed inputs with
    :func:`channels_last_input`. The state_dict keys and values are unchanged (only strides).
    """
    import torch

    return module.to(memory_format=torch.channels_last)


def channels_last_input(x: "torch.Tensor") -> "torch.Tensor":
    """``x`` in channels_last memory format if it is a 4-D image batch, else ``x``."""
    import torch

    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


def set_attention_backend(module: "nn.Module", backend: str = "fused") -> int:
    """Set the attention implementation of every denoiser attention block in ``module``.

    ``backend``: ``"sdpa"`` (the default of a fresh model), ``"fused"`` (contiguous q, k, v so
    that PyTorch's fused flash kernel runs) or ``"einsum"`` (the official code's); see
    :class:`dap.models.denoiser.AttentionBlock`. Returns the number of blocks changed.
    """
    from dap.models.denoiser import ATTENTION_BACKENDS, AttentionBlock

    if backend not in ATTENTION_BACKENDS:
        raise ConfigError(f"attention backend must be one of {ATTENTION_BACKENDS}, got "
                          f"{backend!r}")
    blocks = [m for m in module.modules() if isinstance(m, AttentionBlock)]
    for b in blocks:
        b.backend = backend
    return len(blocks)


def set_native_bf16_norm(module: "nn.Module", enabled: bool = True) -> int:
    """Normalise bf16 activations with the native mixed-precision GroupNorm (CPU) or not.

    See :class:`dap.models.denoiser.GroupNorm32` (``upcast``). Returns the number of norms.
    """
    from dap.models.denoiser import GroupNorm32

    norms = [m for m in module.modules() if isinstance(m, GroupNorm32)]
    for n in norms:
        n.upcast = not enabled
    return len(norms)


@contextlib.contextmanager
def num_threads(n: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``, restoring the previous count after."""
    import torch

    old = torch.get_num_threads()
    if n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _conv_weight_grad_function():
    """The autograd function of :func:`set_conv_weight_grad_threads` (built on first use)."""
    global _ConvWeightGradThreads
    if _ConvWeightGradThreads is not None:
        return _ConvWeightGradThreads
    import torch

    class ConvWeightGradThreads(torch.autograd.Function):
        """conv2d whose backward computes the weight and bias gradients on ``threads`` threads.

        Forward and input gradient are PyTorch's own kernels on all threads; only the weight
        gradient runs inside :func:`num_threads`. Same kernels, so the same numbers up to
        the order of a float sum.
        """

        @staticmethod
        def forward(ctx, x, weight, bias, stride, padding, dilation, groups, threads):  # type: ignore[override]
            ctx.save_for_backward(x, weight)
            ctx.conf = (stride, padding, dilation, groups, bias is not None, threads)
            return torch.nn.functional.conv2d(x, weight, bias, stride, padding, dilation, groups)

        @staticmethod
        def backward(ctx, grad_out):  # type: ignore[override]
            x, weight = ctx.saved_tensors
            stride, padding, dilation, groups, has_bias, threads = ctx.conf
            bias_sizes = [weight.shape[0]] if has_bias else None
            args = (grad_out, x, weight, bias_sizes, stride, padding, dilation, False, [0, 0],
                    groups)
            grad_in = grad_w = grad_b = None
            if ctx.needs_input_grad[0]:
                grad_in = torch.ops.aten.convolution_backward(*args, [True, False, False])[0]
            want_b = has_bias and ctx.needs_input_grad[2]
            if ctx.needs_input_grad[1] or want_b:
                with num_threads(threads):
                    _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                        *args, [False, bool(ctx.needs_input_grad[1]), want_b])
            return grad_in, grad_w, grad_b, None, None, None, None, None

    _ConvWeightGradThreads = ConvWeightGradThreads
    return ConvWeightGradThreads


_ConvWeightGradThreads: Any = None


def _conv_forward_weight_grad_threads(self: "nn.Module", x: "torch.Tensor") -> "torch.Tensor":
    """Forward of an ``nn.Conv1d`` / ``nn.Conv2d`` switched by :func:`set_conv_weight_grad_threads`."""
    import torch

    native = type(self).forward
    threads = self._dap_weight_grad_threads
    if (x.device.type != "cpu" or not torch.is_grad_enabled() or isinstance(self.padding, str)
            or self.padding_mode != "zeros" or torch.get_num_threads() <= threads):
        return native(self, x)
    autocast_on = torch.is_autocast_enabled("cpu")
    dtype = torch.get_autocast_dtype("cpu") if autocast_on else x.dtype
    if dtype != torch.bfloat16:
        return native(self, x)
    fn = _conv_weight_grad_function()
    w = self.weight.to(dtype)
    b = None if self.bias is None else self.bias.to(dtype)
    one_d = w.ndim == 3
    with torch.autocast("cpu", enabled=False):
        if one_d:  # (B, C, N) as (B, C, N, 1)
            y = fn.apply(x.to(dtype).unsqueeze(-1), w.unsqueeze(-1), b, (self.stride[0], 1),
                         (self.padding[0], 0), (self.dilation[0], 1), self.groups, threads)
            return y.squeeze(-1)
        return fn.apply(x.to(dtype), w, b, self.stride, self.padding, self.dilation,
                        self.groups, threads)


def set_conv_weight_grad_threads(module: "nn.Module", threads: int | None = 1) -> int:
    """Compute the weight gradients of ``module``'s bf16 convolutions on ``threads`` threads.

    Why: oneDNN's AMX weight-gradient convolution kernel synchronises its threads many times
    per call. When the cores are shared with other busy processes (a CI runner, a laptop, the
    2-core machine these numbers come from), every synchronisation waits for a descheduled
    partner thread, and on 2 threads the kernel was measured 50-200x slower than on one
    (130 ms instead of 0.6 ms for a 64-channel 3x3 conv at 16 x 16, batch 16), which made a
    bf16 training step 2x *slower* than float32. Running just this kernel on one thread
    removes the stall; the forward pass and the input gradients keep all threads. On a quiet
    machine it costs something (that kernel then runs on fewer threads): a ``ci`` bf16
    training step at 2 threads lost 7-13 %, against 2-3x gained when the cores are shared
    (``benchmarks/speed.py --ablate``). On a dedicated machine pass
    ``conv_weight_grad_threads=None`` to :func:`speed_up`.

    Applies only on the CPU, while gradients are recorded, when the conv computes in bfloat16
    (bf16 autocast or bf16 tensors) and torch uses more than ``threads`` threads; otherwise the
    module's own forward runs. Works on ``nn.Conv1d`` and ``nn.Conv2d`` (zero padding, numeric
    padding); not under ``torch.compile``. ``threads=None`` restores the native forward.
    Parameters and state_dict keys are untouched. Returns the number of convolutions switched.
    """
    import types

    from torch import nn

    count = 0
    for m in module.modules():
        if not isinstance(m, (nn.Conv1d, nn.Conv2d)):
            continue
        if threads is None:
            if getattr(m, "_dap_weight_grad_threads", None) is not None:
                del m.forward
                m._dap_weight_grad_threads = None
                count += 1
            continue
        if threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        m._dap_weight_grad_threads = int(threads)
        m.forward = types.MethodType(_conv_forward_weight_grad_threads, m)
        count += 1
    return count


def enable_gradient_checkpointing(module: "nn.Module", enabled: bool = True) -> int:
    """Call ``enable_gradient_checkpointing()`` (or ``disable_...``) on every dap network inside
    ``module`` (a method, a denoiser, a segmenter); return how many networks were switched."""
    nets = [m for m in module.modules() if hasattr(m, "enable_gradient_checkpointing")]
    for m in nets:
        (m.enable_gradient_checkpointing if enabled else m.disable_gradient_checkpointing)()
    return len(nets)


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


def networks(module: "nn.Module") -> list["nn.Module"]:
    """The dap networks inside ``module`` (itself if it is one): the units to compile."""
    from dap.models.denoiser import DenoiserUNet
    from dap.models.segmentation import SegmentationUNet

    kinds = (DenoiserUNet, SegmentationUNet)
    if isinstance(module, kinds):
        return [module]
    return [m for m in module.modules() if isinstance(m, kinds)]


def speed_up(module: "nn.Module", *, channels_last: bool = True, attention: str | None = "fused",
             native_bf16_norm: bool | None = None, conv_weight_grad_threads: int | None | str
             = "auto", gradient_checkpointing: bool = False, compile: bool = False,
             compile_options: dict[str, Any] | None = None) -> "nn.Module":
    """Apply the fast-path options to a method or network in place; return it.

    The options that ``benchmarks/speed.py`` measured to pay on the CPU (each one's share is
    printed there). None of them changes parameters or state_dict keys, so checkpoints load
    as before, and a model saved from the fast path is an ordinary dap model. Use with
    :func:`autocast` (the dtype from :func:`autocast_dtype`) and :func:`channels_last_input`
    on the inputs; without autocast the float32 outputs equal the plain path's up to float
    rounding of the attention kernel.

    Parameters
    ----------
    channels_last : bool
        :func:`to_channels_last` (NHWC weights; oneDNN's and cuDNN's fast layout).
    attention : str or None
        :func:`set_attention_backend` (``"fused"``: PyTorch's flash kernel); None keeps it.
    native_bf16_norm : bool or None
        :func:`set_native_bf16_norm`; None = on where the CPU has native bf16.
    conv_weight_grad_threads : int, None or "auto"
        :func:`set_conv_weight_grad_threads`; ``"auto"`` = 1 where the CPU has native bf16
        and the networks are not compiled; None leaves the convolutions alone.
    gradient_checkpointing : bool
        :func:`enable_gradient_checkpointing` (memory, not speed: about one extra forward).
    compile : bool
        :func:`maybe_compile` each dap network inside ``module`` (not the method's Python
        logic: the anomaly synthesis stays eager).
    """
    if channels_last:
        to_channels_last(module)
    if attention is not None:
        set_attention_backend(module, attention)
    if native_bf16_norm is None:
        native_bf16_norm = cpu_supports_bf16()
    set_native_bf16_norm(module, native_bf16_norm)
    if conv_weight_grad_threads == "auto":
        conv_weight_grad_threads = 1 if cpu_supports_bf16() and not compile else None
    if conv_weight_grad_threads is not None:
        set_conv_weight_grad_threads(module, int(conv_weight_grad_threads))
    if gradient_checkpointing:
        enable_gradient_checkpointing(module)
    if compile:
        for net in networks(module):
            maybe_compile(net, True, **(compile_options or {}))
    return module


# --------------------------------------------------------------------------------------------
# Optimiser
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _fused_adam_works(device_type: str) -> bool:
    import torch

    try:
        p = torch.nn.Parameter(torch.zeros(2, device=device_type))
        p.grad = torch.ones(2, device=device_type)
        torch.optim.AdamW([p], lr=1e-3, fused=True).step()
        return True
    except Exception:  # noqa: BLE001
        return False


def optimizer_kwargs(device: "torch.device | str", fused: bool | None = None) -> dict[str, Any]:
    """Keyword arguments that make ``torch.optim.Adam`` / ``AdamW`` fast on ``device``.

    ``{"fused": True}`` where PyTorch has a fused Adam kernel for the device (CUDA, and the CPU
    since torch 2.4): one kernel for all parameters instead of ~8 small ops per tensor, which
    on the small ``ci`` model is a sizeable part of the step. Otherwise ``{"foreach": True}``
    (multi-tensor ops). ``fused=False`` forces foreach. Same update up to float rounding
    (float32 reassociation), so a run is still exactly reproducible with the same setting.
    """
    import torch

    dev = torch.device(device).type
    if fused is not False and _fused_adam_works(dev):
        return {"fused": True}
    return {"foreach": True}


def optimizer_threads(params: Any, small: int = 1 << 16) -> int | None:
    """Threads for ``optimizer.step()``: 1 when the parameters are many small tensors, else None.

    A fused or per-tensor Adam step splits each tensor above PyTorch's grain size (32768
    elements) over the threads, and for tensors of a few ten thousand elements waking the
    other thread costs more than the work: the ``ci`` model's step (270 tensors, 3 k elements
    on average) took 2.7 ms fused on one thread and 19 ms on two (2 vCPUs). Returns 1 when the
    mean tensor has fewer than ``small`` elements (``ci``, ``cpu`` presets), None (keep all
    threads) otherwise (the ``paper`` preset: ~230 k). Use as
    ``with runtime.num_threads(runtime.optimizer_threads(params) or torch.get_num_threads()):
    optimizer.step()``.
    """
    sizes = [p.numel() for p in params]
    if not sizes:
        return None
    return 1 if sum(sizes) / len(sizes) < small else None


# --------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def inference(device: "torch.device | str", dtype: "torch.dtype | None") -> Iterator[None]:
    """``torch.inference_mode()`` plus :func:`autocast`: the context for fast evaluation."""
    import torch

    with torch.inference_mode(), autocast(device, dtype):
        yield


__all__ = [
    "AMP_CHOICES", "BF16_CPU_FLAGS", "set_wait_policy", "physical_cores", "busy_cores",
    "configure_threads",
    "cpu_supports_bf16", "cuda_supports_bf16", "autocast_dtype", "autocast", "to_channels_last",
    "channels_last_input", "set_attention_backend", "set_native_bf16_norm",
    "enable_gradient_checkpointing", "set_conv_weight_grad_threads", "num_threads",
    "compile_unavailable_reason", "maybe_compile",
    "is_compiled", "networks", "speed_up", "optimizer_kwargs", "optimizer_threads", "inference",
]
