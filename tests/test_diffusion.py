"""Numerical checks of dap.diffusion: float64 references, oracle models, diffusers."""

import math

import numpy as np
import pytest
import torch

from dap.config import ConfigError
from dap.diffusion import NoiseSchedule, ddim_timesteps, norm_guided, reconstruct

T = 1000


def float64_linear_tables(T=1000, b0=1e-4, b1=0.02):
    """An independent float64 reference in numpy (DDPM eqs. 4 and 7)."""
    betas = np.linspace(b0, b1, T, dtype=np.float64)
    abar = np.cumprod(1.0 - betas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    post = betas * (1.0 - abar_prev) / (1.0 - abar)
    return betas, abar, abar_prev, post


class OracleModel:
    """Returns the true noise that produced x_t from a known x_0 (eq. 1 solved for eps)."""

    def __init__(self, schedule, x0):
        self.schedule, self.x0 = schedule, x0
        self.calls = 0

    def __call__(self, x_t, t):
        self.calls += 1
        x0 = self.x0.repeat(x_t.shape[0] // self.x0.shape[0], 1, 1, 1)
        return self.schedule.noise_from_original(x_t, x0, t)


@pytest.fixture(scope="module")
def sched():
    return NoiseSchedule()


def test_linear_schedule_matches_float64_reference(sched):
    betas, abar, abar_prev, post = float64_linear_tables()
    assert sched.betas.dtype == torch.float32
    np.testing.assert_allclose(sched.betas.numpy(), betas, rtol=1e-6)
    np.testing.assert_allclose(sched.alphas_cumprod.numpy(), abar, rtol=2e-6)
    np.testing.assert_allclose(sched.alphas_cumprod_prev.numpy(), abar_prev, rtol=2e-6)
    np.testing.assert_allclose(sched.posterior_variance.numpy(), post, rtol=2e-6, atol=1e-12)
    # the reference's fact: abar_200 ~= 0.656 on the paper's schedule
    assert abs(float(sched.alphas_cumprod[200]) - 0.656) < 1e-3


def test_float64_then_cast_beats_float32_cumprod():
    """Computing the cumprod in float32 drifts; dap's float64 path does not."""
    betas, abar, *_ = float64_linear_tables()
    abar32 = torch.cumprod(1.0 - torch.linspace(1e-4, 0.02, T, dtype=torch.float32), 0).numpy()
    dap32 = NoiseSchedule().alphas_cumprod.numpy()
    err32 = np.max(np.abs(abar32 - abar) / abar)
    err_dap = np.max(np.abs(dap32 - abar) / abar)
    assert err_dap <= err32
    assert err_dap < 1e-6


def test_cosine_schedule_closed_form():
    s = NoiseSchedule(beta_schedule="cosine")
    t = np.arange(1, T + 1, dtype=np.float64)
    f = np.cos(((t / T) + 0.008) / 1.008 * math.pi / 2) ** 2 / np.cos(0.008 / 1.008 * math.pi / 2) ** 2
    ok = s.betas.numpy() < 0.999  # before the clip the product equals f(t)/f(0) exactly
    np.testing.assert_allclose(s.alphas_cumprod.numpy()[ok], f[ok], rtol=1e-5, atol=1e-7)
    assert torch.all(s.betas > 0) and torch.all(s.betas <= 0.999)


def test_bad_schedule_arguments():
    with pytest.raises(ConfigError, match="beta_start"):
        NoiseSchedule(beta_start=0.1, beta_end=0.01)
    with pytest.raises(ConfigError, match="beta_schedule"):
        NoiseSchedule(beta_schedule="sigmoid")


def test_add_noise_eq1_against_float64(sched):
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    eps = torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    _, abar, *_ = float64_linear_tables()
    a = abar[t.numpy()][:, None, None, None]
    ref = np.sqrt(a) * x0.double().numpy() + np.sqrt(1 - a) * eps.double().numpy()
    np.testing.assert_allclose(sched.add_noise(x0, eps, t).numpy(), ref, atol=2e-6)


def test_add_noise_rejects_out_of_range_t(sched):
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        sched.add_noise(x, x, 1000)


def test_one_step_with_oracle_recovers_x0(sched):
    x0 = torch.rand(3, 3, 16, 16) * 2 - 1
    oracle = OracleModel(sched, x0)
    for t in (0, 200, 400, 900):
        rec = reconstruct(oracle, sched, x0, t, sampler="one_step")
        assert rec.num_model_evals == 1
        torch.testing.assert_close(rec.sample, x0, atol=2e-4 if t < 900 else 2e-3, rtol=0)


def test_pred_original_sample_eq6_against_float64(sched):
    g = torch.Generator().manual_seed(2)
    xt = torch.randn(2, 3, 5, 5, generator=g)
    eps = torch.randn(2, 3, 5, 5, generator=g)
    t = torch.tensor([200, 400])
    _, abar, *_ = float64_linear_tables()
    a = abar[t.numpy()][:, None, None, None]
    ref = (xt.double().numpy() - np.sqrt(1 - a) * eps.double().numpy()) / np.sqrt(a)
    np.testing.assert_allclose(sched.pred_original_sample(xt, eps, t).numpy(), ref, atol=1e-5)


def test_ddpm_step_eq3_against_float64(sched):
    """eq. 3 written literally, in float64, vs dap's posterior-mean form."""
    betas, abar, abar_prev, post = float64_linear_tables()
    g = torch.Generator().manual_seed(3)
    xt, eps, z = (torch.randn(2, 3, 6, 6, generator=g) for _ in range(3))
    for t in (0, 1, 250, 999):
        out = sched.ddpm_step(eps, t, xt, noise=z)
        x, e, zz = (v.double().numpy() for v in (xt, eps, z))
        sigma = np.sqrt(post[t]) if t > 0 else 0.0
        ref = (x - betas[t] / np.sqrt(1 - abar[t]) * e) / np.sqrt(1 - betas[t]) + sigma * zz
        np.testing.assert_allclose(out.prev_sample.numpy(), ref, atol=2e-5, rtol=1e-5)


def _diffusers_in_float64(scheduler):
    """Run a diffusers scheduler in float64, so the comparison tests formulas, not rounding."""
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    scheduler.betas = betas
    scheduler.alphas = 1.0 - betas
    scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, 0)
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    if hasattr(scheduler, "final_alpha_cumprod"):
        scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return scheduler


def _tol(sched, t):
    # x0_hat divides by sqrt(abar_t) (~0.006 at t = 999): float32 rounding grows by that factor
    return 1e-5 + 1e-6 / float(sched.sqrt_alphas_cumprod[t])


def test_ddpm_step_against_diffusers(sched):
    diffusers = pytest.importorskip("diffusers")
    ref = _diffusers_in_float64(diffusers.DDPMScheduler(
        num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
        clip_sample=False, variance_type="fixed_small"))
    g = torch.Generator().manual_seed(4)
    xt = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    eps = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    for t in (999, 400, 200, 1, 0):
        seed = 100 + t
        expected = ref.step(eps, t, xt, generator=torch.Generator().manual_seed(seed))
        z = torch.randn(xt.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        ours = sched.ddpm_step(eps.float(), t, xt.float(), noise=z.float())
        torch.testing.assert_close(ours.prev_sample.double(), expected.prev_sample,
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.pred_original_sample.double(),
                                   expected.pred_original_sample, atol=_tol(sched, t), rtol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_step_against_diffusers(sched, eta):
    diffusers = pytest.importorskip("diffusers")
    ref = _diffusers_in_float64(diffusers.DDIMScheduler(
        num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
        clip_sample=False, set_alpha_to_one=True))
    ref.set_timesteps(10)
    g = torch.Generator().manual_seed(5)
    xt = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    eps = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    for t in ref.timesteps.tolist():
        prev = t - T // 10
        z = torch.randn(xt.shape, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
        expected = ref.step(eps, t, xt, eta=eta, variance_noise=z)
        ours = sched.ddim_step(eps.float(), t, prev, xt.float(), eta=eta, noise=z.float())
        torch.testing.assert_close(ours.prev_sample.double(), expected.prev_sample,
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.pred_original_sample.double(),
                                   expected.pred_original_sample, atol=_tol(sched, t), rtol=1e-5)


@pytest.mark.parametrize("method,kw", [("ddpm", {}), ("ddim", {"num_inference_steps": 5})])
def test_iterative_reconstruction_with_oracle_recovers_x0(sched, method, kw):
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    oracle = OracleModel(sched, x0)
    rec = reconstruct(oracle, sched, x0, 60, sampler=method,
                      generator=torch.Generator().manual_seed(0), **kw)
    torch.testing.assert_close(rec.sample, x0, atol=1e-3, rtol=0)
    assert rec.num_model_evals == (61 if method == "ddpm" else 5) == oracle.calls


def test_ddim_timesteps():
    assert ddim_timesteps(250, 10) == [250, 225, 200, 175, 150, 125, 100, 75, 50, 25]
    assert ddim_timesteps(3, 10) == [3, 2, 1, 0]


def test_norm_guidance_identity(sched):
    """x0_g = x0_s + w (1 - abar_ts)(x0_b - x0_s) (DiffusionAD eqs. 7-8, no clamping)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 3, 3, padding=1).double()  # an arbitrary (wrong) noise model

    def model(x, t):
        return conv(x) + t.double().reshape(-1, 1, 1, 1) / 1000

    x0 = (torch.rand(3, 3, 8, 8, dtype=torch.float64) * 2 - 1)
    for w in (0.0, 0.5, 1.0, 3.0):
        out = norm_guided(model, sched, x0, 200, 400, w=w, generator=torch.Generator().manual_seed(1))
        a = float(NoiseSchedule()._tables64["alphas_cumprod"][200])
        expected = out.x0_s + w * (1 - a) * (out.x0_b - out.x0_s)
        torch.testing.assert_close(out.x0_g, expected, atol=1e-6, rtol=0)
    # w = 1 at t_s = 200: about 0.656 x0_s + 0.344 x0_b
    out = norm_guided(model, sched, x0, 200, 400, w=1.0)
    torch.testing.assert_close(out.x0_g, 0.6563 * out.x0_s + 0.3437 * out.x0_b, atol=2e-3, rtol=0)


def test_norm_guidance_single_pass_equals_two_passes(sched):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def model(x, t):
        return conv(x) * (1 + t.float().reshape(-1, 1, 1, 1) / 1000)

    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    ns, nb = torch.randn_like(x0), torch.randn_like(x0)
    a = norm_guided(model, sched, x0, 200, 400, noise_s=ns, noise_b=nb, single_pass=True)
    b = norm_guided(model, sched, x0, 200, 400, noise_s=ns, noise_b=nb, single_pass=False)
    torch.testing.assert_close(a.x0_g, b.x0_g)


def test_norm_guidance_with_oracle_recovers_x0(sched):
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    out = norm_guided(OracleModel(sched, x0), sched, x0, torch.tensor([150, 250]),
                      torch.tensor([500, 700]))
    torch.testing.assert_close(out.x0_g, x0, atol=1e-3, rtol=0)
