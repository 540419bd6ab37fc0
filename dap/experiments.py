"""Experiments: what ``python -m dap train / evaluate / demo / ablation / benchmark`` run.

``train_run``      train a method on ``DATASET:CATEGORY`` with its profile's defaults, select on
                   validation, then the method's own after-training step
``evaluate_run``   the test split of one category: metrics, FPS, tables and a figure
``ablation``       DiffusionAD's Table VII: the same trained model, reconstruction swapped
``demo``           the shipped models on the built-in benchmark -> ``runs/demo/report.md``
``benchmark``      the side-by-side table of every method and its variants (:data:`VARIANTS`)

A data spec is ``DATASET:CATEGORY`` (:mod:`dap.data.spec`). Every experiment definition — the
rows of the benchmark, the training budgets they need — lives in this module, not in the
methods' code.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from dap.config import ConfigError, from_dict
from dap.data.spec import datasets, is_texture, parse_data, stack
from dap.engine.checkpoint import load_checkpoint
from dap.engine.evaluate import EvalResult, evaluate, measure_fps
from dap.engine.select import synthetic_validation_set, validate_on
from dap.engine.train import (TrainConfig, TrainData, TrainResult, prepare_out_dir, resolve_device,
                              seed_everything, train)
from dap.io import atomic_write_text
from dap.methods import REGISTRY, AnomalyMethod, build_method, method_config
from dap.profiles import profile as profile_of
from dap.report import PAPER_RESULTS, example_figure, mean_row, read_results, write_tables

METRICS = ("image_auroc", "pixel_auroc", "aupro", "pixel_ap")


# --------------------------------------------------------------------------------------------
# Training and evaluation of one model
# --------------------------------------------------------------------------------------------
def _validation_set(method: AnomalyMethod, val_ds):
    """The validation split's normal images + synthetic anomalies (fixed seed: always the same)."""
    val_fg = stack(val_ds, "foreground") if not is_texture(val_ds) else None
    return synthetic_validation_set(method.synthesizer, stack(val_ds, "image"), val_fg,
                                    is_texture=is_texture(val_ds))


def _scorer(tdata: TrainData, vset):
    def score(m: AnomalyMethod) -> dict[str, float]:
        # the rule the test uses: calibrated (training / validation data only), then predict
        m.calibrate(tdata.images, vset)
        return validate_on(m, vset)
    return score


def validation_scorer(method: AnomalyMethod, data: str, data_root_override: str | None = None):
    """``score(m) -> validation metrics`` exactly as :func:`train_run` selects checkpoints
    (the same synthetic validation set, calibrated first) — for checks after training, such as
    the float16 check of :func:`dap.zoo.export`."""
    spec = parse_data(data, method.image_size, data_root_override)
    train_ds, val_ds, _ = datasets(spec, method.image_size)
    tdata = TrainData.from_dataset(train_ds, is_texture=is_texture(train_ds))
    return _scorer(tdata, _validation_set(method, val_ds))


