"""PSNR, channel spread and the Wiener baseline (dap.analysis.quality)."""

import math

import pytest
import torch

from dap.analysis.quality import WienerDenoiser, channel_spread, psnr


def test_psnr_closed_form():
    x = torch.zeros(2, 3, 4, 4)
    ref = x.clone()
    ref[0] += 0.1                                   # MSE 0.01 -> 10 log10(4 / 0.01)
    ref[1] += 0.2
    torch.testing.assert_close(psnr(x, ref), torch.tensor(
        [10 * math.log10(4 / 0.01), 10 * math.log10(4 / 0.04)], dtype=torch.float64))
    with pytest.raises(ValueError, match="equal shapes"):
        psnr(x, ref[:, :1])


def test_channel_spread_is_zero_for_grey_and_closed_form_otherwise():
    grey = torch.rand(1, 1, 5, 5).expand(2, 3, 5, 5)
    assert channel_spread(grey).abs().max() == 0
    x = torch.zeros(1, 3, 2, 2)
    x[:, 0] = 0.3                                   # mean 0.1: deviations 0.2, 0.1, 0.1
    torch.testing.assert_close(channel_spread(x), torch.tensor([0.4 / 3], dtype=torch.float64))


def _circular_covariance(images: torch.Tensor) -> torch.Tensor:
    """The (CHW x CHW) pixel covariance of ``images`` averaged over all circular shifts."""
    n, c, h, w = images.shape
    d = (images - images.mean(dim=(0, 2, 3), keepdim=True)).double()
    shifted = torch.stack([torch.roll(d, (i, j), (2, 3)) for i in range(h) for j in range(w)])
    v = shifted.reshape(-1, c * h * w)
    return v.T @ v / len(v)


def test_wiener_equals_the_pixel_space_lmmse_estimate():
    """An independent implementation: x0_hat = mu + sqrt(a) Sigma (a Sigma + (1 - a) I)^-1 (x_t -
    sqrt(a) mu) with the shift-averaged pixel covariance (the stationary model's)."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(40, 1, 4, 4, generator=g)
    train = torch.cat([base, 0.5 * base + 0.3 * torch.randn(40, 2, 4, 4, generator=g)], 1)
    train = (train + torch.tensor([0.1, -0.2, 0.3]).view(1, 3, 1, 1)).double()
    wiener = WienerDenoiser(train)
    a = 0.4
    x0 = torch.randn(3, 3, 4, 4, generator=g, dtype=torch.float64)
    xt = math.sqrt(a) * x0 + math.sqrt(1 - a) * torch.randn(3, 3, 4, 4, generator=g,
                                                              dtype=torch.float64)
    sigma = _circular_covariance(train)
    mu = train.double().mean(dim=(0, 2, 3), keepdim=True).expand(1, 3, 4, 4).reshape(1, -1)
    eye = torch.eye(sigma.shape[0], dtype=torch.float64)
    gain = math.sqrt(a) * sigma @ torch.linalg.inv(a * sigma + (1 - a) * eye)
    ref = mu + (xt.reshape(3, -1) - math.sqrt(a) * mu) @ gain.T
    torch.testing.assert_close(wiener(xt, a).reshape(3, -1), ref, rtol=1e-9, atol=1e-9)


def test_wiener_for_white_images_is_the_scalar_shrinkage():
    g = torch.Generator().manual_seed(1)
    train = 0.5 * torch.randn(4000, 3, 2, 2, generator=g, dtype=torch.float64)
    wiener = WienerDenoiser(train)
    # replace the estimate by the exact white spectrum s^2 H W I and mean 0
    wiener.spectrum = 0.25 * 4 * torch.eye(3, dtype=torch.complex128).expand(2, 2, 3, 3)
    wiener.mean = torch.zeros(1, 3, 1, 1, dtype=torch.float64)
    a = 0.3
    xt = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64)
    torch.testing.assert_close(wiener(xt, a), math.sqrt(a) * 0.25 / (a * 0.25 + 1 - a) * xt)


def test_wiener_errors():
    with pytest.raises(ValueError, match="training images"):
        WienerDenoiser(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="fitted on"):
        WienerDenoiser(torch.randn(3, 3, 4, 4))(torch.zeros(1, 3, 8, 8), 0.5)


def test_matching_timestep_equalises_the_snr_in_float64():
    from dap.diffusion import NoiseSchedule

    sched = NoiseSchedule()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    snr = abar / (1 - abar)
    for t in (50, 200, 400):
        m = sched.matching_timestep(t, 4.0)
        # brute force: the t' whose SNR with 4x the signal variance is closest to SNR(t)
        ref = int(torch.argmin((torch.log(4 * snr) - torch.log(snr[t])).abs()))
        assert abs(m - ref) <= 1 and m > t       # a stronger signal needs more noise
    assert sched.matching_timestep(300, 1.0) == 300
    with pytest.raises(ValueError, match="variance_ratio"):
        sched.matching_timestep(10, 0.0)
