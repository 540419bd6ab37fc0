"""GLAD's official-code options: the leading DDIM grid, the first-step stop test, the official
anomaly map and SAFF mask (dap.methods.glad.official lists every difference)."""

import numpy as np
import pytest
import torch

from dap.diffusion import NoiseSchedule
from dap.methods import build_method
from dap.methods.base import gaussian_blur
from dap.methods.glad import (DIFFERENCES, adaptive_denoise, glad_config, leading_timesteps,
                              official_map_settings, sigmoid_saff_mask)
from dap.methods.glad.calibration import stop_thresholds


def _images(b=4, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g, dtype=torch.float64).float() * 2 - 1


def _small(**overrides):
    torch.manual_seed(0)
    return build_method("glad", "ci", num_inference_steps=5, **overrides).eval()


# -- the DDIM grid --------------------------------------------------------------------------------
@pytest.mark.parametrize("t_start,k", [(750, 25), (450, 15), (500, 25), (400, 10), (99, 7)])
def test_leading_grid_matches_diffusers(t_start, k):
    diffusers = pytest.importorskip("diffusers")
    # the official code: num_train_timesteps overwritten with the start step, steps_offset 1
    ref = diffusers.DDIMScheduler(num_train_timesteps=t_start, steps_offset=1,
                                  timestep_spacing="leading")
    ref.set_timesteps(k)
    assert leading_timesteps(t_start, k) == ref.timesteps.tolist()
    assert leading_timesteps(750, 25)[:2] == [721, 691] and leading_timesteps(750, 25)[-1] == 1


def test_model_grid_and_start_noise_level():
    m = _small(timestep_spacing="leading", t_start=400)
    assert m.timesteps == [321, 241, 161, 81, 1] == leading_timesteps(400, 5)
    assert _small().timesteps[0] == 400                       # the even grid starts at t_start
    with pytest.raises(ValueError, match="leading"):
        leading_timesteps(5, 10)


def _constant_images(b):
    return torch.arange(b, dtype=torch.float32).reshape(-1, 1, 1, 1).expand(b, 3, 8, 8) / 10


def test_start_t_is_the_noise_level_of_the_input():
    """An oracle predicts the noise that maps x_t to the input: with start_t above the first
    step, x_t holds more noise than the step says, so x0_r differs from x0_i at the first
    step; with start_t = timesteps[0] they are equal."""
    schedule = NoiseSchedule()
    x = _images(2, 8, 4).double()
    eps0 = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    steps = leading_timesteps(400, 5)
    seen = []

    def model(x_t, t):
        return eps0[: len(x_t)]                   # the noise drawn for the input, unchanged

    def disc(x0_i, x0_r):
        seen.append(float((x0_i - x0_r).abs().max()))
        return torch.zeros(len(x0_i), 2, 2), torch.zeros(len(x0_i))

    adaptive_denoise(model, schedule, x, steps, disc, None, 0, noise=eps0)
    assert seen[0] < 1e-12
    seen.clear()
    adaptive_denoise(model, schedule, x, steps, disc, None, 0, noise=eps0, start_t=400)
    # x_t = sqrt(abar_400) x + sqrt(1 - abar_400) eps0 read at t = 321:
    # x0_r - x0_i = (sqrt(abar_400) - sqrt(abar_321)) x + (sqrt(1-abar_400) - sqrt(1-abar_321)) eps0
    #               / sqrt(abar_321)
    a = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)   # abar_t
    diff = ((a[400].sqrt() - a[321].sqrt()) * x
            + ((1 - a[400]).sqrt() - (1 - a[321]).sqrt()) * eps0) / a[321].sqrt()
    assert seen[0] == pytest.approx(float(diff.abs().max()), rel=1e-5)


