"""Write the common header of every notebook: the Colab cell, the badge, the profile comment.

    python tools/apply_notebook_header.py            # rewrite notebooks/NN_*.py, then their .ipynb
    python tools/apply_notebook_header.py --check    # exit 1 if a notebook's header differs

The repository's address is written in one place, ``pyproject.toml`` ``[project.urls]
Repository``. On Colab only the notebook file exists when its first cell runs, so that cell has
to carry the address literally: this script writes it there (and into the Colab badge), and
``tests/test_colab.py`` fails when a notebook and pyproject disagree. Run it after changing the
address (a fork) or the template below. It is idempotent: a second run changes nothing.

What it rewrites in each ``notebooks/NN_*.py`` (jupytext percent format):

1. the first code cell, the Colab bootstrap, becomes :data:`BOOTSTRAP` (inserted before the
   ``parameters`` cell if a notebook has none); it also says how to choose the profile;
2. the ``parameters`` cell (tagged, right after the bootstrap) keeps its own settings; only its
   ``DAP_PROFILE = a | b | c`` comment is set to the profiles of ``dap.profiles.PROFILES``;
3. the Colab badge links to the repository's ``notebooks/<name>.ipynb`` on branch ``main``.

Then it regenerates the ``.ipynb`` twins (``tools/nbsync.py --write``) unless ``--no-sync``.
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
BRANCH = "main"

#: The Colab bootstrap, the first code cell of every notebook. ``{url}`` is pyproject's
#: [project.urls] Repository. Outside Colab it only imports dap (installed by `make` or conda).
BOOTSTRAP = '''\
# %%
import os
import sys

# How big everything is comes from one switch, the profile (dap/profiles.py): ci = seconds,
# cpu = minutes on a laptop, colab = a free Colab GPU (about an hour), full = the paper's
# sizes on a GPU (hours). Default: colab on a Colab GPU, full on another GPU, else cpu.
# To choose, uncomment the next line (or start Jupyter with DAP_PROFILE=cpu in its environment).
# os.environ["DAP_PROFILE"] = "cpu"

if "google.colab" in sys.modules:  # Colab: install dap from its repository; Colab's torch is kept
    import importlib
    import subprocess

    DAP_REPO_URL = os.environ.get("DAP_REPO_URL", "{url}")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    DAP_REPO_URL if DAP_REPO_URL.startswith("git+") else "git+" + DAP_REPO_URL],
                   check=True)
    importlib.invalidate_caches()

import dap
from dap import runtime

runtime.set_wait_policy()  # before torch loads: idle CPU threads sleep (see dap.runtime)
print("dap", dap.__version__, "from", os.path.dirname(dap.__file__))
'''

PARAMETERS_MARK = '# %% tags=["parameters"]'
PROFILE_COMMENT = re.compile(r"DAP_PROFILE = [a-z0-9_]+(?: \| [a-z0-9_]+)*")
BADGE = re.compile(r"https://colab\.research\.google\.com/github/[^/\s)]+/[^/\s)]+/blob/[^/\s)]+/"
                   r"notebooks/(?P<file>[^/\s)]+\.ipynb)")
BOOTSTRAP_URL = re.compile(r'os\.environ\.get\("DAP_REPO_URL", "(?P<url>[^"]+)"\)')


def repo_url(root: Path = ROOT) -> str:
    """pyproject.toml's ``[project.urls] Repository`` (the one place the address is written)."""
    text = (root / "pyproject.toml").read_text(encoding="utf-8")
    try:
        import tomllib
    except ImportError:  # Python 3.10
        section = re.search(r"^\[project\.urls\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
        found = section and re.search(r'^Repository\s*=\s*"([^"]+)"', section.group(1), re.M)
        if not found:
            raise SystemExit("pyproject.toml has no [project.urls] Repository")
        return found.group(1)
    try:
        return tomllib.loads(text)["project"]["urls"]["Repository"]
    except KeyError:
        raise SystemExit("pyproject.toml has no [project.urls] Repository") from None


def github_path(url: str) -> str | None:
    """``owner/name`` of a GitHub address, None for another host."""
    m = re.fullmatch(r"(?:git\+)?https://github\.com/([^/]+)/([^/]+?)(?:\.git)?/?", url)
    return f"{m.group(1)}/{m.group(2)}" if m else None


def bootstrap_cell(url: str) -> str:
    """The text of the Colab cell for the repository at ``url``."""
    return BOOTSTRAP.format(url=url)


def bootstrap_url(text: str) -> str | None:
    """The address a notebook's (.py text) Colab cell installs from, None without one."""
    m = BOOTSTRAP_URL.search(text)
    return m.group("url") if m else None


def badge_paths(text: str) -> list[str]:
    """``owner/name`` of every Colab badge link in a notebook or README text."""
    return [m.group(0).split("/github/", 1)[1].split("/blob/", 1)[0] for m in BADGE.finditer(text)]


def _cells(text: str) -> tuple[str, list[str]]:
    """(jupytext header, cells); each cell runs from its ``# %%`` line to the next one."""
    starts = [m.start() for m in re.finditer(r"^# %%", text, re.M)]
    if not starts:
        return text, []
    bounds = starts + [len(text)]
    return text[:starts[0]], [text[a:b] for a, b in zip(bounds, bounds[1:])]


def _is_code(cell: str) -> bool:
    return not cell.startswith("# %% [markdown]") and not cell.startswith("# %% [raw]")


def rewrite(text: str, url: str, profiles: tuple[str, ...], name: str = "notebook") -> str:
    """The notebook text with the header of :data:`BOOTSTRAP` (idempotent)."""
    head, cells = _cells(text)
    params = [i for i, c in enumerate(cells) if c.startswith(PARAMETERS_MARK)]
    if len(params) != 1:
        raise ValueError(f"{name}: expected one cell tagged parameters, found {len(params)}")
    p = params[0]
    first_code = next(i for i, c in enumerate(cells) if _is_code(c))
    cell = bootstrap_cell(url) + "\n"
    if first_code < p:
        if first_code != p - 1 or "google.colab" not in cells[first_code]:
            raise ValueError(f"{name}: the cell before the parameters cell should be the Colab "
                             "bootstrap; fix the notebook by hand first")
        cells[first_code] = cell
    else:
        cells.insert(p, cell)
        p += 1
    cells[p] = PROFILE_COMMENT.sub("DAP_PROFILE = " + " | ".join(profiles), cells[p], count=1)
    out = head + "".join(cells)
    path = github_path(url)
    if path:
        out = BADGE.sub(lambda m: f"https://colab.research.google.com/github/{path}/blob/"
                                  f"{BRANCH}/notebooks/{m.group('file')}", out)
    return out


def profiles(root: Path = ROOT) -> tuple[str, ...]:
    """``dap.profiles.PROFILES`` of this checkout, read from the source (no import needed)."""
    tree = ast.parse((root / "dap" / "profiles.py").read_text(encoding="utf-8"))
    for node in tree.body:
        target = getattr(node, "target", None) or (getattr(node, "targets", None) or [None])[0]
        if isinstance(target, ast.Name) and target.id == "PROFILES" and node.value is not None:
            return tuple(ast.literal_eval(node.value))
    raise SystemExit("dap/profiles.py defines no PROFILES")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report notebooks that differ")
    parser.add_argument("--no-sync", action="store_true", help="do not regenerate the .ipynb")
    args = parser.parse_args(argv)
    url, names = repo_url(), profiles()
    if github_path(url) is None:
        print(f"note: {url} is not a GitHub address: Colab badges are left as they are")
    stale = []
    for py in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py")):
        text = py.read_text(encoding="utf-8")
        new = rewrite(text, url, names, py.name)
        if new == text:
            continue
        stale.append(py)
        if not args.check:
            tmp = py.with_suffix(".py.tmp")
            tmp.write_text(new, encoding="utf-8")
            tmp.replace(py)
            print(f"wrote {py.relative_to(ROOT)}")
    if args.check:
        for py in stale:
            print(f"{py.relative_to(ROOT)}: header differs; run python tools/apply_notebook_header.py")
        return 1 if stale else 0
    if stale and not args.no_sync:
        subprocess.run([sys.executable, str(ROOT / "tools" / "nbsync.py"), "--write"], check=True)
    if not stale:
        print("every notebook header is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
