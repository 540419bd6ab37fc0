"""DiffAD: noisy condition, interpolated channels, KL autoencoder, phases and resume.

The sampler's conditions against the official loop, the DDIM grids, the facts about the
official code and the interpolated-channels ablation are in tests/test_diffad_official.py; the
copy PSNR in tests/test_copy_metrics.py."""

import math
import warnings

import pytest
import torch

from dap.config import ConfigError, from_dict, to_dict
from dap.diffusion import NoiseSchedule
from dap.engine.checkpoint import method_from_checkpoint
from dap.engine.train import TrainConfig, TrainData, train
from dap.methods import build_method
from dap.methods.base import Reconstruction, TrainBatch
from dap.methods.diffad import (DENOISER, PHASES, DiffAD, DiffADConfig, diffad_config,
                                interpolate_latents, noisy_condition, pooled_max_score,
                                score_pool_size)
from dap.models.autoencoder import (AutoencoderKL, DiagonalGaussian, autoencoder_config,
                                    autoencoder_loss, kl_divergence)

# A small, fast DiffAD: 2 + 2 steps of the first phases, 2 DDIM steps.
FAST = dict(ae_steps=2, denoiser_steps=2, segmenter_steps=2, ddim_steps=2, train_ddim_steps=2)


def _images(b=4, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def method():
    torch.manual_seed(0)
    m = build_method("diffad", "ci", **FAST)
    m.start_phase("segmenter")
    return m.eval()


# --------------------------------------------------------------------------------------------
# Noisy condition embedding
# --------------------------------------------------------------------------------------------
def test_noisy_condition_closed_form_float64():
    s = NoiseSchedule(1000, "linear", 1e-4, 0.02)
    g = torch.Generator().manual_seed(0)
    c = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 417, 999])
    # reference: abar_t from float64 betas, independently of the schedule's tables
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)[t]
    ref = abar.sqrt()[:, None, None, None] * c + (1 - abar).sqrt()[:, None, None, None] * eps
    out = noisy_condition(s, c, eps, t)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


def test_noisy_condition_at_t0_is_the_condition():
    s = NoiseSchedule()
    c, eps = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)
    out = noisy_condition(s, c, eps, 0)
    # sqrt(1 - abar_0) = sqrt(beta_0) = 0.01
    assert (out - c).abs().max() < 0.01 * eps.abs().max() + 1e-4
    torch.testing.assert_close(out, c, atol=0.06, rtol=0)


def test_noisy_condition_at_last_step_is_standard_normal():
    s = NoiseSchedule()
    g = torch.Generator().manual_seed(1)
    c = 3.0 + 2.0 * torch.randn(64, 4, 16, 16, generator=g)     # far from N(0, 1)
    out = noisy_condition(s, c, torch.randn(c.shape, generator=g), 999)
    assert abs(float(out.mean())) < 0.03
    assert abs(float(out.std()) - 1.0) < 0.02


def _capture_denoiser_inputs(m):
    seen = []
    orig = m.denoiser.forward

    def spy(x, t):
        seen.append((x.detach().clone(), torch.as_tensor(t).clone()))
        return orig(x, t)

    m.denoiser.forward = spy
    return seen


