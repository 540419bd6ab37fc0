"""Golden cases: what the code computes today, recorded so a refactor must reproduce it.

Shared by ``tests/test_golden.py`` (which compares ``compute_case(name)`` with the stored file)
and ``tools/record_golden.py`` (which writes ``tests/golden/<name>.pt``).

Layout of this module
---------------------
1. **Adapters** (the first section): the ONLY functions that touch dap's API. A refactor that
   moves or renames things (``dap.train`` -> ``dap.engine.train``, ``dap.experiment`` ->
   ``dap.experiments``, one shared DDIM loop, a unified ``reconstruct`` output, ...) rewires
   these and nothing else. Each keeps its signature and return type.
2. Helpers: deterministic by-name weights, tensor digests, comparison.
3. Cases: :func:`case_names` lists them; :func:`compute_case` returns one as a flat
   ``dict[str, Tensor]`` (large tensors as digests, see :func:`digest`).

Everything runs on the CPU, in float32 (no autocast), on one thread, with fixed seeds. The
inputs are real images of the built-in benchmark (``builtin:brick`` at 64 px), written under
the usual data root (``$DAP_DATA`` or ``data/``) on first use.

What makes a value reproducible here (so that the refactor keeps it):

* Every *parameter* is overwritten by its NAME (:func:`init_by_name`), so construction order and
  the global RNG do not matter; the parameter names (``named_parameters()``) must therefore stay
  the same -- or :func:`legacy_param_name` must map a new name to today's. Buffers keep their
  defaults; :func:`check_buffers_deterministic` asserts that none of them is random.
* Reconstruction noise comes from an explicit ``torch.Generator`` seeded with 0 (the same seed
  ``inference_seed`` gives when no generator is passed).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import warnings
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator
from unittest import mock

import torch
from torch import Tensor

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
PRESET = "ci"
DATA = "builtin:brick"
SIZE = 64

# Fixed real images (indices into the splits of builtin:brick at 64 px). The test split lists
# its 30 good images first, then the defect families in alphabetical order, 5 each
# (crack 30-34, foreign 35-39, hole 40-44, scratch 45-49, smear 50-54, stain 55-59).
TEST_INDICES = (0, 30, 40, 55)                       # good, crack, hole, stain
ZOO_TEST_INDICES = (0, 1, 2, 3, 30, 37, 44, 51)      # 4 good, crack, foreign, hole, smear
TRAIN_INDICES = tuple(range(8))                      # train split, normal images
VAL_INDICES = tuple(range(8))                        # validation split, normal images
DDAD_DA_STEPS = 2                                    # domain-adaptation steps of ddad_da
TRAIN_STEPS = 3                                      # steps of dap.engine.train.train per method
TRAIN_BATCH = 4


# ============================================================================================
# 1. ADAPTERS -- the only code that calls dap. Rewire these after a refactor.
# ============================================================================================
def method_names() -> list[str]:
    """The registered methods (today: diffusionad, ddad, glad, diffad)."""
    from dap.methods import REGISTRY

    return list(REGISTRY)


def build(name: str, preset: str = PRESET, **overrides: Any) -> torch.nn.Module:
    """A fresh method ``name`` at ``preset``, config overrides applied."""
    from dap.methods import build_method

    return build_method(name, preset, **overrides)


def legacy_param_name(method: str, name: str) -> str:
    """The name a parameter had when the golden files were recorded (seeds its values).

    Identity today; if the refactor renames sub-modules, map new names to the old ones here.
    """
    return name


def split_images(split: str, indices: tuple[int, ...], data: str = DATA, size: int = SIZE
                 ) -> Tensor:
    """Images ``(N, 3, size, size)`` in [-1, 1] of ``split`` (train / val / test) of ``data``."""
    from dap.data.spec import datasets, parse_data

    train_ds, val_ds, test_ds = datasets(parse_data(data, size), size)
    ds = {"train": train_ds, "val": val_ds, "test": test_ds}[split]
    return torch.stack([ds[i]["image"] for i in indices])


def predict(method, images: Tensor, seed: int = 0) -> dict[str, Tensor]:
    """``method.predict`` -> ``anomaly_map`` (B, H, W), ``score`` (B,), ``reconstruction``
    (B, 3, H, W; left out when the method has none)."""
    torch.manual_seed(seed)
    pred = method.predict(images, generator=torch.Generator().manual_seed(seed))
    out = {"anomaly_map": pred.anomaly_map, "score": pred.score}
    if pred.reconstruction is not None:
        out["reconstruction"] = pred.reconstruction
    return out


def reconstruct(method, images: Tensor, seed: int = 0) -> dict[str, Tensor]:
    """``method.reconstruct`` (a :class:`~dap.methods.base.Reconstruction`) flattened to the dict
    recorded before the redesign: ``reconstruction`` plus GLAD's stop data (``stop_step``,
    ``input_x0``, ``scores``, ``timesteps``) and DiffAD's intermediates."""
    torch.manual_seed(seed)
    out = method.reconstruct(images, generator=torch.Generator().manual_seed(seed))
    flat = {"reconstruction": out.sample}
    if method.name == "glad":
        flat.update({k: out.extras[k] for k in ("stop_step", "input_x0", "scores")})
        flat["timesteps"] = torch.as_tensor(method.timesteps)
    if method.name == "diffad":
        flat.update(out.extras)
    return flat


