"""Reconstruction quality against two references a learner can reason about.

* :func:`psnr` — peak signal-to-noise ratio per image, peak-to-peak 2 for [-1, 1] images:
  PSNR = 10 log10(range^2 / MSE).
* :func:`channel_spread` — how far a reconstruction's channels stray from their mean,
  mean_{c,h,w} |x_c - mean_c x|. For a grey input (three equal channels) a good reconstruction
  has a spread near zero; colour speckle from an under-trained denoiser shows up here.
* :class:`WienerDenoiser` — the linear minimum-mean-square-error (Wiener) estimate of x0 from
  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, for images modelled as a stationary (circular)
  Gaussian field whose mean and 3 x 3 cross-power spectrum are estimated from training images.
  Per frequency f, with S(f) the cross-spectrum of x0 - mu and N = H W the white noise's power
  per unnormalised DFT coefficient::

      X0_hat(f) = mu(f) + sqrt(abar) S(f) (abar S(f) + (1 - abar) N I)^-1
                          (X_t(f) - sqrt(abar) mu(f))

  (Wiener 1949; the Gaussian posterior mean, which is linear). A one-step diffusion estimate
  x0_hat = E[x0 | x_t] is also a posterior mean — of the true, non-Gaussian distribution — so
  on a stochastic texture it is blurred by necessity, and "better than Wiener" is what a
  trained denoiser's non-linearity buys. Taught in ``notebooks/02_one_step_vs_iterative``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def psnr(x: Tensor, reference: Tensor, data_range: float = 2.0) -> Tensor:
    """Per-image PSNR in dB of ``x`` against ``reference`` ``(B, C, H, W)`` (float64 inside)."""
    if x.shape != reference.shape:
        raise ValueError(f"psnr needs equal shapes, got {tuple(x.shape)} and "
                         f"{tuple(reference.shape)}")
    mse = ((x.double() - reference.double()) ** 2).flatten(1).mean(1)
    # PSNR = 10 log10(range^2 / MSE)
    return 10 * torch.log10(data_range ** 2 / mse.clamp_min(1e-20))


def channel_spread(x: Tensor) -> Tensor:
    """Per-image mean absolute deviation of the channels from their mean, ``(B,)``."""
    if x.ndim != 4:
        raise ValueError(f"channel_spread needs (B, C, H, W), got {tuple(x.shape)}")
    x = x.double()
    return (x - x.mean(1, keepdim=True)).abs().flatten(1).mean(1)


class WienerDenoiser:
    """The Wiener (linear MMSE) estimate of x0 from x_t, fitted on clean images.

    ``fit`` estimates the per-channel mean and the cross-power spectrum S(f) (3 x 3 per
    frequency, Hermitian) of ``images`` ``(N, C, H, W)``; ``__call__(x_t, abar)`` returns the
    estimate of x0 for noisy images at signal level abar (a float).
    """

    def __init__(self, images: Tensor) -> None:
        if images.ndim != 4 or len(images) < 2:
            raise ValueError(f"WienerDenoiser needs (N >= 2, C, H, W) training images, got "
                             f"{tuple(images.shape)}")
        x = images.double()
        self.shape = tuple(x.shape[1:])
        self.mean = x.mean(dim=(0, 2, 3), keepdim=True)            # (1, C, 1, 1)
        f = torch.fft.fft2(x - self.mean)                           # (N, C, H, W)
        # S[h, w] = E[F F^H], (H, W, C, C)
        fv = f.permute(0, 2, 3, 1)                                  # (N, H, W, C)
        self.spectrum = torch.einsum("nhwc,nhwd->hwcd", fv, fv.conj()) / len(x)

    def __call__(self, x_t: Tensor, abar: float) -> Tensor:
        if tuple(x_t.shape[1:]) != self.shape:
            raise ValueError(f"fitted on {self.shape} images, got {tuple(x_t.shape[1:])}")
        c, h, w = self.shape
        a = torch.as_tensor(abar, dtype=torch.float64)
        xt = x_t.double()
        centred = torch.fft.fft2(xt - a.sqrt() * self.mean).permute(0, 2, 3, 1)   # (B, H, W, C)
        eye = torch.eye(c, dtype=torch.complex128)
        # G(f) = sqrt(abar) S (abar S + (1 - abar) N I)^-1, N = H W (white noise, unnormalised DFT)
        cov = a * self.spectrum + (1 - a) * (h * w) * eye
        gain = a.sqrt() * torch.linalg.solve(cov, self.spectrum, left=False)      # S cov^-1
        est = torch.einsum("hwcd,bhwd->bhwc", gain, centred).permute(0, 3, 1, 2)
        return (torch.fft.ifft2(est).real + self.mean).to(x_t.dtype)


__all__ = ["psnr", "channel_spread", "WienerDenoiser"]