def train_run(method_name: str, data: str, profile: str | None = None, out_dir: str | Path | None
              = None, preset: str | None = None, overrides: dict[str, Any] | None = None,
              train_overrides: dict[str, Any] | None = None, data_root_override: str | None = None,
              device: str | None = None, resume: bool = True, progress: bool = True,
              stop_after: int | None = None) -> tuple[AnomalyMethod, TrainResult, dict[str, Any]]:
    """Train ``method_name`` on ``data`` with the profile's defaults; load the selected weights.

    Every validation scores the model as the test will: calibrated first
    (:meth:`~dap.methods.base.AnomalyMethod.calibrate`, on training / validation data), then
    ``predict``. Then the method's :meth:`~dap.methods.base.AnomalyMethod.after_training` runs
    on the selected weights with the *training* images and the *validation* set (DDAD adapts and
    calibrates on the former, GLAD calibrates on the latter); the test split is never passed.
    Returns the method (validation-selected weights, or the last ones with
    ``select_metric='last'``), the :class:`TrainResult` and a provenance dict.
    """
    prof = profile_of(profile)
    preset = preset or prof.preset
    # every argument is checked before any work: the training settings (strictly), the device
    tcfg = from_dict(TrainConfig, {**prof.train_defaults(), **(train_overrides or {})})
    dev = resolve_device(device)
    # seeded before the model is built: its initial weights come from the seed too, so the same
    # command and seed give the same losses from step 0 (tests/test_reliability_run.py)
    seed_everything(tcfg.seed)
    method = build_method(method_name, preset, **(overrides or {}))
    size = method.image_size
    spec = parse_data(data, size, data_root_override)
    out = Path(out_dir) if out_dir else Path("runs") / "train" / f"{method_name}-{spec.slug}-{preset}"
    prepare_out_dir(out)
    train_ds, val_ds, _ = datasets(spec, size)
    tdata = TrainData.from_dataset(train_ds, is_texture=is_texture(train_ds))
    vset = _validation_set(method, val_ds)
    extra = {"data": str(spec), "profile": prof.name, "preset": preset,
             "train_images": len(train_ds), "val_images": len(val_ds),
             "val_synthetic": len(vset), "val_anomalous": int(vset.label.sum())}

    score = _scorer(tdata, vset)

    result = train(method, tdata, tcfg, out, validate=score,
                   resume=resume, device=dev, extra=extra, progress=progress, stop_after=stop_after)
    if result.best_path is not None and tcfg.select_metric != "last":
        method.load_state_dict(load_checkpoint(result.best_path, dev)["model"])
    method.eval()
    after_info = method.after_training(tdata.images, vset, progress=progress)
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
        fig.savefig(out / f"examples-{spec.slug}.png", dpi=90)
        import matplotlib.pyplot as plt

        plt.close(fig)
        paper = PAPER_RESULTS.get(method.name, {}).get(spec.dataset)
        write_tables([row], out, stem=f"results-{spec.slug}", paper=paper)
    return row, res


def evaluate_many(method: AnomalyMethod, data: Sequence[str], out_dir: str | Path,
                  batch_size: int = 16, fps: bool = True, data_root_override: str | None = None,
                  progress: bool = True) -> list[dict[str, Any]]:
    """:func:`evaluate_run` on each spec of ``data``, plus a mean row when there are several;
    writes ``results.md/csv/json`` under ``out_dir``."""
    rows = [evaluate_run(method, d, out_dir, batch_size=batch_size, fps=fps,
                         data_root_override=data_root_override, progress=progress)[0]
            for d in data]
    if len(rows) > 1:
        rows.append(mean_row(rows, METRICS, method=rows[0]["method"], category="mean"))
    write_tables(rows, out_dir, stem="results")
    return rows


# --------------------------------------------------------------------------------------------
# DiffusionAD's reconstruction ablation (Table VII)
# --------------------------------------------------------------------------------------------
ABLATION_MODES: tuple[str, ...] = ("ddpm", "ddim", "one_step_s", "one_step_b", "norm_guided")


def ablation(method: AnomalyMethod, data: Sequence[str], out_dir: str | Path,
             modes: Sequence[str] = ABLATION_MODES, batch_size: int = 16, progress: bool = True
             ) -> list[dict[str, Any]]:
    """DiffusionAD's Table VII on ``data``: the same trained model, reconstruction swapped.

    ``ddpm`` iterates eq. 3 from ``iterative_t`` (400 in the paper), ``ddim`` takes
    ``ddim_steps`` (30) steps, ``one_step_s`` / ``one_step_b`` use eq. 6 at t_s / t_b, and
    ``norm_guided`` is eqs. 7-8. Writes ``ablation.md/csv/json``.
    """
    rows = []
    for mode in modes:
        with method.using(reconstruction=mode):
            per_cat = [evaluate_run(method, d, None, batch_size=batch_size, fps=False,
                                    progress=progress, label=mode)[0] for d in data]
            fps = measure_fps(method, method.image_size, batch_size=batch_size,
                              warmup=1, iters=1 if mode == "ddpm" else 3)
        row = mean_row(per_cat, METRICS, method=mode, category=f"mean of {len(data)}")
        row.update(fps)
        rows.append(row)
    write_tables(rows, out_dir, stem="ablation", extra=("fps_batch1", "throughput"))
    return rows


