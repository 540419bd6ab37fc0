"""GLAD: the ATP target identity, the stopping rule, SAFF, calibration, configs, the method."""

import dataclasses
import math

import pytest
import torch

from dap.config import ConfigError
from dap.diffusion import NoiseSchedule
from dap.engine.checkpoint import method_from_checkpoint
from dap.methods import build_method
from dap.methods.base import Reconstruction, TrainBatch, ValidationSet, gaussian_blur
from dap.methods.glad import (GLAD, GLADConfig, adaptive_denoise, atp_blend, atp_noise_target,
                              flipped_atp_noise_target, glad_config, leading_timesteps,
                              official_map_settings, patch_discrepancy, saff_blend, saff_mask,
                              sigmoid_saff_mask, stopping_rule)
from dap.methods.glad.calibration import stop_thresholds

T = 1000


def _images(b=4, size=64, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, 3, size, size, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)


def _small(**overrides):
    """A ci GLAD with a short trajectory: steps 400, 320, 240, 160, 80; stops by 160."""
    torch.manual_seed(0)
    return build_method("glad", "ci", num_inference_steps=5, **overrides).eval()


# -- ATP ------------------------------------------------------------------------------------------
TS = torch.tensor([0, 1, 7, 50, 200, 400, 750, 999])


def _atp_case():
    schedule = NoiseSchedule()
    b = len(TS)
    normal, anomalous = _images(b, 16, 1, torch.float64), _images(b, 16, 2, torch.float64)
    noise = torch.randn(b, 3, 16, 16, generator=torch.Generator().manual_seed(3),
                        dtype=torch.float64)
    blend = atp_blend(anomalous, normal, TS, T)
    return schedule, normal, anomalous, noise, blend, schedule.add_noise(blend, noise, TS)


def test_atp_blend_is_alpha_t_over_T():
    _, normal, anomalous, _, blend, _ = _atp_case()
    alpha = (TS.double() / T).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(blend, alpha * anomalous + (1 - alpha) * normal, rtol=0, atol=1e-15)
    torch.testing.assert_close(blend[0], normal[0], rtol=0, atol=0)   # t = 0: the normal image


def test_atp_target_implies_the_normal_image_float64():
    schedule, normal, anomalous, noise, blend, x_t = _atp_case()
    eps = atp_noise_target(schedule, x_t, normal, TS)
    assert eps.dtype == torch.float64
    implied = schedule.pred_original_sample(x_t, eps, TS)
    torch.testing.assert_close(implied, normal, rtol=0, atol=1e-12)
    # closed form: eps* = eps + sqrt(abar / (1 - abar)) * alpha * (S - N)
    ratio = (schedule.sqrt_alphas_cumprod.double()[TS]
             / schedule.sqrt_one_minus_alphas_cumprod.double()[TS]).reshape(-1, 1, 1, 1)
    alpha = (TS.double() / T).reshape(-1, 1, 1, 1)
    closed = noise + ratio * alpha * (anomalous - normal)
    torch.testing.assert_close(eps, closed, rtol=0, atol=1e-12)
    # a normal sample (S = N) gets the ordinary target
    x_n = schedule.add_noise(normal, noise, TS)
    torch.testing.assert_close(atp_noise_target(schedule, x_n, normal, TS), noise,
                               rtol=0, atol=1e-9)


def test_flipped_target_implies_two_blend_minus_normal():
    schedule, normal, _, noise, blend, x_t = _atp_case()
    eps_bug = flipped_atp_noise_target(schedule, noise, blend, normal, TS)
    implied = schedule.pred_original_sample(x_t, eps_bug, TS)
    torch.testing.assert_close(implied, 2 * blend - normal, rtol=0, atol=1e-12)
    assert (implied[1:] - normal[1:]).abs().amax() > 1e-3    # wrong wherever alpha > 0


