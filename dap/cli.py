"""The command line: ``python -m dap <command> ...`` (also installed as ``dap``). Every command.

``data builtin``   write the built-in offline benchmark in MVTec AD layout
``data download``  download, verify, safely extract (and convert) a benchmark (MVTec AD, VisA,
                   MPDD, DAGM, DTD)
``data convert``   convert a VisA or DAGM copy you unpacked yourself
``data verify``    count a dataset folder's images against the known tables
``train``          train a method on a dataset category (:func:`dap.experiments.train_run`)
``evaluate``       evaluate a checkpoint or shipped model on test splits
``demo``           evaluate the shipped models on the built-in benchmark -> runs/demo/report.md
``ablation``       DiffusionAD's reconstruction ablation (Table VII)
``benchmark``      the side-by-side table of every method on the same data and metrics

Parsing and dispatch only: the work is in :mod:`dap.experiments` and :mod:`dap.data`, imported
inside the handlers so that ``--help`` stays fast. ``data_scripts/*.py`` are shims over
``data download / convert / verify``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from dap.profiles import PROFILES


# --------------------------------------------------------------------------------------------
# Shared argument helpers
# --------------------------------------------------------------------------------------------
def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _common(p: argparse.ArgumentParser, profile: bool = True, data: bool = True) -> None:
    """The options a command uses (a command takes none that it would ignore)."""
    if profile:
        p.add_argument("--profile", choices=PROFILES, default=None,
                       help="sizes: ci | cpu | full (default: $DAP_PROFILE, else full with CUDA, "
                            "else cpu)")
    if data:
        p.add_argument("--data-root", default=None, help="override $DAP_DATA")
        p.add_argument("--device", default=None,
                       help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--batch-size", type=positive_int, default=None)


def parse_assignments(pairs: list[str] | None) -> dict:
    """KEY=VALUE pairs with JSON values (``steps=200``, ``w=0.5``, ``reconstruction="ddim"``)."""
    out = {}
    for item in pairs or []:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def run_data_builtin(args) -> int:
    from dap.data.builtin import default_builtin_root, write_builtin

    root = args.root if args.root is not None else default_builtin_root(args.size, args.seed)
    start = time.perf_counter()
    status = write_builtin(root, size=args.size, seed=args.seed, categories=args.categories,
                           force=args.force, progress=not args.quiet)
    if not args.quiet:
        parts = ", ".join(f"{c} {s}" for c, s in status.items())
        print(f"built-in benchmark {args.size}px seed {args.seed} at {root}: {parts} "
              f"({time.perf_counter() - start:.1f} s)")
    return 0


def run_data_download(args) -> int:
    from dap.data.prepare import prepare

    try:
        report = prepare(args.name, args.root, url=args.url, sha256=args.sha256, md5=args.md5,
                         progress=not args.quiet, retries=args.retries, timeout=args.timeout,
                         remove_archive=args.remove_archive)
    except KeyboardInterrupt:
        print("interrupted: nothing was installed; a partial download (.part) resumes next time",
              file=sys.stderr)
        return 130
    if report is None:
        return 1
    print(report)
    return 0 if report.ok else 1


def run_data_convert(args) -> int:
    from dap.data.convert import convert_dagm, convert_visa
    from dap.data.verify import verify_dataset

    fn = convert_visa if args.name == "visa" else convert_dagm
    counts = fn(args.src, args.dst, mode=args.mode)
    for cat, c in counts.items():
        print(f"  {cat:14s} " + ", ".join(f"{k} {v}" for k, v in c.items()))
    report = verify_dataset(args.name, args.dst, list(counts))
    print(report)
    return 0 if report.ok else 1


def run_data_verify(args) -> int:
    from dap.data.verify import verify_dataset, verify_dtd

    report = verify_dtd(args.root) if args.name == "dtd" else verify_dataset(
        args.name, args.root, args.categories or None)
    print(report)
    return 0 if report.ok else 1


def add_data(sub) -> None:
    from dap.data.fetch import SOURCES
    from dap.data.registry import BUILTIN_CATEGORIES, DATASETS

    parser = sub.add_parser("data", help="build, download, convert or check datasets",
                            description="Build, download, convert or check datasets.")
    dsub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    dsub.required = True

    b = dsub.add_parser(
        "builtin", help="write the built-in offline benchmark (MVTec AD layout)",
        description="Write the built-in offline benchmark: scikit-image textures cut into "
                    "disjoint train/validation/test regions, test defects from six generators "
                    "(scratch, crack, hole, stain, foreign, smear) with exact masks and the "
                    "clean image of each. Cached: a second call with the same parameters "
                    "does nothing.")
    b.add_argument("--root", default=None, help="benchmark root (default: $DAP_DATA/builtin/<size>)")
    b.add_argument("--size", type=int, default=64, help="image side in px (default 64)")
    b.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    b.add_argument("--categories", nargs="+", default=list(BUILTIN_CATEGORIES),
                   choices=list(BUILTIN_CATEGORIES), metavar="CATEGORY",
                   help=f"subset of {', '.join(BUILTIN_CATEGORIES)} (default: all)")
    b.add_argument("--force", action="store_true", help="rebuild even if cached")
    b.add_argument("--quiet", action="store_true", help="print nothing")
    b.set_defaults(func=run_data_builtin)

    d = dsub.add_parser(
        "download", help="download, verify and extract a benchmark (MVTec AD layout)",
        description="Download, verify, safely extract (and convert) a benchmark into an MVTec "
                    "AD layout folder. Archives are pinned by checksum; an interrupted download "
                    "resumes from its .part file. Exit status: 0 complete, 1 incomplete, 2 error.")
    d.add_argument("name", choices=list(SOURCES), help="which dataset")
    d.add_argument("--root", required=True, help="the dataset root to fill")
    d.add_argument("--url", default=None, help="another address for the archive "
                   "(for dagm: a Zenodo record API URL or a direct archive URL)")
    group = d.add_mutually_exclusive_group()
    group.add_argument("--sha256", default=None, help="expected sha256 (replaces the pinned one)")
    group.add_argument("--md5", default=None, help="expected md5 (replaces the pinned one)")
    d.add_argument("--retries", type=int, default=3, help="network retries (default 3)")
    d.add_argument("--timeout", type=float, default=60.0, help="socket timeout in s")
    d.add_argument("--remove-archive", action="store_true",
                   help="delete the archive after a successful install")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=run_data_download)

    c = dsub.add_parser("convert", help="convert a VisA or DAGM copy you unpacked yourself",
                        description="Convert an unpacked VisA or DAGM 2007 copy into the MVTec "
                                    "AD layout, then verify it.")
    c.add_argument("name", choices=["visa", "dagm"])
    c.add_argument("--src", required=True, help="the unpacked original dataset")
    c.add_argument("--dst", required=True, help="new folder for the MVTec layout")
    c.add_argument("--mode", choices=["copy", "link", "move"], default="copy")
    c.set_defaults(func=run_data_convert)

    v = dsub.add_parser("verify", help="count a dataset folder's images against the known tables")
    v.add_argument("name", choices=[*DATASETS, "dtd"])
    v.add_argument("--root", required=True, help="the dataset root")
    v.add_argument("--categories", nargs="+", default=None, metavar="CATEGORY")
    v.set_defaults(func=run_data_verify)


# --------------------------------------------------------------------------------------------
# train / evaluate / demo / ablation / benchmark
# --------------------------------------------------------------------------------------------
def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a method on DATASET:CATEGORY",
                       description="Train a method on one category. Model selection uses the "
                                   "validation split (normal + synthetic anomalies).")
    p.add_argument("--method", default="diffusionad")
    p.add_argument("--data", required=True, help="DATASET:CATEGORY, e.g. builtin:brick, mvtec:bottle")
    p.add_argument("--out", default=None, help="run directory (default runs/train/...)")
    p.add_argument("--preset", default=None, help="model preset: ci | cpu | paper (default: from profile)")
    p.add_argument("--steps", type=positive_int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), default=None)
    p.add_argument("--select", default=None, help="validation metric to select on, or 'last'")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="method config overrides")
    p.add_argument("--train-set", nargs="*", metavar="KEY=VALUE", help="TrainConfig overrides")
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT/last.pt exists")
    p.add_argument("--export", default=None, metavar="NAME",
                   help="also write the selected model to dap/checkpoints/NAME.{pt,json} (a "
                        "name, not a path)")
    p.add_argument("--force", action="store_true", help="let --export replace a zoo model")
    _common(p)
    p.set_defaults(func=run_train)


def run_train(args) -> int:
    import shlex

    from dap import zoo
    from dap.engine.checkpoint import git_commit
    from dap.experiments import train_run

    if args.export:
        # checked before training, not after hours of it
        zoo.check_name(args.export)
        if not args.force and args.export in zoo.available():
            raise ValueError(f"--export {args.export}: a zoo model of that name exists; choose "
                             "another name or add --force")
    tover = parse_assignments(args.train_set)
    for key, val in (("steps", args.steps), ("seed", args.seed), ("amp", args.amp),
                     ("batch_size", args.batch_size), ("select_metric", args.select)):
        if val is not None:
            tover[key] = val
    method, result, prov = train_run(args.method, args.data, profile=args.profile, out_dir=args.out,
                                     preset=args.preset, overrides=parse_assignments(args.set),
                                     train_overrides=tover, data_root_override=args.data_root,
                                     device=args.device, resume=not args.no_resume)
    print(json.dumps({"best_validation": result.best, "seconds": round(result.seconds, 1),
                      "out_dir": prov["out_dir"]}, indent=2))
    if args.export:
        import torch

        prov.update(command="python -m dap " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
                    method_config=method.config_dict(), git_commit=git_commit(),
                    train_overrides=tover, torch=torch.__version__)
        from dap.experiments import validation_scorer

        pt, js = zoo.export(method, args.export, prov, force=args.force,
                            score=validation_scorer(method, args.data, args.data_root))
        print(f"exported {pt} ({pt.stat().st_size / 1e6:.1f} MB) and {js}")
    return 0


def _load(args):
    from dap import zoo
    from dap.engine.checkpoint import load_method

    if args.model:
        return zoo.load(args.model)
    if args.checkpoint:
        return load_method(args.checkpoint)
    raise ValueError("give --model NAME (see `python -c 'import dap.zoo as z; print(z.available())'`)"
                     " or --checkpoint PATH")


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a checkpoint or shipped model",
                       description="Evaluate on the test split: image AUROC, pixel AUROC, AUPRO "
                                   "(FPR <= 0.3), pixel AP, F1-max, FPS.")
    p.add_argument("--model", default=None, help="a shipped model (dap.zoo.available())")
    p.add_argument("--checkpoint", default=None, help="a checkpoint written by `train`")
    p.add_argument("--data", required=True, nargs="+", help="DATASET:CATEGORY ...")
    p.add_argument("--out", default="runs/evaluate")
    p.add_argument("--no-fps", action="store_true")
    _common(p, profile=False)
    p.set_defaults(func=run_evaluate)


def run_evaluate(args) -> int:
    from dap.experiments import evaluate_many
    from dap.report import results_markdown

    from dap.engine.train import prepare_out_dir, resolve_device

    device = resolve_device(args.device)
    prepare_out_dir(args.out)
    method = _load(args).to(device)
    rows = evaluate_many(method, args.data, args.out, batch_size=args.batch_size or 16,
                         fps=not args.no_fps, data_root_override=args.data_root)
    print(results_markdown(rows))
    print(f"written to {Path(args.out).resolve()}")
    return 0


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="evaluate the shipped models -> runs/demo/report.md",
                       description="Evaluate every shipped model (each method on each built-in "
                                   "category) on the built-in benchmark and write "
                                   "runs/demo/report.md: the methods side by side and the goals.")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--retrain", action="store_true", help="train the models from scratch first")
    _common(p, data=False)
    p.set_defaults(func=run_demo)


def run_demo(args) -> int:
    from dap.engine.train import prepare_out_dir
    from dap.experiments import demo

    prepare_out_dir(args.out)
    path = demo(args.out, retrain=args.retrain, profile=args.profile,
                batch_size=args.batch_size or 16)
    print(path.read_text())
    print(f"report: {path.resolve()}")
    return 0


def add_ablation(sub) -> None:
    from dap.experiments import ABLATION_MODES

    p = sub.add_parser("ablation", help="DiffusionAD reconstruction ablation (Table VII)",
                       description="The same trained model with the reconstruction swapped: "
                                   "DDPM iterative, DDIM, one-step at t_s / t_b, norm-guided "
                                   "(DiffusionAD Table VII).")
    p.add_argument("--model", nargs="*", default=None,
                   help="shipped models (default: every diffusionad model in the zoo)")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--data", nargs="*", default=None, help="default: each model's own category")
    p.add_argument("--modes", nargs="*", default=list(ABLATION_MODES), choices=ABLATION_MODES,
                   metavar="MODE", help=f"reconstructions to compare: {', '.join(ABLATION_MODES)}")
    p.add_argument("--out", default="runs/ablation")
    _common(p, profile=False, data=False)
    p.set_defaults(func=run_ablation)


def run_ablation(args) -> int:
    from dap import zoo
    from dap.engine.checkpoint import load_method
    from dap.engine.train import prepare_out_dir
    from dap.experiments import ablation_over_models

    prepare_out_dir(args.out)
    if args.checkpoint:
        if not args.data:
            raise ValueError("--checkpoint needs --data DATASET:CATEGORY")
        jobs = [(load_method(args.checkpoint), args.data)]
    else:
        names = args.model or [n for n in zoo.available() if zoo.info(n)["method"] == "diffusionad"]
        if not names:
            raise FileNotFoundError("no shipped diffusionad models; train one and pass --checkpoint")
        jobs = [(zoo.load(n), args.data or [zoo.info(n)["data"]]) for n in names]
    ablation_over_models(jobs, args.out, modes=args.modes, batch_size=args.batch_size or 16)
    print((Path(args.out) / "ablation.md").read_text())
    return 0


def add_benchmark(sub) -> None:
    p = sub.add_parser("benchmark", help="side-by-side table of every method",
                       description="The side-by-side table: every method (and its ablation "
                                   "variants) on the same data and metrics. A row whose model is "
                                   "shipped loads it; every other model is trained here with its "
                                   "method's zoo recipe and selected on validation.")
    p.add_argument("--methods", nargs="*", default=None, help="default: every registered method")
    p.add_argument("--data", nargs="*", default=["builtin:brick", "builtin:grass", "builtin:gravel"])
    p.add_argument("--out", default="runs/benchmark")
    p.add_argument("--no-zoo", action="store_true", help="train every model here")
    p.add_argument("--variants", nargs="*", default=None, metavar="LABEL",
                   help="only these rows (e.g. 'glad' 'glad no-ATP'); default: every variant")
    p.add_argument("--train-set", nargs="*", metavar="KEY=VALUE",
                   help="TrainConfig overrides for every model trained here (e.g. steps=800); "
                        "giving any trains every model here")
    _common(p, data=False)
    p.set_defaults(func=run_benchmark)


def run_benchmark(args) -> int:
    from dap.engine.train import prepare_out_dir
    from dap.experiments import benchmark
    from dap.methods import REGISTRY

    prepare_out_dir(args.out)
    benchmark(args.methods or sorted(REGISTRY), args.data, args.out, profile=args.profile,
              batch_size=args.batch_size or 16, use_zoo=not args.no_zoo,
              train_overrides=parse_assignments(args.train_set), only=args.variants)
    print((Path(args.out) / "table.md").read_text())
    return 0


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from dap import __version__

    parser = argparse.ArgumentParser(
        prog="python -m dap",
        description="dap: diffusion-based unsupervised surface anomaly detection.",
    )
    parser.add_argument("--version", action="version", version=f"dap {__version__}")
    parser.add_argument("--plain", action="store_true",
                        help="the plain path everywhere (float32, contiguous, eager: the "
                             "official code's recipe) instead of the fast path; sets DAP_PLAIN=1")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="CPU threads (default: $OMP_NUM_THREADS, else the physical cores)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in (add_data, add_train, add_evaluate, add_demo, add_ablation, add_benchmark):
        add(sub)
    return parser


def _setup_cpu(args) -> None:
    """The process's CPU settings, in one place for every command: the OpenMP wait policy
    (already set by :func:`main`), the thread count, and the fast or plain path."""
    import os

    from dap import runtime

    if args.plain:
        os.environ[runtime.PLAIN_ENV] = "1"
    if args.command != "data":  # data commands stay light (no torch threads to set)
        runtime.configure_threads(args.threads)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; errors from bad input print one clear line."""
    import os

    from dap import runtime

    # before any command imports torch: idle OpenMP threads sleep (see dap.runtime.threads)
    runtime.set_wait_policy_quiet()
    from dap.config import ConfigError
    from dap.engine.train import TrainingDiverged

    parser = build_parser()
    args = parser.parse_args(argv)
    plain_before = os.environ.get(runtime.PLAIN_ENV)
    try:
        _setup_cpu(args)
        return int(args.func(args) or 0)
    except (ConfigError, OSError, ValueError, TrainingDiverged) as exc:
        what = " ".join(filter(None, (args.command, getattr(args, "data_command", None))))
        print(f"dap {what}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:  # main() may run inside another program (tests): leave its environment as found
        if args.plain:
            if plain_before is None:
                os.environ.pop(runtime.PLAIN_ENV, None)
            else:
                os.environ[runtime.PLAIN_ENV] = plain_before


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
