"""DRAEM's equations as pure functions: SSIM, the two losses, the image score, the initialisation.

Paper: Zavrtanik, Kristan, Skocaj, "DRAEM - A discriminatively trained reconstruction embedding
for surface anomaly detection", ICCV 2021::

    L_rec = l2(I, I_r) + lambda * L_SSIM(I, I_r)                          (Sec. 3.1, eq. 1)
    L_SSIM = 1 / N_p * sum_(i, j) (1 - SSIM(I, I_r)_(i, j))               (Sec. 3.1, eq. 2)
    L = L_rec + L_seg(M_o, M_a),   L_seg = focal loss                     (Sec. 3.2, eq. 3)
    eta = max(M_o * f_(s_f x s_f)),  f a mean filter                      (Sec. 3.4)

SSIM is the index of Wang, Bovik, Sheikh, Simoncelli, "Image Quality Assessment: From Error
Visibility to Structural Similarity", IEEE TIP 2004, eq. 13, with the Gaussian-weighted local
statistics of their Sec. III-C (11 x 11 window, sigma 1.5, K1 = 0.01, K2 = 0.03). All images
here are in DRAEM's range [0, 1] (dynamic range L = 1); :class:`~dap.methods.draem.DRAEM` maps
dap's [-1, 1] to it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dap.losses import focal_loss

#: SSIM's stabilising constants C1 = (K1 L)^2, C2 = (K2 L)^2 (Wang et al. 2004, eq. 7 and 9)
SSIM_K1, SSIM_K2 = 0.01, 0.03


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> Tensor:
    """The normalised 1-D Gaussian ``w_i = exp(-(i - r)^2 / (2 sigma^2)) / Z``, i = 0..size-1,
    r = size // 2 (the 2-D window of Wang et al. Sec. III-C is its outer product)."""
    r = size // 2
    x = torch.arange(size, dtype=torch.float64) - r
    # w_i = exp(-(i - r)^2 / (2 sigma^2)), sum w = 1
    w = torch.exp(-x.square() / (2.0 * sigma**2))
    return (w / w.sum()).to(dtype=dtype, device=device)


def _local_mean(x: Tensor, w: Tensor) -> Tensor:
    """Gaussian-weighted local mean of each channel of ``x`` ``(B, C, H, W)``, zero padding."""
    c, r = x.shape[1], len(w) // 2
    kh = w.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    kw = w.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    return F.conv2d(F.conv2d(x, kh, padding=(r, 0), groups=c), kw, padding=(0, r), groups=c)


