"""The fast-path options on a model: channels_last, fused attention, native bf16 GroupNorm,
bf16 weight-gradient convolutions on one thread, and :func:`speed_up`, which applies them."""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any

from dap.config import ConfigError
from dap.runtime.checkpointing import enable_gradient_checkpointing
from dap.runtime.compilation import maybe_compile
from dap.runtime.precision import cpu_supports_bf16
from dap.runtime.threads import num_threads

if TYPE_CHECKING:
    import torch
    from torch import nn


def to_channels_last(module: "nn.Module") -> "nn.Module":
    """Store every 4-D weight of ``module`` as channels_last (NHWC) in place; return it.

    oneDNN (CPU) and cuDNN (tensor cores) run convolutions fastest in NHWC; feed inputs with
    :func:`channels_last_input`. The state_dict keys and values are unchanged (only strides).
    """
    import torch

    return module.to(memory_format=torch.channels_last)


def channels_last_pays(device: "torch.device | str") -> bool:
    """Whether channels_last is part of the fast path on ``device``: on the CPU, not on CUDA.

    On the CPU oneDNN's NHWC convolutions made the ``ci`` and ``cpu`` training steps faster
    (``benchmarks/speed.py --ablate``). On CUDA (an H200, the ``paper`` preset at batch 16,
    bf16 autocast) the contiguous layout trained 1.35x faster than channels_last
    (results/gpu.json row ``bf16`` against results/gpu-ablation.json row ``bf16+cl``):
    PyTorch's CUDA GroupNorm has no NHWC kernel, so every norm of the U-Nets copies its input
    to NCHW and back.
    """
    import torch

    return torch.device(device).type == "cpu"


def uses_channels_last(module: "nn.Module") -> bool:
    """Whether ``module``'s 4-D weights are stored channels_last (inputs should follow).

    Decided by the first 4-D weight whose two layouts differ: a 1 x 1 kernel of one input
    channel is both contiguous and channels_last, so it says nothing.
    """
    import torch

    for p in module.parameters():
        if p.ndim == 4:
            nhwc = p.is_contiguous(memory_format=torch.channels_last)
            if nhwc != p.is_contiguous():
                return nhwc
    return False


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
    """Normalise bf16 activations with a native bf16 GroupNorm kernel, or upcast to float32.

    See :class:`dap.models.denoiser.GroupNorm32` (``upcast``): on the CPU each norm then takes
    the kernel measured fastest for its shape and layout
    (:func:`dap.models.denoiser.cpu_bf16_norm_route`, table: ``benchmarks/cpu_kernels.py``).
    Returns the number of norms.
    """
    from dap.models.denoiser import GroupNorm32

    norms = [m for m in module.modules() if isinstance(m, GroupNorm32)]
    for n in norms:
        n.upcast = not enabled
    return len(norms)



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



def networks(module: "nn.Module") -> list["nn.Module"]:
    """The dap networks inside ``module`` (itself if it is one): the units to compile."""
    from dap.models.denoiser import DenoiserUNet
    from dap.models.segmentation import SegmentationUNet

    kinds = (DenoiserUNet, SegmentationUNet)
    if isinstance(module, kinds):
        return [module]
    return [m for m in module.modules() if isinstance(m, kinds)]


def speed_up(module: "nn.Module", *, channels_last: bool | None = None,
             attention: str | None = "fused",
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
    channels_last : bool or None
        :func:`to_channels_last` (NHWC weights); None = where it pays on the device the
        module is on (:func:`channels_last_pays`: the CPU). False makes NHWC weights
        contiguous again. Feed inputs in the module's layout (:func:`uses_channels_last`,
        :func:`channels_last_input`).
    attention : str or None
        :func:`set_attention_backend` (``"fused"``: PyTorch's flash kernel); None keeps it.
    native_bf16_norm : bool or None
        :func:`set_native_bf16_norm`; None = on CUDA, and on a CPU with native bf16.
    conv_weight_grad_threads : int, None or "auto"
        :func:`set_conv_weight_grad_threads`; ``"auto"`` = 1 where the CPU has native bf16
        and the networks are not compiled; None leaves the convolutions alone.
    gradient_checkpointing : bool
        :func:`enable_gradient_checkpointing` (memory, not speed: about one extra forward).
    compile : bool
        :func:`maybe_compile` each dap network inside ``module`` (not the method's Python
        logic: the anomaly synthesis stays eager).
    """
    device = next((p.device for p in module.parameters()), None)
    on_cpu = device is None or device.type == "cpu"
    if channels_last is None:
        channels_last = channels_last_pays(device or "cpu")
    if channels_last:
        to_channels_last(module)
    elif uses_channels_last(module):  # e.g. set up on the CPU before, now on a GPU
        import torch

        module.to(memory_format=torch.contiguous_format)
    if attention is not None:
        set_attention_backend(module, attention)
    if native_bf16_norm is None:
        native_bf16_norm = cpu_supports_bf16() if on_cpu else device.type == "cuda"
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



__all__ = ["to_channels_last", "channels_last_pays", "uses_channels_last", "channels_last_input", "set_attention_backend",
           "set_native_bf16_norm", "set_conv_weight_grad_threads", "networks", "speed_up"]
