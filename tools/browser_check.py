"""Run every notebook in JupyterLab, in a real browser, and check what a learner sees.

    python tools/browser_check.py                    # every notebooks/NN_*.ipynb
    python tools/browser_check.py 01 05              # some of them (by number or name)

``make test-browser`` runs the same checks as a test (``tests/test_browser.py``). JupyterLab is
started exactly as ``make lab`` starts it (``tools/lab.py``), on 127.0.0.1 with a free port and a
token, and driven by Playwright with a system Chromium (``DAP_CHROMIUM``, else ``chromium`` /
``chromium-browser`` / ``google-chrome`` on the PATH). For each notebook, one at a time, in one
server: open it, Run > Run All Cells, wait until the kernel is idle with no cell queued, then
check

* every code cell ran (a number in its prompt);
* no output went to stderr and no cell raised (``application/vnd.jupyter.stderr`` outputs:
  JupyterLab renders both this way) -- warnings count, a learner sees them;
* every cell that plots shows an image (:func:`plotting_cells` is the rule);
* in every cell with an ipywidgets slider and a figure, moving the slider redraws the figure
  (the image ``src`` changes); notebooks in :data:`SLIDER_REQUIRED` must have one;

then save a screenshot of the whole notebook to ``runs/browser/NN_name.png`` and shut its
kernel down. The notebook files are never written: autosave is off in the throw-away settings
directory the server gets, and pages are closed without saving.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tokenize
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
OUT = ROOT / "runs" / "browser"
LAB_SCRIPT = ROOT / "tools" / "lab.py"     # the command `make lab` runs

#: notebooks whose slider must exist and redraw its figure (the issue's two widget notebooks)
SLIDER_REQUIRED = ("01", "05")
#: names whose use in a cell means the cell draws a figure (matplotlib, dap.viz, dap.report)
PLOT_NAMES = re.compile(r"\bplt\.|\b(show_images|plot_curves|example_figure)\s*\(|\bfig\b")
STDERR = "application/vnd.jupyter.stderr"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: JupyterLab user settings for the test server: never write the notebook, no news pop-up
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false", "checkForUpdates": False},
}
SCREENSHOT_MAX_HEIGHT = 16000   # Chromium's largest capture; longer notebooks are cut (noted)


# --------------------------------------------------------------------------------------------
# What to expect of a notebook
# --------------------------------------------------------------------------------------------
def _code_without_comments(source: str) -> str:
    try:
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
                  if t.type != tokenize.COMMENT]
        return tokenize.untokenize(tokens)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return "\n".join(line.split("#", 1)[0] for line in source.splitlines())


def cell_plots(source: str) -> bool:
    """Whether a code cell is expected to show a figure.

    The rule: its code (comments removed) uses ``plt.``, a plotting helper of dap
    (``show_images(``, ``plot_curves(``, ``example_figure(``) or a name ``fig``, and it does
    more than define things (a cell whose top-level statements are all ``def`` / ``class`` /
    ``import`` only prepares a function that a later cell calls).
    """
    code = _code_without_comments(source)
    if not PLOT_NAMES.search(code):
        return False
    try:
        body = ast.parse(code).body
    except SyntaxError:
        return True
    definitions = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)
    return not all(isinstance(node, definitions) for node in body)


def code_cells(ipynb: Path) -> list[str]:
    """The sources of the notebook's code cells, in order."""
    nb = json.loads(ipynb.read_text(encoding="utf-8"))
    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in nb["cells"] if c["cell_type"] == "code"]


def plotting_cells(ipynb: Path) -> list[int]:
    """Indices (0-based, among code cells) of the cells that must show an image."""
    return [i for i, src in enumerate(code_cells(ipynb)) if cell_plots(src)]


def notebooks(selected: list[str] | None = None) -> list[Path]:
    """notebooks/NN_*.ipynb, all or those whose name starts with one of ``selected``."""
    found = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if selected:
        found = [p for p in found if any(p.stem.startswith(s) for s in selected)]
    return found


def outputs_committed(ipynb: Path) -> bool:
    """Whether a notebook file holds outputs (the browser run must never save any)."""
    nb = json.loads(ipynb.read_text(encoding="utf-8"))
    return any(c.get("outputs") or c.get("execution_count")
               for c in nb["cells"] if c["cell_type"] == "code")


# --------------------------------------------------------------------------------------------
# Browser and server
# --------------------------------------------------------------------------------------------
def find_chromium() -> str | None:
    """A Chromium executable: ``$DAP_CHROMIUM``, else the first of :data:`CHROMIUM_NAMES`."""
    env = os.environ.get("DAP_CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def unavailable() -> str | None:
    """None when the browser check can run here, else a one-line reason why not."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (make test-browser installs it: pip install -e '.[browser]')"
    if find_chromium() is None:
        return ("no Chromium found (apt-get install chromium, or set DAP_CHROMIUM to a Chromium "
                "or Chrome executable)")
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """JupyterLab as ``make lab`` starts it (tools/lab.py), on 127.0.0.1 with a token."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None):
        self.workdir = workdir
        self.port = _free_port()
        self.token = os.urandom(16).hex()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "lab.log"
        settings = workdir / "settings"
        for rel, value in LAB_SETTINGS.items():
            (settings / rel).parent.mkdir(parents=True, exist_ok=True)
            (settings / rel).write_text(json.dumps(value))
        self.env = dict(os.environ if env is None else env)
        self.env.update(JUPYTERLAB_SETTINGS_DIR=str(settings),
                        JUPYTERLAB_WORKSPACES_DIR=str(workdir / "workspaces"),
                        JUPYTER_RUNTIME_DIR=str(workdir / "runtime"))
        extra = ["--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
                 "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            extra.append("--allow-root")      # containers and CI runners run as root
        self.cmd = [sys.executable, str(LAB_SCRIPT), *extra]
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "LabServer":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                self.api("GET", "/api/status")
                return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"JupyterLab did not answer within 120 s:\n{self.log_tail()}")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)     # shuts its kernels down too
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)   # the group this server leads
                self.proc.wait()
        self._log.close()

    def log_tail(self, n: int = 20) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def api(self, method: str, path: str):
        req = urllib.request.Request(self.url + path, method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        for session in self.api("GET", "/api/sessions") or []:
            self.api("DELETE", f"/api/sessions/{session['id']}")
        for kernel in self.api("GET", "/api/kernels") or []:
            self.api("DELETE", f"/api/kernels/{kernel['id']}")


# --------------------------------------------------------------------------------------------
# One notebook
# --------------------------------------------------------------------------------------------
@dataclass
class Result:
    name: str
    seconds: float = 0.0
    screenshot: Path | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


_STATE_JS = """() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  if (!panel) return null;
  const status = panel.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status
    ?? document.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status;
  const cells = [...panel.querySelectorAll('.jp-Notebook .jp-CodeCell')].map(c => {
    const area = c.querySelector('.jp-Cell-outputArea');
    return {
      prompt: (c.querySelector('.jp-InputPrompt')?.textContent ?? '').trim(),
      imgs: area ? [...area.querySelectorAll('img')].map(i => i.getAttribute('src') ?? '') : [],
      stderr: area ? [...area.querySelectorAll('[data-mime-type="STDERR"]')]
                       .map(o => o.textContent) : [],
      sliders: area ? area.querySelectorAll('.widget-slider .noUi-handle').length : 0,
    };
  });
  return {status, cells};
}""".replace("STDERR", STDERR)

_BUSY = {"busy", "starting", "restarting", "initializing", "connecting"}
_DEAD = {"dead", "terminating", "autorestarting", "disconnected"}


def _short(text: str, limit: int = 240) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    msg = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return msg if len(msg) <= limit else msg[:limit] + "..."


def _label(i: int, sources: list[str]) -> str:
    first = next((ln for ln in sources[i].splitlines() if ln.strip() and not ln.startswith("#")),
                 sources[i].strip().splitlines()[0] if sources[i].strip() else "")
    return f"code cell {i + 1} ({first.strip()[:60]!r})"


def _dismiss_kernel_dialog(page) -> None:
    """Accept the 'Select Kernel' dialog JupyterLab may show on opening (Python 3)."""
    button = page.locator('.jp-Dialog button.jp-mod-accept')
    try:
        button.wait_for(timeout=3000)
        button.click()
    except Exception:   # no dialog: the kernel started by itself
        pass


def _wait_until_done(page, timeout: float) -> tuple[dict, str | None]:
    """Poll until every queued cell ran and the kernel is idle; (state, problem or None)."""
    deadline = time.monotonic() + timeout
    started = False
    quiet = 0
    state = page.evaluate(_STATE_JS)
    while time.monotonic() < deadline:
        state = page.evaluate(_STATE_JS)
        prompts = [c["prompt"] for c in state["cells"]]
        if not started:
            started = any(p != "[ ]:" for p in prompts)
        if state["status"] in _DEAD:
            return state, f"the kernel died (status {state['status']})"
        running = any("*" in p for p in prompts)
        if started and not running and state["status"] not in _BUSY:
            quiet += 1
            if quiet >= 2:           # idle on two polls in a row: the queue is empty
                return state, None
        else:
            quiet = 0
        time.sleep(1.0)
    return state, f"not finished after {timeout:.0f} s (Run All Cells still running)"


def _move_slider(page, cell_index: int, timeout: float) -> str | None:
    """Move the first slider of a code cell; None if its figure was redrawn, else the problem."""
    cell = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-CodeCell").nth(
        cell_index)
    area = cell.locator(".jp-Cell-outputArea")
    before = [img.get_attribute("src") for img in area.locator("img").all()]
    handle = area.locator(".widget-slider .noUi-handle").first
    handle.scroll_into_view_if_needed()
    readout = area.locator(".widget-slider .widget-readout").first
    value = (readout.text_content() or "").strip()
    for key in ("ArrowRight", "ArrowLeft"):          # one step; left when at the maximum
        handle.focus()
        page.keyboard.press(key)
        page.wait_for_timeout(300)
        if (readout.text_content() or "").strip() != value:
            break
    else:
        return f"its slider did not move (stays at {value})"
    moved_to = (readout.text_content() or "").strip()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        after = [img.get_attribute("src") for img in area.locator("img").all()]
        if after and after != before:
            return None
        time.sleep(0.5)
    return f"moving its slider from {value} to {moved_to} did not change the figure within {timeout:.0f} s"


def _screenshot(page, path: Path, result: Result) -> None:
    tab = page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")
    if tab.count():
        tab.first.click()               # collapse the file browser: the notebook gets the width
    page.wait_for_timeout(300)
    height = page.evaluate("""() => {
      const outer = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer');
      if (!outer) return document.body.scrollHeight;
      outer.scrollTop = 0;
      return outer.scrollHeight;
    }""")
    width = page.viewport_size["width"]
    want = int(height) + 160                          # menu bar, tab bar, toolbar, status bar
    if want > SCREENSHOT_MAX_HEIGHT:
        result.notes.append(f"screenshot cut at {SCREENSHOT_MAX_HEIGHT} px of {want}")
    page.set_viewport_size({"width": width, "height": min(want, SCREENSHOT_MAX_HEIGHT)})
    page.wait_for_timeout(500)
    page.evaluate("""() => {
      const outer = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer');
      if (outer) outer.scrollTop = 0;
    }""")
    page.wait_for_timeout(500)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    result.screenshot = path


def check_notebook(browser, server: LabServer, ipynb: Path, out: Path = OUT,
                   timeout: float = 600.0) -> Result:
    """Open ``ipynb`` in JupyterLab, run all cells, check the outputs, save a screenshot."""
    result = Result(ipynb.stem)
    sources = code_cells(ipynb)
    expect_images = plotting_cells(ipynb)
    t0 = time.monotonic()
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        rel = ipynb.relative_to(NOTEBOOKS).as_posix()
        page.goto(f"{server.url}/lab/tree/{rel}?reset&token={server.token}")
        page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-CodeCell", timeout=120_000)
        _dismiss_kernel_dialog(page)
        page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]',
                               timeout=120_000)
        page.click('.lm-MenuBar-itemLabel:text-is("Run")')
        page.click('.lm-Menu-itemLabel:text-is("Run All Cells")')
        state, problem = _wait_until_done(page, timeout)
        if problem:
            result.problems.append(problem)
        cells = state["cells"]
        if len(cells) != len(sources):
            result.problems.append(f"JupyterLab shows {len(cells)} code cells, the file has "
                                   f"{len(sources)}")
        for i, cell in enumerate(cells[:len(sources)]):
            if not re.fullmatch(r"\[\d+\]:", cell["prompt"]):
                result.problems.append(f"{_label(i, sources)} did not run (prompt {cell['prompt']})")
            for text in cell["stderr"]:
                result.problems.append(f"{_label(i, sources)} wrote to stderr: {_short(text)}")
            if i in expect_images and not cell["imgs"]:
                result.problems.append(f"{_label(i, sources)} plots but shows no image")
        sliders = [i for i, c in enumerate(cells) if c["sliders"] and c["imgs"]]
        if ipynb.stem[:2] in SLIDER_REQUIRED and not sliders:
            result.problems.append("no slider with a figure found (ipywidgets did not render?)")
        for i in sliders:
            problem = _move_slider(page, i, timeout=90)
            if problem:
                result.problems.append(f"{_label(i, sources)}: {problem}")
            else:
                result.notes.append(f"slider of code cell {i + 1} redraws its figure")
        after = page.evaluate(_STATE_JS)       # what the slider runs printed counts too
        for i, cell in enumerate(after["cells"][:len(sources)]):
            for text in cell["stderr"][len(cells[i]["stderr"]) if i < len(cells) else 0:]:
                result.problems.append(f"{_label(i, sources)} wrote to stderr after a slider "
                                       f"move: {_short(text)}")
        _screenshot(page, out / f"{ipynb.stem}.png", result)
    except Exception as exc:          # a browser or server failure is a failure of this notebook
        result.problems.append(f"browser check failed: {type(exc).__name__}: {_short(str(exc))}")
        try:
            _screenshot(page, out / f"{ipynb.stem}.png", result)
        except Exception:
            pass
    finally:
        page.close()                  # without saving: nothing is written to the notebook
        try:
            server.shutdown_kernels()
        except OSError:
            pass
        result.seconds = time.monotonic() - t0
    return result


