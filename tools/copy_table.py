"""DiffAD's "direct copy" measure for the benchmark's models, DiffusionAD beside them.

For each built-in category, the defective test images are reconstructed by the shipped DiffusionAD
model and by every DiffAD model that ``python -m dap benchmark --methods diffad`` trained under
the given output folders; the table gives (mean over categories, in dB):

- copy PSNR: reconstruction vs input inside the defects (lower = less of the defect copied),
- context PSNR: the same outside the defects (higher = normal detail kept),
- repair PSNR: reconstruction vs the clean original inside the defects (higher = repaired).

The paper (DiffAD, MVTec AD) reports copy PSNR 36.73 dB for DiffAD and 38.49 dB for DRAEM.

    python tools/copy_table.py runs/benchmark-diffad runs/benchmark-diffad-ablation \
        --out runs/copy-psnr
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

from dap import zoo
from dap.analysis import load_test_tensors
from dap.copy_metrics import copy_measures
from dap.io import atomic_write_text
from dap.methods import load_method

CATEGORIES = ("brick", "grass", "gravel")
KEYS = ("copy_psnr", "context_psnr", "repair_psnr")


def models_for(category: str, dirs: list[Path]) -> dict[str, torch.nn.Module]:
    """The shipped DiffusionAD model and every DiffAD model found under ``dirs`` for a category."""
    found = {"diffusionad (shipped)": zoo.load(f"diffusionad-builtin-{category}")}
    for root in dirs:
        for ckpt in sorted((root / "train").glob(f"*-builtin-{category}/last.pt")):
            label = ckpt.parent.name[: -len(f"-builtin-{category}")]
            found[label] = load_method(ckpt)
            if label == "diffad":        # the benchmark's "noisy-sample" row: the same weights
                noisy = copy.deepcopy(found[label])
                noisy.config.sample_condition = "noisy"
                found["diffad noisy-sample"] = noisy
    return found


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
    lines = ["| model | copy PSNR (dB, lower = less copied) | context PSNR | repair PSNR |"
             " categories |", "|---|---|---|---|---|"]
    for label, cats in per.items():
        mean = {k: float(np.mean([v[k] for v in cats.values()])) for k in KEYS}
        lines.append(f"| {label} | {mean['copy_psnr']:.2f} | {mean['context_psnr']:.2f} | "
                     f"{mean['repair_psnr']:.2f} | {', '.join(cats)} |")
    table = "\n".join(lines) + "\n"
    atomic_write_text(args.out / "copy-psnr.md", table)
    atomic_write_text(args.out / "copy-psnr.json", json.dumps(per, indent=1))
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
