"""DDAD: conditioned guidance and trajectory, batch-independent maps, extractors, adaptation."""

import numpy as np
import pytest
import torch

from dap.config import ConfigError
from dap.diffusion import NoiseSchedule, conditioned_guidance, reconstruct
from dap.features import (WRN50_2_URL, DenoiserFeatures, WideResNetFeatures, feature_distance,
                          load_wide_resnet50_2, wide_resnet50_2)
from dap.methods import build_method
from dap.methods.base import Reconstruction, TrainBatch, gaussian_blur
from dap.methods.ddad import DDAD, conditioned_reconstruct, crop_score, ddad_config

# few DDIM steps keep the tests fast; nothing tested here depends on their number
FAST = {"ddim_steps": 2, "t_start": 50}


def _images(b=4, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g) * 2 - 1


def _random_model(**overrides):
    """A ci DDAD whose denoiser predicts something (a fresh one predicts exactly 0)."""
    torch.manual_seed(0)
    m = build_method("ddad", "ci", **{**FAST, **overrides})
    with torch.no_grad():
        for p in m.denoiser.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return m.eval()


class Oracle:
    """eps_theta that knows the clean image: returns the true noise of x_t."""

    def __init__(self, schedule, x0):
        self.schedule, self.x0 = schedule, x0

    def __call__(self, x_t, t):
        return self.schedule.noise_from_original(x_t, self.x0, t)