def test_training_step_atp_and_plain():
    m = build_method("glad", "ci")
    out = m(TrainBatch(_images()), torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"]) and set(out) >= {"loss", "loss_noise"}
    out["loss"].backward()
    assert all(p.grad is not None for p in m.denoiser.parameters())

    plain = build_method("glad", "ci", atp=False)

    def boom(*a, **k):
        raise AssertionError("plain training must not synthesise anomalies")

    plain.synthesizer = boom
    assert torch.isfinite(plain(TrainBatch(_images()), torch.Generator().manual_seed(0))["loss"])


def test_glad_synthesis_preset():
    s = glad_config("ci").synthesis
    assert s.perlin_threshold == 0.3 and tuple(s.beta_range) == (0.0, 0.8) and s.shuffle == "grid"


# -- the stopping rule ----------------------------------------------------------------------------
def test_stopping_rule_unit():
    s = torch.tensor([0.5, 1.5, float("nan")])
    assert stopping_rule(s, 1.0, 300, 200).tolist() == [False, True, False]
    assert stopping_rule(s, float("nan"), 300, 200).tolist() == [False, False, False]
    assert stopping_rule(s, 1.0, 200, 200).all() and stopping_rule(s, 1.0, 300, 0, last=True).all()


def test_adaptive_loop_with_a_fake_discrepancy_schedule():
    """Sample b's image is the constant b, eps = 0 and eps0 = 0, so x0_i is exactly the input
    and the fake discrepancy can read which samples it was given."""
    schedule = NoiseSchedule()
    steps = [400, 360, 320, 280, 240, 200, 160, 120]
    b = 5
    images = torch.arange(b, dtype=torch.float32).reshape(-1, 1, 1, 1).expand(b, 3, 8, 8) / 10
    sched = torch.zeros(b, len(steps))
    sched[1, 2] = 2.0          # passes at t = 320
    sched[2, 0] = 2.0          # passes only at the first step, where no stop is tested
    sched[3, 7] = 2.0          # would pass at t = 120, after min_step: stops at 200
    sched[4, 1] = 2.0          # passes at t = 360
    calls, evaluated = [], []

    def model(x, t):
        evaluated.append(len(x))
        return torch.zeros_like(x)

    def discrepancy(x0_i, x0_r):
        ids = (x0_i[:, 0, 0, 0] * 10).round().long()
        k = len(calls)
        calls.append(ids.tolist())
        return torch.zeros(len(ids), 2, 2), sched[ids, k]

    out = adaptive_denoise(model, schedule, images, steps, discrepancy,
                           thresholds=torch.ones(len(steps)), min_step=200,
                           noise=torch.zeros_like(images))
    assert out.stop_step.tolist() == [200, 320, 200, 200, 360]
    # vectorised: stopped samples leave both the network and the discrepancy
    assert calls[0] == calls[1] == [0, 1, 2, 3, 4] and calls[2] == [0, 1, 2, 3]
    assert calls[3] == [0, 2, 3] and len(calls) == 6 and evaluated == [5, 5, 4, 3, 3, 3]
    assert math.isnan(out.scores[1, 3]) and out.scores[0, 5] == 0.0
    torch.testing.assert_close(out.input_x0, images, rtol=0, atol=1e-6)
    # no thresholds: every sample at min_step; min_step below the last step: the last step
    always = lambda a, r: (torch.zeros(len(a), 2, 2), torch.full((len(a),), 9.0))  # noqa: E731
    out = adaptive_denoise(model, schedule, images, steps, always, thresholds=None, min_step=200,
                           noise=torch.zeros_like(images))
    assert out.stop_step.tolist() == [200] * b
    out = adaptive_denoise(model, schedule, images, steps,
                           lambda a, r: (torch.zeros(len(a), 2, 2), torch.zeros(len(a))),
                           thresholds=torch.ones(len(steps)), min_step=0,
                           noise=torch.zeros_like(images))
    assert out.stop_step.tolist() == [120] * b


def test_continue_mode_keeps_every_sample_running():
    schedule = NoiseSchedule()
    steps = [400, 300, 200, 100]
    images = _images(3, 8)
    sizes = []

    def model(x, t):
        sizes.append(len(x))
        return torch.zeros_like(x)

    def disc(x0_i, x0_r):      # only sample 1 passes (at 300); the others run to 200
        return torch.zeros(len(x0_i), 2, 2), torch.tensor([0.0, 5.0, 0.0])[: len(x0_i)]

    out = adaptive_denoise(model, schedule, images, steps, disc, torch.ones(4), 200,
                           after_stop="continue", noise=torch.zeros_like(images))
    assert sizes == [3, 3, 3, 3] and out.stop_step.tolist() == [200, 300, 200]
    with pytest.raises(ValueError, match="after_stop"):
        adaptive_denoise(model, schedule, images, steps, disc, after_stop="later")


def test_an_oracle_denoiser_reconstructs_the_input_in_both_modes():
    """With the true noise as prediction every x0 estimate is the input: D = 0, rec = x."""
    schedule = NoiseSchedule()
    x = _images(2, 8, 4, torch.float64)

    def oracle(x_t, t):
        return schedule.noise_from_original(x_t, x[: len(x_t)], t)

    flat = lambda a, r: (torch.zeros(len(a), 2, 2), (a - r).abs().flatten(1).amax(1))  # noqa: E731
    for mode in ("freeze", "continue"):
        out = adaptive_denoise(oracle, schedule, x, [400, 300, 200, 100], flat,
                               torch.full((4,), 1e-6), 200, after_stop=mode,
                               generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(out.reconstruction, x, rtol=0, atol=1e-9)
        assert out.stop_step.tolist() == [200, 200]


# -- SAFF -----------------------------------------------------------------------------------------
def test_saff_blend_closed_form():
    rec, x0_i = _images(2, 8, 1), _images(2, 8, 2)
    torch.testing.assert_close(saff_blend(rec, x0_i, torch.zeros(2, 1, 8, 8)), x0_i)
    torch.testing.assert_close(saff_blend(rec, x0_i, torch.ones(2, 1, 8, 8)), rec)
    m = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(saff_blend(rec, x0_i, m), x0_i + m * (rec - x0_i))


def test_saff_mask_normalisation():
    d = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.6]).reshape(-1, 1, 1).expand(-1, 4, 4)
    m = saff_mask(d, 0.2, 0.4, size=8, sigma=0.0)       # ramp from low 0.2 to high 0.4
    assert m.shape == (5, 1, 8, 8)
    torch.testing.assert_close(m[:, 0, 0, 0], torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    # uncalibrated: min-max per map
    d = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(1))
    m = saff_mask(d, float("nan"), float("nan"), size=4, sigma=0.0)
    assert torch.allclose(m.amin(dim=(1, 2, 3)), torch.zeros(2)) and \
        torch.allclose(m.amax(dim=(1, 2, 3)), torch.ones(2))


