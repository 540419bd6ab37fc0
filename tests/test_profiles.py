"""The one profile table: every profile's preset exists for every method and sizes agree."""

import pytest

from dap.methods import PRESETS, REGISTRY, build_method
from dap.models import DENOISER_PRESETS, SEGMENTER_PRESETS, denoiser_config
from dap.profiles import PROFILES, TABLE, profile


def test_table_covers_every_profile_and_presets_line_up():
    assert set(TABLE) == set(PROFILES)
    assert set(DENOISER_PRESETS) == set(SEGMENTER_PRESETS) == set(PRESETS)
    for name, prof in TABLE.items():
        assert prof.name == name and prof.preset in PRESETS
        # each preset's image size is the profile's (ci 64, cpu 128, full 256)
        assert denoiser_config(prof.preset).image_size == prof.image_size
        assert prof.train_defaults() == {"steps": prof.train_steps,
                                         "batch_size": prof.batch_size,
                                         "val_every": prof.val_every}


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_every_method_builds_at_the_ci_profile_size(method):
    m = build_method(method, profile("ci").preset)
    assert m.image_size == profile("ci").image_size
