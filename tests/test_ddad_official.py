"""DDAD against the official code (dap.methods.ddad.official): the grid, the image score, the
extractor, the loss reduction and weight decay, the domain-adaptation recipe.

Each official behaviour is checked against an independent float64 reference written here from a
reading of arimousa/DDAD (commit 4323a15), never against dap's own functions.
"""

import copy

import numpy as np
import pytest
import torch

from dap.config import ConfigError
from dap.diffusion import NoiseSchedule
from dap.engine.train import TrainConfig, TrainData, to_uint8, train
from dap.features import (WRN101_2_URL, WideResNet, WideResNetFeatures, load_wide_resnet,
                          wide_resnet50_2, wide_resnet101_2)
from dap.methods import build_method
from dap.methods.base import TrainBatch
from dap.methods.ddad import (DDAD, adaptation_loss, conditioned_reconstruct, crop_score,
                              ddad_config, ddad_timesteps, global_cosine_distance)

FAST = {"ddim_steps": 2, "t_start": 50}


def _images(b=4, size=64, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, 3, size, size, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)


def _random_model(**overrides):
    torch.manual_seed(0)
    m = build_method("ddad", "ci", **{**FAST, **overrides})
    with torch.no_grad():
        for p in m.denoiser.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return m.eval()


# --------------------------------------------------------------------------------------------
# The denoising grid
# --------------------------------------------------------------------------------------------
def test_grids():
    assert ddad_timesteps(250, 10, "official") == list(range(225, -1, -25))
    assert ddad_timesteps(250, 10, "dap") == list(range(250, 0, -25))
    assert ddad_timesteps(50, 2) == [25, 0]
    with pytest.raises(ConfigError, match="num_steps <= t_start"):
        ddad_timesteps(5, 6)
    with pytest.raises(ConfigError, match="grid"):
        ddad_config("ci", t_start=5, ddim_steps=6)
    assert ddad_config("ci", t_start=5, ddim_steps=6, grid="dap").ddim_steps == 6


class TinyNet:
    """A fixed smooth eps-predictor that depends on x and t (float64)."""

    def __init__(self):
        g = torch.Generator().manual_seed(7)
        self.W = torch.randn(3, 3, generator=g, dtype=torch.float64) / 3

    def __call__(self, x, t):
        mix = torch.einsum("oc,bchw->bohw", self.W.to(x.dtype), x)
        return torch.tanh(mix) * (1 + t.to(x.dtype)[:, None, None, None] / 1000)