def ablation_over_models(jobs: Sequence[tuple[AnomalyMethod, Sequence[str]]], out_dir: str | Path,
                         modes: Sequence[str] = ABLATION_MODES, batch_size: int = 16,
                         progress: bool = True) -> list[dict[str, Any]]:
    """:func:`ablation` for each (model, data) job, then one row per mode averaged over the
    models; writes ``model-<i>/ablation.*`` and ``ablation.*`` under ``out_dir``."""
    per_model = [ablation(method, data, Path(out_dir) / f"model-{i}", modes=modes,
                          batch_size=batch_size, progress=progress)
                 for i, (method, data) in enumerate(jobs)]
    rows = [mean_row([pm[j] for pm in per_model], (*METRICS, "fps_batch1", "throughput"),
                     method=mode, category=f"mean of {len(jobs)} models")
            for j, mode in enumerate(modes)]
    write_tables(rows, out_dir, stem="ablation", extra=("fps_batch1", "throughput"))
    return rows


# --------------------------------------------------------------------------------------------
# The demo: the shipped models on the built-in benchmark
# --------------------------------------------------------------------------------------------
def demo(out_dir: str | Path = "runs/demo", retrain: bool = False, profile: str | None = None,
         batch_size: int = 16, progress: bool = True) -> Path:
    """Evaluate every shipped model on the built-in benchmark and write ``report.md``: the
    methods side by side (mean of the categories), every model, DiffusionAD's reconstruction
    quality on the normal test images against the Wiener baseline, and the goals
    (:func:`dap.report.demo_markdown`). Results file: ``results.json`` (``kind: "demo"``).

    With ``retrain`` the models are first trained from scratch with the commands recorded in
    their provenance files (under ``profile``'s sizes if given).
    """
    from dap import zoo
    from dap.report import demo_markdown

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = zoo.available()
    if not names and not retrain:
        raise FileNotFoundError("no shipped models found in dap/checkpoints; run "
                                "`python -m dap demo --retrain` to train them here")
    order = [*zoo_recipes(), *sorted({zoo.info(n)["method"] for n in names} - set(zoo_recipes()))]
    by_method: dict[str, list[str]] = {}
    for name in names:
        by_method.setdefault(zoo.info(name)["method"], []).append(name)
    rows, means, sections = [], [], []
    t0 = time.perf_counter()
    for method_name in [m for m in order if m in by_method]:
        method_rows = []
        for name in by_method[method_name]:
            info = zoo.info(name)
            if retrain:
                method, _, prov = train_run(info["method"], info["data"],
                                            profile=profile or info["profile"],
                                            out_dir=out / "train" / name, progress=progress,
                                            train_overrides=info.get("train_overrides"))
                source = f"retrained here ({prov['seconds']:.0f} s, selected on {prov['selected']})"
            else:
                method = zoo.load(name)
                source = (f"shipped ({info['seconds']:.0f} s of training, selected on "
                          f"{info['selected']})")
            row, _ = evaluate_run(method, info["data"], out / method_name, batch_size=batch_size,
                                  progress=progress, label=method_name)
            row.update(model=name, source=source, train_seconds=info.get("seconds"))
            if method_name == "diffusionad":
                row.update(reconstruction_quality(method, info["data"], split="test"))
            method_rows.append(row)
            image = f"{method_name}/examples-{info['data'].replace(':', '-')}.png"
            sections.append(f"### {name}\n\n{source}.\n\n![{name}]({image})\n")
        rows += method_rows
        means.append(mean_row(method_rows, (*METRICS, "fps_batch1", "train_seconds"),
                              method=method_name, category="mean"))
    paths = write_tables(rows + means, out, stem="results", kind="demo")
    report = [
        "# dap demo: every shipped method on the built-in benchmark\n",
        "Test split of the built-in offline benchmark (real scikit-image textures, defects drawn "
        "by generators unlike the training synthesis). Metrics in percent; AUPRO integrates to "
        "FPR 0.3; pixel AP is the step-sum (scikit-learn) definition. Checkpoints were selected "
        "on the validation split (normal images + synthetic anomalies), never on the test split. "
        "FPS: batch-1 predictions per second on this machine "
        f"({'CUDA' if torch.cuda.is_available() else 'CPU'}).\n",
        demo_markdown(read_results(paths["json"])),
        "\nThe papers' numbers are for MVTec AD / VisA / MPDD / DAGM at 256 x 256 with the full "
        "models and are not comparable with this small benchmark; see notebook 06.\n",
        *sections,
        f"\n_Total time: {time.perf_counter() - t0:.0f} s._\n",
    ]
    return atomic_write_text(out / "report.md", "\n".join(report))