def ssim_map(x: Tensor, y: Tensor, data_range: float = 1.0, window: int = 11,
             sigma: float = 1.5) -> Tensor:
    """The SSIM index of every pixel and channel, ``(B, C, H, W)`` (Wang et al. 2004, eq. 13).

    ::

        SSIM = (2 mu_x mu_y + C1)(2 sigma_xy + C2)
               / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2))

    with Gaussian-weighted means, variances and covariance (their eqs. 14-16; ``E[x^2] - mu^2``,
    the biased estimate) and C1 = (0.01 L)^2, C2 = (0.03 L)^2, L = ``data_range``. Windows that
    cross the border see zero padding (the official DRAEM code's ``conv2d(padding=5)``).

    x, y : ``(B, C, H, W)``; computed in float32 or wider, with autocast off: in bf16 the
    difference ``E[x^2] - mu^2`` cancels to noise and the ratio can overflow.
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ssim_map needs two (B, C, H, W) tensors of one shape, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    x, y = x.to(dtype), y.to(dtype)
    w = gaussian_window(window, sigma, dtype, x.device)
    with torch.autocast(x.device.type, enabled=False):
        mu_x, mu_y = _local_mean(x, w), _local_mean(y, w)
        # sigma_x^2 = E[x^2] - mu_x^2, sigma_xy = E[xy] - mu_x mu_y
        var_x = _local_mean(x * x, w) - mu_x.square()
        var_y = _local_mean(y * y, w) - mu_y.square()
        cov = _local_mean(x * y, w) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    # SSIM = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2))
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / \
        ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))


def ssim_loss(x: Tensor, y: Tensor, data_range: float = 1.0, window: int = 11,
              sigma: float = 1.5) -> Tensor:
    """L_SSIM = mean over pixels and channels of (1 - SSIM) (DRAEM eq. 2), a scalar."""
    # L_SSIM = 1 / N_p sum (1 - SSIM_(i, j))
    return (1.0 - ssim_map(x, y, data_range, window, sigma)).mean()


class DRAEMLoss(NamedTuple):
    """The training loss and its parts (scalar tensors)."""

    total: Tensor
    l2: Tensor
    ssim: Tensor
    focal: Tensor


def reconstruction_loss(rec: Tensor, target: Tensor, ssim_weight: float = 1.0, window: int = 11,
                        sigma: float = 1.5) -> tuple[Tensor, Tensor, Tensor]:
    """(L_rec, l2, L_SSIM) with L_rec = l2 + ssim_weight * L_SSIM (DRAEM eq. 1).

    rec, target : ``(B, 3, H, W)``, the reconstruction I_r and the anomaly-free image I, both
    in [0, 1]; l2 is the mean squared error over all elements (``MSELoss``).
    """
    l2 = (rec.float() - target.float()).square().mean()
    ls = ssim_loss(rec, target, 1.0, window, sigma)
    # L_rec = l2 + lambda L_SSIM
    return l2 + ssim_weight * ls, l2, ls


def segmentation_loss(logits: Tensor, mask: Tensor, gamma: float = 2.0) -> Tensor:
    """L_seg: the unweighted focal loss ``mean(-(1 - p_t)^gamma log p_t)`` (DRAEM Sec. 3.2;
    Lin et al. 2017, eq. 4).

    logits : ``(B, 1, H, W)`` anomaly logits z (p = sigmoid(z)); mask : M_a in {0, 1}.
    :func:`dap.losses.focal_loss` weights the two classes by alpha and 1 - alpha; at
    alpha = 1/2 twice its value is the unweighted loss of the official ``FocalLoss(alpha=None)``.
    """
    # FL = -(1 - p_t)^gamma log p_t = 2 * [alpha_t = 1/2] focal loss
    return 2.0 * focal_loss(logits.float(), mask.float(), alpha=0.5, gamma=gamma,
                            from_logits=True)


def draem_loss(rec: Tensor, target: Tensor, logits: Tensor, mask: Tensor, *,
               ssim_weight: float = 1.0, seg_weight: float = 1.0, gamma: float = 2.0,
               window: int = 11, sigma: float = 1.5) -> DRAEMLoss:
    """L = L_rec + seg_weight * L_seg (DRAEM eq. 3); images in [0, 1]."""
    l_rec, l2, ls = reconstruction_loss(rec, target, ssim_weight, window, sigma)
    foc = segmentation_loss(logits, mask, gamma)
    # L = L_rec + L_seg
    return DRAEMLoss(l_rec + seg_weight * foc, l2, ls, foc)


def image_score(mask: Tensor, window: int = 21) -> Tensor:
    """eta = max over pixels of the mask averaged by a ``window`` x ``window`` box filter
    (DRAEM Sec. 3.4; official: ``avg_pool2d(.., 21, stride=1, padding=10)``, so the zero
    padding counts in the border averages).

    mask : ``(B, H, W)`` or ``(B, 1, H, W)`` anomaly probabilities -> ``(B,)``.
    """
    m = mask.reshape(mask.shape[0], 1, *mask.shape[-2:]).float()
    smoothed = F.avg_pool2d(m, window, stride=1, padding=window // 2, count_include_pad=True)
    # eta = max(M_o * f_(s_f x s_f))
    return smoothed.flatten(1).amax(dim=1)


@torch.no_grad()
def official_init(module: nn.Module) -> nn.Module:
    """DRAEM's ``weights_init``: every convolution's weight ~ N(0, 0.02) (its bias is left as
    PyTorch made it), every BatchNorm's weight ~ N(1, 0.02) and bias 0. Draws from the global
    RNG; returns ``module``."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.normal_(0.0, 0.02)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.normal_(1.0, 0.02)
            m.bias.zero_()
    return module


__all__ = ["SSIM_K1", "SSIM_K2", "gaussian_window", "ssim_map", "ssim_loss",
           "reconstruction_loss", "segmentation_loss", "draem_loss", "DRAEMLoss", "image_score",
           "official_init"]
