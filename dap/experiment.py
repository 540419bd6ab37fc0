"""Glue between data, methods, training and evaluation: what the CLI and notebook 06 call.

``python -m dap train --method diffusionad --data builtin:brick --profile cpu`` ends up in
:func:`train_run`; ``python -m dap evaluate`` in :func:`evaluate_run`; ``python -m dap demo`` in
:func:`demo`; ``python -m dap ablation`` in :func:`ablation`.

A data spec is ``DATASET:CATEGORY`` (``builtin:brick``, ``mvtec:bottle``, ``visa:pcb1``, ...).
The built-in benchmark is written on first use; the others are read from ``$DAP_DATA/<dataset>``
(or ``--data-root``), where ``data_scripts/download.py`` puts them.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from dap.config import ConfigError, data_root, get_profile
from dap.evaluate import (PAPER_RESULTS, EvalResult, evaluate, example_figure, mean_row,
                          measure_fps, synthetic_validation_set, validate_on, write_atomic,
                          write_tables)
from dap.methods import PROFILE_PRESET, AnomalyMethod, build_method
from dap.train import TrainConfig, TrainData, TrainResult, default_device, seed_everything, train

# Training defaults per profile (DiffusionAD trains 3000 epochs at batch 16; `full` approximates
# that in steps for a ~250-image category). Everything can be overridden on the command line.
TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "ci": {"steps": 40, "batch_size": 8, "val_every": 20},
    "cpu": {"steps": 3000, "batch_size": 16, "val_every": 500},
    "full": {"steps": 48000, "batch_size": 16, "val_every": 4000},
}
PRESET_SIZE = {"ci": 64, "cpu": 128, "paper": 256}


@dataclass
class DataSpec:
    dataset: str
    category: str
    root: Path

    def __str__(self) -> str:
        return f"{self.dataset}:{self.category}"


def parse_data(spec: str, image_size: int, data_root_override: str | None = None) -> DataSpec:
    """``builtin:brick`` -> the built-in benchmark at ``image_size``; ``mvtec:bottle`` ->
    ``$DAP_DATA/mvtec``."""
    if ":" not in spec:
        raise ConfigError(f"data spec {spec!r} should be DATASET:CATEGORY, e.g. builtin:brick "
                          "or mvtec:bottle")
    dataset, category = spec.split(":", 1)
    dataset = dataset.lower()
    if dataset == "builtin":
        from dap.data import builtin_root

        size = image_size if image_size in (64, 128, 256) else 256
        root = builtin_root(size, root=Path(data_root_override) / "builtin" / str(size)
                            if data_root_override else None)
        return DataSpec(dataset, category, root)
    base = Path(data_root_override) if data_root_override else Path(data_root())
    return DataSpec(dataset, category, base / dataset)


def datasets(spec: DataSpec, image_size: int):
    """The train, validation and test splits of one category."""
    from dap.data import AnomalyDataset

    kw = dict(image_size=image_size, dataset=spec.dataset)
    return (AnomalyDataset(spec.root, spec.category, "train", **kw),
            AnomalyDataset(spec.root, spec.category, "val", **kw),
            AnomalyDataset(spec.root, spec.category, "test", **kw))


def _is_texture(ds) -> bool:
    return getattr(ds, "foreground_mode", "full") == "full"


def _stack(ds, key: str) -> torch.Tensor:
    return torch.stack([ds[i][key] for i in range(len(ds))])


def train_run(method_name: str, data: str, profile: str | None = None, out_dir: str | Path | None
              = None, preset: str | None = None, overrides: dict[str, Any] | None = None,
              train_overrides: dict[str, Any] | None = None, data_root_override: str | None = None,
              device: str | None = None, resume: bool = True, progress: bool = True,
              stop_after: int | None = None) -> tuple[AnomalyMethod, TrainResult, dict[str, Any]]:
    """Train ``method_name`` on ``data`` with the profile's defaults; load the selected weights.

    Returns the method (with the validation-selected weights, or the last ones with
    ``select_metric='last'``), the :class:`TrainResult` and a provenance dict.
    """
    profile = get_profile(profile)
    preset = preset or PROFILE_PRESET[profile]
    method = build_method(method_name, preset, **(overrides or {}))
    size = method.image_size
    spec = parse_data(data, size, data_root_override)
    train_ds, val_ds, _ = datasets(spec, size)
    tcfg = TrainConfig(**{**TRAIN_DEFAULTS[profile], **(train_overrides or {})})
    seed_everything(tcfg.seed)
    dev = torch.device(device) if device else default_device()
    tdata = TrainData.from_dataset(train_ds, is_texture=_is_texture(train_ds))
    val_images = _stack(val_ds, "image")
    val_fg = _stack(val_ds, "foreground") if not _is_texture(val_ds) else None
    vset = synthetic_validation_set(method.synthesizer, val_images, val_fg,
                                    is_texture=_is_texture(val_ds))
    out = Path(out_dir) if out_dir else Path("runs") / "train" / f"{method_name}-{spec.dataset}-{spec.category}-{preset}"
    extra = {"data": str(spec), "profile": profile, "preset": preset,
             "train_images": len(train_ds), "val_images": len(val_ds),
             "val_synthetic": int(len(vset["image"])),
             "val_anomalous": int(vset["label"].sum())}
    result = train(method, tdata, tcfg, out, validate=lambda m: validate_on(m, vset),
                   resume=resume, device=dev, extra=extra, progress=progress, stop_after=stop_after)
    if result.best_path is not None and tcfg.select_metric != "last":
        from dap.train import load_checkpoint

        method.load_state_dict(load_checkpoint(result.best_path, dev)["model"])
    # A method's own step after training, on the selected weights: DDAD adapts its feature
    # extractor on the *training* images; GLAD calibrates its thresholds on the *validation*
    # set. The test split is never passed here.
    method.eval()
    after = getattr(method, "after_training", None)
    after_info = after(tdata, val_set=vset, progress=progress) if callable(after) else None
    provenance = {**extra, "method": method_name, "train_config": dataclasses.asdict(tcfg),
                  "seconds": round(result.seconds, 1), "best_validation": result.best,
                  "selected": "validation" if tcfg.select_metric != "last" else "last step",
                  "out_dir": str(out)}
    if after_info:
        provenance["after_training"] = after_info
    return method.eval(), result, provenance


def evaluate_run(method: AnomalyMethod, data: str, out_dir: str | Path | None = None,
                 batch_size: int = 16, fps: bool = True, data_root_override: str | None = None,
                 progress: bool = True, label: str | None = None) -> tuple[dict[str, Any], EvalResult]:
    """Evaluate ``method`` on the test split of ``data``; write tables and a figure to out_dir."""
    size = method.image_size
    spec = parse_data(data, size, data_root_override)
    _, _, test_ds = datasets(spec, size)
    res = evaluate(method, test_ds, batch_size=batch_size, progress=progress,
                   desc=f"evaluate {spec}")
    row: dict[str, Any] = {"method": label or method.name, "category": str(spec),
                           **{k: v for k, v in res.metrics.items()}, "test_images": len(test_ds)}
    if fps:
        row.update(measure_fps(method, size, batch_size=batch_size))
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        fig = example_figure(res.examples, title=f"{row['method']} on {spec}")
        fig.savefig(out / f"examples-{spec.dataset}-{spec.category}.png", dpi=90)
        import matplotlib.pyplot as plt

        plt.close(fig)
        paper = PAPER_RESULTS.get(method.name, {}).get(spec.dataset)
        write_tables([row], out, stem=f"results-{spec.dataset}-{spec.category}", paper=paper)
    return row, res


def ablation(method: AnomalyMethod, data: Sequence[str], out_dir: str | Path,
             modes: Sequence[str] = ("ddpm", "ddim", "one_step_s", "one_step_b", "norm_guided"),
             batch_size: int = 16, progress: bool = True) -> list[dict[str, Any]]:
    """DiffusionAD's Table VII on ``data``: the same trained model, reconstruction swapped.

    ``ddpm`` iterates eq. 3 from ``iterative_t`` (400 in the paper), ``ddim`` takes
    ``ddim_steps`` (30) steps, ``one_step_s`` / ``one_step_b`` use eq. 6 at t_s / t_b, and
    ``norm_guided`` is eqs. 7-8. Writes ``ablation.md/csv/json``.
    """
    original = method.config.reconstruction
    rows = []
    try:
        for mode in modes:
            method.config.reconstruction = mode  # type: ignore[assignment]
            per_cat = []
            for d in data:
                row, _ = evaluate_run(method, d, None, batch_size=batch_size, fps=False,
                                      progress=progress, label=mode)
                per_cat.append(row)
            fps = measure_fps(method, method.image_size, batch_size=batch_size,
                              warmup=1, iters=1 if mode == "ddpm" else 3)
            row = mean_row(per_cat, ("image_auroc", "pixel_auroc", "aupro", "pixel_ap"),
                           method=mode, category=f"mean of {len(data)}")
            row.update(fps)
            rows.append(row)
    finally:
        method.config.reconstruction = original  # type: ignore[assignment]
    write_tables(rows, out_dir, stem="ablation", extra=("fps_batch1", "throughput"))
    return rows


def demo(out_dir: str | Path = "runs/demo", retrain: bool = False, profile: str | None = None,
         batch_size: int = 16, progress: bool = True) -> Path:
    """Evaluate the shipped models on the built-in benchmark and write ``report.md``.

    With ``retrain`` the models are first trained from scratch with the commands recorded in
    their provenance files (under ``profile``'s sizes if given).
    """
    from dap import zoo

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = zoo.available()
    if not names and not retrain:
        raise FileNotFoundError("no shipped models found in dap/checkpoints; run "
                                "`python -m dap demo --retrain` to train them here")
    rows, sections = [], []
    t0 = time.perf_counter()
    for name in names:
        info = zoo.info(name)
        if retrain:
            method, _, prov = train_run(info["method"], info["data"], profile=profile or info["profile"],
                                        out_dir=out / "train" / name, progress=progress,
                                        train_overrides=info.get("train_overrides"))
            source = f"retrained here ({prov['seconds']:.0f} s, selected on {prov['selected']})"
        else:
            method = zoo.load(name)
            source = f"shipped ({info['seconds']:.0f} s of training, selected on {info['selected']})"
        row, _ = evaluate_run(method, info["data"], out, batch_size=batch_size, progress=progress,
                              label=name)
        row["source"] = source
        rows.append(row)
        sections.append(f"### {name}\n\n{source}.\n\n![{name}](examples-{info['data'].replace(':', '-')}.png)\n")
    mean = mean_row(rows, ("image_auroc", "pixel_auroc", "aupro", "pixel_ap", "fps_batch1"),
                    method="mean", category=f"{len(rows)} categories")
    paths = write_tables(rows + [mean], out, stem="results")
    report = [
        "# dap demo: DiffusionAD on the built-in benchmark\n",
        "Test split of the built-in offline benchmark (real scikit-image textures, defects drawn by "
        "generators unlike the training synthesis). Metrics in percent; AUPRO integrates to "
        "FPR 0.3; pixel AP is the step-sum (scikit-learn) definition. Checkpoints were selected "
        "on the validation split (normal images + synthetic anomalies), never on the test split. "
        "FPS: batch-1 predictions per second on this machine "
        f"({'CUDA' if torch.cuda.is_available() else 'CPU'}).\n",
        paths["md"].read_text(),
        "\nThe paper's numbers are for MVTec AD / VisA / MPDD / DAGM at 256 x 256 with the full "
        "model and are not comparable with this small benchmark; see notebook 06.\n",
        *sections,
        f"\n_Total time: {time.perf_counter() - t0:.0f} s._\n",
    ]
    return write_atomic(out / "report.md", "\n".join(report))


def dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)


# --------------------------------------------------------------------------------------------
# The side-by-side table of every method (python -m dap benchmark)
# --------------------------------------------------------------------------------------------
def benchmark_variants(method_name: str) -> dict[str, dict[str, Any]]:
    """A method's rows in the side-by-side table: ``label -> spec``.

    A spec may hold ``overrides`` (model config at build time), ``train_overrides``
    (TrainConfig), ``eval_overrides`` (config attributes set before evaluation; the model is
    shared with the variant named in ``same_model_as``). Methods list theirs in a module-level
    ``BENCHMARK_VARIANTS``; the default is one plain row.
    """
    import importlib

    from dap.methods import REGISTRY

    if method_name not in REGISTRY:
        raise ConfigError(f"unknown method {method_name!r}; available: {sorted(REGISTRY)}")
    module = importlib.import_module(REGISTRY[method_name][0])
    return getattr(module, "BENCHMARK_VARIANTS", {method_name: {}})


def benchmark(methods: Sequence[str], data: Sequence[str], out_dir: str | Path = "runs/benchmark",
              profile: str | None = None, batch_size: int = 16, progress: bool = True,
              use_zoo: bool = True, train_overrides: dict[str, Any] | None = None,
              variants: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Train (or load from the zoo) and evaluate every variant of every method on ``data``.

    A zoo model named ``<method>-<dataset>-<category>`` is used for the plain variant when it
    exists (``use_zoo``); everything else is trained here with the profile's defaults and
    selected on the validation split. ``train_overrides`` (TrainConfig) apply to every model
    trained here, under each variant's own; giving them trains every model here. ``variants``
    keeps only the rows with those labels (a variant that shares a model still trains it).
    Writes ``table.md/csv/json`` with one row per variant (mean over ``data``) and
    ``per-category.*``.
    """
    from dap import zoo

    out = Path(out_dir)
    wanted = None if variants is None else set(variants)
    if wanted is not None:
        known = {v for m in methods for v in benchmark_variants(m)}
        if not wanted <= known:
            raise ConfigError(f"unknown benchmark variant(s) {sorted(wanted - known)}; the "
                              f"methods {list(methods)} have {sorted(known)}")
    rows, per_cat = [], []
    for name in methods:
        models: dict[tuple[str, str], AnomalyMethod] = {}
        specs = benchmark_variants(name)
        if wanted is not None:
            # a wanted row that evaluates another variant's model needs that model trained
            build = wanted | {specs[v].get("same_model_as") for v in wanted if v in specs}
            specs = {k: v for k, v in specs.items() if k in build}
        for label, spec in specs.items():
            report = wanted is None or label in wanted
            cat_rows = []
            for d in data:
                shared = spec.get("same_model_as")
                if shared is not None and (shared, d) in models:
                    method = models[(shared, d)]
                    source = f"model of {shared}"
                else:
                    zname = f"{name}-{d.replace(':', '-')}"
                    if use_zoo and not spec.get("overrides") and not spec.get("train_overrides") \
                            and not train_overrides and zname in zoo.available():
                        method, source = zoo.load(zname), f"zoo:{zname}"
                    else:
                        method, _, prov = train_run(
                            name, d, profile=profile, overrides=spec.get("overrides"),
                            train_overrides={**(train_overrides or {}),
                                             **spec.get("train_overrides", {})},
                            out_dir=out / "train" / f"{label}-{d.replace(':', '-')}",
                            progress=progress)
                        source = f"trained here, {prov['train_config']['steps']} steps"
                        write_atomic(out / "train" / f"{label}-{d.replace(':', '-')}" /
                                     "provenance.json", json.dumps(prov, indent=1, default=str))
                    models[(label, d)] = method
                if not report:
                    continue
                saved = {k: getattr(method.config, k) for k in spec.get("eval_overrides", {})}
                for k, v in spec.get("eval_overrides", {}).items():
                    setattr(method.config, k, v)
                try:
                    row, _ = evaluate_run(method, d, batch_size=batch_size, progress=progress,
                                          label=label)
                finally:
                    for k, v in saved.items():
                        setattr(method.config, k, v)
                row["source"] = source
                row["extractor"] = getattr(method, "extractor_name", "")
                cat_rows.append(row)
            if not report:
                continue
            per_cat += cat_rows
            mean = mean_row(cat_rows, ("image_auroc", "pixel_auroc", "aupro", "pixel_ap",
                                       "fps_batch1", "throughput"), method=label,
                            category=f"mean of {len(data)}")
            mean["source"] = "; ".join(sorted({r["source"].split(",")[0] for r in cat_rows}))
            rows.append(mean)
    write_tables(per_cat, out, stem="per-category", extra=("fps_batch1",))
    write_tables(rows, out, stem="table", extra=("fps_batch1", "throughput"))
    return rows
