"""Tables and figures of results: the one place numbers become Markdown, CSV, JSON or a plot.

Every table a person reads — the demo report, the benchmark table, the README's result tables,
the notebooks' measured tables — is made here from a results file (``*.json`` written by
:func:`write_tables`), never typed by hand. The paper's numbers are printed *beside* ours,
never in their place.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

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



# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------
def _pct(v: Any) -> str:
    return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.1f}"


def results_markdown(rows: Sequence[dict[str, Any]], columns: Sequence[str] = METRIC_KEYS,
                     extra: Sequence[str] = ("fps_batch1",), paper: dict[str, float] | None = None,
                     title_cols: Sequence[str] = ("method", "category")) -> str:
    """A Markdown table of ``rows`` (metrics as fractions, shown in percent).

    ``paper``: the paper's numbers (percent) for the same dataset, printed as a last row marked
    "paper", never mixed into our averages.
    """
    head = list(title_cols) + [c.replace("_", " ") for c in columns] + list(extra)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r.get(c, "")) for c in title_cols] + [_pct(r.get(c)) for c in columns]
        cells += [f"{r[c]:.2f}" if isinstance(r.get(c), (int, float)) else "—" for c in extra]
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


def write_tables(rows: Sequence[dict[str, Any]], out_dir: str | Path, stem: str = "results",
                 paper: dict[str, float] | None = None, extra: Sequence[str] = ("fps_batch1",)
                 ) -> dict[str, Path]:
    """Write ``rows`` as ``<stem>.md``, ``<stem>.csv`` and ``<stem>.json`` under ``out_dir``."""
    out = Path(out_dir)
    keys = sorted({k for r in rows for k in r})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    return {
        "md": atomic_write_text(out / f"{stem}.md", results_markdown(rows, paper=paper, extra=extra)),
        "csv": atomic_write_text(out / f"{stem}.csv", buf.getvalue()),
        "json": atomic_write_text(out / f"{stem}.json",
                             json.dumps({"rows": list(rows), "paper": paper}, indent=2)),
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




def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a results file written by :func:`write_tables` (``<stem>.json``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no results file {path}; run the command that writes it first")
    return list(json.loads(path.read_text())["rows"])


__all__ = ["PAPER_RESULTS", "METRIC_KEYS", "results_markdown", "mean_row", "write_tables",
           "read_rows", "example_figure"]
