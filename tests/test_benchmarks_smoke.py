"""Smoke tests: the benchmark scripts run end to end at their ``--quick`` size."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_quick(script: str, timeout: int = 600, flags: tuple[str, ...] = ("--quick",)) -> str:
    """Run ``benchmarks/<script> --quick``; return its output after checking the exit status."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *flags],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    return out


def test_metrics_benchmark_quick():
    out = run_quick("metrics.py")
    for line in ("[1] all pixel metrics:", "[2] AUPRO:", "[3] peak extra memory", "[4] CUDA"):
        assert line in out, out
    assert out.count("-> ratio") >= 2, out
    assert "-> OK" in out, out  # dap, sklearn and the reference agree to 1e-6


def test_diffusionad_benchmark_quick():
    out = run_quick("diffusionad.py")
    for line in ("[1] inference per batch", "[2] training throughput", "[3] norm-guided inference"):
        assert line in out, out
    assert "-> ratio" in out, out


def test_synthesis_benchmark_quick():
    out = run_quick("synthesis.py")
    assert re.search(r"ratio dap/numpy \(cpu\): \d+(\.\d+)?x", out), out
    assert "numpy per-sample:" in out and "dap batched (cpu, 1 thread):" in out, out
    assert "cuda:" in out or "(cuda," in out, out  # the GPU figure, or its skip line


def test_cpu_kernels_benchmark_quick():
    out = run_quick("cpu_kernels.py")
    assert "--- preset 'ci'" in out and "picked (infer / train)" in out, out
    assert re.search(r"infer: picked routes [\d.]+ ms vs always native [\d.]+ ms -> ratio", out), out
    assert re.search(r"train: picked routes [\d.]+ ms vs always float32", out), out
    assert "time-embedding add" in out, out


def test_speed_benchmark_quick(tmp_path):
    out = run_quick("speed.py", flags=("--quick", "--out", str(tmp_path / "speed.json")))
    for line in ("[1] denoiser fwd+bwd, 64 px", "[2] training step", "[3] inference"):
        assert line in out, out
    assert out.count("-> ratio fast/plain") == 3, out
    assert "OMP_WAIT_POLICY=PASSIVE" in out, out
    import json

    data = json.loads((tmp_path / "speed.json").read_text())
    results = data["results"]
    assert len(results) == 3 and all("fast" in r["ratio"] for r in results)
    assert data["kind"] == "speed" and data["made_by"]["command"].startswith("speed.py")
    assert "| 64 px | joint training step |" in _render(tmp_path / "speed.json")


def test_gpu_benchmark_tiny(tmp_path):
    out = run_quick("gpu.py", flags=("--tiny", "--out", str(tmp_path / "gpu.json")))
    for line in ("[1] training, batch 2", "[2] inference", "bf16+ckpt", "plain fp32"):
        assert line in out, out
    import json

    res = json.loads((tmp_path / "gpu.json").read_text())
    assert {r["config"] for r in res["train"]} == {"fp32", "fp32+ckpt", "bf16", "bf16+ckpt"}
    assert all(r["img_per_s"] > 0 for r in res["train"])
    assert all(r["fps_batch1"] > 0 for r in res["inference"])


def test_memory_benchmark_quick(tmp_path):
    out = run_quick("memory.py", flags=("--quick", "--out", str(tmp_path / "memory.json")))
    assert "fit bf16+ckpt: peak =" in out and "fit fp32: peak =" in out, out
    import json

    res = json.loads((tmp_path / "memory.json").read_text())
    assert len(res["rows"]) == 4 and all(r["peak_kb"] > 0 for r in res["rows"])
    assert set(res["fits"]) == {"bf16+ckpt", "fp32"}
    assert res["kind"] == "memory" and "| bf16+ckpt |" in _render(tmp_path / "memory.json")


def _render(kind_file: Path) -> str:
    """The README block tools/results_tables.py makes of a results file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("results_tables",
                                                  ROOT / "tools" / "results_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.table(kind_file.stem, kind_file.parent)


def test_demo_paths_quick(tmp_path):
    out = run_quick("demo_paths.py", flags=("--quick", "--seeds", "0",
                                            "--out", str(tmp_path / "demo-paths.json")))
    assert "image_auroc  plain" in out and "change" in out, out
    import json

    res = json.loads((tmp_path / "demo-paths.json").read_text())
    assert res["kind"] == "demo-paths" and res["made_by"]["command"].startswith("demo_paths.py")
    assert "| image auroc |" in _render(tmp_path / "demo-paths.json")


def test_bf16_vs_fp32_quick(tmp_path):
    out = run_quick("bf16_vs_fp32.py", flags=("--quick", "--out", str(tmp_path)))
    assert "val_mean" in out and "final training loss" in out, out
    import json

    res = json.loads((tmp_path / "comparison.json").read_text())
    assert set(res["arms"]) == {"off", "bf16"} and res["kind"] == "bf16-vs-fp32"
    assert "fp32, plain path" in _render(tmp_path / "comparison.json")
