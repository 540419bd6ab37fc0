"""Colab for real: the notebooks' first cell installs dap from the repository and the cells run.

* The repository's address is written once, in pyproject.toml ``[project.urls] Repository``;
  every notebook's Colab cell and badge (and the README's badges) must carry that address,
  because on Colab only the notebook file exists when its first cell runs.
  ``python tools/apply_notebook_header.py`` writes them.
* :func:`test_colab_bootstrap_installs_dap_and_runs_notebook_01` plays Colab, offline: a fresh
  virtual environment that sees the project's packages (torch etc.) but not dap, an importable
  ``google.colab`` (so ``"google.colab" in sys.modules``), ``DAP_REPO_URL=git+file://`` a clone
  of the current commit; it runs notebook 01's code cells in order there (the bootstrap cell
  pip-installs dap from the clone), then checks that dap came from the installed copy and that
  every ``python -m dap ...`` command a notebook tells the learner to run exists in it.
* Paths that exist only in a clone of the repository (``data_scripts/``, ``benchmarks/``,
  ``tools/``) must be introduced as such wherever a notebook names them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import apply_notebook_header as header  # noqa: E402

NOTEBOOK_PYS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
REPO_ONLY = re.compile(r"\b(data_scripts|benchmarks|tools)/")
SAYS_REPO_ONLY = re.compile(r"repositor|checkout|clone", re.I)
DAP_COMMAND = re.compile(r"python -m dap ((?:data )?[a-z][a-z-]*)")


def _ids(paths):
    return [p.stem for p in paths]


# --------------------------------------------------------------------------------------------
# One address, carried literally by every notebook
# --------------------------------------------------------------------------------------------
def test_the_repository_address_is_in_pyproject():
    url = header.repo_url()
    assert url.startswith("https://"), url
    assert header.github_path(url), f"{url}: Colab opens notebooks from GitHub only"


@pytest.mark.parametrize("py", NOTEBOOK_PYS, ids=_ids(NOTEBOOK_PYS))
def test_notebook_bootstrap_installs_from_the_pyproject_address(py):
    text = py.read_text(encoding="utf-8")
    url = header.repo_url()
    fix = "run `python tools/apply_notebook_header.py` (then commit the notebooks)"
    assert header.bootstrap_url(text) == url, (
        f"{py.name}: its Colab cell installs from {header.bootstrap_url(text)!r}, pyproject.toml "
        f"[project.urls] says {url!r}: {fix}")
    assert set(header.badge_paths(text)) == {header.github_path(url)}, (
        f"{py.name}: Colab badge {header.badge_paths(text)} != {header.github_path(url)}: {fix}")
    assert header.bootstrap_cell(url) in text, f"{py.name}: the Colab cell differs from the template: {fix}"


def test_readme_badges_point_at_the_pyproject_address():
    paths = header.badge_paths((ROOT / "README.md").read_text(encoding="utf-8"))
    assert paths, "README has no Colab badges"
    assert set(paths) == {header.github_path(header.repo_url())}, (
        f"README's Colab badges point at {sorted(set(paths))}, pyproject.toml at "
        f"{header.github_path(header.repo_url())}")


def test_header_rewrite_is_idempotent_and_keeps_the_parameters():
    text = NOTEBOOK_PYS[0].read_text(encoding="utf-8")
    once = header.rewrite(text, "https://github.com/someone/dap-fork", ("ci", "cpu", "full", "x"))
    assert header.rewrite(once, "https://github.com/someone/dap-fork", ("ci", "cpu", "full", "x")) == once
    assert header.bootstrap_url(once) == "https://github.com/someone/dap-fork"
    assert header.badge_paths(once) == ["someone/dap-fork"]
    assert "DAP_PROFILE = ci | cpu | full | x" in once
    def params(t):   # the parameters cell, its profile comment aside
        return header.PROFILE_COMMENT.sub("", t.split(header.PARAMETERS_MARK, 1)[1].split("# %%", 1)[0])
    assert params(once) == params(text)


@pytest.mark.parametrize("py", NOTEBOOK_PYS, ids=_ids(NOTEBOOK_PYS))
def test_repository_only_paths_are_introduced_as_such(py):
    """A pip install (Colab) has no data_scripts/, benchmarks/ or tools/: say where they are."""
    _, cells = header._cells(py.read_text(encoding="utf-8"))
    bad = []
    for cell in cells:
        for m in REPO_ONLY.finditer(cell):
            if not SAYS_REPO_ONLY.search(cell):
                line = cell[:m.start()].count("\n")
                bad.append(f"{m.group(0)} in: {cell.splitlines()[line].strip()[:90]}")
    assert not bad, (f"{py.name} names repository-only paths without saying they are in the "
                     "repository only (a pip install on Colab has none): " + "; ".join(bad))


# --------------------------------------------------------------------------------------------
# Playing Colab
# --------------------------------------------------------------------------------------------
FAKE_COLAB = '''"""A stand-in for Colab's module: the notebooks only test that it is imported."""\n'''
# pkgutil-style, so another distribution's `google` package does not hide ours or vice versa
GOOGLE_INIT = "__path__ = __import__('pkgutil').extend_path(__path__, __name__)\n"

