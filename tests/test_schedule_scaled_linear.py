import math

import pytest
import torch

from dap.config import DiffusionConfig, from_dict
from dap.diffusion import NoiseSchedule
from dap.diffusion.schedule import scaled_linear_betas


def test_scaled_linear_schedule_closed_form_float64():
    """Latent Diffusion's "linear" schedule (DiffAD's 0.0015 -> 0.02): sqrt(beta) evenly spaced."""
    T, b0, b1 = 1000, 0.0015, 0.02
    t = torch.arange(T, dtype=torch.float64)
    # beta_t = (sqrt(b0) + t / (T - 1) (sqrt(b1) - sqrt(b0)))^2
    ref = (math.sqrt(b0) + t / (T - 1) * (math.sqrt(b1) - math.sqrt(b0))) ** 2
    betas = scaled_linear_betas(T, b0, b1)
    assert betas.dtype == torch.float64
    torch.testing.assert_close(betas, ref, rtol=1e-12, atol=0)
    assert float(betas[0]) == pytest.approx(b0, rel=1e-12)
    assert float(betas[-1]) == pytest.approx(b1, rel=1e-12)
    # the square roots are evenly spaced: constant first differences
    d = betas.sqrt().diff()
    torch.testing.assert_close(d, torch.full_like(d, (math.sqrt(b1) - math.sqrt(b0)) / (T - 1)),
                               rtol=1e-9, atol=0)
    s = NoiseSchedule(T, "scaled_linear", b0, b1)
    # abar_t = prod_{s <= t} (1 - beta_s), float64 reference against the float32 tables
    abar = torch.cumprod(1 - ref, 0)
    torch.testing.assert_close(s.alphas_cumprod.double(), abar, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(s.sqrt_one_minus_alphas_cumprod.double(), (1 - abar).sqrt(),
                               rtol=1e-6, atol=1e-9)
    # not DDPM's linear schedule with the same ends: beta below it everywhere inside
    lin = torch.linspace(b0, b1, T, dtype=torch.float64)
    assert bool((betas[1:-1] < lin[1:-1]).all())
    cfg = from_dict(DiffusionConfig, {"beta_schedule": "scaled_linear", "beta_start": b0,
                                      "beta_end": b1})
    torch.testing.assert_close(NoiseSchedule.from_config(cfg).alphas_cumprod,
                               s.alphas_cumprod, atol=0, rtol=0)
