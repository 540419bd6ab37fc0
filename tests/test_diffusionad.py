"""DiffusionAD method: the training step, inference modes, checkpoints, zoo round trip, CLI."""

import json

import pytest
import torch

from dap.config import ConfigError
from dap.engine.checkpoint import load_method
from dap.methods import build_method
from dap.methods.base import TrainBatch, top_k_mean
from dap.methods.diffusionad import DiffusionAD, diffusionad_config


@pytest.fixture(scope="module")
def method():
    torch.manual_seed(0)
    return build_method("diffusionad", "ci")


def _images(b=4, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g) * 2 - 1


def test_training_step_losses(method):
    out = method(TrainBatch(_images()), torch.Generator().manual_seed(0))
    assert set(out) == {"loss", "loss_noise", "loss_focal", "loss_smooth_l1"}
    c = method.config
    expected = out["loss_noise"] + c.smooth_l1_weight * out["loss_smooth_l1"] + \
        c.focal_weight * out["loss_focal"]
    torch.testing.assert_close(out["loss"].detach(), expected)
    out["loss"].backward()
    assert all(p.grad is not None for p in method.denoiser.parameters() if p.requires_grad)
    method.zero_grad()


def test_all_anomalous_batch_gives_zero_noise_loss_not_nan():
    m = build_method("diffusionad", "ci", synthesis={"normal_prob": 0.0})
    out = m(TrainBatch(_images()), torch.Generator().manual_seed(1))
    assert out["loss_noise"].item() == 0.0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def _denoiser_grad(**overrides):
    torch.manual_seed(0)
    m = build_method("diffusionad", "ci", **overrides)
    m(TrainBatch(_images()), torch.Generator().manual_seed(2))["loss"].backward()
    return torch.cat([p.grad.flatten() for p in m.denoiser.parameters()])


def test_mask_loss_into_denoiser_option():
    """With the option off, the denoiser's gradient is that of L_noise alone."""
    noise_only = _denoiser_grad(smooth_l1_weight=0.0, focal_weight=0.0)
    detached = _denoiser_grad(mask_loss_into_denoiser=False)
    joint = _denoiser_grad()
    torch.testing.assert_close(detached, noise_only)
    assert not torch.allclose(joint, noise_only)


@pytest.mark.parametrize("mode", ["norm_guided", "one_step_s", "one_step_b", "ddim", "ddpm"])
def test_predict_shapes_and_modes(mode):
    m = build_method("diffusionad", "ci", reconstruction=mode, iterative_t=20, ddim_steps=3).eval()
    pred = m.predict(_images(2))
    assert pred.anomaly_map.shape == (2, 64, 64)
    assert pred.score.shape == (2,)
    assert pred.reconstruction.shape == (2, 3, 64, 64)
    assert 0 <= float(pred.anomaly_map.min()) and float(pred.anomaly_map.max()) <= 1
    torch.testing.assert_close(pred.score, top_k_mean(pred.anomaly_map, m.config.top_k))


def test_predict_is_deterministic(method):
    method.eval()
    a, b = method.predict(_images(2)), method.predict(_images(2))
    torch.testing.assert_close(a.score, b.score)


def test_top_k_mean_closed_form():
    maps = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4)
    torch.testing.assert_close(top_k_mean(maps, 3), torch.tensor([14.0, 30.0]))


def test_config_errors():
    with pytest.raises(ConfigError, match="t_s < t_b"):
        diffusionad_config("ci", t_s=500, t_b=400)
    with pytest.raises(ConfigError, match="unknown DiffusionAD preset"):
        diffusionad_config("huge")
    with pytest.raises(ConfigError, match="unknown key"):
        diffusionad_config("ci", tau_split=3)


def test_checkpoint_round_trip_and_other_config_error(tmp_path):
    from dap.engine.train import TrainConfig, TrainData, train

    torch.manual_seed(0)
    m = build_method("diffusionad", "ci")
    data = TrainData((torch.rand(6, 3, 64, 64) * 255).to(torch.uint8))
    cfg = TrainConfig(steps=2, batch_size=2, val_every=0)
    train(m, data, cfg, tmp_path, progress=False)
    loaded = load_method(tmp_path / "last.pt")
    x = _images(2)
    torch.testing.assert_close(loaded.predict(x).score, m.eval().predict(x).score)
    other = build_method("diffusionad", "ci", w=0.5)
    with pytest.raises(ConfigError, match="another config.*w: checkpoint 1.0 vs now 0.5"):
        train(other, data, cfg, tmp_path, progress=False)


def test_zoo_export_and_load(tmp_path, monkeypatch):
    from dap import zoo

    m = build_method("diffusionad", "ci").eval()
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path)
    zoo.export(m, "tiny", {"method": "diffusionad", "data": "builtin:brick"}, tmp_path)
    assert zoo.available() == ["tiny"]
    assert zoo.info("tiny")["data"] == "builtin:brick"
    loaded = zoo.load("tiny")
    x = _images(2)
    torch.testing.assert_close(loaded.predict(x).anomaly_map, m.predict(x).anomaly_map,
                               atol=2e-2, rtol=0)  # float16 storage
    with pytest.raises(ConfigError, match="available"):
        zoo.load("nope")


def test_cli_train_evaluate_smoke(tmp_path, monkeypatch, capsys):
    from dap.cli import main

    monkeypatch.setenv("DAP_DATA", str(tmp_path / "data"))
    rc = main(["train", "--data", "builtin:brick", "--profile", "ci", "--steps", "2",
               "--train-set", "val_every=2", "batch_size=2", "--out", str(tmp_path / "run")])
    assert rc == 0
    assert (tmp_path / "run" / "best.pt").exists()
    rc = main(["evaluate", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--data",
               "builtin:brick", "--out", str(tmp_path / "ev"), "--no-fps"])
    assert rc == 0
    res = json.loads((tmp_path / "ev" / "results.json").read_text())["rows"][0]
    for k in ("image_auroc", "pixel_auroc", "aupro", "pixel_ap"):
        assert 0.0 <= res[k] <= 1.0
    assert (tmp_path / "ev" / "examples-builtin-brick.png").exists()


def test_cli_errors_are_one_line(tmp_path, capsys):
    from dap.cli import main

    assert main(["evaluate", "--checkpoint", str(tmp_path / "missing.pt"), "--data",
                 "builtin:brick"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--data", "brick"]) == 2
    assert "DATASET:CATEGORY" in capsys.readouterr().err
