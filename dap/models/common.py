"""Small helpers shared by the dap networks: parameter counts, zero initialisation and the
skip concatenation."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``model`` (buffers such as BatchNorm statistics excluded).

    Works on models built on the ``meta`` device, which allocate no memory, so the paper-size
    networks can be counted in milliseconds::

        with torch.device("meta"):
            model = DenoiserUNet(denoiser_config("paper"))
        count_parameters(model)   # about 131.7 M
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero and return it (guided-diffusion's ``zero_module``).

    Used on the last convolution of each residual branch and of the output head, so that a fresh
    network is the identity on its residual paths and predicts exactly 0.
    """
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def is_channels_last(x: Tensor) -> bool:
    """Whether ``x`` is stored channels_last and not also plainly contiguous (a tensor with one
    channel or one pixel is both, and the channels_last routes have nothing to gain there)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def cat_channels(tensors: list[Tensor]) -> Tensor:
    """``torch.cat(tensors, dim=1)``, the U-Net's skip concatenation, the same numbers.

    While gradients are recorded on channels_last tensors, the backward hands each input a
    channels_last gradient instead of a strided slice of the concatenation's gradient: the
    ops behind a skip (a nearest up-sampling, a 1x1 conv, the gradient sum of a tensor used
    twice) run 2-4x slower on such slices than on dense tensors, which costs more than the
    copy (``ci`` preset, batch 16, 64 px: an up-sampling backward took 4.1 ms on a slice;
    the denoiser's training step took 4 % less time). Under ``torch.compile``: ``torch.cat``.
    """
    if not torch.is_grad_enabled() or torch.compiler.is_compiling() or not all(
            is_channels_last(t) for t in tensors):
        return torch.cat(tensors, dim=1)
    return _ChannelsLastCat.apply(*tensors)


class _ChannelsLastCat(torch.autograd.Function):
    """Concatenation along channels whose backward returns channels_last gradients."""

    @staticmethod
    def forward(ctx: Any, *tensors: Tensor) -> Tensor:
        ctx.sizes = [t.shape[1] for t in tensors]
        return torch.cat(tensors, dim=1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple:
        return tuple(g.contiguous(memory_format=torch.channels_last)
                     for g in grad.split(ctx.sizes, dim=1))


__all__ = ["count_parameters", "zero_module", "is_channels_last", "cat_channels"]
