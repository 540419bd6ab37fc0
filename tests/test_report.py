"""Published tables come from results files only (dap.report), and README.md is current."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from dap.report import published_table, render_results, result_blocks, write_tables

REPO = Path(__file__).resolve().parents[1]


def test_write_tables_then_publish_round_trip(tmp_path):
    rows = [{"method": "m", "category": "builtin:brick", "image_auroc": 0.98125, "pixel_auroc": 0.5,
             "aupro": 0.25, "pixel_ap": None, "fps_batch1": 12.345}]
    write_tables(rows, tmp_path, stem="demo")
    data = json.loads((tmp_path / "demo.json").read_text())
    assert data["rows"] == rows and "command" in data["made_by"] and "git_commit" in data["made_by"]
    table = published_table("demo", tmp_path)
    assert "| m | builtin:brick | 98.1 | 50.0 | 25.0 | — | 12.35 |" in table
    assert "| method | category | image AUROC | pixel AUROC | AUPRO | pixel AP | FPS (batch 1) |" \
        in table
    assert "_From `results/demo.json`, written by" in table


def test_seed_standard_deviations_are_shown(tmp_path):
    rows = [{"method": "m", "category": "c", "image_auroc": 0.85, "image_auroc_std": 0.0123,
             "pixel_auroc": 0.9}]
    write_tables(rows, tmp_path, stem="seeds")
    assert "| m | c | 85.0 ± 1.2 | 90.0 | — | — |" in published_table("seeds", tmp_path)


def test_blocks_are_replaced_and_missing_files_say_so(tmp_path):
    write_tables([{"method": "a", "image_auroc": 0.5}], tmp_path, stem="one")
    text = ("intro\n<!-- results: one -->\nstale 99.9\n<!-- /results -->\nmiddle\n"
            "<!-- results: none -->\n<!-- /results -->\n")
    out = render_results(text, tmp_path)
    assert result_blocks(text) == ["one", "none"]
    assert "stale 99.9" not in out and "| a | 50.0 |" in out
    assert "No results file `results/none.json`" in out
    assert render_results(out, tmp_path) == out          # idempotent


def test_readme_tables_are_rendered_from_results():
    r = subprocess.run([sys.executable, "tools/results_tables.py", "--check"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert result_blocks((REPO / "README.md").read_text())   # the README has results blocks


def test_every_test_the_readme_guarantees_cite_exists():
    """README's "What dap guarantees" names tests; each must exist (renaming one breaks this)."""
    import re

    section = (REPO / "README.md").read_text().split("## What dap guarantees", 1)[1]
    section = section.split("\n## ", 1)[0]
    cited = 0
    for line in section.splitlines():
        if not line.startswith("| ") or line.startswith("| guarantee"):
            continue
        current = None
        for ref in re.findall(r"`([\w./]*(?:::\w+)?)`", line.split("|")[2]):
            file, _, name = ref.partition("::")
            if file:
                current = REPO / "tests" / file
                assert current.exists(), f"README cites a missing test file {file}"
            if name:
                assert current is not None
                assert re.search(rf"^def {name}\(", current.read_text(), re.M), \
                    f"README cites {current.name}::{name}, which does not exist"
                cited += 1
    assert cited >= 15


def test_demo_results_render_side_by_side_with_goals_met_or_not(tmp_path):
    def model(method, cat, auroc, **extra):
        return {"method": method, "category": f"builtin:{cat}", "model": f"{method}-{cat}",
                "image_auroc": auroc, "pixel_auroc": 0.96, "aupro": 0.91, "pixel_ap": 0.5,
                "fps_batch1": 9.0, **extra}

    quality = {"psnr_db": 21.5, "wiener_psnr_db_t200": 20.0, "channel_spread": 0.02,
               "input_channel_spread": 0.0}
    rows = [model("diffusionad", "brick", 0.99, **quality),
            {**model("diffusionad", "grass", 0.95), **quality, "psnr_db": 20.4},
            model("draem", "brick", 0.80),
            {"method": "diffusionad", "category": "mean", "image_auroc": 0.97,
             "pixel_auroc": 0.96, "aupro": 0.91, "pixel_ap": 0.5, "fps_batch1": 9.0},
            {"method": "draem", "category": "mean", "image_auroc": 0.80, "pixel_auroc": 0.96,
             "aupro": 0.91, "pixel_ap": 0.5, "fps_batch1": 9.0}]
    write_tables(rows, tmp_path, stem="demo", kind="demo")
    text = published_table("demo", tmp_path)
    lines = text.splitlines()

    def goal(method, what):
        return next(line for line in lines if line.startswith(f"| {method} | {what}"))

    # 0.97 >= 0.97 is met; pixel AP 0.5 < 0.70 is not; DDAD has no model: nothing measured
    assert goal("diffusionad", "image AUROC (mean)").endswith("| 97.0 | yes |")
    assert goal("diffusionad", "pixel AP (mean)").endswith("| 50.0 | **no** |")
    assert goal("ddad", "image AUROC (mean)").endswith("| — | — |")
    # margins +1.50 dB (met) and +0.40 dB (not); spread 0.02 > 0.015 (not met)
    assert goal("diffusionad", "PSNR - Wiener PSNR, builtin:brick").endswith("| +1.50 dB | yes |")
    grass = goal("diffusionad", "PSNR - Wiener PSNR, builtin:grass")
    assert grass.endswith("| +0.40 dB | **no** |")
    assert goal("diffusionad", "channel spread, builtin:brick").endswith("| 0.0200 | **no** |")
    # the side-by-side table has one row per method, DRAEM included
    side = text[text.index("side by side"):text.index("Every model")]
    assert "| draem | 80.0 |" in side and "| diffusionad | 97.0 |" in side