class Session:
    """One JupyterLab server and one headless Chromium for a series of notebooks."""

    def __init__(self, workdir: Path | None = None, env: dict[str, str] | None = None,
                 out: Path = OUT):
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="dap-browser-")
            workdir = Path(self._tmp.name)
        self.out = out
        self.server = LabServer(workdir, env)

    def __enter__(self) -> "Session":
        from playwright.sync_api import sync_playwright

        self.server.__enter__()
        try:
            self._pw = sync_playwright().start()
            self.browser = self._pw.chromium.launch(
                executable_path=find_chromium(),
                args=["--no-sandbox", "--disable-dev-shm-usage"])
        except Exception:
            self.server.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.browser.close()
            self._pw.stop()
        finally:
            self.server.__exit__(*exc)
            if self._tmp is not None:
                self._tmp.cleanup()

    def check(self, ipynb: Path, timeout: float = 600.0) -> Result:
        return check_notebook(self.browser, self.server, ipynb, self.out, timeout)


def notebook_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the test server: the caller's, under the ci profile, one thread."""
    env = dict(os.environ if environ is None else environ)
    env["DAP_PROFILE"] = "ci"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="numbers or names (default: all)")
    parser.add_argument("--out", type=Path, default=OUT, help="screenshot folder")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per notebook")
    args = parser.parse_args(argv)
    reason = unavailable()
    if reason:
        print(f"browser check skipped: {reason}")
        return 0
    paths = notebooks(args.notebooks)
    t0 = time.monotonic()
    failed = 0
    with Session(env=notebook_env(), out=args.out) as session:
        for ipynb in paths:
            res = session.check(ipynb, args.timeout)
            failed += not res.ok
            print(f"{'PASS' if res.ok else 'FAIL'} {res.name} ({res.seconds:.0f} s) "
                  f"-> {res.screenshot}")
            for line in res.problems:
                print(f"    {line}")
            for line in res.notes:
                print(f"    note: {line}")
    print(f"{len(paths) - failed}/{len(paths)} notebooks pass in {time.monotonic() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
