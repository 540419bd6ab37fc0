"""Speed and memory settings in one place: threads, autocast, channels_last, compile, checkpointing.

A dap network is float32, contiguous and eager as built, so the same weights give the same
outputs everywhere. The training and evaluation loops (:mod:`dap.engine`) put it on the *fast
path* by default through :func:`setup` (bf16 autocast where the CPU or GPU has native bf16,
detected; channels_last; fused kernels); ``TrainConfig(plain=True)``, ``evaluate(...,
plain=True)``, ``DAP_PLAIN=1`` or ``python -m dap --plain`` keep the *plain path* (float32,
contiguous, eager: the official code's recipe). ``benchmarks/speed.py`` measures one against
the other (ratios side by side in one run), ``benchmarks/memory.py`` the memory options and
``benchmarks/gpu.py`` both on a GPU. Taught in ``notebooks/06_train_and_evaluate``.

The pieces, in the order an entry point uses them (``python -m dap`` does the first two)::

    from dap import runtime
    runtime.set_wait_policy()                 # FIRST, before anything imports torch
    import torch
    runtime.configure_threads()               # physical cores (or OMP_NUM_THREADS)
    dtype = runtime.setup(method, device, amp="auto")   # speed_up + the autocast dtype
    opt = torch.optim.Adam(groups, lr=lr, **runtime.optimizer_kwargs(device))
    runtime.limit_step_threads(opt)           # small models: the step on one thread
    with runtime.autocast(device, dtype):
        loss = method(batch, generator)["loss"]

The package, one module per concern (everything is re-exported here, so ``runtime.speed_up``
and ``from dap.runtime import autocast`` work as before):

================  ==========================================================================
threads           OpenMP wait policy (why PASSIVE: see its docstring), thread counts
precision         native bf16 detection, ``amp`` -> autocast dtype, autocast / inference
speedups          channels_last, fused attention, native bf16 GroupNorm, weight-gradient
                  threads, :func:`speed_up`
checkpointing     activation checkpointing of the U-Nets (memory)
compilation       ``torch.compile`` with a clean fallback to eager
optim             fused AdamW, the threads of its step
fastpath          :func:`setup`: the fast or the plain path for a run (what the engine calls),
                  ``DAP_PLAIN=1`` / ``python -m dap --plain`` for the plain path everywhere
================  ==========================================================================

No module here imports torch at import time: :func:`set_wait_policy` must run before torch is
loaded (see :mod:`dap.runtime.threads`).
"""

from __future__ import annotations

from dap.runtime.checkpointing import enable_gradient_checkpointing
from dap.runtime.compilation import compile_unavailable_reason, is_compiled, maybe_compile
from dap.runtime.fastpath import PLAIN_ENV, plain_requested, resolve_plain, setup
from dap.runtime.optim import limit_step_threads, optimizer_kwargs, optimizer_threads
from dap.runtime.precision import (AMP_CHOICES, BF16_CPU_FLAGS, autocast, autocast_dtype,
                                   cpu_supports_bf16, cuda_supports_bf16, inference)
from dap.runtime.speedups import (channels_last_input, channels_last_pays, networks,
                                  set_attention_backend, set_conv_weight_grad_threads,
                                  set_native_bf16_norm, speed_up, to_channels_last,
                                  uses_channels_last)
from dap.runtime.threads import (busy_cores, configure_threads, num_threads, physical_cores,
                                 set_wait_policy, set_wait_policy_quiet)

__all__ = [
    "AMP_CHOICES", "BF16_CPU_FLAGS", "set_wait_policy", "set_wait_policy_quiet",
    "physical_cores", "busy_cores", "configure_threads", "num_threads",
    "cpu_supports_bf16", "cuda_supports_bf16", "autocast_dtype", "autocast", "inference",
    "to_channels_last", "channels_last_pays", "uses_channels_last", "channels_last_input",
    "set_attention_backend", "set_native_bf16_norm",
    "set_conv_weight_grad_threads", "enable_gradient_checkpointing", "networks", "speed_up",
    "compile_unavailable_reason", "maybe_compile", "is_compiled",
    "optimizer_kwargs", "optimizer_threads", "limit_step_threads",
    "PLAIN_ENV", "plain_requested", "resolve_plain", "setup",
]
