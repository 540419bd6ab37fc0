"""Start JupyterLab on the notebooks: what ``make lab`` runs, and what the browser test runs.

    python tools/lab.py [extra jupyter lab options]      # e.g. --port=8890 --no-browser

One command for both, so the browser test (``tests/test_browser.py``) sees exactly what a user
of ``make lab`` sees. The environment is passed on, except a non-interactive matplotlib backend:
``MPLBACKEND=Agg`` is right for the headless notebook runs of ``make test`` (and the test suite
sets it), but a kernel that inherits it keeps Agg and ``plt.show()`` draws nothing in the
browser. Kernels also get ``OMP_WAIT_POLICY=PASSIVE`` unless it is set (see ``dap.runtime``: idle
OpenMP threads then sleep instead of holding a core another process needs).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
#: matplotlib backends that draw nothing on screen; a lab kernel must not inherit one.
HEADLESS_BACKENDS = {"agg", "pdf", "ps", "svg", "pgf", "cairo", "template"}


def lab_command(extra: list[str] | None = None, python: str | None = None) -> list[str]:
    """The argv that starts JupyterLab on ``notebooks/`` (with ``extra`` options appended)."""
    return [python or sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={NOTEBOOKS}",
            *(extra or [])]


def lab_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment JupyterLab (and through it every kernel) runs with."""
    env = dict(os.environ if environ is None else environ)
    if env.get("MPLBACKEND", "").strip().lower() in HEADLESS_BACKENDS:
        del env["MPLBACKEND"]
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cmd = lab_command(argv)
    os.execvpe(cmd[0], cmd, lab_env())
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
