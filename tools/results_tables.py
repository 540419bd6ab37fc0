"""Render the published tables from the results files, or check that they are current.

    python tools/results_tables.py --write    # after copying a new results file into results/
    python tools/results_tables.py --check    # CI: fail if README.md disagrees with results/

Every ``<!-- results: NAME -->`` ... ``<!-- /results -->`` block of README.md is replaced by
:func:`dap.report.published_table` of ``results/NAME.json`` (a metrics table), or, for the
benchmark files that carry a ``kind`` (``speed``, ``memory``, ``bf16-vs-fp32``,
``demo-paths``, ``zoo-validation``, ``gpu``: written by ``benchmarks/*.py --out``), by that kind's table below: measured
numbers are never typed by hand. A results file is what a command wrote (``write_tables``), copied verbatim, e.g.
``cp runs/demo/results.json results/demo.json``; its ``made_by`` record says how it was made.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

from dap.report import (RESULTS_DIR, made_by_line, markdown_table, published_table,
                        read_results, render_results, result_blocks)

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


# --------------------------------------------------------------------------------------------
# Tables of the benchmark results files (``kind``)
# --------------------------------------------------------------------------------------------
SPEED_PARTS = {"denoiser": "denoiser forward + backward", "train": "joint training step",
               "predict": "inference (norm-guided x0_g + segmenter)"}
SPEED_GOALS = {"train": 2.0, "predict": 2.5}


def speed_table(data: dict[str, Any]) -> str:
    """img/s of the plain and fast paths (and fast+compile if measured) and their ratios."""
    res = [r for r in data["results"] if r.get("part") in SPEED_PARTS]
    compiled = any("fast+compile" in r["img_per_s"] for r in res)
    head = ["size", "measured", "plain img/s", "fast img/s", "fast / plain"]
    if compiled:
        head += ["fast+compile img/s", "fast+compile / plain"]
    head.append("goal")
    rows = []
    for r in res:
        ips, ratio = r["img_per_s"], r["ratio"]
        row = [f"{r['size']} px", SPEED_PARTS[r["part"]], f"{ips['plain']:.1f}",
               f"{ips['fast']:.1f}", f"**{ratio['fast']:.2f}x**"]
        if compiled:
            row += [f"{ips['fast+compile']:.1f}", f"{ratio['fast+compile']:.2f}x"]
        goal = SPEED_GOALS.get(r["part"])
        row.append(f">= {goal:g}x" if goal else "")
        rows.append(row)
    table = markdown_table(head, rows)
    comp = [r for r in data["results"] if r.get("part") == "compile"]
    if comp:
        table += "\n" + "; ".join(
            f"torch.compile at {r['size']} px: {r['seconds']:.0f} s of compiling on the first "
            f"calls{'' if r['compiled'] else ' (fell back to eager)'}" for r in comp) + ".\n"
    threads = data.get("threads", {}).get("num_threads", "?")
    table += (f"\nBatch {data.get('batch', '?')}, medians of {data.get('reps', '?')} interleaved "
              f"repetitions, {threads} thread(s), fast-path dtype {data.get('dtype')}.\n")
    return table


def memory_table(data: dict[str, Any]) -> str:
    """Peak RSS per configuration and batch, the per-sample fit and its batch-N prediction."""
    configs = list(dict.fromkeys(r["config"] for r in data["rows"]))
    batches = sorted({r["batch"] for r in data["rows"]})
    n = data.get("predict_batch", 16)
    head = ["configuration", *[f"batch {b} (GB)" for b in batches], "fit (GB)",
            f"predicted, batch {n} (GB)", "step at batch 1 (s)"]
    rows = []
    for c in configs:
        by_b = {r["batch"]: r for r in data["rows"] if r["config"] == c}
        cells = [c]
        for b in batches:
            r = by_b.get(b)
            cells.append("—" if r is None else "killed" if r.get("killed")
                         else f"{r['peak_kb'] / 2**20:.2f}")
        f = data["fits"].get(c)
        cells += [f"{f['a_gb']:.2f} + {f['b_gb_per_image']:.2f} x batch" if f else "—",
                  f"**{f['predicted_gb']:.1f}**" if f else "—"]
        r1 = by_b.get(1)
        cells.append(f"{r1['seconds']:.0f}" if r1 and not r1.get("killed") else "—")
        rows.append(cells)
    return markdown_table(head, rows) + (f"\nPreset `{data.get('preset')}`: peak resident memory of a fresh "
                              "process, one training step with the optimiser.\n")


def bf16_table(data: dict[str, Any]) -> str:
    """Validation (every point) and test metrics of the two arms, in percent."""
    f32, b16 = data["arms"]["off"], data["arms"]["bf16"]
    rows = []
    for v32, v16 in zip(f32["validations"], b16["validations"]):
        for k in ("val_image_auroc", "val_pixel_auroc", "val_aupro", "val_pixel_ap", "val_mean"):
            if k in v32 and k in v16:
                rows.append([f"validation, step {int(v32['step'])}", k[4:].replace("_", " "),
                             f"{100 * v32[k]:.1f}", f"{100 * v16[k]:.1f}",
                             f"{100 * (v16[k] - v32[k]):+.1f}"])
    for k in ("image_auroc", "pixel_auroc", "aupro", "pixel_ap"):
        if k in f32.get("test", {}) and k in b16.get("test", {}):
            a, b = f32["test"][k], b16["test"][k]
            rows.append([f"test, step {data['steps']}", k.replace("_", " "), f"{100 * a:.1f}",
                         f"{100 * b:.1f}", f"{100 * (b - a):+.1f}"])
    rows.append(["training", "loss (mean of the last 20 steps)", f"{f32['final_loss']:.4f}",
                 f"{b16['final_loss']:.4f}", f"{b16['final_loss'] - f32['final_loss']:+.4f}"])
    rows.append(["training", "wall time (s, 1 thread each, in parallel)",
                 f"{f32['seconds']:.0f}", f"{b16['seconds']:.0f}", ""])
    return markdown_table(["when", "metric", "fp32, plain path", "bf16, fast path", "bf16 - fp32"], rows) + (
        f"\n`{data['data']}`, seed {data['seed']}, {data['steps']} steps, the last step's "
        "weights; percent.\n")


def demo_paths_table(data: dict[str, Any]) -> str:
    """Per shipped model and metric: plain, fast, the change and the seed-to-seed noise."""
    rows = []
    for m in data["models"]:
        for k, c in m["metrics"].items():
            verdict = {True: "yes", False: "**no**", None: "—"}[c["within_noise"]]
            rows.append([m["model"], k.replace("_", " "), f"{100 * c['plain_mean']:.2f}",
                         f"{100 * c['fast_mean']:.2f}", f"{100 * c['change']:+.2f}",
                         "—" if c["noise"] is None else f"{100 * c['noise']:.2f}", verdict])
        if "fps_batch1" in m["plain"]:
            p, f = m["plain"], m["fast"]
            rows.append([m["model"], "FPS at batch 1", f"{p['fps_batch1']:.1f}",
                         f"{f['fps_batch1']:.1f}", f"{f['fps_batch1'] / p['fps_batch1']:.2f}x",
                         "", ""])
    return markdown_table(["model", "metric", "plain", "fast", "change", "noise (seed range)",
                "within noise"], rows) + (
        f"\nTest split, percent, means over inference seeds {data['seeds']} (a method whose "
        "inference draws no noise, DRAEM, is evaluated once: no seed range, no verdict).\n")


def zoo_validation_table(data: dict[str, Any]) -> str:
    """Per shipped model: its mean validation metric at each validation step (percent)."""
    steps = sorted({s for r in data["rows"] for s in r["steps"]})
    rows = []
    for r in data["rows"]:
        at = dict(zip(r["steps"], r["val_mean"]))
        rows.append([r["method"], r["category"],
                     *(f"{100 * at[s]:.1f}" if s in at else "—" for s in steps),
                     str(r.get("selected_step", "—"))])
    return markdown_table(["method", "category", *(f"step {s}" for s in steps), "selected"], rows) + (
        "\nMean of image AUROC, pixel AUROC, pixel AP and AUPRO on the validation split "
        "(normal images + synthetic anomalies), percent.\n")


GPU_CONFIG_WORDS = {"fp32": "float32, plain", "bf16": "bf16 fast path", "ckpt": "checkpointing",
                    "compile": "torch.compile", "cl": "channels_last",
                    "upcastgn": "float32 GroupNorm"}


def gpu_table(data: dict[str, Any]) -> str:
    """benchmarks/gpu.py: training img/s and peak memory per configuration, then inference."""
    base = next((r for r in data["train"] if r["config"] == "fp32" and not r.get("oom")), None)
    rows = []
    for r in data["train"]:
        words = " + ".join(GPU_CONFIG_WORDS.get(w, w) for w in r["config"].split("+"))
        if r.get("oom"):
            rows.append([f"`{r['config']}`", words, "out of memory", "", "", ""])
            continue
        note = "fell back to eager" if r.get("compiled") is False else             f"{r['warmup_s']:.0f}" if r.get("compiled") else ""
        rows.append([f"`{r['config']}`", words, f"{r['img_per_s']:.1f}",
                     f"{r['img_per_s'] / base['img_per_s']:.2f}x" if base else "",
                     f"{r['peak_gb']:.1f}", note])
    out = ""
    if rows:
        out = markdown_table(["config", "what", f"train img/s (batch {data['batch']})",
                              "vs fp32", "peak GB", "compile: warm-up s"], rows)
    if data.get("inference"):
        b = data.get("infer_batch", data["batch"])
        irows = [[r["path"], f"{r['fps_batch1']:.1f}", f"{r[f'fps_batch{b}']:.1f}"]
                 for r in data["inference"]]
        out += ("\n" if out else "") + markdown_table(
            ["inference path", "FPS at batch 1", f"images/s at batch {b}"], irows)
    return out + (f"\n`{data['preset']}` preset, {data['device']}, torch {data['torch']}; "
                  f"{data['warmup']} warm-up + median of {data['reps']} timed steps; peak = "
                  "`torch.cuda.max_memory_allocated`.\n")


RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "gpu": gpu_table,
    "speed": speed_table, "memory": memory_table, "bf16-vs-fp32": bf16_table,
    "demo-paths": demo_paths_table, "zoo-validation": zoo_validation_table}


def table(name: str, results_dir: str | Path | None = None) -> str:
    """The block for ``results/<name>.json``: its kind's table, else the metrics table."""
    if name == "notebook-times":
        return notebook_times_table(results_dir)
    path = Path(results_dir or RESULTS_DIR) / f"{name}.json"
    if path.exists():
        data = read_results(path)
        kind = data.get("kind")
        if kind in RENDERERS:
            return RENDERERS[kind](data) + "\n" + made_by_line(data, path.name) + "\n"
    return published_table(name, results_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true")
    mode.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    stale = []
    for path in FILES:
        text = path.read_text()
        new = render_results(text, table=table)
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
