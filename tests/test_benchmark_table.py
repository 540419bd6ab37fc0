"""The side-by-side table's orchestration (``dap.experiments.benchmark``) and the after-training
hook of ``train_run``, with training and evaluation replaced by recording fakes."""

from __future__ import annotations

import contextlib
import json
from types import SimpleNamespace

import pytest
import torch

import dap.experiments as E
from dap.config import ConfigError
from dap.methods import ValidationSet, build_method

VARIANTS = {
    "m": E.Variant(overrides={"a": 1}),
    "m shared": E.Variant(same_model_as="m", eval_overrides={"mode": "x"}),
    "m other": E.Variant(overrides={"a": 2}, train_overrides={"steps": 7}),
}


class FakeModel(SimpleNamespace):
    """What benchmark needs of a model: a config, ``using`` and ``extractor_name``."""

    extractor_name = ""

    @contextlib.contextmanager
    def using(self, **changes):
        old = self.config
        self.config = SimpleNamespace(**{**vars(old), **changes})
        try:
            yield self
        finally:
            self.config = old


@pytest.fixture
def fakes(monkeypatch):
    calls = {"train": [], "eval": []}

    def train_run(name, d, profile=None, overrides=None, train_overrides=None, out_dir=None,
                  progress=True):
        calls["train"].append((overrides, train_overrides, d))
        model = FakeModel(config=SimpleNamespace(mode="default"), tag=overrides["a"])
        return model, None, {"train_config": {"steps": (train_overrides or {}).get("steps", 40)}}

    def evaluate_run(method, d, batch_size=16, progress=True, label=""):
        calls["eval"].append((label, method.tag, method.config.mode, d))
        return {"method": label, "category": d, "image_auroc": 0.5 + 0.1 * method.tag}, None

    monkeypatch.setattr(E, "variants", lambda name: VARIANTS)
    monkeypatch.setattr(E, "train_run", train_run)
    monkeypatch.setattr(E, "evaluate_run", evaluate_run)
    return calls


def test_every_variant_with_shared_model_and_merged_train_overrides(fakes, tmp_path):
    rows = E.benchmark(["m"], ["d1", "d2"], tmp_path, train_overrides={"steps": 3, "lr": 0.1},
                       progress=False)
    assert [r["method"] for r in rows] == ["m", "m shared", "m other"]
    # two models per category: "m" and "m other"; the shared row reuses "m"'s model
    assert fakes["train"] == [({"a": 1}, {"steps": 3, "lr": 0.1}, "d1"),
                              ({"a": 1}, {"steps": 3, "lr": 0.1}, "d2"),
                              ({"a": 2}, {"steps": 7, "lr": 0.1}, "d1"),   # variant's own wins
                              ({"a": 2}, {"steps": 7, "lr": 0.1}, "d2")]
    assert ("m shared", 1, "x", "d1") in fakes["eval"]
    # eval_overrides are restored after the row
    assert all(mode == "default" for label, _, mode, _ in fakes["eval"] if label != "m shared")
    assert rows[1]["image_auroc"] == pytest.approx(0.6)
    prov = json.loads((tmp_path / "train" / "m other-d2" / "provenance.json").read_text())
    assert prov["train_config"]["steps"] == 7                # each trained model's provenance
    table = json.loads((tmp_path / "table.json").read_text())
    assert len(table["rows"] if isinstance(table, dict) else table) == 3


def test_variants_filter_trains_the_shared_model_but_reports_only_the_wanted_row(fakes, tmp_path):
    rows = E.benchmark(["m"], ["d1"], tmp_path, only=["m shared"], progress=False)
    assert [r["method"] for r in rows] == ["m shared"]
    assert fakes["train"] == [({"a": 1}, {}, "d1")]          # "m"'s model, not "m other"'s
    assert [e[0] for e in fakes["eval"]] == ["m shared"]


def test_unknown_variant_is_a_clear_error_before_any_work(fakes, tmp_path):
    with pytest.raises(ConfigError, match="unknown benchmark variant.*'nope'.*have"):
        E.benchmark(["m"], ["d1"], tmp_path, only=["nope"], progress=False)
    assert fakes["train"] == [] and fakes["eval"] == []


