"""Tables and figures of results: the one place numbers become Markdown, CSV, JSON or a plot.

Every table a person reads — the demo report, the benchmark table, the README's result tables,
the notebooks' measured tables — is made here from a results file (``*.json`` written by
:func:`write_tables`), never typed by hand. The paper's numbers are printed *beside* ours,
never in their place.
"""

from __future__ import annotations

import csv
import datetime
import functools
import io
import json
import platform
import re
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from torch import Tensor

from dap.io import atomic_write_text

# Paper numbers (DiffusionAD, Tables I-IV; ablation Table VII) in percent: I-AUROC / P-AUROC /
# PRO / P-AP. Only shown beside a result on the same dataset.
PAPER_RESULTS: dict[str, dict[str, dict[str, float]]] = {
    "diffusionad": {
        "mvtec": {"image_auroc": 99.7, "pixel_auroc": 98.7, "aupro": 95.7, "pixel_ap": 76.1},
        "visa": {"image_auroc": 98.8, "pixel_auroc": 98.9, "aupro": 96.0, "pixel_ap": 45.8},
        "dagm": {"image_auroc": 99.6, "pixel_auroc": 97.5, "aupro": 93.8, "pixel_ap": 65.1},
        "mpdd": {"image_auroc": 96.2, "pixel_auroc": 98.5, "aupro": 95.3, "pixel_ap": 45.8},
    },
}
METRIC_KEYS = ("image_auroc", "pixel_auroc", "aupro", "pixel_ap")
#: column headings of the tables
HEADERS = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AUPRO",
           "pixel_ap": "pixel AP", "f1_max": "F1-max", "fps_batch1": "FPS (batch 1)",
           "throughput": "images/s (batched)", "psnr_db": "PSNR (dB)",
           "wiener_psnr_db_t200": "Wiener PSNR from x_200 (dB)",
           "channel_spread": "channel spread"}



# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------
def _pct(v: Any) -> str:
    return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.1f}"


def _num(v: Any) -> str:
    """A non-percent number: two decimals, three below 1 (a channel spread of 0.015)."""
    if not isinstance(v, (int, float)) or (isinstance(v, float) and np.isnan(v)):
        return "—"
    return f"{v:.3f}" if abs(v) < 1 else f"{v:.2f}"


def results_markdown(rows: Sequence[dict[str, Any]], columns: Sequence[str] = METRIC_KEYS,
                     extra: Sequence[str] = ("fps_batch1",), paper: dict[str, float] | None = None,
                     title_cols: Sequence[str] = ("method", "category")) -> str:
    """A Markdown table of ``rows`` (metrics as fractions, shown in percent).

    ``paper``: the paper's numbers (percent) for the same dataset, printed as a last row marked
    "paper", never mixed into our averages. A row with ``<metric>_std`` (the standard deviation
    over seeds) shows it as "mean ± std".
    """
    head = list(title_cols) + [HEADERS.get(c, c.replace("_", " ")) for c in [*columns, *extra]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def metric(r: dict[str, Any], c: str) -> str:
        std = r.get(f"{c}_std")
        return _pct(r.get(c)) + (f" ± {100 * std:.1f}" if isinstance(std, (int, float)) else "")

    for r in rows:
        cells = [str(r.get(c, "")) for c in title_cols] + [metric(r, c) for c in columns]
        cells += [_num(r.get(c)) for c in extra]
        lines.append("| " + " | ".join(cells) + " |")
    if paper:
        cells = ["paper (reported)"] + [""] * (len(title_cols) - 1)
        cells += [f"{paper[c]:.1f}" if c in paper else "—" for c in columns] + ["—"] * len(extra)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mean_row(rows: Sequence[dict[str, Any]], keys: Sequence[str], **labels: str) -> dict[str, Any]:
    """The average of ``keys`` over ``rows`` (NaN-free values only)."""
    out: dict[str, Any] = dict(labels)
    for k in keys:
        vals = [float(r[k]) for r in rows if isinstance(r.get(k), (int, float))]
        out[k] = float(np.mean(vals)) if vals else None
    return out


@functools.lru_cache(maxsize=1)
def _commit_at_start() -> str:
    from dap.engine.checkpoint import git_commit

    return git_commit()


def provenance() -> dict[str, Any]:
    """How a results file was made: the command line, dap's version and the git commit of the
    code the process started with (read when dap.report is first imported), torch, the machine
    and the time (UTC)."""
    import torch

    from dap.engine.checkpoint import dap_version

    return {"command": " ".join(["python -m dap" if sys.argv[0].endswith(("__main__.py", "dap"))
                                 else Path(sys.argv[0]).name, *sys.argv[1:]]),
            "dap_version": dap_version(), "git_commit": _commit_at_start(),
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available()
            else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)",
            "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def write_tables(rows: Sequence[dict[str, Any]], out_dir: str | Path, stem: str = "results",
                 paper: dict[str, float] | None = None, extra: Sequence[str] = ("fps_batch1",),
                 kind: str | None = None) -> dict[str, Path]:
    """Write ``rows`` as ``<stem>.md``, ``<stem>.csv`` and ``<stem>.json`` under ``out_dir``.

    The JSON file is the results file: its ``rows``, the ``paper``'s numbers if any, and
    ``made_by`` (:func:`provenance`), and its ``kind`` if given (``"demo"``: rendered by
    :func:`demo_markdown`). Every published table is rendered from such a file.
    """
    out = Path(out_dir)
    keys = sorted({k for r in rows for k in r})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    return {
        "md": atomic_write_text(out / f"{stem}.md", results_markdown(rows, paper=paper, extra=extra)),
        "csv": atomic_write_text(out / f"{stem}.csv", buf.getvalue()),
        "json": atomic_write_text(out / f"{stem}.json", json.dumps(
            {"rows": list(rows), "paper": paper, "extra": list(extra), "made_by": provenance(),
             **({"kind": kind} if kind else {})},
            indent=2,
            default=str)),
    }