@pytest.mark.parametrize("source,noisy,timestep,prediction", [
    ("synthetic", True, "independent", "sample"),      # the ci preset (public code + z_0)
    ("synthetic", True, "same", "epsilon"),
    ("input", True, "same", "sample"),
    ("input", False, "independent", "epsilon"),
])
def test_denoiser_training_step_closed_form(source, noisy, timestep, prediction):
    """Replays every random draw of the denoiser phase and checks z_t, c_noisy and the loss."""
    m = build_method("diffad", "ci", **FAST, condition_source=source, noisy_condition=noisy,
                     condition_timestep=timestep, prediction_type=prediction,
                     sample_condition="clean")
    m.start_phase("denoiser")
    m.train()
    seen = _capture_denoiser_inputs(m)
    x = _images(2)
    out = m(TrainBatch(x), torch.Generator().manual_seed(0))
    net_in, t_seen = seen[0]
    with torch.no_grad():
        s, T = m.schedule, 1000
        g = torch.Generator().manual_seed(0)
        z0 = m.encode(x)
        cond = m.encode(m.synthesizer(x, generator=g).image) if source == "synthetic" else z0
        t = torch.randint(0, T, (2,), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        if noisy:
            t_c = t if timestep == "same" else torch.randint(0, T, (2,), generator=g)
            eps_c = torch.randn(z0.shape, generator=g)
            abar = s.alphas_cumprod.double()[t_c][:, None, None, None]
            # c_noisy = sqrt(abar) c + sqrt(1 - abar) eps'
            cond = (abar.sqrt() * cond + (1 - abar).sqrt() * eps_c).float()
        torch.testing.assert_close(t_seen, t)
        torch.testing.assert_close(net_in[:, :4], s.add_noise(z0, noise, t))
        torch.testing.assert_close(net_in[:, 4:], cond, atol=1e-5, rtol=1e-5)
        if source == "input" and not noisy:
            torch.testing.assert_close(net_in[:, 4:], z0)
        del m.denoiser.forward
        pred = m.denoiser(net_in, t_seen)
        target = noise if prediction == "epsilon" else z0
        assert float(out["loss"]) == pytest.approx(float((pred - target).square().mean()), rel=1e-5)


def test_sampling_condition_clean_and_noisy_per_step(method):
    c = method.encode(_images(2))
    seen = _capture_denoiser_inputs(method)
    try:
        z_clean = method.sample_latents(c, sample_condition="clean")
        for x, _ in seen:
            torch.testing.assert_close(x[:, 4:], c)
        seen.clear()
        z_noisy = method.sample_latents(c, sample_condition="noisy_per_step")
        assert all(not torch.allclose(x[:, 4:], c) for x, _ in seen)
        assert [int(t.reshape(-1)[0]) for _, t in seen] == [999, 500]
        # re-noised to each step's own t with one eps': the conditions of the two steps differ
        assert not torch.allclose(seen[0][0][:, 4:], seen[1][0][:, 4:])
    finally:
        del method.denoiser.forward
    assert z_clean.shape == z_noisy.shape == (2, 4, 16, 16)


# --------------------------------------------------------------------------------------------
# Interpolated channels
# --------------------------------------------------------------------------------------------
def test_interpolate_latents_is_linear():
    c, z = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(interpolate_latents(c, z, 1.0), c)
    torch.testing.assert_close(interpolate_latents(c, z, 0.0), z)
    torch.testing.assert_close(interpolate_latents(c, z, 0.5), (c + z) / 2)
    a, b = 0.2, 0.7
    # f(a) - f(b) = (a - b)(c - z)
    torch.testing.assert_close(interpolate_latents(c, z, a) - interpolate_latents(c, z, b),
                               (a - b) * (c - z), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("lam,ref", [(1.0, "condition"), (0.0, "latent")])
def test_interpolated_channel_ends(method, lam, ref):
    with method.using(interpolation_lambda=lam):
        parts = method.reconstruct(_images(2))
    assert method.config.interpolation_lambda == 0.5
    assert isinstance(parts, Reconstruction)
    torch.testing.assert_close(parts.extras["interpolated"], method.decode(parts.extras[ref]))
    if ref == "latent":
        torch.testing.assert_close(parts.extras["interpolated"], parts.sample)


def test_reconstruct_is_reconstruct_parts_with_the_inference_settings(method):
    x = _images(2)
    rec = method.reconstruct(x)
    assert set(rec.extras) == {"condition", "latent", "interpolated_latent", "interpolated"}
    assert rec.sample.shape == (2, 3, 64, 64) and rec.extras["latent"].shape == (2, 4, 16, 16)
    same = method.reconstruct_parts(x, num_steps=method.config.ddim_steps, shared_noise=True)
    torch.testing.assert_close(rec.sample, same.sample, atol=0, rtol=0)
    for k in rec.extras:
        torch.testing.assert_close(rec.extras[k], same.extras[k], atol=0, rtol=0)


def test_segmenter_input_channels():
    x = _images(2)
    m9 = build_method("diffad", "ci", **FAST).eval()
    m6 = build_method("diffad", "ci", **FAST, interpolated_channels=False).eval()
    assert m6.config.segmenter.in_channels == 6
    for m, n in ((m9, 9), (m6, 6)):
        parts = m.reconstruct(x)
        inp = m._segmenter_input(x, parts)
        assert inp.shape == (2, n, 64, 64)
        torch.testing.assert_close(inp[:, :3], parts.sample)
        torch.testing.assert_close(inp[:, -3:], x)
        if n == 9:
            torch.testing.assert_close(inp[:, 3:6], parts.extras["interpolated"])


# --------------------------------------------------------------------------------------------
# KL autoencoder
# --------------------------------------------------------------------------------------------
def test_kl_closed_form():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(3, 4, 2, 2, generator=g, dtype=torch.float64)
    logvar = torch.randn(3, 4, 2, 2, generator=g, dtype=torch.float64)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, (0.5 * logvar).exp()),
        torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))).sum((1, 2, 3))
    torch.testing.assert_close(kl_divergence(mean, logvar), ref)
    assert float(kl_divergence(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2))) == 0.0
    # one element with mean 1, var 1: 0.5 * 1
    assert float(kl_divergence(torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1))) == 0.5


