"""DiffusionAD's losses (Sec. III-E), as pure functions.

    L_noise = (1 - y) (||eps_s - eps_theta(x_ts, t_s)||^2 + ||eps_b - eps_theta(x_tb, t_b)||^2) / 2
              (the paper; the official code omits the / 2: ``reduction="sum"``)
    L_mask  = SmoothL1(M_hat, M) + focal_weight * Focal(M_hat, M)
    L_total = L_noise + L_mask

The building blocks (masked noise loss, focal loss, smooth L1) are in :mod:`dap.losses`; norm
guidance (eqs. 7-8) is :func:`dap.diffusion.norm_guided`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from dap.losses import focal_loss, masked_noise_loss, smooth_l1_loss


def joint_noise_loss(eps_s: Tensor, noise_s: Tensor, eps_b: Tensor, noise_b: Tensor,
                     normal: Tensor, reduction: str = "mean") -> Tensor:
    """L_noise over the normal samples: the two scales' MSE averaged (Sec. III-E) or summed.

    eps_s, noise_s, eps_b, noise_b : ``(B, C, H, W)``; normal : ``(B,)`` bool. ``reduction``:
    ``"mean"`` = (MSE_s + MSE_b) / 2 as the paper writes it; ``"sum"`` = MSE_s + MSE_b as the
    official code computes it (so its mask loss weighs half as much relative to L_noise).
    Exactly 0 (and differentiable) when no sample is normal.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    total = masked_noise_loss(eps_s, noise_s, normal) + masked_noise_loss(eps_b, noise_b, normal)
    # paper: (MSE_s + MSE_b) / 2; official code: MSE_s + MSE_b
    return 0.5 * total if reduction == "mean" else total


class MaskLoss(NamedTuple):
    """The segmentation loss and its two parts (scalar tensors)."""

    total: Tensor
    smooth_l1: Tensor
    focal: Tensor


def mask_loss(logits: Tensor, target: Tensor, *, smooth_l1_weight: float = 1.0,
              focal_weight: float = 5.0, alpha: float = 0.5, gamma: float = 4.0) -> MaskLoss:
    """L_mask = smooth_l1_weight * SmoothL1(sigmoid(z), M) + focal_weight * Focal(z, M).

    logits : ``(B, 1, H, W)`` segmenter output z; target : the mask M in [0, 1]. SmoothL1 on the
    sigmoid mask (as the official code), the focal loss from the logits (log-sigmoid: no
    clamping). Defaults are the official weights, exponent and balance.
    """
    probs = torch.sigmoid(logits.float())
    sl1 = smooth_l1_loss(probs, target.float())
    foc = focal_loss(logits.float(), target.float(), alpha=alpha, gamma=gamma, from_logits=True)
    # L_mask = w_sl1 * SmoothL1 + w_focal * Focal
    return MaskLoss(smooth_l1_weight * sl1 + focal_weight * foc, sl1, foc)


__all__ = ["joint_noise_loss", "mask_loss", "MaskLoss"]