# --------------------------------------------------------------------------------------------
# Conditioned guidance and the trajectory
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_one_conditioned_step_against_float64_hand_computation(eta):
    s = NoiseSchedule()
    g = torch.Generator().manual_seed(0)
    x_t, eps, y, z = (torch.randn(2, 3, 8, 8, generator=g) for _ in range(4))
    t, tp, w = 250, 225, 2.0
    eps_hat = conditioned_guidance(s, x_t, eps, y, t, w)
    prev = s.ddim_step(eps_hat, t, tp, x_t, eta=eta, noise=z).prev_sample

    ab = s._tables64["alphas_cumprod"]
    a, ap = ab[t], ab[tp]
    X, E, Y, Z = (v.double() for v in (x_t, eps, y, z))
    y_t = a.sqrt() * Y + (1 - a).sqrt() * E
    e_hat = E - (1 - a).sqrt() * w * (y_t - X)
    x0 = (X - (1 - a).sqrt() * e_hat) / a.sqrt()
    sigma = eta * ((1 - ap) / (1 - a)).sqrt() * (1 - a / ap).sqrt()
    expected = ap.sqrt() * x0 + (1 - ap - sigma**2).sqrt() * e_hat + sigma * Z
    torch.testing.assert_close(eps_hat.double(), e_hat, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(prev.double(), expected, atol=1e-5, rtol=1e-5)


def test_guidance_shares_norm_guidance_form():
    """x0(eps_hat) = x0(eps) + w (1 - abar_t) (y - x0(eps)), and w = 0 changes nothing."""
    s = NoiseSchedule()
    g = torch.Generator().manual_seed(1)
    x_t, eps, y = (torch.randn(2, 3, 8, 8, generator=g) for _ in range(3))
    t, w = 150, 1.5
    x0 = s.pred_original_sample(x_t, eps, t)
    x0_hat = s.pred_original_sample(x_t, conditioned_guidance(s, x_t, eps, y, t, w), t)
    abar = float(s.alphas_cumprod[t])
    torch.testing.assert_close(x0_hat, x0 + w * (1 - abar) * (y - x0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(conditioned_guidance(s, x_t, eps, y, t, 0.0), eps)


@pytest.mark.parametrize("grid", ["official", "dap"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("shared", [False, True])
def test_oracle_reconstruction_is_the_clean_image(eta, shared, grid):
    s = NoiseSchedule()
    x0 = _images(3, 16)
    out = conditioned_reconstruct(Oracle(s, x0), s, x0, t_start=250, num_inference_steps=10,
                                  w=2.0, eta=eta, generator=torch.Generator().manual_seed(0),
                                  shared_noise=shared, grid=grid)
    assert out.num_model_evals == 10
    torch.testing.assert_close(out.sample, x0, atol=1e-4, rtol=1e-4)


def test_zero_weight_is_plain_ddim():
    """w = 0 on dap's grid (250, ..., 25 style) is DDIM from the noised input."""
    s = NoiseSchedule()
    m = _random_model()
    x = _images(2)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = conditioned_reconstruct(m.denoiser, s, x, t_start=100, num_inference_steps=4, w=0.0,
                                       eta=0.0, noise=noise, grid="dap").sample
        ddim = reconstruct(m.denoiser, s, x, 100, "ddim", num_inference_steps=4, eta=0.0,
                           noise=noise).sample
    torch.testing.assert_close(ours, ddim, atol=1e-5, rtol=1e-5)


def test_conditioning_pulls_towards_the_target():
    """With a target, a larger w gives a reconstruction closer to it."""
    m = _random_model()
    x = _images(2)
    errs = []
    for w in (0.0, 2.0, 6.0):
        with m.using(w=w):
            errs.append(float((m.reconstruct(x).sample - x).abs().mean()))
    assert errs[0] > errs[1] > errs[2]
    assert m.config.w == 2.0                          # using() restores the config


def test_gaussian_blur_matches_scipy():
    from scipy.ndimage import gaussian_filter

    maps = torch.rand(2, 20, 24, generator=torch.Generator().manual_seed(0))
    ours = gaussian_blur(maps, 1.5).numpy()
    ref = np.stack([gaussian_filter(m, 1.5, mode="mirror", truncate=4.0) for m in maps.numpy()])
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert gaussian_blur(maps, 0.0) is maps
    # GLAD's truncation (3 sigma), and (B, 1, H, W) maps keep their shape
    ours3 = gaussian_blur(maps[:, None], 1.5, truncate=3.0)[:, 0].numpy()
    ref3 = np.stack([gaussian_filter(m, 1.5, mode="mirror", truncate=3.0) for m in maps.numpy()])
    np.testing.assert_allclose(ours3, ref3, atol=1e-5)


# --------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------
def test_training_loss_is_the_noise_loss_and_only_trains_the_denoiser():
    m = build_method("ddad", "ci")
    assert not hasattr(m, "segmenter")
    out = m(TrainBatch(_images()), torch.Generator().manual_seed(0))
    assert set(out) == {"loss", "loss_noise"} and out["loss"].ndim == 0
    out["loss"].backward()
    assert all(p.grad is not None for p in m.denoiser.parameters())
    groups = m.param_groups(3e-4)
    assert len(groups) == 1 and groups[0]["lr"] == 3e-4
    assert sum(p.numel() for p in groups[0]["params"]) == \
        sum(p.numel() for p in m.denoiser.parameters())


def test_predict_shapes_and_score_is_max():
    m = _random_model()
    pred = m.predict(_images(2))
    assert pred.anomaly_map.shape == (2, 64, 64) and pred.score.shape == (2,)
    assert pred.reconstruction.shape == (2, 3, 64, 64)
    assert float(pred.anomaly_map.min()) >= 0
    # the official score: the max of the central 224/256 (56 of 64 px)
    torch.testing.assert_close(pred.score, pred.anomaly_map[:, 4:60, 4:60].amax(dim=(1, 2)))
    torch.testing.assert_close(pred.score, crop_score(pred.anomaly_map, 224 / 256))
    with m.using(score_crop=1.0):
        torch.testing.assert_close(m.predict(_images(2)).score, pred.anomaly_map.amax(dim=(1, 2)))
    torch.testing.assert_close(m.predict(_images(2)).score, pred.score)  # deterministic
    rec = m.reconstruct(_images(2))
    assert isinstance(rec, Reconstruction) and rec.sample.shape == (2, 3, 64, 64)
    torch.testing.assert_close(rec.sample, pred.reconstruction)
    torch.testing.assert_close(m.anomaly_map(_images(2), rec), pred.anomaly_map)


@pytest.mark.parametrize("calibrated", [False, True])
def test_scores_do_not_depend_on_the_batch(calibrated):
    m = _random_model()
    if calibrated:
        m.fit_pixel_scale(_images(4, seed=9))
        assert torch.isfinite(m.pixel_scale)
    x = _images(16, seed=1)
    batch16 = m.predict(x)
    singles = [m.predict(x[i:i + 1]) for i in range(16)]
    torch.testing.assert_close(torch.cat([p.score for p in singles]), batch16.score,
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([p.anomaly_map for p in singles]), batch16.anomaly_map,
                               atol=1e-5, rtol=1e-5)
    # other companions, other position: same score
    mixed = m.predict(torch.cat([_images(3, seed=5), x[:1]]))
    torch.testing.assert_close(mixed.score[-1], batch16.score[0], atol=1e-5, rtol=1e-5)


def test_map_combines_feature_and_weighted_pixel_distance():
    m = _random_model(blur_sigma=0.0, v=0.5)
    m.pixel_scale.fill_(3.0)
    x = _images(2)
    rec = m.reconstruct(x).sample
    terms = m.map_terms(x, rec)
    p = (rec - x).abs().mean(1)
    f = feature_distance(m.features(rec), m.features(x), (64, 64), 3, align_corners=True)
    assert set(terms) == {"feature", "pixel"}
    torch.testing.assert_close(terms["pixel"], p)
    torch.testing.assert_close(terms["feature"], f)
    torch.testing.assert_close(m.anomaly_map(x, rec), f + 0.5 * 3.0 * p)
    assert m.config.smoothing_sigma == 0.0 and ddad_config("ci").smoothing_sigma == 1.0 and \
        ddad_config("paper").smoothing_sigma == 4.0


# --------------------------------------------------------------------------------------------
# Feature extractors
# --------------------------------------------------------------------------------------------
def test_wide_resnet_has_torchvision_names_and_size():
    with torch.device("meta"):
        full = wide_resnet50_2()
    keys = full.state_dict().keys()
    for k in ("conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight",
              "layer2.0.conv1.weight", "layer3.5.bn3.running_mean", "layer4.2.conv3.weight",
              "fc.bias"):
        assert k in keys
    assert sum(p.numel() for p in full.parameters()) == 68_883_240  # torchvision's count
    sd = full.state_dict()
    assert tuple(sd["layer1.0.conv1.weight"].shape) == (128, 64, 1, 1)   # 2x resnet50's 64
    assert tuple(sd["layer3.5.conv2.weight"].shape) == (512, 512, 3, 3)
    assert tuple(sd["fc.weight"].shape) == (1000, 2048)


def test_wide_resnet_file_round_trip_and_ddad_path(tmp_path):
    torch.manual_seed(0)
    small = wide_resnet50_2(base_width=8)
    path = tmp_path / "wrn.pth"
    torch.save(small.state_dict(), path)
    ext = WideResNetFeatures(path, levels=(1, 2), base_width=8).eval()
    torch.testing.assert_close(ext.backbone.layer3[5].bn3.running_mean,
                               small.layer3[5].bn3.running_mean)
    assert not hasattr(ext.backbone, "layer4")        # truncated after layer3
    feats = ext(_images(2))
    assert [tuple(f.shape) for f in feats] == [(2, 64, 8, 8), (2, 128, 4, 4)]

    m = build_method("ddad", "ci", extractor="wide_resnet50_2", extractor_weights=str(path),
                     wrn_base_width=8, **FAST).eval()
    pred = m.predict(_images(2))
    assert pred.anomaly_map.shape == (2, 64, 64) and torch.isfinite(pred.score).all()
    assert m.extractor_name == "wide_resnet50_2(ImageNet)[width 8]"
    assert build_method("ddad", "ci").extractor_name == "denoiser-encoder(t=0)"
    # a checkpoint carries the backbone: rebuilding needs no file
    path.unlink()
    again = DDAD.from_config_dict(m.config_dict())
    again.load_state_dict(m.state_dict())
    torch.testing.assert_close(again.eval().predict(_images(2)).score, pred.score)


def test_missing_or_wrong_weights_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_wide_resnet50_2(tmp_path / "nowhere.pth", wide_resnet50_2(8, num_stages=3))
    assert WRN50_2_URL in str(err.value) and "extractor='denoiser'" in str(err.value)
    with pytest.raises(FileNotFoundError, match="not given"):
        build_method("ddad", "ci", extractor="wide_resnet50_2")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_method("ddad", "ci", extractor="wide_resnet50_2",
                     extractor_weights=str(tmp_path / "nowhere.pth"))
    # a ResNet-50-like file (half-width bottlenecks): shape mismatch, named
    from dap.features import WideResNet

    narrow = tmp_path / "resnet.pth"
    torch.save(WideResNet(8, 8).state_dict(), narrow)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_wide_resnet50_2(narrow, wide_resnet50_2(8))
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in wide_resnet50_2(8).state_dict().items()
                if not k.startswith("layer4")}, partial)
    with pytest.raises(ValueError, match="missing keys"):
        load_wide_resnet50_2(partial, wide_resnet50_2(8))
    pickled = tmp_path / "model.pth"
    torch.save(wide_resnet50_2(8), pickled)          # a whole model, not a state dict
    with pytest.raises(ValueError, match="weights_only"):
        load_wide_resnet50_2(pickled, wide_resnet50_2(8))


# --------------------------------------------------------------------------------------------
# Domain adaptation
# --------------------------------------------------------------------------------------------
def _wrn_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "wrn.pth"
    torch.save(wide_resnet50_2(base_width=8).state_dict(), path)
    return str(path)


@pytest.mark.parametrize("kind", ["denoiser", "wide_resnet50_2"])
def test_adaptation_changes_the_copy_and_keeps_the_frozen_extractor(kind, tmp_path):
    extra = {} if kind == "denoiser" else {"extractor": kind, "extractor_weights":
                                           _wrn_file(tmp_path), "wrn_base_width": 8}
    m = _random_model(domain_adaptation_steps=2, da_lr=1e-2, **extra)
    frozen = {k: v.clone() for k, v in m.denoiser.state_dict().items()}
    if m.extractor is not None:
        frozen.update({f"ext.{k}": v.clone() for k, v in m.extractor.state_dict().items()})
    x = _images(6)
    with pytest.raises(RuntimeError, match="has not run"):
        build_method("ddad", "ci", use_adaptation="require", **FAST, **extra).predict(x[:1])
    assert not m.uses_adaptation
    info = m.after_training(x)
    assert info["da_steps"] == 2 and np.isfinite(info["da_loss_last"])
    assert torch.isfinite(m.pixel_scale) and torch.isfinite(m.pixel_scale_adapted)
    assert m.uses_adaptation and bool(m.adapted)
    now = dict(m.denoiser.state_dict())
    if m.extractor is not None:
        now.update({f"ext.{k}": v for k, v in m.extractor.state_dict().items()})
    for k, v in frozen.items():
        torch.testing.assert_close(now[k], v)          # frozen extractor (and denoiser) intact
    fa, ff = m.features(x, adapted=True), m.features(x, adapted=False)
    assert not torch.allclose(fa[0], ff[0])           # the copy moved
    on = m.predict(x[:2]).score
    m.config.use_adaptation = "off"
    off = m.predict(x[:2]).score
    assert not torch.allclose(on, off)
    # the checkpoint rebuilds the adapted model exactly
    m.config.use_adaptation = "auto"
    again = DDAD.from_config_dict(m.config_dict())
    again.load_state_dict(m.state_dict())
    torch.testing.assert_close(again.eval().predict(x[:2]).score, on)


def test_adapt_on_a_plain_model_creates_the_copy_and_records_it():
    m = _random_model()
    assert m.adapted_extractor is None and m.config.domain_adaptation_steps == 0
    m.adapt(_images(4), steps=1)
    assert isinstance(m.adapted_extractor, DenoiserFeatures)
    assert m.config.domain_adaptation_steps == 1 and bool(m.adapted)
    again = DDAD.from_config_dict(m.config_dict())
    again.load_state_dict(m.state_dict())                  # same modules, strict
    with pytest.raises(ConfigError, match="steps >= 1"):
        _random_model().adapt(_images(2))


def test_after_training_takes_train_images_and_calibrates():
    m = _random_model(calibration_images=3)
    uint8 = ((_images(5) + 1) * 127.5).round().to(torch.uint8)     # as training data holds them
    info = m.after_training(uint8)
    assert set(info) == {"pixel_scale"} and info["pixel_scale"] > 0      # no adaptation asked
    assert float(m.pixel_scale) == pytest.approx(info["pixel_scale"])
    assert m.adapted_extractor is None and not m.training


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------
def test_config_errors():
    with pytest.raises(ConfigError, match="unknown DDAD preset"):
        ddad_config("huge")
    with pytest.raises(ConfigError, match="unknown key"):
        ddad_config("ci", t_prime=250)
    with pytest.raises(ConfigError, match="t_start"):
        ddad_config("ci", t_start=1000)
    with pytest.raises(ConfigError, match="ddim_steps"):
        ddad_config("ci", ddim_steps=0)
    with pytest.raises(ConfigError, match="eta"):
        ddad_config("ci", eta=1.5)
    with pytest.raises(ConfigError, match="extractor_levels"):
        ddad_config("ci", extractor_levels=(1, 3))       # the ci denoiser has levels 0..2
    with pytest.raises(ConfigError, match="extractor_levels"):
        ddad_config("ci", extractor_levels=())
    with pytest.raises(ConfigError, match="feature_pool"):
        ddad_config("ci", feature_pool=2)
    with pytest.raises(ConfigError):
        ddad_config("ci", extractor="resnet18")
    with pytest.raises(ConfigError, match="use_adaptation"):
        ddad_config("ci", use_adaptation="yes")
    wrn = ddad_config("ci", extractor="wide_resnet50_2", extractor_levels=(1, 3))
    assert wrn.extractor_levels == (1, 3)
    paper = ddad_config("paper")
    assert (paper.t_start, paper.ddim_steps, paper.w, paper.v, paper.da_lambda) == \
        (250, 10, 2.0, 1.0, 0.1)
    assert paper.denoiser.num_channels == 64
