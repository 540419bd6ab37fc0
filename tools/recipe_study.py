"""The training-recipe study of DiffusionAD at 64 px: one change at a time, same seed and budget.

    python tools/recipe_study.py --categories grass --steps 600          # resumable
    cp runs/study/recipe-study.json results/ && python tools/results_tables.py --write

Every row trains ``builtin:<category>`` at the ``ci`` preset (rows: ``dap.experiments.
recipe_variants``), selects its checkpoint on the validation split and reports *validation*
metrics (the test split is never used to choose a recipe), the reconstruction PSNR of the normal
validation images against the Wiener estimate from x_200, and the channel spread of those
reconstructions (the inputs are grey). Each run continues from its ``last.pt`` when restarted.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # before torch: see dap.runtime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--categories", nargs="+", default=["grass"])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--only", nargs="*", help="row labels to run (default: all)")
    parser.add_argument("--out", default="runs/study")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from dap.experiments import recipe_study
    from dap.report import results_markdown

    rows = recipe_study(args.categories, args.steps, args.out, only=args.only)
    print(results_markdown(rows, extra=("psnr_db", "wiener_psnr_db_t200", "channel_spread")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