def map_terms(method, images: Tensor, reconstruction: Tensor) -> dict[str, Tensor]:
    """The raw terms a method's anomaly map is made of (DDAD: pixel / feature / combined map;
    GLAD: feature / pixel); empty for methods without such a split."""
    name = method.name
    if name == "ddad":
        amap = method.anomaly_map(images, reconstruction)
        return {**method.map_terms(images, reconstruction), "map": amap,
                "score": amap.amax(dim=(1, 2))}
    if name == "glad":
        return dict(method.map_terms(images, reconstruction))
    return {}


def after_training(method, train_images: Tensor, val_images: Tensor) -> dict[str, Any] | None:
    """The method's own step after training, as ``dap.experiments.train_run`` calls it: DDAD adapts
    (when built with domain_adaptation_steps > 0) and calibrates on the training images, GLAD
    calibrates on the synthetic validation set made from ``val_images``. None if it has none."""
    from dap.engine.select import synthetic_validation_set
    from dap.engine.train import to_uint8

    vset = synthetic_validation_set(method.synthesizer, val_images, None, is_texture=True)
    method.eval()
    return method.after_training(to_uint8(train_images), vset, progress=False)


def forward(method, images: Tensor, seed: int = 0) -> dict[str, Tensor]:
    """One training forward (the loss dict) on a TrainBatch of normal texture images."""
    from dap.methods.base import TrainBatch

    method.train()
    batch = TrainBatch(images, foreground=None, is_texture=True)
    return dict(method(batch, torch.Generator().manual_seed(seed)))


def phases(method) -> list[str]:
    """Training phases of a phased method (DiffAD: autoencoder, denoiser, segmenter), else []."""
    if method.name == "diffad":
        from dap.methods.diffad import PHASES

        return list(PHASES)
    return []


def start_phase(method, phase: str) -> None:
    """Jump a phased method to the first step of ``phase``."""
    method.start_phase(phase)


def train_steps(method, images: Tensor, steps: int, batch_size: int, out_dir: str | Path
                ) -> list[dict[str, float]]:
    """``steps`` steps of the shared training loop (no validation, last step kept); returns the
    logged history, one dict per step (``loss``, the method's logs, ``step``)."""
    from dap.engine.train import TrainConfig, TrainData, to_uint8, train

    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=1e-4, val_every=0,
                      select_metric="last", amp="off", plain=True, seed=0, log_every=1)
    result = train(method, TrainData(to_uint8(images)), cfg, out_dir, validate=None,
                   resume=False, device="cpu", progress=False)
    return result.history


def zoo_names() -> list[str]:
    """The shipped models."""
    from dap import zoo

    return zoo.available()


def load_zoo(name: str):
    """A shipped model in eval mode, float32, on the CPU."""
    from dap import zoo

    return zoo.load(name)


def zoo_data(name: str) -> str:
    """The data spec a shipped model was trained on (``builtin:brick``, ...)."""
    from dap import zoo

    return zoo.info(name)["data"]


