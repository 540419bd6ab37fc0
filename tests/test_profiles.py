"""The one profile table: every profile's preset exists for every method and sizes agree."""

import pytest

from dap.methods import PRESETS, REGISTRY, build_method
from dap.models import DENOISER_PRESETS, SEGMENTER_PRESETS, denoiser_config
from dap.profiles import COLAB_SIZING, PROFILES, TABLE, default_profile, get_profile, profile


def test_table_covers_every_profile_and_presets_line_up():
    assert set(TABLE) == set(PROFILES)
    assert set(DENOISER_PRESETS) == set(SEGMENTER_PRESETS) == set(PRESETS)
    for name, prof in TABLE.items():
        assert prof.name == name and prof.preset in PRESETS and prof.notebook_preset in PRESETS
        # each preset's image size is the profile's (ci 64, cpu 128, full 256)
        assert denoiser_config(prof.preset).image_size == prof.image_size
        assert prof.train_defaults() == {"steps": prof.train_steps,
                                         "batch_size": prof.batch_size,
                                         "val_every": prof.val_every}


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_every_method_builds_at_the_ci_profile_size(method):
    m = build_method(method, profile("ci").preset)
    assert m.image_size == profile("ci").image_size


@pytest.mark.parametrize("on_colab,cuda,expected", [
    (True, True, "colab"), (False, True, "full"), (True, False, "cpu"), (False, False, "cpu")])
def test_default_profile_rule(on_colab, cuda, expected):
    assert default_profile(on_colab=on_colab, cuda=cuda) == expected


def test_default_profile_reads_colab_from_sys_modules(monkeypatch):
    import sys
    import types

    import torch

    monkeypatch.delenv("DAP_PROFILE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert get_profile() == "colab"
    monkeypatch.delitem(sys.modules, "google.colab")
    assert get_profile() == "full"


def test_colab_profile_fits_a_short_session():
    """The colab row is the paper's model, smaller in batch and steps than full (the sizing
    is an estimate written down in COLAB_SIZING)."""
    colab, full = TABLE["colab"], TABLE["full"]
    assert colab.preset == full.preset == "paper" and colab.image_size == 256
    assert colab.batch_size < full.batch_size and colab.notebook_train_steps < full.train_steps
    assert "estimate" in COLAB_SIZING