# --------------------------------------------------------------------------------------------
# The side-by-side table of every method (python -m dap benchmark)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One row of the benchmark table.

    overrides : model config at build time; train_overrides : TrainConfig fields;
    eval_overrides : config changes applied with ``method.using`` for the evaluation only;
    same_model_as : evaluate the model trained for that variant instead of training one;
    retrain_segmenter : with ``same_model_as``, keep that model's other networks frozen and train
        a fresh segmenter with these config changes (``method.segmenter_variant``, DiffAD), once
        per seed in ``seeds`` with ``train_overrides``; the row is the mean over seeds (and its
        standard deviation), so only the segmenter's input differs between paired rows.
    """

    overrides: dict[str, Any] = field(default_factory=dict)
    train_overrides: dict[str, Any] = field(default_factory=dict)
    eval_overrides: dict[str, Any] = field(default_factory=dict)
    same_model_as: str | None = None
    retrain_segmenter: dict[str, Any] | None = None
    seeds: tuple[int, ...] = (0,)


#: Domain-adaptation steps of the benchmark's "ddad+DA" row (a few dozen, as a few epochs of
#: the paper's batch 32 on a ~250-image category).
DDAD_DA_STEPS = 40


def _diffad_segmenter_training() -> dict[str, Any]:
    """The segmenter phase alone at the ``ci`` preset (its length, batch 8), last step kept."""
    c = method_config("diffad", "ci")
    return {"steps": c.segmenter_steps, "batch_size": 8, "lr": 5e-4, "val_every": 0,
            "select_metric": "last"}


def _diffad_ci_training() -> dict[str, Any]:
    """DiffAD's training at the ``ci`` preset (64 px): its three phases in full (autoencoder,
    denoiser, segmenter) at batch 8. The last checkpoint is kept: validation before the
    segmenter phase cannot select anything meaningful."""
    c = method_config("diffad", "ci")
    return {"steps": c.ae_steps + c.denoiser_steps + c.segmenter_steps, "batch_size": 8,
            "lr": 5e-4, "val_every": 0, "select_metric": "last"}


def variants(method_name: str) -> dict[str, Variant]:
    """The rows of ``method_name`` in the side-by-side table: ``label -> Variant``."""
    if method_name not in REGISTRY:
        raise ConfigError(f"unknown method {method_name!r}; available: {sorted(REGISTRY)}")
    if method_name == "ddad":
        # one trained model, two rows: the frozen extractor, then the adapted one
        return {"ddad": Variant(overrides={"domain_adaptation_steps": DDAD_DA_STEPS},
                                eval_overrides={"use_adaptation": "off"}),
                "ddad+DA": Variant(same_model_as="ddad",
                                   eval_overrides={"use_adaptation": "require"})}
    if method_name == "glad":
        # the full method, the same model without the per-sample stop or without SAFF, and a
        # model trained without ATP
        return {"glad": Variant(),
                "glad fixed-step": Variant(eval_overrides={"adaptive": False}, same_model_as="glad"),
                "glad no-ATP": Variant(overrides={"atp": False}),
                "glad no-SAFF": Variant(eval_overrides={"saff": False}, same_model_as="glad")}
    if method_name == "diffad":
        train = _diffad_ci_training()
        seg = _diffad_segmenter_training()
        return {"diffad": Variant(train_overrides=train),
                # the same model, sampled with the condition noised once to a t in [400, 500)
                # and kept (the official alternative)
                "diffad noisy-fixed": Variant(same_model_as="diffad",
                                              eval_overrides={"sample_condition": "noisy_fixed"}),
                # trained with the clean condition (no noisy condition embedding)
                "diffad clean-cond": Variant(overrides={"noisy_condition": False},
                                             train_overrides=train),
                # the interpolated channels, unconfounded: one frozen autoencoder + denoiser,
                # a fresh segmenter with 9 (interp) or 6 (no-interp) inputs, three seeds each
                "diffad interp (segmenter retrained)": Variant(
                    same_model_as="diffad", retrain_segmenter={"interpolated_channels": True},
                    seeds=(0, 1, 2), train_overrides=seg),
                "diffad no-interp (segmenter retrained)": Variant(
                    same_model_as="diffad", retrain_segmenter={"interpolated_channels": False},
                    seeds=(0, 1, 2), train_overrides=seg)}
    return {method_name: Variant()}


def _retrained_segmenter_row(base: AnomalyMethod, data: str, label: str, spec: Variant,
                             profile: str | None, batch_size: int, progress: bool
                             ) -> dict[str, Any]:
    """A :class:`Variant` with ``retrain_segmenter``: per seed, a fresh segmenter on ``base``'s
    frozen networks, trained and evaluated; the mean row with the standard deviations."""
    if not hasattr(base, "segmenter_variant"):
        raise ConfigError(f"variant {label!r}: {base.name} cannot retrain its segmenter alone")
    spec_data = parse_data(data, base.image_size)
    train_ds, _, _ = datasets(spec_data, base.image_size)
    tdata = TrainData.from_dataset(train_ds, is_texture=is_texture(train_ds))
    device = next(base.parameters()).device
    rows = []
    for seed in spec.seeds:
        tcfg = from_dict(TrainConfig, {**profile_of(profile).train_defaults(),
                                       **spec.train_overrides, "seed": seed})
        seed_everything(seed)
        arm = base.segmenter_variant(**spec.retrain_segmenter)
        train(arm, tdata, tcfg, None, device=device, progress=progress)
        row, _ = evaluate_run(arm.eval(), data, batch_size=batch_size, progress=progress,
                              label=label)
        rows.append(row)
    mean = mean_row(rows, (*METRICS, "fps_batch1", "throughput"), method=label,
                    category=str(spec_data))
    for k in METRICS:
        vals = [r[k] for r in rows if isinstance(r.get(k), float)]
        mean[f"{k}_std"] = float(torch.tensor(vals).std()) if len(vals) > 1 else 0.0
    mean["seeds"] = list(spec.seeds)
    return mean


def _within(spec: Variant, recipe: Variant) -> bool:
    """Whether every build and training setting of ``spec`` is also the ``recipe``'s (so a
    model trained with the recipe is the variant's model)."""
    return (all(recipe.overrides.get(k, object()) == v for k, v in spec.overrides.items())
            and all(recipe.train_overrides.get(k, object()) == v
                    for k, v in spec.train_overrides.items()))