@contextlib.contextmanager
def _benchmark_patches(init: Callable[[Any], None]) -> Iterator[None]:
    """Make the benchmark small and independent of construction order, for this test only:

    * every method built inside the benchmark gets :func:`init_by_name` weights (otherwise its
      initial weights come from the global RNG, i.e. from module construction order);
    * FPS is not measured (timings are not recorded; a stub keeps the table's columns);
    * the variants' own budgets are cut: DDAD's domain adaptation (``overrides``, 40 steps) to
      2 steps, DiffAD's training (``train_overrides``, 1500 steps, applied over the run's
      ``train_overrides``) to 3 steps at batch 4 (the autoencoder phase only).
    """
    import dataclasses

    import dap.experiments as E

    real_build, real_variants = E.build_method, E.variants

    def build_by_name(name, preset="paper", **kw):
        method = real_build(name, preset, **kw)
        init(method)
        return method

    def no_fps(method, image_size, **kw):
        return {"latency_ms": float("nan"), "fps_batch1": float("nan"),
                "throughput": float("nan"), "fps_batch_size": 0}

    def small_variants(method_name):
        specs = {}
        for label, spec in real_variants(method_name).items():
            if spec.overrides.get("domain_adaptation_steps"):
                spec = dataclasses.replace(spec, overrides={**spec.overrides,
                                                            "domain_adaptation_steps": 2})
            if spec.train_overrides:
                spec = dataclasses.replace(spec, train_overrides={**spec.train_overrides,
                                                                  "steps": 3, "batch_size": 4})
            specs[label] = spec
        return specs

    with mock.patch.object(E, "build_method", build_by_name), \
            mock.patch.object(E, "measure_fps", no_fps), \
            mock.patch.object(E, "variants", small_variants):
        yield


def run_benchmark(methods: list[str], data: list[str], out_dir: str | Path,
                  train_overrides: dict[str, Any] | None, variants: list[str] | None
                  ) -> list[dict[str, Any]]:
    """``dap.experiments.benchmark`` (zoo models where allowed), seeded: its table rows."""
    from dap.experiments import benchmark

    with _benchmark_patches(init_by_name):
        torch.manual_seed(0)
        return benchmark(methods, data, out_dir=out_dir, profile="ci", batch_size=16,
                         progress=False, use_zoo=True, train_overrides=train_overrides,
                         only=variants)


# ============================================================================================
# 2. Helpers
# ============================================================================================
@torch.no_grad()
def init_by_name(method) -> None:
    """Overwrite every parameter from a generator seeded by crc32 of its name.

    ndim >= 2: randn / sqrt(fan_in) (fan_in = numel / shape[0]); 1-D ``*weight`` (norms):
    1 + 0.1 randn; other 1-D (biases, ...): 0.02 randn. Buffers are left as built.
    """
    for name, p in method.named_parameters():
        key = legacy_param_name(method.name, name)
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        z = torch.randn(p.shape, generator=g, dtype=torch.float32)
        if p.ndim >= 2:
            fan_in = p.numel() // p.shape[0]
            value = z / math.sqrt(fan_in)
        elif key.endswith("weight"):
            value = 1.0 + 0.1 * z
        else:
            value = 0.02 * z
        p.copy_(value.to(p.dtype))


def build_by_name(name: str, **overrides: Any):
    """:func:`build` + :func:`init_by_name`."""
    method = build(name, PRESET, **overrides)
    init_by_name(method)
    return method


def check_buffers_deterministic(name: str, **overrides: Any) -> None:
    """Assert that no buffer of method ``name`` depends on the global RNG (built twice under
    different seeds). All of today's buffers are constants (BatchNorm statistics, NaN
    calibration placeholders, DiffAD's phase counter and latent scale)."""
    torch.manual_seed(1)
    a = dict(build(name, PRESET, **overrides).named_buffers())
    torch.manual_seed(2)
    b = dict(build(name, PRESET, **overrides).named_buffers())
    assert a.keys() == b.keys(), name
    for k in a:
        assert torch.equal(a[k], b[k]) or (a[k].is_floating_point() and torch.equal(
            a[k].isnan(), b[k].isnan()) and torch.equal(a[k].nan_to_num(), b[k].nan_to_num())), \
            f"{name}: buffer {k} is random; fill it by name too"


# Tensors with more elements are stored as a digest (the 1.5 MB budget of tests/golden).
FULL_LIMIT = 4096
SUB_LIMIT = 6144


def digest(key: str, value: Tensor, out: dict[str, Tensor]) -> None:
    """Store ``value`` under ``key``: in full when small, else a digest:

    ``key#sub``: a strided sub-sample ``[..., ::s, ::s]`` (s the smallest stride giving at most
    ``SUB_LIMIT`` elements); per leading index (image) ``key#sum`` and ``key#abssum`` (float64,
    over every element), ``key#max``, ``key#min``; ``key#shape``.
    """
    value = value.detach().cpu()
    if value.is_floating_point():
        value = value.float()
    if value.numel() <= FULL_LIMIT or value.ndim < 3:
        out[key] = value.clone()
        return
    s = 1
    while value[..., ::s, ::s].numel() > SUB_LIMIT:
        s += 1
    flat = value.reshape(value.shape[0], -1).double()
    out[f"{key}#sub"] = value[..., ::s, ::s].clone()
    out[f"{key}#sum"] = flat.sum(1)
    out[f"{key}#abssum"] = flat.abs().sum(1)
    out[f"{key}#max"] = flat.amax(1).float()
    out[f"{key}#min"] = flat.amin(1).float()
    out[f"{key}#shape"] = torch.tensor(value.shape)


