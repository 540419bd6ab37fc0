"""The shipped models' validation curves: what limits each method at the zoo budget.

    python tools/zoo_curves.py --runs runs/zoo --out runs/zoo/zoo-validation.json
    cp runs/zoo/zoo-validation.json results/ && python tools/results_tables.py --write

Reads ``<runs>/<method>-<category>/history.json`` (written by ``python -m dap train`` for every
model ``tools/train_zoo.py`` trains) and writes one row per model: the mean validation metric
(``val_mean``: image AUROC, pixel AUROC, pixel AP and AUPRO on the validation split of normal
images + synthetic anomalies) at each validation step, and the selected step. A curve still
rising at the last steps says the budget limits the model; a curve flat from early on says
something else does. DiffAD validates only at its end (its segmenter phase comes last), so its
row has one point.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    from dap.experiments import ZOO_CATEGORIES, zoo_recipes
    from dap.io import atomic_write_text
    from dap.report import provenance

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="runs/zoo")
    parser.add_argument("--out", default="runs/zoo/zoo-validation.json")
    args = parser.parse_args(argv)
    rows = []
    for method in zoo_recipes():
        for cat in ZOO_CATEGORIES:
            path = Path(args.runs) / f"{method}-{cat}" / "history.json"
            if not path.exists():
                continue
            hist = json.loads(path.read_text())
            vals = [v for v in hist.get("validations", []) if "val_mean" in v]
            if not vals:
                continue
            best = hist.get("best") or {}
            rows.append({"method": method, "category": cat,
                         "steps": [int(v["step"]) for v in vals],
                         "val_mean": [float(v["val_mean"]) for v in vals],
                         "selected_step": best.get("step")})
    if not rows:
        print(f"no validation curves under {args.runs}: train the zoo first "
              "(python tools/train_zoo.py)", file=sys.stderr)
        return 1
    atomic_write_text(Path(args.out), json.dumps(
        {"kind": "zoo-validation", "rows": rows, "made_by": provenance()}, indent=1))
    print(f"{len(rows)} curves -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