def test_stop_at_the_first_step_only_when_asked():
    schedule = NoiseSchedule()
    images = _constant_images(3)
    steps = leading_timesteps(400, 5)                        # 321, 241, 161, 81, 1

    def model(x, t):
        return torch.zeros_like(x)

    def disc(x0_i, x0_r):                 # sample 1 passes at every step, the others never
        ids = (x0_i[:, 0, 0, 0] * 10).round().long()
        return torch.zeros(len(ids), 2, 2), (ids == 1).float() * 2

    kw = dict(thresholds=torch.ones(5), min_step=161, noise=torch.zeros_like(images),
              start_t=400)
    out = adaptive_denoise(model, schedule, images, steps, disc, **kw)
    assert out.stop_step.tolist() == [161, 241, 161]         # first step not tested
    out = adaptive_denoise(model, schedule, images, steps, disc, test_first_step=True, **kw)
    assert out.stop_step.tolist() == [161, 321, 161]


def test_fuse_is_told_which_samples_passed_the_threshold():
    schedule = NoiseSchedule()
    images = _constant_images(3)
    told = []

    def disc(x0_i, x0_r):
        ids = (x0_i[:, 0, 0, 0] * 10).round().long()
        return torch.zeros(len(ids), 2, 2), (ids == 2).float() * 2

    def fuse(x0_r, x0_i, d, k, passed):
        told.append((k, passed.tolist()))
        return x0_r

    adaptive_denoise(lambda x, t: torch.zeros_like(x), schedule, images, [400, 300, 200, 100],
                     disc, torch.ones(4), 200, fuse, noise=torch.zeros_like(images))
    assert told == [(1, [True]), (2, [False, False])]


def test_thresholds_from_the_first_step_when_it_is_tested():
    scores = torch.tensor([[4.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 1.0, 1.0]])
    steps = [321, 241, 161, 81]
    lam, seen, thr = stop_thresholds(scores, steps, 161, 1.0)          # tests k = 1 only
    assert lam == 2.0 and seen.all() and thr.tolist() == [2.0, 2.0, 2.0, 2.0]
    lam, _, thr = stop_thresholds(scores, steps, 161, 1.0, first=0)    # k = 0 and 1
    assert lam == 4.0 and thr.tolist() == [4.0, 4.0, 4.0, 4.0]


def test_leading_grid_calibrates_and_predicts():
    m = _small(timestep_spacing="leading", t_start=400, stop_at_first_step=True, min_step=161)
    info = m.fit_thresholds(_images(4, seed=5))
    assert m.calibrated and info["timesteps"] == [321, 241, 161, 81, 1]
    assert all(v is not None for v in info["thresholds"][:3])
    assert set(info["normal_stop_steps"]) <= {321, 241, 161}
    pred = m.predict(_images(2, seed=3))
    assert torch.isfinite(pred.score).all()


# -- the official map and SAFF mask ----------------------------------------------------------------
def test_official_map_settings_scale_with_the_image():
    at512 = official_map_settings(512)
    assert at512 == {"pixel_weight": 0.0, "smoothing_sigma": 6.0, "smoothing_truncate": 4.0,
                     "top_k": 250, "saff_mask": "sigmoid", "saff_blur": False}
    assert official_map_settings(256)["smoothing_sigma"] == 3.0
    assert official_map_settings(256)["top_k"] == 62 and official_map_settings(64)["top_k"] == 4
    cfg = glad_config("ci", map_preset="official")
    assert cfg.smoothing_sigma == 0.75 and cfg.top_k == 4 and cfg.pixel_weight == 0.0
    assert glad_config("ci", map_preset="official", top_k=9).top_k == 9      # overrides win
    dap = glad_config("ci")
    assert (dap.smoothing_truncate, dap.saff_mask, dap.saff_blur) == (3.0, "calibrated", True)


