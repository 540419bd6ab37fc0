"""Shipped weights are float16 only where rounding moves no validation metric by > 0.1 point."""

import json

import pytest
import torch

from dap import zoo
from dap.engine.checkpoint import load_checkpoint
from dap.methods import build_method


def _first(m):
    return next(m.parameters()).detach().double().flatten()[:50]


def _sensitive_score(scale, centre=0.0):
    """A stand-in validation scorer whose metric follows the weights ``scale``-fold."""
    def score(m):
        # in (0.1, 0.9): a [0, 1] metric
        return {"val_image_auroc": float(0.5 + 0.4 * torch.tanh(scale * (_first(m).sum() - centre))),
                "val_f1_threshold": 3.0}   # not a [0, 1] metric: ignored
    return score


@pytest.fixture
def method():
    torch.manual_seed(0)
    return build_method("diffusionad", "ci").eval()


def test_check_measures_the_rounding(method):
    score = _sensitive_score(1.0)
    check = zoo.half_precision_check(method, score)
    w = next(method.parameters()).detach().double().flatten()[:50]
    metric = lambda v: 0.5 + 0.4 * torch.tanh(v.sum())   # noqa: E731
    expected = abs(float(metric(w.half().double()) - metric(w))) * 100   # in points
    assert check["max_change_points"] == pytest.approx(expected, rel=1e-6)
    assert check["fp16_ok"] == (expected <= zoo.FP16_LIMIT_POINTS)
    # the method itself is untouched
    assert torch.equal(next(method.parameters()).detach().double().flatten()[:50], w)


def test_export_keeps_float32_when_float16_moves_a_metric(method, tmp_path):
    loud = _sensitive_score(1e4, centre=float(_first(method).sum()))
    zoo.export(method, "loud", {"method": "diffusionad"}, tmp_path, score=loud)
    info = json.loads((tmp_path / "loud.json").read_text())
    assert info["weights_dtype"] == "float32" and not info["fp16_check"]["fp16_ok"]
    state = load_checkpoint(tmp_path / "loud.pt")["model"]
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())


def test_export_uses_float16_when_metrics_hold(method, tmp_path):
    zoo.export(method, "quiet", {"method": "diffusionad"}, tmp_path, score=_sensitive_score(0.0))
    info = json.loads((tmp_path / "quiet.json").read_text())
    assert info["weights_dtype"] == "float16" and info["fp16_check"]["max_change_points"] == 0
    state = load_checkpoint(tmp_path / "quiet.pt")["model"]
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())


CHECKED = [n for n in zoo.available() if "fp16_check" in zoo.info(n)]


@pytest.mark.parametrize("name", CHECKED)
def test_shipped_float16_models_passed_their_check(name):
    info = zoo.info(name)
    check = info["fp16_check"]
    dtypes = {v.dtype for v in load_checkpoint(zoo.ZOO_DIR / f"{name}.pt")["model"].values()
              if v.is_floating_point()}
    if info["weights_dtype"] == "float16":
        assert check["max_change_points"] <= zoo.FP16_LIMIT_POINTS and dtypes == {torch.float16}
    else:
        assert dtypes == {torch.float32}


def test_everything_shipped_stays_under_40_mb():
    total = sum(p.stat().st_size for p in zoo.ZOO_DIR.iterdir() if p.is_file())
    assert total < 40e6, f"dap/checkpoints holds {total / 1e6:.1f} MB"


def test_cli_export_records_the_check(tmp_path, monkeypatch, capsys):
    from dap.cli import main

    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path / "zoo")
    (tmp_path / "zoo").mkdir()
    rc = main(["train", "--data", "builtin:brick", "--profile", "ci", "--steps", "1",
               "--out", str(tmp_path / "run"), "--export", "mine"])
    assert rc == 0, capsys.readouterr().err
    info = json.loads((tmp_path / "zoo" / "mine.json").read_text())
    check = info["fp16_check"]
    assert set(check["metrics_fp32"]) >= {"val_image_auroc", "val_pixel_auroc"}
    assert info["weights_dtype"] == ("float16" if check["fp16_ok"] else "float32")


def test_exported_weights_are_compressed_and_load_exactly(method, tmp_path):
    from dap.engine.checkpoint import model_payload, save_checkpoint

    pt, _ = zoo.export(method, "packed", {"method": "diffusionad"}, tmp_path)
    assert pt.read_bytes()[:6] == b"\xfd7zXZ\x00"                  # an xz stream
    plain = save_checkpoint(tmp_path / "plain.pt", model_payload(method, half=True))
    assert pt.stat().st_size < plain.stat().st_size
    a, b = load_checkpoint(pt)["model"], load_checkpoint(plain)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