def test_gaussian_blur_and_patch_discrepancy():
    const = torch.full((2, 1, 9, 9), 0.7)
    torch.testing.assert_close(gaussian_blur(const, 1.5), const)
    f = torch.randn(2, 6, 5, 5, generator=torch.Generator().manual_seed(0))
    d = patch_discrepancy(f, f)
    assert d.shape == (2, 5, 5) and d.abs().max() < 1e-5
    g = f.clone()
    g[:, :, 2, 2] = torch.tensor([9.0, -9, 9, -9, 9, -9])
    d = patch_discrepancy(g, f)                  # a patch of the query absent from the reference
    assert (d[:, 2, 2] > 0.2).all() and d.flatten(1).argmax(1).tolist() == [12, 12]
    torch.testing.assert_close(patch_discrepancy(g, f, chunk=1), d)


# -- calibration ----------------------------------------------------------------------------------
def test_calibration_takes_only_validation_tensors():
    m = _small()
    with pytest.raises(TypeError, match="validation"):
        m.fit_thresholds([_images(1)[0]])
    with pytest.raises(ValueError, match="at least 2 normal"):
        m.fit_thresholds(_images(3), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="labels"):
        m.fit_thresholds(_images(3), torch.tensor([0, 1]))


def test_calibration_uses_normal_images_and_survives_a_checkpoint():
    m = _small()
    assert not m.calibrated
    normal = _images(4, seed=5)
    info = m.fit_thresholds(normal)
    assert m.calibrated and info["normal_images"] == 4
    thr = m.thresholds.clone()
    steps = m.timesteps                               # 400, 320, 240, 160, 80
    assert torch.isfinite(thr[:4]).all() and torch.isnan(thr[4])
    assert torch.isfinite(m.patch_means[:4]).all() and (m.patch_means[1:4] <= thr[1:4]).all()
    # synthetic anomalies (label 1) never move the thresholds
    extra = torch.cat([normal, _images(3, seed=9)])
    m.fit_thresholds(extra, torch.tensor([0, 0, 0, 0, 1, 1, 1]))
    torch.testing.assert_close(m.thresholds, thr, equal_nan=True)
    # at most a (1 - q) share (rounded up) of the calibration images stops early
    stops = m.reconstruct(normal).extras["stop_step"]
    early = (stops > 200).sum().item()
    assert early <= math.ceil((1 - m.config.threshold_quantile) * 4)
    assert set(stops.tolist()) <= set(steps[1:4])
    # the calibration is part of the state dict
    ckpt = {"method": "glad", "method_config": m.config_dict(), "model": m.state_dict()}
    m2 = method_from_checkpoint(ckpt).eval()
    assert m2.calibrated
    torch.testing.assert_close(m2.thresholds, thr, equal_nan=True)
    torch.testing.assert_close(m2.predict(normal).score, m.predict(normal).score)


