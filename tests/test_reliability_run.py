"""Reliability of the run layer (issue #15): reproducible runs, resumes that cannot mix data,
one strict parser for every setting, every bad argument refused before work starts, clear
one-line errors instead of tracebacks, and ``--export`` confined to zoo names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dap.cli import main
from dap.config import ConfigError
from dap.engine.checkpoint import load_checkpoint, save_checkpoint
from dap.engine.train import TrainConfig, TrainData, TrainingDiverged, train
from dap.methods import build_method
from dap.methods.base import AnomalyMethod, Prediction
from dap.models import count_parameters

REPO = Path(__file__).resolve().parents[1]


class Tiny(AnomalyMethod):
    name = "tiny"

    def __init__(self, nan_at: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.nan_at, self.calls = nan_at, 0

    def config_dict(self):
        return {}

    def forward(self, batch, generator=None):
        self.calls += 1
        loss = ((self.conv(batch.images) - batch.images) ** 2).mean()
        if self.nan_at is not None and self.calls > self.nan_at:
            loss = loss * float("nan")
        return {"loss": loss}

    @torch.no_grad()
    def predict(self, images):
        m = (self.conv(images) - images).abs().mean(1)
        return Prediction(m, m.flatten(1).amax(1), images)


def _data(n=6, size=8):
    g = torch.Generator().manual_seed(0)
    return TrainData(torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8))


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "dap", *args], capture_output=True, text=True,
                          cwd=REPO, env=e, timeout=600)


# -- 3. the same command and seed give the same losses --------------------------------------
@pytest.mark.slow
def test_two_fresh_processes_give_the_same_losses(tmp_path):
    env = {"DAP_DATA": str(tmp_path / "data")}
    losses = []
    for run in ("a", "b"):
        r = _run("train", "--data", "builtin:brick", "--profile", "ci", "--steps", "3",
                 "--train-set", "val_every=0", "batch_size=2", "select_metric=last",
                 "--out", str(tmp_path / run), env=env)
        assert r.returncode == 0, r.stderr
        hist = json.loads((tmp_path / run / "history.json").read_text())["history"]
        losses.append([h["loss"] for h in hist])
    assert len(losses[0]) == 3 and losses[0] == losses[1]


# -- 4. resuming into another dataset ----------------------------------------------------------
def test_resume_on_other_data_is_refused_naming_both(tmp_path):
    cfg = TrainConfig(steps=4, batch_size=2, val_every=0, select_metric="last")
    train(Tiny(), _data(), cfg, tmp_path, progress=False, stop_after=2,
          extra={"data": "builtin:brick"})
    with pytest.raises(ConfigError, match="builtin:brick, not on builtin:grass"):
        train(Tiny(), _data(), cfg, tmp_path, progress=False, extra={"data": "builtin:grass"})
    assert load_checkpoint(tmp_path / "last.pt")["extra"]["data"] == "builtin:brick"


# -- 5. one strict parser for every TrainConfig ------------------------------------------------
@pytest.mark.parametrize("setting,message", [
    ("amp=bogus", "amp: 'bogus' is not one of"),
    ("lr_schedule=cosnie", "lr_schedule: 'cosnie' is not one of"),
    ("log_every=0", "log_every must be >= 1"),
    ("stepz=3", "unknown key"),
    ("steps=abc", "steps: expected an integer"),
    ("select_metric=bogus", "select_metric 'bogus' is not a validation metric"),
])
def test_bad_train_settings_are_one_line_errors_before_work(tmp_path, capsys, setting, message):
    out = tmp_path / "run"
    rc = main(["train", "--data", "builtin:brick", "--profile", "ci", "--train-set", setting,
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1
    assert not out.exists()                      # refused before anything was written


def test_trainconfig_built_directly_is_checked_too():
    with pytest.raises(ConfigError, match="amp"):
        TrainConfig(amp="bogus")
    with pytest.raises(ConfigError, match="val_every"):
        TrainConfig(val_every=-1)


# -- 6. the output folder and NaN losses --------------------------------------------------------
def test_out_that_is_a_file_or_cannot_be_made_is_refused_first(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out, message in ((blocker, "is a file"), (blocker / "sub", "cannot be written")):
        rc = main(["train", "--data", "builtin:brick", "--profile", "ci", "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and err.count("\n") == 1
    rc = main(["evaluate", "--model", "diffusionad-builtin-brick", "--data", "builtin:brick",
               "--out", str(blocker)])
    assert rc == 2 and "is a file" in capsys.readouterr().err


def test_nan_loss_keeps_the_last_good_state_and_says_so(tmp_path):
    cfg = TrainConfig(steps=6, batch_size=2, val_every=0, select_metric="last")
    method = Tiny(nan_at=3)
    with pytest.raises(TrainingDiverged, match=r"at step 3; the last good state \(after 3 steps\)"):
        train(method, _data(), cfg, tmp_path, progress=False)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["step"] == 3 and len(ckpt["history"]) == 3
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


# -- 7. a partial nested --set merges onto the preset --------------------------------------------
def test_partial_nested_override_keeps_the_preset():
    small = build_method("diffusionad", "ci")
    tuned = build_method("diffusionad", "ci", denoiser={"dropout": 0.1})
    assert tuned.config.denoiser.dropout == 0.1
    assert tuned.config.denoiser.num_channels == small.config.denoiser.num_channels
    assert count_parameters(tuned) == count_parameters(small) < 5e6
    diffad = build_method("diffad", "ci", segmenter={"base_width": 8})
    assert diffad.config.segmenter.in_channels == 9 and diffad.config.segmenter.base_width == 8


# -- 11. clear messages instead of tracebacks --------------------------------------------------
def test_unknown_models_and_modes_are_one_line_errors(tmp_path, capsys):
    assert main(["evaluate", "--model", "bogus", "--data", "builtin:brick",
                 "--out", str(tmp_path / "e")]) == 2
    assert "no shipped model 'bogus'" in capsys.readouterr().err
    assert main(["ablation", "--model", "nosuch", "--out", str(tmp_path / "a")]) == 2
    assert "no shipped model 'nosuch'" in capsys.readouterr().err
    for argv in (["ablation", "--modes", "bogus"], ["evaluate", "--model", "x", "--data", "d",
                                                   "--batch-size", "0"],
                 ["evaluate", "--model", "x", "--data", "d", "--profile", "ci"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'bogus'" in err and "must be >= 1" in err
    assert "unrecognized arguments: --profile" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_device_without_cuda(tmp_path, capsys):
    assert main(["evaluate", "--model", "diffusionad-builtin-brick", "--data", "builtin:brick",
                 "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_damaged_checkpoints_are_named(tmp_path, capsys):
    m = build_method("diffusionad", "ci")
    good = {"format": "dap-checkpoint-v1", "method": "diffusionad",
            "method_config": m.config_dict(), "model": m.state_dict()}
    no_model = {k: v for k, v in good.items() if k != "model"}
    wrong = {**good, "model": build_method("diffusionad", "cpu").state_dict()}
    for name, payload, message in (("a.pt", no_model, "lacks ['model']"),
                                   ("b.pt", wrong, "do not fit its own diffusionad config")):
        save_checkpoint(tmp_path / name, payload)
        assert main(["evaluate", "--checkpoint", str(tmp_path / name), "--data", "builtin:brick",
                     "--out", str(tmp_path / "ev")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


# -- 13. --export takes names, never paths, and overwrites only with --force ---------------------
def test_export_names_not_paths_and_no_silent_overwrite(tmp_path, capsys, monkeypatch):
    from dap import zoo

    for bad in ("../../x", "/tmp/x", "a/b", ".hidden", "Upper"):
        rc = main(["train", "--data", "builtin:brick", "--profile", "ci", "--export", bad,
                   "--out", str(tmp_path / "run")])
        assert rc == 2 and "is not a name" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()       # refused before training
    rc = main(["train", "--data", "builtin:brick", "--profile", "ci", "--export",
               "diffusionad-builtin-brick", "--out", str(tmp_path / "run")])
    assert rc == 2 and "--force" in capsys.readouterr().err
    m = build_method("diffusionad", "ci")
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path / "zoo")
    zoo.export(m, "mine", {"data": "builtin:brick"}, tmp_path / "zoo")
    with pytest.raises(ConfigError, match="exists already"):
        zoo.export(m, "mine", {"data": "builtin:brick"}, tmp_path / "zoo")
    zoo.export(m, "mine", {"data": "builtin:grass"}, tmp_path / "zoo", force=True)
    assert zoo.info("mine")["data"] == "builtin:grass"


# -- 10. a run killed while it writes a checkpoint leaves nothing behind for long -----------------
CHILD = r"""
import sys, time, torch
from dap.engine.checkpoint import save_checkpoint
import dap.engine.checkpoint as C

real_save = torch.save
def slow_save(obj, f):               # write the temp file, then hang before the rename
    real_save(obj, f)
    print("written", flush=True)
    time.sleep(60)
C.torch.save = slow_save
save_checkpoint(sys.argv[1], {"format": "x", "big": torch.zeros(1000)})
"""


def test_sigkilled_checkpoint_write_is_cleaned_by_the_next_run(tmp_path):
    import signal

    run = tmp_path / "run"
    run.mkdir()
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(run / "last.pt")],
                             stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert child.stdout.readline().strip() == "written"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    leftovers = list(run.glob(".last.pt.tmp-*"))
    assert len(leftovers) == 1 and not (run / "last.pt").exists()
    cfg = TrainConfig(steps=2, batch_size=2, val_every=0, select_metric="last")
    train(Tiny(), _data(), cfg, run, progress=False)
    assert not list(run.glob(".last.pt.tmp-*")) and (run / "last.pt").exists()
