"""DiffAD's "direct copy" measure for the benchmark's models, DiffusionAD beside them.

For each built-in category, the defective test images are reconstructed by the shipped DiffusionAD
and DiffAD models and by every DiffAD model that ``python -m dap benchmark --methods diffad``
trained under the given output folders (each ``diffad`` model also sampled with the official
alternative condition, ``noisy_fixed``); the table gives, in dB, means over categories of per-image means:

- copy PSNR over the defect's pixels (``copy_psnr_region``; lower = less of the defect copied),
- copy PSNR of the masked images over the whole image (``copy_psnr_masked_image``, the same
  error read over every pixel: the region's value + 10 log10(1 / mask fraction)),
- the mean of 10 log10(1 / mask fraction) (``mask_gain_db``), the gap between the two,
- context PSNR (outside the defects; higher = normal detail kept),
- repair PSNR (vs the clean original over the defect's pixels; higher = repaired).

The paper (DiffAD, MVTec AD, 256 px) reports 36.73 dB (DiffAD) and 38.49 dB (DRAEM) without its
formula; only the masked-image column is on that scale, and the table prints the paper's values
on their own line, never in a column of dap's. Writes ``copy-psnr.{md,csv,json}`` (the JSON is
a results file with its provenance, :func:`dap.report.write_tables`).

    python tools/copy_table.py runs/benchmark-diffad-ablation --out runs/copy-psnr
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch

from dap import zoo
from dap.analysis import load_test_tensors
from dap.config import replace
from dap.copy_metrics import COPY_KEYS, PAPER_COPY_PSNR, copy_measures
from dap.engine.checkpoint import load_method
from dap.io import atomic_write_text
from dap.report import write_tables

CATEGORIES = ("brick", "grass", "gravel")
HEADINGS = {"copy_psnr_region": "copy PSNR, defect pixels", "copy_psnr_masked_image":
            "copy PSNR, masked image", "mask_gain_db": "10 log10(1 / mask fraction)",
            "context_psnr": "context PSNR", "repair_psnr": "repair PSNR"}


def models_for(category: str, dirs: list[Path]) -> dict[str, torch.nn.Module]:
    """The shipped DiffusionAD and DiffAD models (the latter also sampled with the official
    alternative condition) and every DiffAD model found under ``dirs`` for a category."""
    def with_noisy_fixed(label: str, model: torch.nn.Module, suffix: str = "") -> None:
        # the same weights, also sampled with the official alternative condition
        found[label + suffix] = model
        noisy = copy.deepcopy(model)
        noisy.config = replace(noisy.config, sample_condition="noisy_fixed")
        found[f"{label} noisy-fixed{suffix}"] = noisy

    found = {"diffusionad (shipped)": zoo.load(f"diffusionad-builtin-{category}")}
    if f"diffad-builtin-{category}" in zoo.available():
        with_noisy_fixed("diffad", zoo.load(f"diffad-builtin-{category}"), " (shipped)")
    for root in dirs:
        for ckpt in sorted((root / "train").glob(f"*-builtin-{category}/last.pt")):
            label = ckpt.parent.name[: -len(f"-builtin-{category}")]
            if label == "diffad":
                with_noisy_fixed(label, load_method(ckpt))
            else:
                found[label] = load_method(ckpt)
    return found


def table_markdown(rows: list[dict]) -> str:
    """dap's rows in dB, then the paper's values on their own line, labelled as the paper's."""
    head = ["model", *(HEADINGS[k] for k in COPY_KEYS), "categories"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r[k]:.2f}" if isinstance(r.get(k), float) else "—" for k in COPY_KEYS]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + f" | {r['categories']} |")
    paper = ", ".join(f"{k} {v:.2f} dB" for k, v in PAPER_COPY_PSNR.items())
    return ("\n".join(lines) + "\n\nThe paper's copy PSNR (MVTec AD, 256 px, formula not stated; "
            f"on the scale of the masked-image column, not of the defect-pixel one): {paper}.\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", type=Path, help="output folders of `dap benchmark`")
    p.add_argument("--out", type=Path, default=Path("runs/copy-psnr"))
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args(argv)
    missing = [str(d) for d in args.dirs if not (d / "train").is_dir()]
    if missing:
        sys.exit(f"copy_table: no trained models under {missing} (expected <dir>/train/...); "
                 "run `python -m dap benchmark --methods diffad --out <dir>` first")
    per: dict[str, dict[str, dict[str, float]]] = {}
    for cat in CATEGORIES:
        test = load_test_tensors(cat, args.size, kind="defect")
        for label, model in models_for(cat, args.dirs).items():
            model.eval()
            with torch.no_grad():
                rec = torch.cat([model.predict(test.images[i:i + 16]).reconstruction
                                 for i in range(0, len(test), 16)])
            per.setdefault(label, {})[cat] = copy_measures(rec, test.images, test.masks,
                                                           test.cleans)
            print(cat, label, {k: round(v, 2) for k, v in per[label][cat].items()}, flush=True)
    rows = [{"method": label, "categories": ", ".join(cats),
             **{k: float(np.mean([v[k] for v in cats.values()])) for k in COPY_KEYS}}
            for label, cats in per.items()]
    per_cat = [{"method": label, "category": f"builtin:{cat}", **values}
               for label, cats in per.items() for cat, values in cats.items()]
    write_tables(per_cat, args.out, stem="copy-psnr-per-category", extra=COPY_KEYS)
    write_tables(rows, args.out, stem="copy-psnr", extra=COPY_KEYS)
    table = table_markdown(rows)
    atomic_write_text(args.out / "copy-psnr.md", table)   # the dB table (write_tables' is in %)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
