"""The ``train``, ``evaluate``, ``demo`` and ``ablation`` commands of ``python -m dap``.

Parsing only; the work is in :mod:`dap.experiment`. Heavy imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dap.config import PROFILES


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", choices=PROFILES, default=None,
                   help="sizes: ci | cpu | full (default: $DAP_PROFILE, else full with CUDA, else cpu)")
    p.add_argument("--data-root", default=None, help="override $DAP_DATA")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=None)


def _kv(pairs: list[str] | None) -> dict:
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


# -- train ------------------------------------------------------------------------------------
def add_train(sub, name: str, help_: str) -> None:
    p = sub.add_parser(name, help=help_, description="Train a method on one category. Model "
                       "selection uses the validation split (normal + synthetic anomalies).")
    p.add_argument("--method", default="diffusionad")
    p.add_argument("--data", required=True, help="DATASET:CATEGORY, e.g. builtin:brick, mvtec:bottle")
    p.add_argument("--out", default=None, help="run directory (default runs/train/...)")
    p.add_argument("--preset", default=None, help="model preset: ci | cpu | paper (default: from profile)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), default=None)
    p.add_argument("--select", default=None, help="validation metric to select on, or 'last'")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="method config overrides")
    p.add_argument("--train-set", nargs="*", metavar="KEY=VALUE", help="TrainConfig overrides")
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT/last.pt exists")
    p.add_argument("--export", default=None, metavar="NAME",
                   help="also write the selected model to dap/checkpoints/NAME.{pt,json}")
    _common(p)
    p.set_defaults(func=run_train)


def run_train(args) -> int:
    import shlex
    import sys

    from dap.experiment import train_run

    tover = _kv(args.train_set)
    for key, val in (("steps", args.steps), ("seed", args.seed), ("amp", args.amp),
                     ("batch_size", args.batch_size), ("select_metric", args.select)):
        if val is not None:
            tover[key] = val
    method, result, prov = train_run(args.method, args.data, profile=args.profile, out_dir=args.out,
                                     preset=args.preset, overrides=_kv(args.set),
                                     train_overrides=tover, data_root_override=args.data_root,
                                     device=args.device, resume=not args.no_resume)
    print(json.dumps({"best_validation": result.best, "seconds": round(result.seconds, 1),
                      "out_dir": prov["out_dir"]}, indent=2))
    if args.export:
        from dap import zoo
        from dap.train import git_commit

        prov.update(command="python -m dap " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
                    method_config=method.config_dict(), git_commit=git_commit(),
                    train_overrides=tover, torch=__import__("torch").__version__)
        pt, js = zoo.export(method, args.export, prov)
        print(f"exported {pt} ({pt.stat().st_size / 1e6:.1f} MB) and {js}")
    return 0


# -- evaluate ---------------------------------------------------------------------------------
def _load(args):
    from dap import zoo
    from dap.methods import load_method

    if args.model:
        return zoo.load(args.model)
    if args.checkpoint:
        return load_method(args.checkpoint)
    raise ValueError("give --model NAME (see `python -c 'import dap.zoo as z; print(z.available())'`)"
                     " or --checkpoint PATH")


def add_evaluate(sub, name: str, help_: str) -> None:
    p = sub.add_parser(name, help=help_, description="Evaluate on the test split: image AUROC, "
                       "pixel AUROC, AUPRO (FPR <= 0.3), pixel AP, F1-max, FPS.")
    p.add_argument("--model", default=None, help="a shipped model (dap.zoo.available())")
    p.add_argument("--checkpoint", default=None, help="a checkpoint written by `train`")
    p.add_argument("--data", required=True, nargs="+", help="DATASET:CATEGORY ...")
    p.add_argument("--out", default="runs/evaluate")
    p.add_argument("--no-fps", action="store_true")
    _common(p)
    p.set_defaults(func=run_evaluate)


def run_evaluate(args) -> int:
    from dap.evaluate import mean_row, results_markdown, write_tables
    from dap.experiment import evaluate_run

    method = _load(args)
    if args.device:
        method.to(args.device)
    rows = [evaluate_run(method, d, args.out, batch_size=args.batch_size or 16, fps=not args.no_fps,
                         data_root_override=args.data_root)[0] for d in args.data]
    if len(rows) > 1:
        rows.append(mean_row(rows, ("image_auroc", "pixel_auroc", "aupro", "pixel_ap"),
                             method=rows[0]["method"], category="mean"))
    write_tables(rows, args.out, stem="results")
    print(results_markdown(rows))
    print(f"written to {Path(args.out).resolve()}")
    return 0


# -- demo -------------------------------------------------------------------------------------
def add_demo(sub, name: str, help_: str) -> None:
    p = sub.add_parser(name, help=help_, description="Evaluate the shipped DiffusionAD models on "
                       "the built-in benchmark and write runs/demo/report.md.")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--retrain", action="store_true", help="train the models from scratch first")
    _common(p)
    p.set_defaults(func=run_demo)


def run_demo(args) -> int:
    from dap.experiment import demo

    path = demo(args.out, retrain=args.retrain, profile=args.profile,
                batch_size=args.batch_size or 16)
    print(path.read_text())
    print(f"report: {path.resolve()}")
    return 0


# -- ablation ---------------------------------------------------------------------------------
def add_ablation(sub, name: str, help_: str) -> None:
    p = sub.add_parser(name, help=help_, description="The same trained model with the "
                       "reconstruction swapped: DDPM iterative, DDIM, one-step at t_s / t_b, "
                       "norm-guided (DiffusionAD Table VII).")
    p.add_argument("--model", nargs="*", default=None,
                   help="shipped models (default: every diffusionad model in the zoo)")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--data", nargs="*", default=None, help="default: each model's own category")
    p.add_argument("--modes", nargs="*", default=["ddpm", "ddim", "one_step_s", "one_step_b",
                                                  "norm_guided"])
    p.add_argument("--out", default="runs/ablation")
    _common(p)
    p.set_defaults(func=run_ablation)


def run_ablation(args) -> int:
    from dap import zoo
    from dap.evaluate import mean_row, write_tables
    from dap.experiment import ablation
    from dap.methods import load_method

    if args.checkpoint:
        if not args.data:
            raise ValueError("--checkpoint needs --data DATASET:CATEGORY")
        jobs = [(load_method(args.checkpoint), args.data)]
    else:
        names = args.model or [n for n in zoo.available() if zoo.info(n)["method"] == "diffusionad"]
        if not names:
            raise FileNotFoundError("no shipped diffusionad models; train one and pass --checkpoint")
        jobs = [(zoo.load(n), args.data or [zoo.info(n)["data"]]) for n in names]
    per_model = []
    for i, (method, data) in enumerate(jobs):
        per_model.append(ablation(method, data, Path(args.out) / f"model-{i}", modes=args.modes,
                                  batch_size=args.batch_size or 16))
    rows = []
    for j, mode in enumerate(args.modes):
        rows.append(mean_row([pm[j] for pm in per_model],
                             ("image_auroc", "pixel_auroc", "aupro", "pixel_ap", "fps_batch1",
                              "throughput"), method=mode, category=f"mean of {len(jobs)} models"))
    paths = write_tables(rows, args.out, stem="ablation", extra=("fps_batch1", "throughput"))
    print(paths["md"].read_text())
    return 0


# -- benchmark --------------------------------------------------------------------------------
def add_benchmark(sub, name: str, help_: str) -> None:
    p = sub.add_parser(name, help=help_, description="The side-by-side table: every method (and "
                       "its ablation variants) on the same data and metrics. Models come from the "
                       "zoo when shipped, else are trained here and selected on validation.")
    p.add_argument("--methods", nargs="*", default=None, help="default: every registered method")
    p.add_argument("--data", nargs="*", default=["builtin:brick", "builtin:grass", "builtin:gravel"])
    p.add_argument("--out", default="runs/benchmark")
    p.add_argument("--no-zoo", action="store_true", help="train every model here")
    p.add_argument("--variants", nargs="*", default=None, metavar="LABEL",
                   help="only these rows (e.g. 'glad' 'glad no-ATP'); default: every variant")
    p.add_argument("--train-set", nargs="*", metavar="KEY=VALUE",
                   help="TrainConfig overrides for every model trained here (e.g. steps=800); "
                        "giving any trains every model here")
    _common(p)
    p.set_defaults(func=run_benchmark)


def run_benchmark(args) -> int:
    from dap.experiment import benchmark
    from dap.methods import REGISTRY

    benchmark(args.methods or sorted(REGISTRY), args.data, args.out, profile=args.profile,
              batch_size=args.batch_size or 16, use_zoo=not args.no_zoo,
              train_overrides=_kv(args.train_set), variants=args.variants)
    print((Path(args.out) / "table.md").read_text())
    return 0
