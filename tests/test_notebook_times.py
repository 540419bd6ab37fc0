"""tools/time_notebooks.py (merging runs into results/notebook-times.json) and the README table
tools/results_tables.py renders from it."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import results_tables  # noqa: E402
import time_notebooks  # noqa: E402


def _row(name, seconds, status="ok"):
    return {"notebook": name, "seconds": seconds, "status": status, "slowest_cells": []}


def test_merge_keeps_other_profiles_and_notebooks():
    made = {"command": "time_notebooks.py --profile ci", "utc": "2026-01-01T00:00:00"}
    first = time_notebooks.merge({}, "ci", [_row("01_a", 9.0), _row("02_b", 100.0)], made)
    second = time_notebooks.merge(first, "cpu", [_row("01_a", 30.0)], made)
    third = time_notebooks.merge(second, "ci", [_row("02_b", 80.0)], {**made, "utc": "later"})
    ci = third["profiles"]["ci"]
    assert [(r["notebook"], r["seconds"]) for r in ci["rows"]] == [("01_a", 9.0), ("02_b", 80.0)]
    assert ci["made_by"]["utc"] == "later"
    assert third["profiles"]["cpu"]["rows"] == [_row("01_a", 30.0)]


def test_table_shows_each_profile_and_missing_cells(tmp_path):
    data = time_notebooks.merge({}, "ci", [_row("01_a", 9.4), _row("02_b", 125.0)],
                                {"command": "python tools/time_notebooks.py --profile ci",
                                 "git_commit": "abcdef1234567", "utc": "2026-01-02T03:04:05"})
    data = time_notebooks.merge(data, "cpu", [_row("01_a", 700.0, "timeout after 600 s")], {})
    (tmp_path / "notebook-times.json").write_text(json.dumps(data))
    table = results_tables.notebook_times_table(tmp_path)
    assert "| notebook | `ci` | `cpu` |" in table
    assert "| 01_a | 9 s | 11.7 min (timeout after 600 s) |" in table
    assert "| 02_b | 2.1 min | — |" in table
    assert "commit abcdef1234" in table and "2026-01-02" in table


def test_missing_file_says_so_and_the_block_uses_this_table(tmp_path):
    assert "No results file `results/notebook-times.json`" in \
        results_tables.notebook_times_table(tmp_path)
    text = "<!-- results: notebook-times -->\nold\n<!-- /results -->\n"
    out = results_tables.render_results(text, tmp_path, table=results_tables.table)
    assert "old" not in out and "time_notebooks.py --profile ci" in out


def test_notebook_selection_must_match():
    assert [p.stem[:2] for p in time_notebooks.notebook_paths(["01", "09"])] == ["01", "09"]
    with pytest.raises(SystemExit, match="no notebook matches"):
        time_notebooks.notebook_paths(["99"])
