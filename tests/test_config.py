import subprocess
import sys
from dataclasses import dataclass

import pytest

import dap
from dap.config import ConfigError, DiffusionConfig, from_dict, replace, to_dict
from dap.profiles import PROFILES, get_profile, profile


def test_version():
    assert isinstance(dap.__version__, str) and dap.__version__.count(".") == 2


def test_profiles(monkeypatch):
    for p in PROFILES:
        monkeypatch.setenv("DAP_PROFILE", p)
        assert get_profile() == p
        assert profile().name == p
    monkeypatch.setenv("DAP_PROFILE", "CI ")
    assert get_profile() == "ci"


def test_default_profile(monkeypatch):
    import torch

    monkeypatch.delenv("DAP_PROFILE", raising=False)
    assert get_profile() == ("full" if torch.cuda.is_available() else "cpu")


def test_bogus_profile_lists_valid_ones(monkeypatch):
    monkeypatch.setenv("DAP_PROFILE", "bogus")
    with pytest.raises(ConfigError, match="ci, cpu, full"):
        get_profile()


def test_bogus_profile_on_the_command_line():
    """The issue's acceptance check: a clear error listing the valid profiles."""
    code = "from dap.profiles import get_profile; get_profile()"
    r = subprocess.run([sys.executable, "-c", code], env={"DAP_PROFILE": "bogus", "PATH": ""},
                       capture_output=True, text=True)
    assert r.returncode != 0
    assert "Valid profiles: ci, cpu, full" in r.stderr


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['num_timesteps'\].*num_train_timesteps"):
        from_dict(DiffusionConfig, {"num_timesteps": 10})


def test_from_dict_checks_types():
    with pytest.raises(ConfigError, match="expected an integer"):
        from_dict(DiffusionConfig, {"num_train_timesteps": "1000"})
    with pytest.raises(ConfigError, match="not one of"):
        from_dict(DiffusionConfig, {"beta_schedule": "quadratic"})
    cfg = from_dict(DiffusionConfig, {"beta_start": 1e-4, "beta_end": 0.02})
    assert cfg.beta_schedule == "linear"


@dataclass
class _Inner:
    a: int = 1
    sizes: tuple[int, ...] = (1, 2)


@dataclass
class _Outer:
    inner: _Inner
    name: str = "x"
    scale: float | None = None


def test_nested_and_round_trip():
    cfg = from_dict(_Outer, {"inner": {"a": 3, "sizes": [4, 5]}, "scale": 2})
    assert cfg.inner.sizes == (4, 5) and cfg.scale == 2.0
    assert from_dict(_Outer, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match=r"_Outer.inner: unknown key"):
        from_dict(_Outer, {"inner": {"b": 1}})
    assert replace(cfg, name="y").name == "y"
    with pytest.raises(ConfigError):
        replace(cfg, nme="y")


def test_data_root(monkeypatch, tmp_path):
    from pathlib import Path

    from dap.config import data_root

    monkeypatch.setenv("DAP_DATA", str(tmp_path))
    assert data_root() == str(tmp_path)
    monkeypatch.delenv("DAP_DATA")
    monkeypatch.chdir(tmp_path)  # the default does not depend on the working directory
    assert Path(data_root()) == Path(__file__).resolve().parents[1] / "data"


def test_official_key_map_targets_exist():
    import dataclasses

    from dap.config import OFFICIAL_KEY_MAP
    from dap.methods.diffusionad import DiffusionADConfig
    from dap.models.denoiser import DenoiserConfig
    from dap.engine.train import TrainConfig

    classes = {c.__name__: c for c in (DiffusionConfig, DenoiserConfig, TrainConfig,
                                       DiffusionADConfig)}
    for official, target in OFFICIAL_KEY_MAP.items():
        if target is None:
            continue
        cls, key = target.split(".")
        assert key in {f.name for f in dataclasses.fields(classes[cls])}, (official, target)