def test_autoencoder_loss_closed_form():
    x = torch.zeros(2, 3, 4, 4)
    x_hat = torch.full_like(x, 0.5)
    post = DiagonalGaussian(torch.ones(2, 4, 1, 1), torch.zeros(2, 4, 1, 1))     # KL = 2 each
    loss = autoencoder_loss(x, x_hat, post, kl_weight=0.48)
    assert float(loss.reconstruction) == 0.5
    assert float(loss.kl) == 2.0
    # total = 0.5 + 0.48 * 2 / (3 * 4 * 4)
    assert float(loss.total) == pytest.approx(0.5 + 0.48 * 2 / 48)
    assert float(autoencoder_loss(x, x_hat, post, 0.0, "l2").total) == 0.25


def test_autoencoder_shapes_and_config_errors():
    ae = AutoencoderKL(autoencoder_config("ci"))
    x = _images(2)
    post = ae.encode(x)
    assert post.mean.shape == post.logvar.shape == (2, 4, 16, 16)
    assert ae.config.downsample_factor == 4 and ae.config.latent_size == 16
    x_hat, _ = ae(x, sample_posterior=False)
    assert x_hat.shape == x.shape
    torch.testing.assert_close(x_hat, ae.decode(post.mean))
    assert autoencoder_config("paper").latent_size == 32
    with pytest.raises(ConfigError, match="divisible"):
        autoencoder_config("ci", image_size=66)
    with pytest.raises(ConfigError, match="unknown autoencoder preset"):
        autoencoder_config("huge")
    with pytest.raises(ValueError, match="divisible"):
        ae.encode(torch.zeros(1, 3, 62, 62))


# --------------------------------------------------------------------------------------------
# Shapes, score, config
# --------------------------------------------------------------------------------------------
def test_predict_shapes_and_score(method):
    pred = method.predict(_images(3))
    assert pred.anomaly_map.shape == (3, 64, 64)
    assert pred.score.shape == (3,)
    assert pred.reconstruction.shape == (3, 3, 64, 64)
    assert float(pred.reconstruction.abs().max()) <= 1.0
    assert 0 <= float(pred.anomaly_map.min()) and float(pred.anomaly_map.max()) <= 1
    torch.testing.assert_close(pred.score, pooled_max_score(pred.anomaly_map, 5))