def benchmark(methods: Sequence[str], data: Sequence[str], out_dir: str | Path = "runs/benchmark",
              profile: str | None = None, batch_size: int = 16, progress: bool = True,
              use_zoo: bool = True, train_overrides: dict[str, Any] | None = None,
              only: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Train (or load from the zoo) and evaluate every variant of every method on ``data``.

    A shipped model named ``<method>-<dataset>-<category>`` is used for a variant whose own
    settings are part of that method's zoo recipe (:func:`zoo_recipes`) when it exists
    (``use_zoo``). Everything else is trained here with the zoo recipe under the variant's own
    settings at the ``ci`` preset unless ``profile`` says otherwise (so every row of the table
    has the same budget and size) and selected on the validation
    split. ``train_overrides`` (TrainConfig) apply to every model trained here, under each
    variant's own; giving them trains every model here. ``only``
    keeps only the rows with those labels (a variant that shares a model still trains it).
    Writes ``table.md/csv/json`` with one row per variant (mean over ``data``) and
    ``per-category.*``.
    """
    from dap import zoo

    # the zoo recipes are the ci preset's (64 px): a model trained here matches the shipped ones
    profile = profile or "ci"
    out = Path(out_dir)
    wanted = None if only is None else set(only)
    if wanted is not None:
        known = {v for m in methods for v in variants(m)}
        if not wanted <= known:
            raise ConfigError(f"unknown benchmark variant(s) {sorted(wanted - known)}; the "
                              f"methods {list(methods)} have {sorted(known)}")
    rows, per_cat = [], []
    for name in methods:
        models: dict[tuple[str, str], AnomalyMethod] = {}
        specs = variants(name)
        if wanted is not None:
            # a wanted row that evaluates another variant's model needs that model trained
            build = wanted | {specs[v].same_model_as for v in wanted if v in specs}
            specs = {k: v for k, v in specs.items() if k in build}
        for label, spec in specs.items():
            report = wanted is None or label in wanted
            cat_rows = []
            for d in data:
                shared = spec.same_model_as
                if shared is not None and (shared, d) in models:
                    method = models[(shared, d)]
                    source = f"model of {shared}"
                else:
                    zname = f"{name}-{d.replace(':', '-')}"
                    recipe = zoo_recipes().get(name, Variant())
                    if use_zoo and not train_overrides and _within(spec, recipe) \
                            and zname in zoo.available():
                        method, source = zoo.load(zname), f"zoo:{zname}"
                    else:
                        run_dir = out / "train" / f"{label}-{d.replace(':', '-')}"
                        method, _, prov = train_run(
                            name, d, profile=profile,
                            overrides={**recipe.overrides, **spec.overrides},
                            train_overrides={**recipe.train_overrides, **(train_overrides or {}),
                                             **spec.train_overrides},
                            out_dir=run_dir, progress=progress)
                        source = f"trained here, {prov['train_config']['steps']} steps"
                        atomic_write_text(run_dir / "provenance.json",
                                          json.dumps(prov, indent=1, default=str))
                    models[(label, d)] = method
                if not report:
                    continue
                if spec.retrain_segmenter is not None:
                    row = _retrained_segmenter_row(method, d, label, spec, profile, batch_size,
                                                   progress)
                    source = f"segmenter retrained on {source}, {len(spec.seeds)} seeds"
                else:
                    with method.using(**spec.eval_overrides):
                        row, _ = evaluate_run(method, d, batch_size=batch_size,
                                              progress=progress, label=label)
                row["source"] = source
                row["extractor"] = method.extractor_name
                cat_rows.append(row)
            if not report:
                continue
            per_cat += cat_rows
            mean = mean_row(cat_rows, (*METRICS, "fps_batch1", "throughput"), method=label,
                            category=f"mean of {len(data)}")
            mean["source"] = "; ".join(sorted({r["source"].split(",")[0] for r in cat_rows}))
            rows.append(mean)
    write_tables(per_cat, out, stem="per-category", extra=("fps_batch1",))
    write_tables(rows, out, stem="table", extra=("fps_batch1", "throughput"))
    return rows



# --------------------------------------------------------------------------------------------
# The training-recipe study of the small presets (tools/recipe_study.py)
# --------------------------------------------------------------------------------------------
#: The shipped DiffusionAD models' recipe at 64 px (tools/train_zoo.sh): a 4-level segmenter of
#: base width 16, lr 1e-3 with warm-up and cosine decay, batch 8, bf16 autocast.
ZOO_DIFFUSIONAD = Variant(
    overrides={"segmenter": {"base_width": 16, "encoder_mult": [1, 2, 4, 8]}},
    train_overrides={"lr": 1e-3, "lr_schedule": "cosine", "warmup_steps": 50, "batch_size": 8,
                     "amp": "bf16", "val_every": 200})


def _with(base: Variant, overrides: dict[str, Any] | None = None,
          train_overrides: dict[str, Any] | None = None) -> Variant:
    return Variant(overrides={**base.overrides, **(overrides or {})},
                   train_overrides={**base.train_overrides, **(train_overrides or {})})


def recipe_variants() -> dict[str, Variant]:
    """The rows of the recipe study: the shipped recipe, then one change each (same seed,
    same budget): EMA of the weights, and each official-code behaviour of
    :mod:`dap.methods.diffusionad.official` that shapes the noise scales or the synthesis.
    The study ran with the averaged noise loss as the base (``results/recipe-study.json``);
    the summed loss won and became the default, so the base states the mean explicitly."""
    base = _with(ZOO_DIFFUSIONAD, {"noise_loss_reduction": "mean"})
    return {
        "zoo recipe": base,
        "+ EMA 0.995": _with(base, train_overrides={"ema_decay": 0.995}),
        "+ [0, 1] input (official)": _with(base, {"input_range": "unit"}),
        "+ summed noise loss (official)": _with(base, {"noise_loss_reduction": "sum"}),
        "+ whole texture, 50 redraws (official)": _with(
            base, {"synthesis": {"crop_scale": (1.0, 1.0), "max_rounds": 50}}),
    }


@torch.no_grad()
def reconstruction_quality(method: AnomalyMethod, data: str, t_wiener: int = 200,
                           seed: int = 0, split: str = "validation") -> dict[str, float]:
    """Quality of ``method``'s reconstructions of the normal images of ``split``
    (``"validation"``, used for choosing recipes, or ``"test"``, its normal images only, for
    the reported goals): mean PSNR (dB, [-1, 1] units), mean channel spread, and the PSNR of
    the Wiener estimate from x_{t_wiener} fitted on the training images
    (:mod:`dap.analysis.quality`)."""
    from dap.analysis.quality import WienerDenoiser, channel_spread, psnr
    from dap.diffusion import NoiseSchedule

    if split not in ("validation", "test"):
        raise ConfigError(f"split must be 'validation' or 'test', got {split!r}")
    spec = parse_data(data, method.image_size)
    train_ds, val_ds, test_ds = datasets(spec, method.image_size)
    train_x = stack(train_ds, "image")
    if split == "validation":
        val_x = stack(val_ds, "image")
    else:
        normal = [i for i in range(len(test_ds)) if int(test_ds[i]["label"]) == 0]
        val_x = torch.stack([test_ds[i]["image"] for i in normal])
    device = next(method.parameters()).device
    recs = torch.cat([method.predict(val_x[i:i + 16].to(device)).reconstruction.float().cpu()
                      for i in range(0, len(val_x), 16)])
    schedule = NoiseSchedule.from_config(method.config.diffusion)
    abar = float(schedule.alphas_cumprod[t_wiener])
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(val_x.shape, generator=g)
    x_t = abar ** 0.5 * val_x + (1 - abar) ** 0.5 * noise
    wiener = WienerDenoiser(train_x)(x_t.double(), abar)
    return {"psnr_db": float(psnr(recs, val_x).mean()),
            "channel_spread": float(channel_spread(recs).mean()),
            f"wiener_psnr_db_t{t_wiener}": float(psnr(wiener, val_x.double()).mean()),
            "input_channel_spread": float(channel_spread(val_x).mean())}


def recipe_study(categories: Sequence[str], steps: int, out_dir: str | Path = "runs/study",
                 only: Sequence[str] | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Train every :func:`recipe_variants` row on ``builtin:<category>`` for ``steps`` steps
    (resumable: each run continues from its ``last.pt``) and report *validation* metrics of the
    selected checkpoint and :func:`reconstruction_quality`. Writes ``recipe-study.json``."""
    rows = []
    table = recipe_variants()
    unknown = sorted(set(only or ()) - set(table))
    if unknown:
        raise ConfigError(f"unknown study rows {unknown}; available: {list(table)}")
    for cat in categories:
        for label, spec in table.items():
            if only and label not in only:
                continue
            slug = "".join(ch if ch.isalnum() else "-" for ch in label).strip("-")
            method, result, prov = train_run(
                "diffusionad", f"builtin:{cat}", profile="ci",
                out_dir=Path(out_dir) / cat / slug, overrides=spec.overrides,
                train_overrides={**spec.train_overrides, "steps": steps}, progress=progress)
            best = result.best or {}
            row = {"method": label, "category": cat, "steps": steps,
                   "selected_step": best.get("step"), "train_seconds": round(prov["seconds"], 1)}
            row.update({k[len("val_"):]: v for k, v in best.items()
                        if k.startswith("val_") and k[len("val_"):] in METRICS})
            row.update(reconstruction_quality(method, f"builtin:{cat}"))
            rows.append(row)
            write_tables(rows, out_dir, stem="recipe-study",
                         extra=("psnr_db", "wiener_psnr_db_t200", "channel_spread"))
    return rows



# --------------------------------------------------------------------------------------------
# The shipped models (tools/train_zoo.py): one recipe per method, 64 px, built-in categories
# --------------------------------------------------------------------------------------------
#: the built-in categories every shipped model is trained on
ZOO_CATEGORIES: tuple[str, ...] = ("brick", "grass", "gravel")
#: optimiser steps at batch 8 for the methods trained in one phase: the budget at which the
#: whole zoo (15 models) trains in about 1.5 hours on a 2-core CPU, two jobs at a time
ZOO_STEPS = 1500
_ZOO_TRAIN = {"lr": 1e-3, "lr_schedule": "cosine", "warmup_steps": 50, "batch_size": 8,
              "val_every": 250}


def zoo_recipes() -> dict[str, Variant]:
    """How each shipped model is trained at the ``ci`` preset (64 px): ``method -> Variant``.

    DiffusionAD: the shipped recipe of the study (:func:`recipe_variants`; its defaults follow
    the study: summed noise loss, [-1, 1] input; EMA did not pay at the study's 400 steps, so
    it is off), for ``ZOO_STEPS`` steps. DDAD, GLAD and DRAEM: the same optimiser settings and
    budget (DDAD with its benchmark's domain adaptation). DiffAD: its three phases at the
    ``ci`` lengths (400 + 800 + 300 steps).
    Every model is selected on validation (DiffAD: its last step, see
    :func:`_diffad_ci_training`) and exported with a float16 check (:func:`dap.zoo.export`).
    """
    steps = {**_ZOO_TRAIN, "steps": ZOO_STEPS}
    return {
        "diffusionad": _with(ZOO_DIFFUSIONAD, train_overrides={**steps, "amp": "auto"}),
        "ddad": Variant(overrides={"domain_adaptation_steps": DDAD_DA_STEPS},
                        train_overrides=steps),
        "glad": Variant(train_overrides=steps),
        "diffad": Variant(train_overrides=_diffad_ci_training()),
        "draem": Variant(train_overrides=steps),
    }


def zoo_command(method_name: str, category: str, out_root: str | Path = "runs/zoo"
                ) -> list[str]:
    """The ``python -m dap train ...`` arguments that train and export one shipped model
    (:func:`zoo_recipes`); resumable: run again, it continues from ``OUT/last.pt``."""
    recipes = zoo_recipes()
    if method_name not in recipes:
        raise ConfigError(f"no zoo recipe for {method_name!r}; recipes: {list(recipes)}")
    spec = recipes[method_name]
    args = ["train", "--method", method_name, "--data", f"builtin:{category}", "--profile", "ci",
            "--out", str(Path(out_root) / f"{method_name}-{category}"),
            "--export", f"{method_name}-builtin-{category}", "--force"]
    if spec.overrides:
        args += ["--set", *(f"{k}={json.dumps(v)}" for k, v in spec.overrides.items())]
    if spec.train_overrides:
        args += ["--train-set", *(f"{k}={json.dumps(v)}" for k, v in spec.train_overrides.items())]
    return args

__all__ = ["train_run", "evaluate_run", "evaluate_many", "ablation", "ablation_over_models",
           "ABLATION_MODES", "demo", "Variant", "variants", "benchmark", "DDAD_DA_STEPS",
           "validation_scorer", "ZOO_DIFFUSIONAD", "recipe_variants", "recipe_study",
           "reconstruction_quality", "ZOO_CATEGORIES", "ZOO_STEPS", "zoo_recipes", "zoo_command"]