def test_gaussian_blur_matches_scipy_with_truncate_4():
    """Official: kornia's kernel 2 int(4 sigma + 0.5) + 1 with reflect borders = scipy's
    gaussian_filter(truncate=4, mode='mirror'), an independent float64 reference (dap builds
    its kernel in float32)."""
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.rand(2, 40, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for sigma, truncate in ((0.75, 4.0), (3.0, 4.0), (1.5, 3.0)):
        ref = np.stack([ndimage.gaussian_filter(a, sigma, truncate=truncate, mode="mirror")
                        for a in x.numpy()])
        out = gaussian_blur(x, sigma, truncate=truncate).numpy()
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)


def test_official_anomaly_map_is_the_smoothed_feature_term():
    m = _small(map_preset="official")
    x = _images(2, seed=3)
    m.fit_thresholds(_images(4, seed=5))
    rec = m.reconstruct(x).sample
    terms = m.map_terms(x, rec)
    expected = gaussian_blur(terms["feature"] / m.map_scale[0], 0.75, truncate=4.0)
    torch.testing.assert_close(m.anomaly_map(x, rec), expected)
    pred = m.predict(x)
    top = pred.anomaly_map.flatten(1).topk(4, dim=1).values.mean(1)
    torch.testing.assert_close(pred.score, top)


def test_sigmoid_saff_mask_closed_form():
    d = torch.tensor([0.0, 0.5, 2.0]).reshape(-1, 1, 1).expand(-1, 4, 4)
    m = sigmoid_saff_mask(d, size=8)
    assert m.shape == (3, 1, 8, 8)
    ref = 1 / (1 + np.exp(-np.array([0.0, 0.5, 2.0])))
    np.testing.assert_allclose(m[:, 0, 3, 3].numpy(), ref, rtol=1e-6)
    assert float(m.min()) >= 0.5                              # never below one half


def test_sigmoid_saff_takes_the_input_x0_whole_at_a_min_step_stop():
    m = _small(saff_mask="sigmoid")                           # not calibrated: min-step stops
    x = _images(2, seed=7)
    with pytest.warns(UserWarning, match="not calibrated"):
        out = m.reconstruct(x)
    torch.testing.assert_close(out.sample, out.extras["input_x0"], rtol=0, atol=0)


def test_saff_blur_off_equals_no_smoothing():
    m = _small()
    m.fit_thresholds(_images(4, seed=5))
    x = _images(3, seed=7)
    with m.using(saff_blur=False):
        unblurred = m.reconstruct(x).sample
    with m.using(smoothing_sigma=0.0):
        no_sigma = m.reconstruct(x).sample
    torch.testing.assert_close(unblurred, no_sigma, rtol=0, atol=0)


def test_every_record_is_complete():
    topics = [d.topic for d in DIFFERENCES]
    assert len(topics) == len(set(topics))
    for d in DIFFERENCES:
        assert d.topic and d.official and d.dap and d.reason
    options = " ".join(d.option for d in DIFFERENCES)
    for name in ("timestep_spacing", "stop_at_first_step", "after_stop", "saff_mask",
                 "saff_blur", "pixel_weight", "smoothing_truncate", "top_k", "clip_sample"):
        assert name in options


# -- notebook 08's helpers ------------------------------------------------------------------------
def test_glad_around_a_shipped_denoiser_and_the_stop_histogram():
    import matplotlib

    matplotlib.use("Agg")
    from dap import zoo
    from dap.analysis.adaptive import glad_with_denoiser_of, stop_step_histogram

    name = zoo.available()[0]
    m = glad_with_denoiser_of(name, top_k=7)
    donor = zoo.load(name)
    assert m.config.denoiser == donor.config.denoiser and m.config.top_k == 7
    assert m.config.diffusion == donor.config.diffusion and not m.training
    for (k, a), (_, b) in zip(m.denoiser.state_dict().items(), donor.denoiser.state_dict().items()):
        assert torch.equal(a, b), k
    fig = stop_step_histogram(torch.tensor([400, 200, 200, 360]), torch.tensor([0, 0, 1, 1]),
                              [400, 360, 320, 280, 240, 200])
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == [1, 0, 0, 0, 0, 1] + [0, 1, 0, 0, 0, 1]