def test_predict_does_not_depend_on_the_batch(method):
    x = _images(4)
    full = method.predict(x)
    part = method.predict(x[2:])
    torch.testing.assert_close(full.score[2:], part.score, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(full.reconstruction[2:], part.reconstruction, atol=1e-5, rtol=1e-4)


def test_score_pool_scales_with_size():
    assert [score_pool_size(s) for s in (64, 128, 256)] == [5, 11, 21]
    assert diffad_config("ci").score_pool == 5 and diffad_config("paper").score_pool == 21
    maps = torch.zeros(1, 9, 9)
    maps[0, 4, 4] = 9.0
    # a 3 x 3 mean around the single hot pixel: 1
    assert float(pooled_max_score(maps, 3)) == pytest.approx(1.0)


@pytest.mark.parametrize("bad,match", [
    ({"interpolation_lambda": 1.5}, "interpolation_lambda"),
    ({"score_pool": 4}, "odd"),
    ({"noisy_condition": False, "sample_condition": "noisy_fixed"}, "clean"),
    ({"noisy_condition": False, "sample_condition": "noisy_per_step"}, "clean"),
    ({"sample_condition": "noisy"}, "noisy"),
    ({"sample_condition_t": 1000}, "sample_condition_t"),
    ({"sample_condition_t": -1}, "sample_condition_t"),
    ({"ddim_grid": "ldm", "ddim_steps": 1000}, "ldm"),
    ({"ddim_grid": "leading"}, "leading"),
    ({"segmenter": {"in_channels": 6}}, "in_channels must be 9"),
    ({"denoiser": {**to_dict(DENOISER["ci"]), "image_size": 32}}, "latent side"),
    ({"denoiser": {**to_dict(DENOISER["ci"]), "in_channels": 4}}, "concat"),
    ({"ae_steps": -1}, "ae_steps"),
    ({"ddim_steps": 0}, "ddim_steps"),
    ({"sample_condition": "blurry"}, "blurry"),
    ({"not_a_key": 1}, "unknown key"),
])
def test_config_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        diffad_config("ci", **bad)


def test_config_conveniences_and_round_trip():
    assert diffad_config("ci", interpolated_channels=False).segmenter.in_channels == 6
    assert diffad_config("ci").prediction_type == "sample"
    assert diffad_config("paper").prediction_type == "epsilon"
    with pytest.raises(ConfigError, match="unknown DiffAD preset"):
        diffad_config("huge")
    cfg = diffad_config("ci")
    assert from_dict(DiffADConfig, DiffAD(cfg).config_dict()) == cfg


# --------------------------------------------------------------------------------------------
# Phases and resume
# --------------------------------------------------------------------------------------------
def test_phase_switching_trains_one_part_at_a_time():
    m = build_method("diffad", "ci", **FAST).train()
    parts = {"autoencoder": m.autoencoder, "denoiser": m.denoiser, "segmenter": m.segmenter}
    phases = []
    for k in range(5):
        assert m.phase == m.phase_of(k)
        scale_before = float(m.latent_scale)
        out = m(TrainBatch(_images(2)), torch.Generator().manual_seed(k))
        phase = PHASES[int(out["phase"])]
        phases.append(phase)
        m.zero_grad(set_to_none=True)
        out["loss"].backward()
        for name, module in parts.items():
            has_grad = any(p.grad is not None for p in module.parameters())
            assert has_grad == (name == phase), (k, name, phase)
        if k == 2:      # first denoiser step: latents normalised to unit std
            assert float(m.latent_scale) != scale_before
            with torch.no_grad():
                z = m.encode(_images(2))
            assert 0.5 < float(z.std()) < 2.0
    assert phases == ["autoencoder"] * 2 + ["denoiser"] * 2 + ["segmenter"]
    assert int(m.phase_step) == 5
    m.eval()
    m(TrainBatch(_images(2)), torch.Generator().manual_seed(0))
    assert int(m.phase_step) == 5       # evaluation does not advance the phase


def test_untrained_segmenter_warns():
    m = build_method("diffad", "ci", **FAST).eval()
    with pytest.warns(UserWarning, match="segmenter has not been trained"):
        m.predict(_images(1))


def test_perceptual_option():
    m = build_method("diffad", "ci", **FAST, perceptual_weight=2.0).train()
    with pytest.raises(RuntimeError, match="set_perceptual"):
        m(TrainBatch(_images(2)), torch.Generator().manual_seed(0))
    m.phase_step.zero_()
    m.set_perceptual(lambda x, y: torch.tensor(0.25))
    out = m(TrainBatch(_images(2)), torch.Generator().manual_seed(0))
    # total = rec + kl term + 2 * 0.25
    kl_term = m.config.kl_weight * out["loss_kl"] / (3 * 64 * 64)
    assert float(out["loss"].detach()) == pytest.approx(float(out["loss_rec"] + kl_term) + 0.5,
                                                        rel=1e-5)


def _tiny_data(n=6):
    imgs = ((_images(n, seed=3) + 1) * 127.5).round().to(torch.uint8)
    return TrainData(imgs)


def test_resume_across_phases_reproduces_an_uninterrupted_run(tmp_path):
    cfg = TrainConfig(steps=7, batch_size=2, lr=1e-3, val_every=0, log_every=1,
                      select_metric="last")

    def fresh():
        torch.manual_seed(0)
        return build_method("diffad", "ci", **FAST)

    full = train(fresh(), _tiny_data(), cfg, tmp_path / "full", progress=False)
    first = fresh()
    part = train(first, _tiny_data(), cfg, tmp_path / "part", stop_after=3, progress=False)
    assert len(part.history) == 3 and int(first.phase_step) == 3
    second = fresh()
    rest = train(second, _tiny_data(), cfg, tmp_path / "part", progress=False)
    assert int(second.phase_step) == 7
    assert [h["phase"] for h in rest.history] == [0, 0, 1, 1, 2, 2, 2]
    for a, b in zip(full.history, rest.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7)
    # the checkpoint rebuilds the method in its phase, with its latent scale
    ckpt = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    again = method_from_checkpoint(ckpt)
    assert int(again.phase_step) == 7 and again.phase == "segmenter"
    torch.testing.assert_close(again.latent_scale, second.latent_scale)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again.eval().predict(_images(1))      # trained segmenter: no warning


def test_start_phase():
    m = build_method("diffad", "ci", **FAST)
    m.start_phase("segmenter")
    assert int(m.phase_step) == 4 and m.phase == "segmenter"
    with pytest.raises(ValueError, match="unknown phase"):
        m.start_phase("vae")

