"""The main job: `python -m dap demo` evaluates the shipped models and writes a report."""

import json

import pytest

from dap import zoo


@pytest.mark.skipif(not zoo.available(), reason="no shipped models in dap/checkpoints")
def test_demo_writes_report(tmp_path, monkeypatch):
    from dap.cli import main

    monkeypatch.setenv("DAP_DATA", str(tmp_path / "data"))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    data = json.loads((out / "results.json").read_text())
    assert data["kind"] == "demo"
    rows = data["rows"]
    methods = {zoo.info(n)["method"] for n in zoo.available()}
    assert len(rows) == len(zoo.available()) + len(methods)  # one per model + a mean per method
    models = [r for r in rows if r["category"] != "mean"]
    assert sorted(r["model"] for r in models) == sorted(zoo.available())
    for row in models:
        for key in ("image_auroc", "pixel_auroc", "aupro", "pixel_ap", "fps_batch1"):
            assert row[key] is not None
        assert ("selected on last step" if row["method"] == "diffad"
                else "selected on validation") in row["source"]
        if row["method"] == "diffusionad":  # reconstruction quality on the normal test images
            assert row["psnr_db"] > 0 and row["channel_spread"] >= 0
    means = {r["method"]: r for r in rows if r["category"] == "mean"}
    assert set(means) == methods
    for method in methods:
        own = [r["image_auroc"] for r in models if r["method"] == method]
        assert means[method]["image_auroc"] == pytest.approx(sum(own) / len(own))
    assert "validation split" in report and "side by side" in report and "goals" in report
    for name in zoo.available():
        info = zoo.info(name)
        assert (out / info["method"] / f"examples-{info['data'].replace(':', '-')}.png").exists()


def test_shipped_models_have_provenance():
    total = 0
    for name in zoo.available():
        info = zoo.info(name)
        for key in ("command", "method_config", "git_commit", "seconds", "best_validation",
                    "selected", "data"):
            assert key in info, f"{name}.json lacks {key}"
        assert info["command"].startswith("python -m dap train")
        # selected on validation; DiffAD keeps its last step by design (validation before its
        # segmenter phase cannot select anything: dap.experiments._diffad_ci_training)
        expected = "last step" if info["method"] == "diffad" else "validation"
        assert info["selected"] == expected, name
        total += (zoo.ZOO_DIR / f"{name}.pt").stat().st_size
    assert total <= 40e6, f"shipped weights take {total / 1e6:.1f} MB (limit 40 MB)"