RUNNER = textwrap.dedent('''\
    """Run a notebook's code cells in order, as Colab would, then report where dap came from."""
    import json, os, sys
    import google.colab  # Colab imports it before any cell runs

    from IPython.core.interactiveshell import InteractiveShell

    nb = json.load(open(sys.argv[1], encoding="utf-8"))
    sources = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    shell = InteractiveShell.instance()
    for i, src in enumerate(sources, 1):
        result = shell.run_cell(src, store_history=True)
        if not result.success:
            print(f"CELL {i} FAILED", flush=True)
            result.raise_error()
        print(f"ran code cell {i} of {len(sources)}", flush=True)
    import dap
    from importlib.metadata import distribution
    checkout = os.environ["DAP_CHECKOUT"]
    from_checkout = sorted(name for name, mod in list(sys.modules.items())
                           if str(getattr(mod, "__file__", "") or "").startswith(checkout))
    print("REPORT " + json.dumps({
        "dap": dap.__file__, "prefix": sys.prefix, "cells": len(sources),
        "from_checkout": from_checkout,
        "direct_url": json.loads(distribution("dap").read_text("direct_url.json") or "{}"),
    }))
''')

HELP = textwrap.dedent('''\
    import sys
    from dap.cli import main
    failed = []
    for cmd in sys.argv[1:]:
        try:
            main(cmd.split() + ["--help"])
        except SystemExit as exc:
            if exc.code not in (0, None):
                failed.append(cmd)
        else:
            failed.append(cmd + " (no --help)")
    print("FAILED " + ", ".join(failed) if failed else "ALL OK")
    sys.exit(1 if failed else 0)
''')


def _base_python() -> str:
    base = getattr(sys, "_base_executable", None)
    if base and Path(base).exists():
        return base
    return str(Path(sys.base_prefix) / "bin" / "python3")


def _is_dap_entry(name: str) -> bool:
    return (name == "dap" or name.startswith(("dap-", "__editable__")) or name.endswith(".pth")
            or name == "__pycache__")


