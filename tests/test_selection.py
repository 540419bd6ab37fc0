"""Selection scores like the test: the checkpoint is chosen by the calibrated ``predict``.

For every method, the best validation score recorded during training must be exactly what the
returned (selected, after-training) model scores on the same validation set with the same
``predict`` the test uses — i.e. calibration happened inside validation, not only afterwards.
"""

from __future__ import annotations

import pytest

from dap.data.spec import datasets, parse_data, stack
from dap.engine.select import synthetic_validation_set, validate_on
from dap.experiments import train_run


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ddad", "glad", "diffusionad"])
def test_selected_checkpoint_scores_by_the_test_rule(method, tmp_path, monkeypatch):
    monkeypatch.setenv("DAP_DATA", str(tmp_path / "data"))
    m, result, prov = train_run(method, "builtin:brick", profile="ci", out_dir=tmp_path / "run",
                                train_overrides={"steps": 2, "val_every": 1, "batch_size": 2},
                                progress=False)
    assert len(result.validations) == 2 and prov["selected"] == "validation"
    _, val_ds, _ = datasets(parse_data("builtin:brick", m.image_size), m.image_size)
    vset = synthetic_validation_set(m.synthesizer, stack(val_ds, "image"))
    again = validate_on(m, vset)
    assert again["val_mean"] == pytest.approx(result.best["val_mean"], abs=1e-6)
    if method == "glad":
        assert m.calibrated                       # its thresholds came from validation
    if method == "ddad":
        assert bool(m.pixel_scale.isfinite())     # its pixel scale came from training images