def example_figure(examples: dict[str, Tensor], title: str = "", max_rows: int = 4):
    """Rows of input | reconstruction | anomaly map | ground truth. Returns a Figure."""
    import matplotlib.pyplot as plt

    from dap.viz import to_numpy_image

    n = min(max_rows, len(examples["image"]))
    vmax = float(examples["map"][:n].max()) or 1.0  # one colour scale for every row
    fig, axes = plt.subplots(n, 4, figsize=(8, 2.1 * n + 0.4), squeeze=False)
    for i in range(n):
        panels = [(to_numpy_image(examples["image"][i]), None, "input", 1.0),
                  (to_numpy_image(examples["reconstruction"][i]), None, "reconstruction", 1.0),
                  (examples["map"][i].numpy(), "inferno", "anomaly map", vmax),
                  (examples["mask"][i].numpy(), "gray", "ground truth", 1.0)]
        for ax, (img, cmap, name, top) in zip(axes[i], panels):
            ax.imshow(img, cmap=cmap if img.ndim == 2 else None, vmin=0, vmax=top)
            ax.axis("off")
            if i == 0:
                ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig




def read_results(path: str | Path) -> dict[str, Any]:
    """A results file written by :func:`write_tables` (``<stem>.json``): rows, paper, made_by."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no results file {path}; run the command that writes it first")
    return json.loads(path.read_text())


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a results file written by :func:`write_tables`."""
    return list(read_results(path)["rows"])


# --------------------------------------------------------------------------------------------
# Published tables: rendered from the results files in results/, never typed by hand
# --------------------------------------------------------------------------------------------
_commit_at_start()   # the code this process runs, before anything can change the checkout

#: the committed results files (copies of what the commands wrote, with their ``made_by``)
RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"


def made_by_line(data: dict[str, Any], name: str) -> str:
    """The provenance line under a published table: which command, commit, machine and day
    wrote ``results/<name>`` (from its ``made_by`` record)."""
    m = data.get("made_by") or {}
    return (f"_From `results/{name}`, written by `{m.get('command', '?')}` "
            f"(dap {m.get('dap_version', '?')}, commit {str(m.get('git_commit', '?'))[:10]}, "
            f"{m.get('device', '?')}, {str(m.get('utc', '?'))[:10]})._")


def published_table(name: str, results_dir: str | Path | None = None) -> str:
    """The Markdown table ``name`` (a file ``results/<name>.json``) with its provenance line:
    the one function that turns results files into the numbers the README and notebooks show.

    Rows keep the file's order; metrics in percent, FPS with two decimals.
    """
    path = Path(results_dir or RESULTS_DIR) / f"{name}.json"
    if not path.exists():
        return (f"_No results file `results/{path.name}` for this version yet: nothing is "
                "shown rather than numbers that no file backs._\n")
    data = read_results(path)
    if data.get("kind") == "demo":
        return demo_markdown(data) + "\n" + made_by_line(data, path.name) + "\n"
    rows = data["rows"]
    title = ("method", "category") if any("category" in r for r in rows) else ("method",)
    extra = tuple(k for k in data.get("extra") or ("fps_batch1",) if any(k in r for r in rows))
    table = results_markdown(rows, extra=extra, paper=data.get("paper"), title_cols=title)
    return table + "\n" + made_by_line(data, path.name) + "\n"