def put(out: dict[str, Tensor], prefix: str, values: dict[str, Any]) -> None:
    """Digest every entry of ``values`` into ``out`` under ``prefix/name``; numbers and lists of
    numbers (None -> NaN) become float64 tensors."""
    for k, v in values.items():
        if isinstance(v, Tensor):
            digest(f"{prefix}/{k}", v, out)
        elif isinstance(v, bool) or isinstance(v, (int, float)):
            out[f"{prefix}/{k}"] = torch.tensor(float(v), dtype=torch.float64)
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) or x is None
                                                  for x in v):
            out[f"{prefix}/{k}"] = torch.tensor([math.nan if x is None else float(x) for x in v],
                                                dtype=torch.float64)
        else:
            raise TypeError(f"{prefix}/{k}: cannot record {type(v).__name__}")


def assert_matches(actual: dict[str, Tensor], expected: dict[str, Tensor], rtol: float = 1e-5,
                   atol: float = 1e-6) -> None:
    """Compare a computed case with its golden file: the same keys, every value close.

    Plain values: ``torch.testing.assert_close(rtol, atol)`` (NaN equal to NaN). Digest sums of
    n elements (``#sum``, ``#abssum``): tolerance n * atol + rtol * abssum, the bound implied by
    the element-wise tolerance. Shapes and integer tensors: exact.
    """
    missing = sorted(expected.keys() - actual.keys())
    extra = sorted(actual.keys() - expected.keys())
    assert not missing and not extra, f"keys differ: missing {missing}, unexpected {extra}"
    failures = []
    for key in sorted(expected):
        a, e = actual[key].detach().cpu(), expected[key]
        try:
            if key.endswith(("#sum", "#abssum")):
                base = key.rsplit("#", 1)[0]
                n = int(torch.tensor(expected[f"{base}#shape"][1:].tolist()).prod())
                tol = n * atol + rtol * expected[f"{base}#abssum"]
                diff = (a.double() - e.double()).abs()
                assert a.shape == e.shape, f"shape {tuple(a.shape)} != {tuple(e.shape)}"
                assert bool((diff <= tol).all()), \
                    f"max |diff| {float(diff.max()):.3g} > tolerance {float(tol.min()):.3g}"
            else:
                torch.testing.assert_close(a, e, rtol=rtol, atol=atol, equal_nan=True,
                                           check_dtype=False)
        except AssertionError as exc:
            failures.append(f"{key}: {str(exc).splitlines()[0] if str(exc) else exc}")
    assert not failures, f"{len(failures)} of {len(expected)} values differ:\n" + \
        "\n".join(failures[:20])


# ============================================================================================
# 3. Cases
# ============================================================================================
@contextlib.contextmanager
def golden_env() -> Iterator[None]:
    """One thread, grad mode on, the warnings of untrained / uncalibrated models silenced, and
    the plain path (float32, contiguous, eager: ``DAP_PLAIN=1``, see ``dap.runtime.fastpath``)
    for everything the training and evaluation loops run: the cases pin float32 eager values."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings(), mock.patch.dict("os.environ", {"DAP_PLAIN": "1"}):
            warnings.simplefilter("ignore")
            with torch.enable_grad():
                yield
    finally:
        torch.set_num_threads(threads)


def _predict_case(name: str, **overrides: Any) -> dict[str, Tensor]:
    """Case ``predict_<method>``: predict, reconstruct and map terms of by-name weights on four
    test images; for methods with an after-training step (DDAD, GLAD) the same again after it
    (calibration on 8 training / validation images) and its summary."""
    images = split_images("test", TEST_INDICES)
    method = build_by_name(name, **overrides).eval()
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        pred = predict(method, images)
        put(out, "predict", pred)
        put(out, "reconstruct", reconstruct(method, images))
        rec = pred.get("reconstruction")
        if rec is not None:
            put(out, "map_terms", map_terms(method, images, rec))
    info = after_training(method, split_images("train", TRAIN_INDICES),
                          split_images("val", VAL_INDICES))
    if info is not None:
        put(out, "after_training", info)
        method.eval()
        with torch.no_grad():
            pred = predict(method, images)
            put(out, "calibrated/predict", pred)
            put(out, "calibrated/reconstruct", reconstruct(method, images))
            put(out, "calibrated/map_terms", map_terms(method, images, pred["reconstruction"]))
    return out


def _train_case(name: str) -> dict[str, Tensor]:
    """Case ``train_<method>``: one training forward on 8 training images (DiffAD: one per
    phase); 3 steps of the training loop at batch 4 (DiffAD built with 1-step autoencoder and
    denoiser phases, so the 3 steps run all three phases); predict after those steps."""
    images = split_images("train", TRAIN_INDICES)
    out: dict[str, Tensor] = {}
    method = build_by_name(name)
    for phase in phases(method) or [None]:
        if phase is not None:
            start_phase(method, phase)
        losses = forward(method, images, seed=0)
        put(out, "forward" if phase is None else f"forward/{phase}",
            {k: v.detach() for k, v in losses.items()})

    overrides = {"ae_steps": 1, "denoiser_steps": 1} if phases(method) else {}
    method = build_by_name(name, **overrides)
    with tempfile.TemporaryDirectory(prefix="dap-golden-") as tmp:
        history = train_steps(method, images, TRAIN_STEPS, TRAIN_BATCH, tmp)
    keys = sorted({k for h in history for k in h})
    put(out, "train", {k: [h.get(k) for h in history] for k in keys})
    method.eval()
    with torch.no_grad():
        put(out, "trained/predict", predict(method, split_images("test", TEST_INDICES)))
    return out


def _zoo_case(name: str) -> dict[str, Tensor]:
    """Case ``zoo_<model>``: a shipped model's predictions on 8 test images of its category."""
    method = load_zoo(name)
    images = split_images("test", ZOO_TEST_INDICES, data=zoo_data(name))
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        put(out, "predict", predict(method, images))
    return out


