"""Render the published tables from the results files, or check that they are current.

    python tools/results_tables.py --write    # after copying a new results file into results/
    python tools/results_tables.py --check    # CI: fail if README.md disagrees with results/

Every ``<!-- results: NAME -->`` ... ``<!-- /results -->`` block of README.md is replaced by
:func:`dap.report.published_table` of ``results/NAME.json``: measured numbers are never typed by
hand. A results file is what a command wrote (``write_tables``), copied verbatim, e.g.
``cp runs/demo/results.json results/demo.json``; its ``made_by`` record says how it was made.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dap.report import render_results, result_blocks

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true")
    mode.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    stale = []
    for path in FILES:
        text = path.read_text()
        new = render_results(text)
        if new != text:
            if args.write:
                path.write_text(new)
                print(f"rewrote {path.relative_to(ROOT)} ({', '.join(result_blocks(text))})")
            else:
                stale.append(str(path.relative_to(ROOT)))
    if stale:
        print(f"{', '.join(stale)}: results tables differ from results/; run "
              "`python tools/results_tables.py --write`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
