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


# --- notebook times: results/notebook-times.json (tools/time_notebooks.py) -------------------
# Not a metrics table, so it has its own renderer; every other block stays published_table.
def notebook_times_table(results_dir: str | Path | None = None) -> str:
    """Seconds per notebook under each profile, with each profile's ``made_by`` line."""
    import json

    path = Path(results_dir or ROOT / "results") / "notebook-times.json"
    if not path.exists():
        return ("_No results file `results/notebook-times.json` yet: run "
                "`python tools/time_notebooks.py --profile ci`._\n")
    profiles = json.loads(path.read_text())["profiles"]
    names = sorted({r["notebook"] for sec in profiles.values() for r in sec["rows"]})
    cell = {(p, r["notebook"]): r for p, sec in profiles.items() for r in sec["rows"]}

    def show(row: dict | None) -> str:
        if row is None:
            return "—"
        s = row["seconds"]
        time = f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"
        if row.get("load_average") is not None:
            time += f" (load {row['load_average']:g})"
        return time if row["status"] == "ok" else f"{time} ({row['status']})"

    lines = ["| notebook | " + " | ".join(f"`{p}`" for p in profiles) + " |",
             "|---|" + "---|" * len(profiles)]
    lines += [f"| {n} | " + " | ".join(show(cell.get((p, n))) for p in profiles) + " |"
              for n in names]
    for p, sec in profiles.items():
        m = sec.get("made_by", {})
        lines.append(f"\n_`{p}`: `{m.get('command', '?')}` (dap {m.get('dap_version', '?')}, "
                     f"commit {str(m.get('git_commit', '?'))[:10]}, {m.get('device', '?')}, "
                     f"{str(m.get('utc', '?'))[:10]}); wall clock per notebook, one at a "
                     "time, one thread; load = the machine's 5-minute load average when the "
                     "notebook ended (other jobs share the machine)._")
    return "\n".join(lines) + "\n"


def _table(name: str, results_dir: str | Path | None = None) -> str:
    from dap.report import published_table

    return notebook_times_table(results_dir) if name == "notebook-times" else \
        published_table(name, results_dir)


_render_published = render_results


def render_results(text: str, results_dir: str | Path | None = None) -> str:  # noqa: F811
    """dap.report.render_results, with the notebook-times block rendered by its own table."""
    return _render_published(text, results_dir, table=_table)
# --- end of notebook times --------------------------------------------------------------------


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
