"""tools/results_tables.py renders the benchmark results files (speed, memory, bf16-vs-fp32,
demo-paths) from their numbers, with their provenance, and leaves metrics files to
dap.report.published_table."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MADE_BY = {"command": "speed.py --threads 1", "dap_version": "0.1.0", "git_commit": "abcdef123456",
           "device": "CPU (x86_64, 1 threads)", "utc": "2026-11-30T17:00:00+00:00"}


@pytest.fixture(scope="module")
def tables():
    spec = importlib.util.spec_from_file_location("results_tables", ROOT / "tools" / "results_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write(tmp_path, name, data):
    (tmp_path / f"{name}.json").write_text(json.dumps({**data, "made_by": MADE_BY}))


def test_speed_table(tables, tmp_path):
    results = [{"part": "train", "size": 64, "img_per_s": {"plain": 6.9, "fast": 14.2},
                "ratio": {"fast": 2.057}},
               {"part": "predict", "size": 128, "img_per_s": {"plain": 6.4, "fast": 16.1},
                "ratio": {"fast": 2.516}},
               {"part": "compile", "size": 64, "seconds": 95.0, "compiled": True}]
    _write(tmp_path, "speed", {"kind": "speed", "batch": 8, "reps": 6, "dtype": "torch.bfloat16",
                               "threads": {"num_threads": 1}, "results": results})
    out = tables.table("speed", tmp_path)
    assert "| 64 px | joint training step | 6.9 | 14.2 | **2.06x** | >= 2x |" in out
    assert "| 128 px | inference (norm-guided x0_g + segmenter) | 6.4 | 16.1 | **2.52x** |" in out
    assert "torch.compile at 64 px: 95 s" in out
    assert "written by `speed.py --threads 1`" in out and "commit abcdef1234" in out


def test_memory_table(tables, tmp_path):
    rows = [{"config": "fp32", "batch": 1, "peak_kb": 6 * 2**20, "seconds": 20.0},
            {"config": "fp32", "batch": 2, "peak_kb": 11 * 2**20, "seconds": 40.0},
            {"config": "fp32", "batch": 4, "killed": True, "rss_kb": 10 * 2**20}]
    fits = {"fp32": {"a_gb": 1.0, "b_gb_per_image": 5.0, "predicted_gb": 81.0}}
    _write(tmp_path, "memory", {"kind": "memory", "preset": "paper", "predict_batch": 16,
                                "rows": rows, "fits": fits})
    out = tables.table("memory", tmp_path)
    assert "| fp32 | 6.00 | 11.00 | killed | 1.00 + 5.00 x batch | **81.0** | 20 |" in out


def test_bf16_table(tables, tmp_path):
    arm = lambda v, t, loss: {"validations": [{"step": 100, "val_image_auroc": v, "val_mean": v}],  # noqa: E731
                              "test": {"image_auroc": t}, "final_loss": loss, "seconds": 60.0}
    _write(tmp_path, "bf16-vs-fp32", {"kind": "bf16-vs-fp32", "data": "builtin:brick", "steps": 100,
                                      "seed": 0, "arms": {"off": arm(0.80, 0.90, 0.1),
                                                          "bf16": arm(0.82, 0.89, 0.1)}})
    out = tables.table("bf16-vs-fp32", tmp_path)
    assert "| validation, step 100 | image auroc | 80.0 | 82.0 | +2.0 |" in out
    assert "| test, step 100 | image auroc | 90.0 | 89.0 | -1.0 |" in out


def test_demo_paths_table(tables, tmp_path):
    m = {"model": "m", "plain": {"fps_batch1": 8.0}, "fast": {"fps_batch1": 16.0},
         "metrics": {"image_auroc": {"plain_mean": 0.9, "fast_mean": 0.91, "change": 0.01,
                                     "noise": 0.005, "within_noise": False}}}
    _write(tmp_path, "demo-paths", {"kind": "demo-paths", "seeds": [0, 1], "models": [m]})
    out = tables.table("demo-paths", tmp_path)
    assert "| m | image auroc | 90.00 | 91.00 | +1.00 | 0.50 | **no** |" in out
    assert "| m | FPS at batch 1 | 8.0 | 16.0 | 2.00x |" in out


def test_demo_paths_without_inference_noise():
    """A method evaluated once (no inference seed, e.g. DRAEM): no seed range, no verdict."""
    spec = importlib.util.spec_from_file_location("demo_paths", ROOT / "benchmarks" /
                                                  "demo_paths.py")
    demo_paths = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo_paths)
    one = {k: 0.5 for k in demo_paths.METRICS}
    cmp = demo_paths.compare({"per_seed": [one]}, {"per_seed": [{**one, "aupro": 0.52}]})
    assert cmp["aupro"]["noise"] is None and cmp["aupro"]["within_noise"] is None
    assert abs(cmp["aupro"]["change"] - 0.02) < 1e-12
    two = demo_paths.compare({"per_seed": [one, {**one, "aupro": 0.54}]}, {"per_seed": [one]})
    assert abs(two["aupro"]["noise"] - 0.04) < 1e-12 and two["aupro"]["within_noise"] is True


def test_metrics_files_and_missing_files_keep_the_published_table(tables, tmp_path):
    from dap.report import published_table

    assert tables.table("nothing", tmp_path) == published_table("nothing", tmp_path)
    (tmp_path / "demo.json").write_text(json.dumps({"rows": [{"method": "a", "image_auroc": 0.5}],
                                                    "made_by": MADE_BY}))
    assert tables.table("demo", tmp_path) == published_table("demo", tmp_path)


def test_zoo_validation_curves_are_read_from_the_runs_and_rendered(tables, tmp_path):
    spec = importlib.util.spec_from_file_location("zoo_curves", ROOT / "tools" / "zoo_curves.py")
    curves = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(curves)
    run = tmp_path / "zoo" / "diffusionad-grass"
    run.mkdir(parents=True)
    (run / "history.json").write_text(json.dumps({
        "history": [], "best": {"step": 500},
        "validations": [{"step": 250, "val_mean": 0.5}, {"step": 500, "val_mean": 0.75}]}))
    out = tmp_path / "zoo-validation.json"
    assert curves.main(["--runs", str(tmp_path / "zoo"), "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["kind"] == "zoo-validation" and len(data["rows"]) == 1
    assert "| diffusionad | grass | 50.0 | 75.0 | 500 |" in tables.RENDERERS["zoo-validation"](data)
    # nothing trained: a clear error, no file
    assert curves.main(["--runs", str(tmp_path / "none"), "--out", str(tmp_path / "x.json")]) == 1
    assert not (tmp_path / "x.json").exists()


def test_gpu_table(tables, tmp_path):
    train = [{"config": "fp32", "batch": 16, "img_per_s": 27.0, "peak_gb": 86.0, "warmup_s": 3.0,
              "compiled": None},
             {"config": "bf16+ckpt", "batch": 16, "img_per_s": 30.0, "peak_gb": 18.6,
              "warmup_s": 1.0, "compiled": None},
             {"config": "bf16+ckpt+compile", "batch": 16, "img_per_s": 20.0, "peak_gb": 21.0,
              "warmup_s": 50.0, "compiled": False},
             {"config": "bf16+compile", "batch": 16, "oom": True}]
    infer = [{"path": "fast", "fps_batch1": 27.9, "fps_batch16": 109.2}]
    _write(tmp_path, "gpu", {"kind": "gpu", "device": "NVIDIA H200", "preset": "paper",
                             "batch": 16, "infer_batch": 16, "warmup": 2, "reps": 5,
                             "torch": "2.11", "train": train, "inference": infer})
    out = tables.table("gpu", tmp_path)
    assert "| `bf16+ckpt` | bf16 fast path + checkpointing | 30.0 | 1.11x | 18.6 |  |" in out
    assert "| fell back to eager |" in out and "| `bf16+compile` |" in out
    assert "out of memory" in out
    assert "| fast | 27.9 | 109.2 |" in out and "NVIDIA H200" in out