def official_reconstruction(model, x, y, w, eta, gen, t_start=250, skip=25):
    """The official ``Reconstruction.__call__`` re-derived in float64: alpha(t) = prod_{s<=t}
    (1 - beta_s), alpha(-1) = 1; noise to t'; steps (i, j) over range(0, t', skip) reversed
    with next step j (-1 after 0); eps_hat, x0_t and the DDIM update with eta's sigma."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])

    def a(t):
        return alpha[t + 1]

    n = x.shape[0]
    xt = a(t_start).sqrt() * x + (1 - a(t_start)).sqrt() * torch.randn(
        x.shape, generator=gen, dtype=torch.float64)
    seq = list(range(0, t_start, skip))
    for i, j in zip(reversed(seq), reversed([-1] + seq[:-1])):
        at, an = a(i), a(j)
        et = model(xt, torch.full((n,), i, dtype=torch.long))
        yt = at.sqrt() * y + (1 - at).sqrt() * et
        e_hat = et - (1 - at).sqrt() * w * (yt - xt)
        x0 = (xt - (1 - at).sqrt() * e_hat) / at.sqrt()
        c1 = eta * ((1 - at / an) * (1 - an) / (1 - at)).sqrt()
        c2 = ((1 - an) - c1 ** 2).sqrt()
        # the official code draws noise at every step; the last one is multiplied by c1 = 0
        z = torch.randn(x.shape, generator=gen, dtype=torch.float64) if j >= 0 else 0.0
        xt = an.sqrt() * x0 + c1 * z + c2 * e_hat
    return xt


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_official_grid_matches_the_official_loop_in_float64(eta):
    s, net = NoiseSchedule(), TinyNet()
    x, y = _images(2, 16, seed=1, dtype=torch.float64), _images(2, 16, seed=2, dtype=torch.float64)
    ref = official_reconstruction(net, x, y, 2.0, eta, torch.Generator().manual_seed(3))
    out = conditioned_reconstruct(net, s, x, y, 250, 10, 2.0, eta,
                                  generator=torch.Generator().manual_seed(3), grid="official")
    assert out.num_model_evals == 10
    # dap's schedule tables are float32: 1 - abar_t / abar_prev in sigma keeps ~5 digits
    torch.testing.assert_close(out.sample, ref, atol=1e-5, rtol=1e-5)
    other = conditioned_reconstruct(net, s, x, y, 250, 10, 2.0, eta,
                                    generator=torch.Generator().manual_seed(3), grid="dap").sample
    assert (other - ref).abs().max() > 1e-3            # the test tells the grids apart


def test_method_uses_its_grid():
    m = _random_model(t_start=250, ddim_steps=10)
    assert m.config.grid == "official"
    x = _images(1)
    rec = m.reconstruct(x).sample
    ref = conditioned_reconstruct(m.denoiser, m.schedule, x, None, 250, 10, 2.0, 1.0,
                                  generator=torch.Generator().manual_seed(0), shared_noise=True,
                                  grid="official").sample
    torch.testing.assert_close(rec, ref)
    with m.using(grid="dap"):
        assert not torch.allclose(m.reconstruct(x).sample, rec)


# --------------------------------------------------------------------------------------------
# The image score
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size, lo, hi", [(256, 16, 240), (64, 4, 60), (128, 8, 120)])
def test_score_crop_is_torchvision_centre_crop(size, lo, hi):
    maps = torch.zeros(3, size, size)
    maps[0, lo - 1, size // 2] = 5.0                    # just outside the crop
    maps[1, lo, lo] = 5.0                               # its first corner
    maps[2, hi - 1, hi - 1] = 5.0                       # its last corner
    torch.testing.assert_close(crop_score(maps, 224 / 256), torch.tensor([0.0, 5.0, 5.0]))
    torch.testing.assert_close(crop_score(maps, 1.0), torch.tensor([5.0, 5.0, 5.0]))
    with pytest.raises(ConfigError, match="score_crop"):
        ddad_config("ci", score_crop=0.0)


# --------------------------------------------------------------------------------------------
# The extractor: WideResNet-101-2 from a weights file
# --------------------------------------------------------------------------------------------
def test_wide_resnet101_2_names_size_and_file(tmp_path):
    with torch.device("meta"):
        full = wide_resnet101_2()
    sd = full.state_dict()
    assert sum(p.numel() for p in full.parameters()) == 126_886_696   # torchvision's count
    assert "layer3.22.bn3.running_var" in sd and "layer3.23.conv1.weight" not in sd
    assert tuple(sd["layer3.22.conv2.weight"].shape) == (512, 512, 3, 3)

    torch.manual_seed(0)
    small = wide_resnet101_2(base_width=8)
    path = tmp_path / "wrn101.pth"
    torch.save(small.state_dict(), path)
    ext = WideResNetFeatures(path, (1, 2), 8, "wide_resnet101_2")
    torch.testing.assert_close(ext.backbone.layer3[22].bn3.running_mean,
                               small.layer3[22].bn3.running_mean)
    m = build_method("ddad", "ci", extractor="wide_resnet101_2", extractor_weights=str(path),
                     wrn_base_width=8, **FAST).eval()
    assert m.extractor_name == "wide_resnet101_2(ImageNet)[width 8]"
    assert torch.isfinite(m.predict(_images(2)).score).all()
    # the other WideResNet's file is refused, naming the difference
    other = tmp_path / "wrn50.pth"
    torch.save(wide_resnet50_2(8).state_dict(), other)
    with pytest.raises(ValueError, match="missing keys"):
        load_wide_resnet(other, wide_resnet101_2(8), "wide_resnet101_2")
    with pytest.raises(ValueError, match="unexpected keys"):
        load_wide_resnet(path, wide_resnet50_2(8), "wide_resnet50_2")
    with pytest.raises(FileNotFoundError) as err:
        build_method("ddad", "ci", extractor="wide_resnet101_2")
    assert WRN101_2_URL in str(err.value)
    assert isinstance(small, WideResNet)


# --------------------------------------------------------------------------------------------
# Loss reduction and weight decay
# --------------------------------------------------------------------------------------------
def test_sum_reduction_is_the_official_loss():
    x = _images(3)
    losses = {}
    for red in ("mean", "sum"):
        m = _random_model(loss_reduction=red)
        losses[red] = float(m(TrainBatch(x), torch.Generator().manual_seed(0))["loss_noise"])
    # official: mean_b sum_{c,h,w}; dap: mean_{b,c,h,w}; the ratio is 3 H W
    assert losses["sum"] == pytest.approx(losses["mean"] * 3 * 64 * 64, rel=1e-5)
    g = _random_model().param_groups(3e-4)[0]
    assert g["weight_decay"] == pytest.approx(0.05 / (3 * 64 * 64))
    assert g["eps"] == pytest.approx(1e-8 / (3 * 64 * 64))
    assert _random_model(loss_reduction="sum").param_groups()[0]["weight_decay"] == 0.05


def _adam_steps(scale, wd, eps, steps=100):
    """Adam on scale * L(theta) = scale * sum (A theta - b)^2 / n, float64; the last theta."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(20, 5, generator=g, dtype=torch.float64)
    b = torch.randn(20, generator=g, dtype=torch.float64)
    theta = torch.nn.Parameter(torch.randn(5, generator=g, dtype=torch.float64))
    opt = torch.optim.Adam([theta], lr=1e-2, weight_decay=wd, eps=eps)
    for _ in range(steps):
        opt.zero_grad()
        (scale * ((A @ theta - b) ** 2).mean()).backward()
        opt.step()
    return theta.detach()