# The benchmark case on builtin:brick. Two calls: the shipped DiffusionAD model through the zoo
# path (which needs train_overrides=None: any override trains every model here), then the other
# methods trained 2 steps. Rows kept: "ddad+DA" (its model is the "ddad" variant's: covers
# same_model_as, a built-but-unreported variant, eval_overrides and domain adaptation), "glad"
# (validation-set calibration after training) and "diffad" (its own train_overrides).
BENCHMARK_METRICS = ("image_auroc", "pixel_auroc", "aupro", "pixel_ap")
BENCHMARK_RUNS: tuple[dict[str, Any], ...] = (
    # the zoo path needs train_overrides=None (any override trains every model here)
    {"methods": ["diffusionad"], "train_overrides": None, "variants": None},
    {"methods": ["ddad", "glad", "diffad"], "train_overrides": {"steps": 2, "val_every": 2},
     "variants": ["ddad+DA", "glad", "diffad"]},
)


def _benchmark_case() -> dict[str, Tensor]:
    """Case ``benchmark``: the metric columns of every row of :data:`BENCHMARK_RUNS`."""
    out: dict[str, Tensor] = {}
    with tempfile.TemporaryDirectory(prefix="dap-golden-bench-") as tmp:
        for i, run in enumerate(BENCHMARK_RUNS):
            rows = run_benchmark(run["methods"], [DATA], Path(tmp) / str(i),
                                 run["train_overrides"], run["variants"])
            for row in rows:
                put(out, f"benchmark/{row['method']}",
                    {k: row[k] for k in BENCHMARK_METRICS})
    return out


def case_names() -> list[str]:
    """Every golden case, in recording order."""
    names = [f"predict_{m}" for m in method_names()] + ["predict_ddad_da"]
    names += [f"train_{m}" for m in method_names()]
    names += [f"zoo_{z}" for z in zoo_names()]
    return names + ["benchmark"]


SLOW_CASES = {"benchmark"}


def compute_case(name: str) -> dict[str, Tensor]:
    """The current code's values for case ``name`` (see :func:`case_names`)."""
    with golden_env():
        if name == "predict_ddad_da":
            # DDAD with domain adaptation: adapt (2 steps) + calibrate both extractors, then
            # predict with the adapted one (use_adaptation="auto")
            return _predict_case("ddad", domain_adaptation_steps=DDAD_DA_STEPS)
        if name.startswith("predict_"):
            return _predict_case(name[len("predict_"):])
        if name.startswith("train_"):
            return _train_case(name[len("train_"):])
        if name.startswith("zoo_"):
            return _zoo_case(name[len("zoo_"):])
        if name == "benchmark":
            return _benchmark_case()
    raise KeyError(f"unknown golden case {name!r}; cases: {case_names()}")


def golden_path(name: str) -> Path:
    return GOLDEN_DIR / f"{name}.pt"


def load_golden(name: str) -> dict[str, Tensor]:
    return torch.load(golden_path(name), map_location="cpu", weights_only=True)