# --------------------------------------------------------------------------------------------
# The demo: every shipped method side by side, and the goals the shipped models were set
# --------------------------------------------------------------------------------------------
#: the shipped models' goals (built-in test split, mean of the three categories), fractions
ZOO_GOALS: dict[str, dict[str, float]] = {
    "diffusionad": {"image_auroc": 0.97, "pixel_auroc": 0.95, "aupro": 0.90, "pixel_ap": 0.70},
    "ddad": {"image_auroc": 0.90, "pixel_auroc": 0.90},
    "glad": {"image_auroc": 0.90, "pixel_auroc": 0.90},
    "diffad": {"image_auroc": 0.90, "pixel_auroc": 0.90},
}
#: DiffusionAD's reconstructions of normal test images: PSNR above the Wiener estimate from
#: x_200 by at least this many dB on every category, and at most this channel spread
RECONSTRUCTION_GOALS = {"psnr_margin_db": 1.0, "channel_spread": 0.015}


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table of already formatted cells: the header ``head``, then ``rows``."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def demo_markdown(data: dict[str, Any]) -> str:
    """The demo's tables from its results file (``kind: "demo"``): the methods side by side
    (mean of the categories), every model, DiffusionAD's reconstruction quality, and the goals
    (:data:`ZOO_GOALS`, :data:`RECONSTRUCTION_GOALS`) with the measured number and met / not."""
    rows = data["rows"]
    means = [r for r in rows if r.get("category") == "mean"]
    models = [r for r in rows if r.get("category") != "mean"]
    side = [[r["method"], *(_pct(r.get(k)) for k in METRIC_KEYS), _num(r.get("fps_batch1")),
             "—" if r.get("train_seconds") is None else f"{r['train_seconds'] / 60:.0f}"]
            for r in means]
    out = ["**The methods side by side** (mean of the categories; training: minutes per model "
           "on a 2-core CPU, one thread per job, two jobs at a time, the machine shared with other "
           "work):\n\n",
           markdown_table(["method", *(HEADERS[k] for k in METRIC_KEYS), HEADERS["fps_batch1"],
                      "training (min)"], side),
           "\n**Every model:**\n\n", results_markdown(models, title_cols=("method", "category"))]
    recon = [r for r in models if r.get("psnr_db") is not None]
    if recon:
        out += ["\n**Reconstructions of the normal test images** (PSNR in dB, [-1, 1] units; "
                "Wiener: the linear least-squares estimate of x_0 from x_200, fitted on the "
                "training images; channel spread: mean absolute deviation of a pixel's three "
                "channels from their mean; the inputs' own spread in the last column):\n\n",
                markdown_table(["method", "category", "PSNR", "Wiener PSNR from x_200", "margin",
                           "channel spread", "inputs' spread"],
                          [[r["method"], r["category"], f"{r['psnr_db']:.2f}",
                            f"{r['wiener_psnr_db_t200']:.2f}",
                            f"{r['psnr_db'] - r['wiener_psnr_db_t200']:+.2f}",
                            f"{r['channel_spread']:.4f}", f"{r['input_channel_spread']:.4f}"]
                           for r in recon])]
    goal_rows = []
    by_method = {r["method"]: r for r in means}
    for method, goals in ZOO_GOALS.items():
        for key, target in goals.items():
            got = (by_method.get(method) or {}).get(key)
            goal_rows.append([method, f"{HEADERS.get(key, key)} (mean)", f">= {100 * target:.0f}",
                              _pct(got), "—" if got is None else
                              ("yes" if got >= target else "**no**")])
    for r in recon:
        margin = r["psnr_db"] - r["wiener_psnr_db_t200"]
        ok = margin >= RECONSTRUCTION_GOALS["psnr_margin_db"]
        goal_rows.append([r["method"], f"PSNR - Wiener PSNR, {r['category']}",
                          f">= {RECONSTRUCTION_GOALS['psnr_margin_db']:.0f} dB",
                          f"{margin:+.2f} dB", "yes" if ok else "**no**"])
        ok = r["channel_spread"] <= RECONSTRUCTION_GOALS["channel_spread"]
        goal_rows.append([r["method"], f"channel spread, {r['category']}",
                          f"<= {RECONSTRUCTION_GOALS['channel_spread']}",
                          f"{r['channel_spread']:.4f}", "yes" if ok else "**no**"])
    out += ["\n**The goals** (test split; met or not, as measured):\n\n",
            markdown_table(["method", "goal", "target", "measured", "met"], goal_rows)]
    return "".join(out)


_BLOCK = re.compile(r"(<!-- results: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results -->)",
                    re.DOTALL)


def render_results(text: str, results_dir: str | Path | None = None,
                   table: Callable[[str, Any], str] = published_table) -> str:
    """``text`` with every ``<!-- results: NAME -->`` ... ``<!-- /results -->`` block replaced
    by :func:`published_table` of ``NAME`` (what ``tools/results_tables.py --write`` does)."""
    return _BLOCK.sub(lambda m: m.group(1) + table(m.group("name"), results_dir) + m.group(4),
                      text)


def result_blocks(text: str) -> list[str]:
    """The names of the results blocks in ``text``."""
    return [m.group("name") for m in _BLOCK.finditer(text)]


__all__ = ["PAPER_RESULTS", "METRIC_KEYS", "results_markdown", "mean_row", "write_tables",
           "provenance", "read_results", "read_rows", "RESULTS_DIR", "published_table",
           "render_results", "result_blocks", "example_figure", "made_by_line", "ZOO_GOALS",
           "RECONSTRUCTION_GOALS", "demo_markdown", "markdown_table"]