def test_adam_steps_are_invariant_to_the_loss_scale_with_scaled_decay():
    c = 3 * 256 * 256
    # without decay: the loss scale changes nothing (eps scaled with it: exactly nothing)
    torch.testing.assert_close(_adam_steps(c, 0.0, 1e-8), _adam_steps(1.0, 0.0, 1e-8 / c),
                               atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(_adam_steps(c, 0.0, 1e-8), _adam_steps(1.0, 0.0, 1e-8),
                               atol=1e-8, rtol=1e-8)
    # with coupled decay: Adam(c L, wd) = Adam(L, wd / c); wd unscaled on L is another optimiser
    torch.testing.assert_close(_adam_steps(c, 0.05, 1e-8), _adam_steps(1.0, 0.05 / c, 1e-8 / c),
                               atol=1e-12, rtol=1e-12)
    assert (_adam_steps(c, 0.05, 1e-8) - _adam_steps(1.0, 0.05, 1e-8)).abs().max() > 1e-2


def test_mean_and_sum_training_take_the_same_steps(tmp_path):
    """Two steps of dap's training loop: the mean loss with the scaled decay and eps gives the
    weights of the summed (official) loss with decay 0.05.

    On the plain path: the equivalence is a property of the loss and the optimiser. Adam's
    first step is +-lr for every gradient above eps, so a weight whose gradient is float32
    cancellation residue (near eps) steps differently under the two loss scales whenever the
    kernels round differently, and the fast path's kernels (channels_last, linear attention
    projections) do: one such weight moved by 2e-3 there while the rest agreed to 1e-6."""
    images = to_uint8(_images(4))
    cfg = TrainConfig(steps=2, batch_size=4, lr=1e-3, val_every=0, select_metric="last",
                      amp="off", seed=0, log_every=1, plain=True)
    weights = {}
    for red, wd in (("mean", 5.0), ("sum", 5.0), ("mean", 0.0)):   # a decay that shows
        m = _random_model(loss_reduction=red, weight_decay=wd)
        train(m, TrainData(images), cfg, tmp_path / f"{red}{wd}", validate=None, resume=False,
              device="cpu", progress=False)
        weights[red, wd] = torch.cat([p.detach().flatten() for p in m.denoiser.parameters()])
    # float32 gradients of two loss scales: equal to a few ulps of Adam's normalised step
    torch.testing.assert_close(weights["mean", 5.0], weights["sum", 5.0], atol=1e-5, rtol=1e-4)
    assert (weights["mean", 5.0] - weights["mean", 0.0]).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------
# Domain adaptation: the loss, term by term, and the recipe end to end
# --------------------------------------------------------------------------------------------
def _ref_d(a, b):
    """1 - cos of each image's flattened map, mean over the batch (numpy float64)."""
    a = a.detach().double().reshape(len(a), -1).numpy()
    b = b.detach().double().reshape(len(b), -1).numpy()
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float((1 - cos).mean())


def test_adaptation_loss_terms_against_float64():
    g = torch.Generator().manual_seed(0)
    shapes = [(2, 4, 8, 8), (2, 8, 4, 4), (2, 16, 2, 2)]
    ar, at, ft, fr = ([torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
                      for _ in range(4))
    lam = 0.1
    assert float(global_cosine_distance(ar[0], at[0])) == pytest.approx(_ref_d(ar[0], at[0]))
    two = sum(_ref_d(ar[i], at[i]) + lam * _ref_d(at[i], ft[i]) for i in range(3))
    three = two + sum(lam * _ref_d(ar[i], fr[i]) for i in range(3))
    assert float(adaptation_loss(ar, at, ft, None, lam)) == pytest.approx(two, rel=1e-10)
    assert float(adaptation_loss(ar, at, ft, fr, lam)) == pytest.approx(three, rel=1e-10)
    # the per-position "map" distance: the mean over pixels of upsampled 1 - cos per level
    from dap.features import feature_distance

    want = sum(float(feature_distance([ar[i]], [at[i]], (16, 16), 1, True).mean()) + lam * float(
        feature_distance([at[i]], [ft[i]], (16, 16), 1, True).mean()) for i in range(3))
    got = adaptation_loss(ar, at, ft, None, lam, "map", (16, 16), 1, True)
    assert float(got) == pytest.approx(want, rel=1e-6)


def _wrn_model(tmp_path, **overrides):
    torch.manual_seed(0)
    path = tmp_path / "wrn.pth"
    torch.save(wide_resnet50_2(base_width=8).state_dict(), path)
    return _random_model(extractor="wide_resnet50_2", extractor_weights=str(path),
                         wrn_base_width=8, **overrides)


OLD = {"da_pairing": "self", "da_w": 2.0, "da_levels": (1, 2), "da_distance": "map",
       "da_distill_reconstruction": False, "da_batchnorm": "eval"}


@pytest.mark.parametrize("recipe", ["official", "old"])
def test_first_adaptation_loss_is_the_recipe_reference(recipe, tmp_path):
    """The loss of the first adaptation step, recomputed from scratch: pairing, w_DA, levels,
    distance, the third term and BatchNorm mode all enter it."""
    m = _wrn_model(tmp_path, **({} if recipe == "official" else OLD))
    c = m.config
    x = _images(6, seed=4)
    frozen = copy.deepcopy(m.extractor)
    info = m.adapt(x, steps=1, seed=5)
    # reference: the same batch and noise, a fresh copy of the frozen extractor
    idx = torch.randperm(6, generator=torch.Generator().manual_seed(5))[:4]
    y = x[idx]
    src, tgt = (y[2:], y[:2]) if recipe == "official" else (y, y)
    rec = conditioned_reconstruct(m.denoiser, m.schedule, src, tgt, c.t_start, c.ddim_steps,
                                  3.0 if recipe == "official" else 2.0, c.eta,
                                  generator=torch.Generator().manual_seed(5 * 1_000_003),
                                  shared_noise=True).sample
    A = copy.deepcopy(frozen).train() if recipe == "official" else copy.deepcopy(frozen).eval()
    levels = [0, 1, 2] if recipe == "official" else [1, 2]
    with torch.no_grad():
        fa_rec, fa_tgt = A(rec), A(tgt)
        ff_tgt, ff_rec = frozen.eval()(tgt), frozen(rec)
    pos = {lv: i for i, lv in enumerate(frozen.levels)}
    if recipe == "official":
        want = sum(_ref_d(fa_rec[pos[lv]], fa_tgt[pos[lv]])
                   + 0.1 * _ref_d(fa_tgt[pos[lv]], ff_tgt[pos[lv]])
                   + 0.1 * _ref_d(fa_rec[pos[lv]], ff_rec[pos[lv]]) for lv in levels)
    else:
        from dap.features import feature_distance

        def f(a, b):
            return float(feature_distance([a], [b], (64, 64), 3, True).mean())

        want = sum(f(fa_rec[pos[lv]], fa_tgt[pos[lv]]) + 0.1 * f(fa_tgt[pos[lv]], ff_tgt[pos[lv]])
                   for lv in levels)
    assert info["da_loss_first"] == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_adaptation_batchnorm_mode(mode, tmp_path):
    m = _wrn_model(tmp_path, da_batchnorm=mode, da_lr=1e-2)
    m.adapt(_images(4), steps=2)
    a = m.adapted_extractor.backbone.layer1[0].bn1.running_mean
    f = m.extractor.backbone.layer1[0].bn1.running_mean
    assert torch.equal(a, f) == (mode == "eval")       # train mode updates running statistics
    assert not m.adapted_extractor.training and not m.extractor.training
    again = DDAD.from_config_dict(m.config_dict())
    again.load_state_dict(m.state_dict())                # the statistics travel with the model


def test_adaptation_config_errors():
    with pytest.raises(ConfigError, match="even"):
        ddad_config("ci", da_batch_size=3)
    assert ddad_config("ci", da_batch_size=3, da_pairing="self").da_batch_size == 3
    with pytest.raises(ConfigError, match="da_levels"):
        ddad_config("ci", da_levels=(0, 3))
    with pytest.raises(ConfigError, match="at least 2"):
        _random_model(domain_adaptation_steps=1).adapt(_images(1))
    with pytest.raises(ConfigError):
        ddad_config("ci", da_distance="cosine")