def test_predict_modes_and_uncalibrated_warning():
    m = _small()
    x = _images(3, seed=7)
    with pytest.warns(UserWarning, match="not calibrated"):
        pred = m.predict(x)
    assert pred.anomaly_map.shape == (3, 64, 64) and pred.score.shape == (3,)
    assert pred.reconstruction.shape == x.shape and torch.isfinite(pred.anomaly_map).all()
    m.fit_thresholds(_images(4, seed=5))
    with m.using(adaptive=False):                      # "glad fixed-step"
        assert m.reconstruct(x).extras["stop_step"].tolist() == [160] * 3
    with m.using(saff=False):                          # "glad no-SAFF": x0_r at the stop
        out = m.reconstruct(x)
    fused = m.reconstruct(x)
    assert isinstance(fused, Reconstruction) and set(fused.extras) == {"stop_step", "input_x0",
                                                                        "scores"}
    assert fused.extras["input_x0"].shape == x.shape
    assert fused.extras["scores"].shape == (3, len(m.timesteps))
    assert torch.equal(out.extras["stop_step"], fused.extras["stop_step"])
    assert not torch.allclose(out.sample, fused.sample)
    with m.using(t_start=360):                         # other timesteps: recalibrate
        with pytest.raises(ConfigError, match="calibrate"):
            m.predict(x)


def test_map_terms_and_anomaly_map():
    m = _small()
    x = _images(2, seed=3)
    m.fit_thresholds(_images(4, seed=5))
    rec = m.reconstruct(x).sample
    terms = m.map_terms(x, rec)
    assert set(terms) == {"feature", "pixel"}
    assert all(v.shape == (2, 64, 64) for v in terms.values())
    torch.testing.assert_close(terms["pixel"], (x - rec).abs().mean(dim=1))
    s_f, s_p = m.map_scale
    expected = gaussian_blur(terms["feature"] / s_f + terms["pixel"] / s_p,
                             m.config.smoothing_sigma, truncate=3.0)
    torch.testing.assert_close(m.anomaly_map(x, rec), expected)
    pred = m.predict(x)
    torch.testing.assert_close(pred.anomaly_map, expected)
    torch.testing.assert_close(pred.reconstruction, rec)


def test_after_training_calibrates_on_the_validation_set_only():
    m = _small()
    train = _images(3, seed=11)
    assert m.after_training(train) is None and not m.calibrated
    images = torch.cat([_images(4, seed=5), _images(2, seed=9)])
    val = ValidationSet(images, torch.zeros(6, 64, 64), torch.tensor([0, 0, 0, 0, 1, 1]))
    info = m.after_training(train, val)
    assert m.calibrated and info["normal_images"] == 4
    thr = m.thresholds.clone()
    m.fit_thresholds(_images(4, seed=5))                    # the same normal images, the same result
    torch.testing.assert_close(m.thresholds, thr, equal_nan=True)


# -- configs and registry -------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [
    {"min_step": 500},                         # after t_start
    {"t_start": 1000},
    {"num_inference_steps": 0},
    {"threshold_quantile": 0.0},
    {"feature_levels": (3,)},                  # ci has 3 levels: 0, 1, 2
    {"feature_levels": ()},
    {"feature_weight": 0.0, "pixel_weight": 0.0},
    {"smoothing_sigma": -1.0},
    {"after_stop": "later"},
    {"adaptive_steps": True},                  # unknown key
    {"timestep_spacing": "trailing"},
    {"saff_mask": "hard"},
    {"smoothing_truncate": 0.0},
    {"stop_at_first_step": True},              # needs the leading grid
    {"timestep_spacing": "leading", "t_start": 15, "num_inference_steps": 10},
    {"map_preset": "paper"},
])
def test_config_errors(bad):
    with pytest.raises(ConfigError):
        glad_config("ci", **bad)


def test_presets_registry_and_benchmark_variants():
    from dap.experiments import variants

    with pytest.raises(ConfigError, match="preset"):
        glad_config("huge")
    assert glad_config("ci").top_k == 3 and glad_config("paper").top_k == 50
    m = build_method("glad", "ci")
    assert isinstance(m, GLAD) and m.image_size == 64 and m.extractor_name
    assert GLAD.from_config_dict(m.config_dict()).config == m.config
    fields = {f.name for f in dataclasses.fields(GLADConfig)}
    rows = variants("glad")
    labels = list(rows)
    assert labels[0] == "glad" and set(labels) == {"glad", "glad fixed-step", "glad no-ATP",
                                                   "glad no-SAFF"}
    for label, spec in rows.items():
        assert set(spec.overrides) <= fields and set(spec.eval_overrides) <= fields
        with m.using(**spec.eval_overrides):            # evaluation changes need no new model
            pass
        if spec.same_model_as is not None:
            assert labels.index(spec.same_model_as) < labels.index(label)
    assert rows["glad no-ATP"].overrides == {"atp": False}