def test_glad_after_training_calibrates_on_the_validation_set(monkeypatch):
    method = build_method("glad", "ci")
    seen = {}

    def fit_thresholds(images, labels=None, batch_size=16):
        seen["images"], seen["labels"] = images, labels
        return {"normal_images": int((labels == 0).sum())}

    monkeypatch.setattr(method, "fit_thresholds", fit_thresholds)
    vset = ValidationSet(torch.zeros(3, 3, 8, 8), torch.zeros(3, 8, 8), torch.tensor([0, 1, 0]))
    train_images = torch.ones(5, 3, 8, 8)
    info = method.after_training(train_images, vset)
    assert seen["images"] is vset.image and seen["labels"] is vset.label
    assert info == {"normal_images": 2}
    assert method.after_training(train_images) is None       # no validation set: nothing to do


# --------------------------------------------------------------------------------------------
# The variant registry (dap.experiments.variants): the rows each method contributes
# --------------------------------------------------------------------------------------------
def test_ddad_rows_share_one_adapted_model():
    v = E.variants("ddad")
    assert list(v) == ["ddad", "ddad+DA"]
    assert v["ddad+DA"].same_model_as == "ddad"
    assert v["ddad"].overrides["domain_adaptation_steps"] == E.DDAD_DA_STEPS > 0
    assert v["ddad"].eval_overrides == {"use_adaptation": "off"}
    assert v["ddad+DA"].eval_overrides == {"use_adaptation": "require"}


def test_diffad_variants_build_and_train_past_the_segmenter_phase():
    from dap.config import from_dict
    from dap.engine.train import TrainConfig
    from dap.methods import method_config

    c = method_config("diffad", "ci")
    v = E.variants("diffad")
    assert set(v) == {"diffad", "diffad noisy-fixed", "diffad clean-cond",
                      "diffad interp (segmenter retrained)", "diffad no-interp (segmenter retrained)"}
    assert v["diffad"].train_overrides["steps"] > c.ae_steps + c.denoiser_steps
    for spec in v.values():
        method_config("diffad", "ci", **spec.overrides)
        from_dict(TrainConfig, spec.train_overrides or v["diffad"].train_overrides)
    assert v["diffad noisy-fixed"].same_model_as == "diffad"
    # the interpolated-channels rows are paired: the same frozen model, seeds, budget
    a, b = v["diffad interp (segmenter retrained)"], v["diffad no-interp (segmenter retrained)"]
    assert a.same_model_as == b.same_model_as == "diffad" and a.seeds == b.seeds and \
        len(a.seeds) >= 3 and a.train_overrides == b.train_overrides
    assert a.retrain_segmenter == {"interpolated_channels": True}
    assert b.retrain_segmenter == {"interpolated_channels": False}


def test_retrained_segmenter_rows_train_only_a_fresh_segmenter_per_seed(monkeypatch):
    base = build_method("diffad", "ci").eval()
    calls = []

    def fake_train(arm, data, cfg, out, device=None, progress=True):
        calls.append((cfg.seed, arm.config.segmenter.in_channels, arm.phase))
        assert arm.denoiser is not base.denoiser and arm.segmenter is not base.segmenter

    def fake_eval(method, d, batch_size=16, progress=True, label=""):
        return {"method": label, "category": d, "image_auroc": 0.5 + 0.1 * len(calls),
                "pixel_auroc": 0.5, "aupro": 0.5, "pixel_ap": 0.1}, None

    monkeypatch.setattr(E, "train", fake_train)
    monkeypatch.setattr(E, "evaluate_run", fake_eval)
    spec = E.variants("diffad")["diffad no-interp (segmenter retrained)"]
    row = E._retrained_segmenter_row(base, "builtin:brick", "x", spec, "ci", 16, False)
    assert calls == [(0, 6, "segmenter"), (1, 6, "segmenter"), (2, 6, "segmenter")]
    assert row["image_auroc"] == pytest.approx(0.7) and row["image_auroc_std"] > 0
    assert row["seeds"] == [0, 1, 2]


def test_every_variants_eval_overrides_are_accepted_by_using():
    from dap.methods import REGISTRY

    for name in REGISTRY:
        for label, spec in E.variants(name).items():
            base = E.variants(name).get(spec.same_model_as, spec) if spec.same_model_as else spec
            m = build_method(name, "ci", **base.overrides)
            with m.using(**spec.eval_overrides):
                pass
