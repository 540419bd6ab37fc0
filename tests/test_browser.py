"""Every notebook in JupyterLab, in a real browser, as a learner running ``make lab`` sees it.

The browser tests carry the ``browser`` marker, which the normal run deselects (pyproject's
addopts); ``make test-browser`` selects them (``pytest -m browser``). They need Playwright and
a Chromium (see ``tools/browser_check.py``) and skip with a one-line reason without them. The
checks themselves (what "runs cleanly" and "plots" mean) are in ``tools/browser_check.py``;
screenshots go to ``runs/browser/NN_name.png``.

The tests without the marker are quick and always run: they pin the ``make lab`` fix (a lab
kernel never inherits a headless matplotlib backend) and the rule for which cells must plot.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import browser_check  # noqa: E402
import lab  # noqa: E402

NOTEBOOKS = browser_check.notebooks()


# --------------------------------------------------------------------------------------------
# Quick checks (no browser)
# --------------------------------------------------------------------------------------------
def test_make_lab_runs_the_shared_lab_command_without_a_global_agg_backend():
    makefile = (ROOT / "Makefile").read_text()
    assert not re.search(r"^\s*export\s+MPLBACKEND", makefile, re.M), (
        "MPLBACKEND exported to every target: `make lab` kernels would keep Agg and show no figure")
    recipe = re.search(r"^lab:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe and "tools/lab.py" in recipe.group(1), "`make lab` must run tools/lab.py"
    assert browser_check.LAB_SCRIPT == ROOT / "tools" / "lab.py"   # the test starts the same


@pytest.mark.parametrize("value", ["Agg", "agg", " Agg ", "svg", "pdf"])
def test_lab_drops_a_headless_backend(value):
    env = lab.lab_env({"MPLBACKEND": value, "PATH": "/bin"})
    assert "MPLBACKEND" not in env and env["PATH"] == "/bin"


def test_lab_keeps_an_interactive_backend_and_sets_the_wait_policy():
    env = lab.lab_env({"MPLBACKEND": "module://ipympl.backend_nbagg"})
    assert env["MPLBACKEND"] == "module://ipympl.backend_nbagg"
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert lab.lab_env({"OMP_WAIT_POLICY": "ACTIVE"})["OMP_WAIT_POLICY"] == "ACTIVE"


def test_lab_command_serves_the_notebooks_folder():
    cmd = lab.lab_command(["--no-browser"], python="py")
    assert cmd[:3] == ["py", "-m", "jupyterlab"] and cmd[-1] == "--no-browser"
    assert f"--ServerApp.root_dir={ROOT / 'notebooks'}" in cmd


@pytest.mark.parametrize("source,plots", [
    ("fig, ax = plt.subplots()\nax.plot([1, 2])", True),
    ("show_images([x])", True),
    ("plot_curves(t, {'a': y}, 't', 'y');", True),
    ("import matplotlib.pyplot as plt\nfrom dap.viz import show_images", False),
    ("def redraw(seed=0):\n    show_images([x])\n    plt.show()", False),
    ("def redraw(seed=0):\n    plt.show()\n\nwidgets.interact(redraw, seed=(0, 9));", True),
    ("x = 1  # plt.show() in a comment only", False),
    ("print(abar)", False),
])
def test_which_cells_must_plot(source, plots):
    assert browser_check.cell_plots(source) is plots


def test_every_notebook_has_cells_that_plot():
    assert NOTEBOOKS
    for ipynb in NOTEBOOKS:
        assert browser_check.plotting_cells(ipynb), f"{ipynb.name}: no cell plots?"


# --------------------------------------------------------------------------------------------
# The notebooks in JupyterLab (marker `browser`: `make test-browser`)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lab_session(tmp_path_factory):
    reason = browser_check.unavailable()
    if reason:
        pytest.skip(reason)
    started = time.monotonic()
    with browser_check.Session(tmp_path_factory.mktemp("lab"), env=browser_check.notebook_env(),
                               out=ROOT / "runs" / "browser") as session:
        yield session
    print(f"\nbrowser test: {len(NOTEBOOKS)} notebooks in {time.monotonic() - started:.0f} s")


@pytest.mark.browser
@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_cleanly_in_jupyterlab(lab_session, ipynb):
    result = lab_session.check(ipynb)
    print(f"{result.name}: {result.seconds:.0f} s, screenshot {result.screenshot}")
    for note in result.notes:
        print(f"  note: {note}")
    assert result.ok, f"{ipynb.name} in JupyterLab:\n  " + "\n  ".join(result.problems)
    assert result.screenshot is not None and result.screenshot.exists()


@pytest.mark.browser
def test_the_browser_run_wrote_nothing_into_the_notebooks(lab_session):
    """Autosave is off and pages close unsaved: no notebook file holds outputs afterwards."""
    written = [p.name for p in NOTEBOOKS if browser_check.outputs_committed(p)]
    assert not written, f"outputs saved into {written}"
