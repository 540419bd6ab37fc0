"""DRAEM (dap.methods.draem): networks, SSIM against float64 references, the losses, the image
score, the contract, checkpoints, training and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dap.config import ConfigError
from dap.methods import build_method, method_class, method_config
from dap.methods.base import TrainBatch
from dap.methods.draem import (DIFFERENCES, DRAEM, draem_config, draem_loss, from_unit,
                               gaussian_window, image_score, reconstruction_loss,
                               segmentation_loss, ssim_loss, ssim_map, to_unit)
from dap.methods.official import docstring_section
from dap.models import count_parameters
from dap.models.reconstructive import ReconstructiveAE, reconstructive_config
from dap.models.segmentation import SegmentationUNet


pytestmark = pytest.mark.usefixtures("one_thread")


def _images(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [-1, 1] (a blurred noise field per channel)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size // 8, size // 8, generator=g)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return torch.tanh(x)


# --------------------------------------------------------------------------------------------
# The networks
# --------------------------------------------------------------------------------------------
def _conv_bn(cin: int, cout: int) -> int:
    """Parameters of Conv3x3 (with bias) + BatchNorm: 9 cin cout + cout + 2 cout."""
    return 9 * cin * cout + cout + 2 * cout


def _official_reconstructive_count(b: int = 128) -> int:
    """A closed form of the official ``ReconstructiveSubNetwork(3, 3, b)``, layer by layer."""
    enc = [(3, b), (b, b), (b, 2 * b), (2 * b, 2 * b), (2 * b, 4 * b), (4 * b, 4 * b),
           (4 * b, 8 * b), (8 * b, 8 * b), (8 * b, 8 * b), (8 * b, 8 * b)]
    dec = [(8 * b, 8 * b), (8 * b, 8 * b), (8 * b, 4 * b),      # up1, db1
           (4 * b, 4 * b), (4 * b, 4 * b), (4 * b, 2 * b),      # up2, db2
           (2 * b, 2 * b), (2 * b, 2 * b), (2 * b, b),          # up3, db3
           (b, b), (b, b), (b, b)]                              # up4, db4
    head = 9 * b * 3 + 3
    return sum(_conv_bn(i, o) for i, o in enc + dec) + head


def _official_discriminative_count(b: int = 64, cin: int = 6, cout: int = 2) -> int:
    """A closed form of the official ``DiscriminativeSubNetwork(6, 2, 64)``."""
    enc = [(cin, b), (b, b), (b, 2 * b), (2 * b, 2 * b), (2 * b, 4 * b), (4 * b, 4 * b),
           (4 * b, 8 * b), (8 * b, 8 * b), (8 * b, 8 * b), (8 * b, 8 * b),
           (8 * b, 8 * b), (8 * b, 8 * b)]
    dec = [(8 * b, 8 * b), (16 * b, 8 * b), (8 * b, 8 * b),     # up_b, db_b
           (8 * b, 4 * b), (12 * b, 4 * b), (4 * b, 4 * b),     # up1, db1
           (4 * b, 2 * b), (6 * b, 2 * b), (2 * b, 2 * b),      # up2, db2
           (2 * b, b), (3 * b, b), (b, b),                      # up3, db3
           (b, b), (2 * b, b), (b, b)]                          # up4, db4
    head = 9 * b * cout + cout
    return sum(_conv_bn(i, o) for i, o in enc + dec) + head


def test_paper_networks_have_the_official_parameter_counts():
    with torch.device("meta"):
        m = DRAEM(draem_config("paper", init="pytorch"))
    assert count_parameters(m.reconstructive) == _official_reconstructive_count() == 69_048_579
    # dap's segmenter has one output logit instead of two: 9 * 64 + 1 = 577 parameters fewer
    assert count_parameters(m.segmenter) + 577 == _official_discriminative_count()
    assert m.image_size == 256 and m.config.score_window == 21


def test_reconstructive_shapes_and_bottleneck():
    cfg = reconstructive_config("ci")
    net = ReconstructiveAE(cfg).eval()
    x = torch.rand(2, 3, 64, 64)
    z = net.encode(x)
    assert z.shape == (2, 16 * 8, 8, 8)
    assert net(x).shape == (2, 3, 64, 64)
    torch.testing.assert_close(net(x), net.decode(z))
    assert cfg.decoder_widths == (32, 16, 16)
    assert reconstructive_config("paper").decoder_widths == (512, 256, 128, 128)
    with pytest.raises(ValueError, match="divisible"):
        net(torch.rand(1, 3, 60, 60))
    with pytest.raises(ValueError, match="shape"):
        net(torch.rand(1, 1, 64, 64))
    with pytest.raises(ConfigError, match="divisible"):
        reconstructive_config("ci", image_size=68)


def test_no_skip_connections_every_output_pixel_depends_on_the_bottleneck_only():
    """Changing the input where the bottleneck does not see it changes nothing: the output is a
    function of the bottleneck alone (a skip would pass the input through)."""
    net = ReconstructiveAE(reconstructive_config("ci")).eval()
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    z = net.encode(x)
    grad_z = torch.autograd.grad(net.decode(z).sum(), z, retain_graph=True)[0]
    # d out / d x through z equals d out / d x itself
    direct = torch.autograd.grad(net(x).sum(), x)[0]
    via_z = torch.autograd.grad(z, x, grad_outputs=grad_z)[0]
    torch.testing.assert_close(direct, via_z)


# --------------------------------------------------------------------------------------------
# SSIM (Wang et al. 2004, eq. 13) against float64 references
# --------------------------------------------------------------------------------------------
def _ssim_loop(x: np.ndarray, y: np.ndarray, size: int = 11, sigma: float = 1.5,
               L: float = 1.0) -> np.ndarray:
    """SSIM of every pixel of two 2-D float64 arrays by explicit sums over the zero-padded
    Gaussian window (eq. 13 with the weighted statistics of eqs. 14-16)."""
    r = size // 2
    g = np.exp(-((np.arange(size) - r) ** 2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    H, W = x.shape
    xp, yp = np.pad(x, r), np.pad(y, r)
    out = np.empty_like(x)
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    for i in range(H):
        for j in range(W):
            px, py = xp[i:i + size, j:j + size], yp[i:i + size, j:j + size]
            mx, my = (w * px).sum(), (w * py).sum()
            vx = (w * px * px).sum() - mx * mx
            vy = (w * py * py).sum() - my * my
            cxy = (w * px * py).sum() - mx * my
            out[i, j] = ((2 * mx * my + c1) * (2 * cxy + c2)) / \
                ((mx * mx + my * my + c1) * (vx + vy + c2))
    return out


def test_ssim_map_matches_an_explicit_float64_loop_including_the_border():
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 14, 13))
    y = np.clip(x + 0.3 * rng.standard_normal(x.shape), 0, 1)
    got = ssim_map(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    assert got.dtype == np.float64
    for b in range(2):
        for c in range(3):
            np.testing.assert_allclose(got[b, c], _ssim_loop(x[b, c], y[b, c]), rtol=0,
                                       atol=1e-12)
    loss = ssim_loss(torch.from_numpy(x), torch.from_numpy(y)).item()
    ref = np.mean([1 - _ssim_loop(x[b, c], y[b, c]) for b in range(2) for c in range(3)])
    assert loss == pytest.approx(ref, abs=1e-12)


def test_ssim_map_matches_scikit_image_away_from_the_border():
    """skimage pads by reflection, dap (and the official DRAEM code) with zeros: the maps agree
    wherever the 11 x 11 window stays inside the image."""
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(1)
    a = rng.random((40, 36))
    b = np.clip(0.7 * a + 0.2 + 0.1 * rng.standard_normal(a.shape), 0, 1)
    _, ref = metrics.structural_similarity(a, b, data_range=1.0, gaussian_weights=True,
                                           sigma=1.5, use_sample_covariance=False, full=True)
    got = ssim_map(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None])[0, 0]
    np.testing.assert_allclose(got.numpy()[5:-5, 5:-5], ref[5:-5, 5:-5], rtol=0, atol=1e-12)


def test_ssim_of_an_image_with_itself_is_one_and_float32_agrees():
    x = to_unit(_images(2, 32))
    assert ssim_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    torch.testing.assert_close(ssim_map(x, y), ssim_map(x.double(), y.double()).float(),
                               atol=1e-4, rtol=0)
    w = gaussian_window(11, 1.5, torch.float64)
    assert w.sum().item() == pytest.approx(1.0) and w.argmax().item() == 5
    with pytest.raises(ValueError, match="one shape"):
        ssim_map(x, y[:1])


def test_ssim_ignores_bf16_autocast():
    # under bf16 autocast E[x^2] - mu^2 cancels to noise; ssim_map must stay in float32
    x = to_unit(_images(2, 32))
    y = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ssim_map(x.bfloat16(), y.bfloat16())
    assert got.dtype == torch.float32
    ref = ssim_map(x.bfloat16().double(), y.bfloat16().double()).float()
    torch.testing.assert_close(got, ref, atol=5e-4, rtol=0)


# --------------------------------------------------------------------------------------------
# The losses and the image score
# --------------------------------------------------------------------------------------------
def test_reconstruction_loss_is_l2_plus_lambda_ssim():
    rng = np.random.default_rng(2)
    t = rng.random((1, 3, 12, 12))
    r = np.clip(t + 0.2 * rng.standard_normal(t.shape), -0.1, 1.1)
    total, l2, ls = reconstruction_loss(torch.from_numpy(r), torch.from_numpy(t), ssim_weight=0.7)
    ref_l2 = np.mean((r - t) ** 2)
    ref_ssim = np.mean([1 - _ssim_loop(r[0, c], t[0, c]) for c in range(3)])
    assert l2.item() == pytest.approx(ref_l2, rel=1e-6)
    assert ls.item() == pytest.approx(ref_ssim, rel=1e-6)
    assert total.item() == pytest.approx(ref_l2 + 0.7 * ref_ssim, rel=1e-6)


def test_segmentation_loss_is_the_unweighted_focal_loss_and_near_the_official_one():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    m = (torch.rand(2, 1, 8, 8, generator=g) > 0.7).double()
    p = torch.sigmoid(z)
    p_t = torch.where(m > 0, p, 1 - p)
    # FL = -(1 - p_t)^2 log p_t (Lin et al. 2017, eq. 4), the mean over pixels
    ref = (-(1 - p_t) ** 2 * torch.log(p_t)).mean()
    got = segmentation_loss(z, m, gamma=2.0)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    # the official FocalLoss on softmax((0, z)) = (1 - p, p) with label smoothing 1e-5
    s = 1e-5
    onehot = torch.stack([1 - m, m], dim=-1).clamp(s, 1 - s)
    probs = torch.stack([1 - p, p], dim=-1)
    pt = (onehot * probs).sum(-1) + s
    official = (-(1 - pt) ** 2 * pt.log()).mean()
    assert got.item() == pytest.approx(official.item(), rel=2e-4)
    assert got.item() != pytest.approx(official.item(), rel=1e-6)
    assert segmentation_loss(z, m, gamma=0.0).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(z, m).item(), rel=1e-5)


def test_draem_loss_sums_its_parts():
    x = to_unit(_images(2, 16))
    r = (x + 0.05).clamp(0, 1)
    z = torch.randn(2, 1, 16, 16)
    m = (torch.rand(2, 1, 16, 16) > 0.5).float()
    out = draem_loss(r, x, z, m, ssim_weight=2.0, seg_weight=3.0, gamma=2.0)
    rec, l2, ls = reconstruction_loss(r, x, 2.0)
    assert out.l2.item() == pytest.approx(l2.item()) and out.ssim.item() == pytest.approx(ls.item())
    assert out.total.item() == pytest.approx(rec.item() + 3.0 * segmentation_loss(z, m).item(),
                                             rel=1e-6)


def test_image_score_is_the_max_of_the_box_filtered_mask():
    rng = np.random.default_rng(4)
    mask = rng.random((3, 20, 17)) ** 4
    w = 5
    r = w // 2
    padded = np.pad(mask, ((0, 0), (r, r), (r, r)))
    ref = np.array([max(padded[b, i:i + w, j:j + w].sum() / w**2
                        for i in range(20) for j in range(17)) for b in range(3)])
    got = image_score(torch.from_numpy(mask), w).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    # one anomalous pixel scores 1/w^2; a full anomalous window scores 1
    one = torch.zeros(1, 1, 32, 32)
    one[0, 0, 10, 10] = 1.0
    assert image_score(one, 21).item() == pytest.approx(1 / 21**2)
    assert image_score(torch.ones(1, 32, 32), 21).item() == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------
# The method: contract, presets, config, forward
# --------------------------------------------------------------------------------------------
def test_registry_builds_draem_at_every_preset():
    assert method_class("draem") is DRAEM
    m = build_method("draem", "ci")
    assert isinstance(m, DRAEM) and m.image_size == 64 and m.config.score_window == 5
    assert method_config("draem", "cpu").reconstructive.image_size == 128
    assert method_config("draem", "cpu").score_window == 11
    wide = build_method("draem", "ci", segmenter={"base_width": 16})
    assert wide.segmenter.config.base_width == 16
    assert isinstance(m.segmenter, SegmentationUNet)


def test_config_rejects_bad_values_with_clear_errors():
    with pytest.raises(ConfigError, match="in_channels"):
        draem_config("ci", segmenter={"in_channels": 3})
    with pytest.raises(ConfigError, match="score_window"):
        draem_config("ci", score_window=4)
    with pytest.raises(ConfigError, match="ssim_window"):
        draem_config("ci", ssim_window=10)
    with pytest.raises(ConfigError, match="preset"):
        draem_config("huge")
    with pytest.raises(ConfigError, match="init"):
        draem_config("ci", init="xavier")


def test_predict_contract_ranges_and_determinism():
    m = build_method("draem", "ci").eval()
    x = _images(3)
    p = m.predict(x)
    assert p.anomaly_map.shape == (3, 64, 64) and p.score.shape == (3,)
    assert p.reconstruction.shape == (3, 3, 64, 64)
    assert 0 <= p.anomaly_map.min() and p.anomaly_map.max() <= 1
    assert p.reconstruction.abs().max() <= 1
    torch.testing.assert_close(p.score, image_score(p.anomaly_map, 5))
    torch.testing.assert_close(m.predict(x).anomaly_map, p.anomaly_map)
    # an image's result does not depend on its batch (BatchNorm in eval mode, no noise)
    torch.testing.assert_close(m.predict(x[1:2]).anomaly_map[0], p.anomaly_map[1],
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(m.reconstruct(x).sample, p.reconstruction)
    with pytest.raises(ValueError, match="shape"):
        m.predict(x[:, :1])
    with m.using(score_window=9):
        torch.testing.assert_close(m.predict(x).score, image_score(p.anomaly_map, 9))
    with pytest.raises(ConfigError, match="networks"):
        with m.using(segmenter={"base_width": 16}):
            pass


def test_range_maps_are_inverse():
    x = _images(1)
    torch.testing.assert_close(from_unit(to_unit(x)), x)
    assert to_unit(torch.tensor(-1.0)).item() == 0.0 and to_unit(torch.tensor(1.0)).item() == 1.0


def test_forward_is_the_documented_loss_of_the_synthesised_batch():
    """forward = L2 + SSIM of (reconstruction of the corrupted image, the CLEAN image) + focal
    of the segmenter on concat(reconstruction, corrupted), all in [0, 1]."""
    m = build_method("draem", "ci").train()
    x = _images(4)
    out = m(TrainBatch(x), torch.Generator().manual_seed(5))
    syn = m.synthesizer(x, generator=torch.Generator().manual_seed(5))
    assert syn.label.sum() > 0, "the seed should give at least one anomalous sample"
    corrupted = (syn.image + 1) / 2
    rec = m.reconstructive(corrupted)
    logits = m.segmenter(torch.cat([rec, corrupted], 1))
    l2 = ((rec - (x + 1) / 2) ** 2).mean()
    ls = ssim_loss(rec, (x + 1) / 2)
    foc = segmentation_loss(logits, syn.mask)
    assert out["loss_l2"].item() == pytest.approx(l2.item(), rel=1e-5)
    assert out["loss_ssim"].item() == pytest.approx(ls.item(), rel=1e-5)
    assert out["loss_focal"].item() == pytest.approx(foc.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx((l2 + ls + foc).item(), rel=1e-5)
    out["loss"].backward()
    # the focal loss trains the auto-encoder too (the reconstruction is not detached)
    assert all(p.grad is not None for p in m.reconstructive.parameters())


def test_official_init_and_the_pytorch_alternative():
    torch.manual_seed(0)
    m = build_method("draem", "ci")
    w = torch.cat([mod.weight.flatten() for mod in m.modules()
                   if isinstance(mod, torch.nn.Conv2d)])
    assert w.std().item() == pytest.approx(0.02, rel=0.05)
    bn = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    assert all(b.bias.abs().max() == 0 for b in bn)
    gam = torch.cat([b.weight for b in bn])
    assert gam.mean().item() == pytest.approx(1.0, abs=0.01) and gam.std().item() > 0.01
    torch.manual_seed(0)
    p = build_method("draem", "ci", init="pytorch")
    assert all((b.weight == 1).all() for b in p.modules() if isinstance(b, torch.nn.BatchNorm2d))


def test_package_docstring_lists_every_official_difference():
    import dap.methods.draem as pkg

    assert len(DIFFERENCES) >= 10
    assert docstring_section(DIFFERENCES) in pkg.__doc__


# --------------------------------------------------------------------------------------------
# Checkpoints, training, CLI
# --------------------------------------------------------------------------------------------
def test_checkpoint_round_trip(tmp_path):
    from dap.engine.checkpoint import load_method, model_payload, save_checkpoint

    m = build_method("draem", "ci", segmenter={"base_width": 16}).eval()
    # move the BatchNorm statistics away from their defaults so they are checked too
    m.train()
    with torch.no_grad():
        m.reconstructive(torch.rand(4, 3, 64, 64))
    m.eval()
    save_checkpoint(tmp_path / "m.pt", model_payload(m))
    back = load_method(tmp_path / "m.pt")
    assert isinstance(back, DRAEM) and back.config == m.config
    x = _images(2)
    a, b = m.predict(x), back.predict(x)
    torch.testing.assert_close(a.anomaly_map, b.anomaly_map, rtol=0, atol=0)
    torch.testing.assert_close(a.reconstruction, b.reconstruction, rtol=0, atol=0)


def test_a_few_training_steps_decrease_the_loss():
    from dap.engine.train import TrainConfig, TrainData, to_uint8, train

    torch.manual_seed(0)
    m = build_method("draem", "ci")
    data = TrainData(to_uint8(_images(8, seed=6)))
    cfg = TrainConfig(steps=16, batch_size=4, lr=1e-3, val_every=0, amp="off")
    res = train(m, data, cfg, None, device="cpu", progress=False)
    losses = [h["loss"] for h in res.history]
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4]), losses


def test_cli_train_and_evaluate_draem(tmp_path, monkeypatch):
    from dap.cli import main
    from dap.experiments import variants

    assert list(variants("draem")) == ["draem"]
    monkeypatch.setenv("DAP_DATA", str(tmp_path / "data"))
    rc = main(["train", "--method", "draem", "--data", "builtin:brick", "--profile", "ci",
               "--steps", "2", "--train-set", "val_every=2", "batch_size=2",
               "--out", str(tmp_path / "run")])
    assert rc == 0
    ckpt = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert ckpt["method"] == "draem" and "val_mean" in ckpt["metrics"]
    rc = main(["evaluate", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--data",
               "builtin:brick", "--out", str(tmp_path / "ev"), "--no-fps"])
    assert rc == 0
    row = json.loads((tmp_path / "ev" / "results.json").read_text())["rows"][0]
    assert row["method"] == "draem"
    for k in ("image_auroc", "pixel_auroc", "aupro", "pixel_ap"):
        assert 0.0 <= row[k] <= 1.0