def make_colab(tmp: Path) -> dict:
    """A fresh venv that sees this environment's packages but not dap; returns paths and env."""
    deps = tmp / "deps"             # every installed package of this environment except dap
    deps.mkdir(parents=True)
    for site in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        for entry in Path(site).iterdir():
            if not _is_dap_entry(entry.name) and not (deps / entry.name).exists():
                (deps / entry.name).symlink_to(entry)
    venv = tmp / "venv"
    subprocess.run([_base_python(), "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "colab_deps.pth").write_text(f"{deps}\n")   # pip itself comes from there
    fake = tmp / "fake"
    (fake / "google" / "colab").mkdir(parents=True)
    (fake / "google" / "__init__.py").write_text(GOOGLE_INIT)
    (fake / "google" / "colab" / "__init__.py").write_text(FAKE_COLAB)
    clone = tmp / "repo"            # the current commit, as Colab would fetch it from GitHub
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)], check=True)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    content = tmp / "content"       # Colab's working directory: nothing of the repository
    content.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_", "DAP_"))}
    env.update(
        PYTHONPATH=str(fake), PYTHONNOUSERSITE="1",
        DAP_REPO_URL=f"git+file://{clone}@{head}", DAP_CHECKOUT=str(ROOT),
        DAP_PROFILE="ci", DAP_DATA=str(tmp / "data"), MPLBACKEND="Agg", TQDM_DISABLE="1",
        OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE",
        # offline: every dependency is already there; build with the setuptools that is there
        # too (pip reads PIP_NO_BUILD_ISOLATION=0 as --no-build-isolation)
        PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0", PIP_NO_CACHE_DIR="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_CONFIG_FILE=os.devnull,
    )
    return {"python": str(python), "purelib": purelib, "content": content, "env": env,
            "clone": clone, "head": head}


def play_colab(ipynb: Path, tmp: Path) -> dict:
    """Run ``ipynb``'s code cells in a fresh Colab stand-in; the runner's report."""
    colab = make_colab(tmp)
    runner = tmp / "runner.py"
    runner.write_text(RUNNER)
    t0 = time.monotonic()
    proc = subprocess.run([colab["python"], str(runner), str(ipynb)], cwd=colab["content"],
                          env=colab["env"], capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{ipynb.name} on the Colab stand-in failed:\n{out[-4000:]}"
    report = json.loads(out.split("REPORT ", 1)[1].splitlines()[0])
    report.update(colab=colab, seconds=time.monotonic() - t0, output=out)
    return report


def notebook_commands() -> list[str]:
    """Every ``python -m dap <command>`` the notebooks tell the learner to run."""
    found = {"data download"}
    for py in NOTEBOOK_PYS:
        found |= set(DAP_COMMAND.findall(py.read_text(encoding="utf-8")))
    return sorted(found)


@pytest.fixture(scope="module")
def colab_run(tmp_path_factory):
    if shutil.which("git") is None:
        pytest.skip("git is not installed (pip installs from git on Colab)")
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing to clone")
    return play_colab(ROOT / "notebooks" / "01_forward_process.ipynb",
                      tmp_path_factory.mktemp("colab"))


@pytest.mark.slow
def test_colab_bootstrap_installs_dap_and_runs_notebook_01(colab_run):
    r = colab_run
    assert r["cells"] > 3
    assert Path(r["dap"]).is_relative_to(r["colab"]["purelib"]), (
        f"dap imported from {r['dap']}, not from the pip-installed copy in {r['colab']['purelib']}")
    assert not r["from_checkout"], f"modules imported from the checkout: {r['from_checkout']}"
    assert r["direct_url"].get("url") == f"file://{r['colab']['clone']}", r["direct_url"]
    assert r["direct_url"].get("vcs_info", {}).get("commit_id") == r["colab"]["head"]


@pytest.mark.slow
def test_commands_the_notebooks_name_exist_in_a_pip_install(colab_run):
    colab = colab_run["colab"]
    proc = subprocess.run([colab["python"], "-m", "dap", "data", "download", "--help"],
                          cwd=colab["content"], env=colab["env"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "usage" in proc.stdout.lower(), proc.stdout + proc.stderr
    helper = colab["content"].parent / "help.py"
    helper.write_text(HELP)
    proc = subprocess.run([colab["python"], str(helper), *notebook_commands()],
                          cwd=colab["content"], env=colab["env"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, (f"`python -m dap ... --help` fails from a pip install for: "
                                  f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
