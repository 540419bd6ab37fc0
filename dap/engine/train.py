"""One training loop for every method: seeded, resumable, mixed precision, DDP-ready.

Taught in ``notebooks/06_train_and_evaluate``.

Design
------
* **Determinism without hidden state.** The image order is a pure function of (seed, epoch) and
  all the randomness of step k (synthesis, t, noise) comes from a generator seeded by
  (seed, k, rank). Resuming therefore needs only the model, optimiser, scaler and step (plus the
  global torch RNG for dropout), and an interrupted-then-resumed run reproduces the losses of an
  uninterrupted one exactly on the CPU.
* **Model selection on validation only.** Every ``val_every`` steps the method is scored on the
  validation split (normal images + synthetic anomalies made once with a fixed seed); the best
  checkpoint by ``select_metric`` is kept beside the last one. The test split is never seen here.
* **Atomic checkpoints** (:mod:`dap.engine.checkpoint`: temp file + rename) holding the
  configs, git commit, step, metrics and history; they load with ``torch.load(weights_only=True)``.
* **DDP.** Under ``torchrun`` (``WORLD_SIZE`` > 1) the method is wrapped in
  ``DistributedDataParallel`` (gloo on CPU, nccl on CUDA); each rank takes its slice of the
  global batch, and only rank 0 validates and writes.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from torch import Tensor, nn

from dap import runtime
from dap.config import ConfigError, check_fields, to_dict
from dap.engine.checkpoint import (CHECKPOINT_FORMAT, check_same_config, dap_version, git_commit,
                                   load_checkpoint, save_checkpoint)
from dap.io import atomic_write_text, clean_stale
from dap.engine.select import SELECT_METRICS
from dap.methods.base import AnomalyMethod, TrainBatch


@dataclass
class TrainConfig:
    """Settings of the training loop (not of the model).

    ``batch_size`` is per process. ``select_metric``: a validation metric name, or ``last``.

    Speed and memory (:mod:`dap.runtime`; measured in ``benchmarks/speed.py`` and
    ``benchmarks/memory.py``, documented in the README's "Speed and memory"): ``amp``:
    ``auto`` = bf16 autocast where the device computes bf16 natively (a CPU with AMX /
    AVX-512 BF16, detected; a GPU of compute capability >= 8), float16 with a gradient scaler
    on an older GPU, float32 elsewhere; ``off`` = float32. ``channels_last`` (None: where it
    pays, :func:`dap.runtime.channels_last_pays`: on the CPU, not on CUDA) and ``compile``
    are fast-path options; ``plain=True`` (or ``DAP_PLAIN=1``) trains on the plain path:
    float32, contiguous, eager, PyTorch's default attention and Adam (the official code's
    recipe). ``gradient_checkpointing`` recomputes the U-Nets' activations in the backward
    pass: less memory, about one more forward pass of time, the same numbers.

    ``ema_decay``: None (off) or the decay d of an exponential moving average of the weights
    (:func:`ema_average`); validation, the selected checkpoint and the returned model then use the
    averaged weights, and ``last.pt`` keeps the raw ones too for an exact resume.
    ``ema_warmup``: use min(d, (1 + n) / (10 + n)) after n updates, so early weights fade fast.
    """

    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-4
    lr_segmenter: float | None = None
    weight_decay: float = 0.0
    grad_clip: float | None = None
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    channels_last: bool | None = None
    compile: bool = False
    gradient_checkpointing: bool = False
    plain: bool = False
    seed: int = 0
    val_every: int = 250
    select_metric: str = "val_mean"
    log_every: int = 10
    ema_decay: float | None = None
    ema_warmup: bool = True

    def __post_init__(self) -> None:
        check_fields(self)  # types and literals, even when built directly (not by from_dict)
        need = [("steps", self.steps >= 1, ">= 1"), ("batch_size", self.batch_size >= 1, ">= 1"),
                ("lr", self.lr > 0, "> 0"),
                ("lr_segmenter", self.lr_segmenter is None or self.lr_segmenter > 0,
                 "> 0 or None"),
                ("weight_decay", self.weight_decay >= 0, ">= 0"),
                ("grad_clip", self.grad_clip is None or self.grad_clip > 0, "> 0 or None"),
                ("warmup_steps", self.warmup_steps >= 0, ">= 0"),
                ("seed", self.seed >= 0, ">= 0"),
                ("val_every", self.val_every >= 0, ">= 0 (0: validate only at the end)"),
                ("log_every", self.log_every >= 1, ">= 1"),
                ("ema_decay", self.ema_decay is None or 0.0 < self.ema_decay < 1.0,
                 "in (0, 1) or None (off)")]
        for name, ok, rule in need:
            if not ok:
                raise ConfigError(f"TrainConfig.{name} must be {rule}, got {getattr(self, name)!r}")
        if self.select_metric != "last" and self.select_metric not in SELECT_METRICS:
            raise ConfigError(f"TrainConfig.select_metric {self.select_metric!r} is not a "
                              f"validation metric; use one of {list(SELECT_METRICS)} or 'last'")
        if self.plain and (self.amp in ("bf16", "fp16") or self.compile):
            raise ConfigError("TrainConfig.plain=True is the float32 eager path: it cannot have "
                              f"amp={self.amp!r} or compile={self.compile}; use amp='auto' or "
                              "'off' and compile=False, or plain=False")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says where the last good state is."""


# --------------------------------------------------------------------------------------------
# Data: an in-memory tensor dataset with a deterministic index stream
# --------------------------------------------------------------------------------------------
@dataclass
class TrainData:
    """All training images in memory (uint8 keeps MVTec-size categories small).

    images : (N, 3, H, W) uint8; foreground : (N, 1, H, W) bool or None.
    """

    images: Tensor
    foreground: Tensor | None = None
    is_texture: bool = True

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"TrainData.images must be (N, 3, H, W), got {tuple(self.images.shape)}")
        if len(self.images) == 0:
            raise ValueError("TrainData has no images: check the category's train/good folder")

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def from_dataset(cls, dataset, is_texture: bool = True) -> "TrainData":
        """Load every item of a dataset returning dicts with ``image`` in [-1, 1]."""
        imgs, fgs = [], []
        for item in dataset:
            imgs.append(to_uint8(item["image"]))
            if "foreground" in item and item["foreground"] is not None:
                fgs.append(item["foreground"].bool())
        fg = torch.stack(fgs) if fgs and len(fgs) == len(imgs) else None
        return cls(torch.stack(imgs), fg, is_texture)

    def indices(self, step: int, batch_size: int, seed: int, rank: int = 0, world: int = 1
                ) -> Tensor:
        """Indices of this rank's part of global batch ``step`` (a pure function of its args)."""
        n, gb = len(self), batch_size * world
        start = step * gb + rank * batch_size
        out = []
        for pos in range(start, start + batch_size):
            epoch, offset = divmod(pos, n)
            out.append(int(_permutation(n, seed, epoch)[offset]))
        return torch.tensor(out)

    def batch(self, idx: Tensor, device: torch.device) -> TrainBatch:
        imgs = self.images[idx].to(device, non_blocking=True).float() / 127.5 - 1.0
        fg = None if self.foreground is None else self.foreground[idx].to(device).float()
        return TrainBatch(imgs, fg, self.is_texture)


_PERM_CACHE: dict[tuple[int, int, int], Tensor] = {}


def _permutation(n: int, seed: int, epoch: int) -> Tensor:
    key = (n, seed, epoch)
    if key not in _PERM_CACHE:
        if len(_PERM_CACHE) > 8:
            _PERM_CACHE.clear()
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        _PERM_CACHE[key] = torch.randperm(n, generator=g)
    return _PERM_CACHE[key]


def to_uint8(image: Tensor) -> Tensor:
    """(…, H, W) float in [-1, 1] -> uint8 in [0, 255]."""
    return ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The generator of all of step ``step``'s randomness on ``rank``."""
    return torch.Generator(device).manual_seed((seed * 1_000_003 + step) * 64 + rank)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------
# Precision and devices
# --------------------------------------------------------------------------------------------
def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (None = full fp32): bf16 where the device
    computes it natively (detected, :func:`dap.runtime.autocast_dtype`)."""
    return runtime.autocast_dtype(device, amp)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``name`` as a device that exists here (None: CUDA if available, else the CPU).

    A clear :class:`ConfigError` for a malformed name or a CUDA device this machine lacks.
    """
    if name is None:
        return default_device()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"--device {name!r} is not a device name; use cpu, cuda or cuda:N") \
            from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine; "
                              "use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} "
                              "CUDA device(s)")
    elif device.type not in ("cpu", "mps"):
        raise ConfigError(f"--device {name}: dap runs on cpu or cuda")
    return device


def prepare_out_dir(path: str | Path) -> Path:
    """Create the run folder ``path`` and check that it can be written, before any work.

    A :class:`ConfigError` names the problem: a file in the way, or no permission. Temporary
    files that a killed run left behind (PID-tagged, their process dead) are removed.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the run")
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / ".dap-write-test", "ok")
        (out / ".dap-write-test").unlink()
    except OSError as exc:
        raise ConfigError(f"--out {out} cannot be written ({exc.strerror or exc}); choose "
                          "another folder") from exc
    # half-written checkpoints of a killed run (``.last.pt.tmp-<dead pid>-...``) go
    clean_stale(out)
    return out


# --------------------------------------------------------------------------------------------
# Weight averaging (EMA)
# --------------------------------------------------------------------------------------------
def ema_decay_at(decay: float, num_averaged: int, warmup: bool = True) -> float:
    """The decay used for update number ``num_averaged`` + 1.

    With ``warmup``: min(d, (1 + n) / (10 + n)) — the rule of TensorFlow's
    ``ExponentialMovingAverage(num_updates=n)``, so the average is not dominated by the random
    initial weights during the first ~1 / (1 - d) steps.
    """
    n = float(num_averaged)
    return min(decay, (1.0 + n) / (10.0 + n)) if warmup else decay


def ema_average(decay: float, warmup: bool = True) -> Callable:
    """A ``multi_avg_fn`` for :class:`torch.optim.swa_utils.AveragedModel`.

    Exponential moving average (Polyak averaging with exponential weights):
    theta_ema <- d_n * theta_ema + (1 - d_n) * theta, with d_n = :func:`ema_decay_at`. (PyTorch's
    ``get_ema_multi_avg_fn`` is the same update without the warm-up.) ``AveragedModel`` copies
    the weights at its first update (n = 0) and calls this from the second on (n >= 1).
    """
    def update(ema_params: list[Tensor], params: list[Tensor], num_averaged: Tensor) -> None:
        d = ema_decay_at(decay, int(num_averaged), warmup)
        # theta_ema + (1 - d) (theta - theta_ema) = d theta_ema + (1 - d) theta
        torch._foreach_lerp_(ema_params, params, 1.0 - d)
    return update


def make_ema(method: AnomalyMethod, cfg: TrainConfig) -> torch.optim.swa_utils.AveragedModel | None:
    """The EMA copy of ``method`` (None when ``cfg.ema_decay`` is None).

    Parameters are averaged; buffers (BatchNorm statistics, calibration) follow the trained
    model (:func:`ema_step` copies them), so the averaged model is always usable as it is.
    """
    if cfg.ema_decay is None:
        return None
    return torch.optim.swa_utils.AveragedModel(
        method, multi_avg_fn=ema_average(cfg.ema_decay, cfg.ema_warmup), use_buffers=False)


@torch.no_grad()
def ema_step(ema: torch.optim.swa_utils.AveragedModel, method: AnomalyMethod) -> None:
    """Average ``method``'s parameters into ``ema`` and copy its buffers."""
    ema.update_parameters(method)
    for b_ema, b in zip(ema.module.buffers(), method.buffers()):
        b_ema.copy_(b)


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    history: list[dict[str, float]]
    validations: list[dict[str, float]]
    best: dict[str, float] | None
    last_path: Path | None
    best_path: Path | None
    seconds: float


def _lr_factor(cfg: TrainConfig, step: int) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "cosine":
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def train(
    method: AnomalyMethod,
    data: TrainData,
    cfg: TrainConfig,
    out_dir: str | Path | None = None,
    validate: Callable[[AnomalyMethod], dict[str, float]] | None = None,
    resume: bool = True,
    stop_after: int | None = None,
    device: torch.device | str | None = None,
    extra: dict[str, Any] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``method`` on ``data`` for ``cfg.steps`` steps.

    Parameters
    ----------
    method : AnomalyMethod
        Its ``forward(batch, generator)`` returns a dict with ``loss``.
    data : TrainData
    cfg : TrainConfig
    out_dir : path, optional
        Where ``last.pt`` / ``best.pt`` / ``history.json`` go. With ``resume`` and an existing
        ``last.pt`` of the same config, training continues from it exactly.
    validate : callable, optional
        ``validate(method) -> {metric: value}`` on the validation split; called every
        ``cfg.val_every`` steps and at the end.
    stop_after : int, optional
        Stop (with a checkpoint) after this many steps — to test interruption and resume.
    extra : dict, optional
        JSON-able facts stored in the checkpoint (dataset, category, command line, ...).
    """
    from dap.progress import progress_bar

    rank, world = _dist()
    device = torch.device(device) if device is not None else default_device()
    method.to(device)
    # the fast path (bf16 where native, channels_last, fused kernels) unless plain: dap.runtime
    plain = runtime.resolve_plain(cfg.plain or None)
    amp_dtype = runtime.setup(method, device, cfg.amp, plain, channels_last=cfg.channels_last,
                              compile=cfg.compile,
                              gradient_checkpointing=cfg.gradient_checkpointing)
    channels_last = not plain and runtime.uses_channels_last(method)
    groups = method.param_groups(cfg.lr, cfg.lr_segmenter)
    if cfg.weight_decay and any("weight_decay" in g for g in groups):
        raise ConfigError(f"{method.name} sets the weight decay of its own parameter groups (see "
                          f"its config); TrainConfig.weight_decay={cfg.weight_decay} would be "
                          "ignored: leave it at 0")
    optimizer = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                 **({} if plain else runtime.optimizer_kwargs(device)))
    if not plain and device.type == "cpu":
        runtime.limit_step_threads(optimizer)  # small models: the step on one thread
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ema = make_ema(method, cfg)
    model: nn.Module = method
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            method, device_ids=[device.index] if device.type == "cuda" else None)

    out = prepare_out_dir(out_dir) if out_dir is not None and rank == 0 else \
        (Path(out_dir) if out_dir is not None else None)
    history: list[dict[str, float]] = []
    validations: list[dict[str, float]] = []
    best: dict[str, float] | None = None
    start = 0
    config = method.config_dict()
    if out is not None and resume and (out / "last.pt").exists():
        ckpt = load_checkpoint(out / "last.pt", map_location=device)
        check_same_config(ckpt, method.name, config, out / "last.pt")
        # the memory layout changes float rounding only (like the device): a run started before
        # channels_last became device-dependent (None) resumes with the new default
        layout_free = lambda d: {k: v for k, v in d.items() if k != "channels_last"}  # noqa: E731
        if layout_free(ckpt["train_config"]) != layout_free(to_dict(cfg)):
            raise ConfigError(f"{out / 'last.pt'} was made with another TrainConfig; use a new "
                              "output directory or the same settings to resume")
        before, now = (ckpt.get("extra") or {}).get("data"), (extra or {}).get("data")
        if before is not None and now is not None and before != now:
            raise ConfigError(f"{out / 'last.pt'} is a run on {before}, not on {now}; resume it "
                              f"with --data {before} or give a new --out")
        # "model" holds the weights to evaluate (the EMA ones when EMA is on), "train_model" the
        # raw weights the optimiser continues from
        method.load_state_dict(ckpt.get("train_model", ckpt["model"]))
        if ema is not None:
            if "ema_num_averaged" not in ckpt:
                raise ConfigError(f"{out / 'last.pt'} has no EMA state; resume with the same "
                                  "settings or use a new output directory")
            ema.module.load_state_dict(ckpt["model"])
            ema.n_averaged.fill_(int(ckpt["ema_num_averaged"]))
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"]["torch"].cpu())
        start, history = int(ckpt["step"]), list(ckpt["history"])
        validations, best = list(ckpt["validations"]), ckpt.get("best")

    def evaluated() -> AnomalyMethod:
        return method if ema is None else ema.module

    def payload(step: int, metrics: dict | None) -> dict[str, Any]:
        averaged = {} if ema is None else {"train_model": method.state_dict(),
                                           "ema_num_averaged": int(ema.n_averaged)}
        return {
            "format": CHECKPOINT_FORMAT, "method": method.name, "method_config": config,
            "train_config": to_dict(cfg), "model": evaluated().state_dict(), **averaged,
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state()}, "step": step, "history": history,
            "validations": validations, "best": best, "metrics": metrics or {},
            "git_commit": git_commit(), "dap_version": dap_version(), "extra": extra or {},
            "world_size": world,
        }

    def run_validation(step: int) -> None:
        nonlocal best
        if validate is None or rank != 0:
            return
        scored = evaluated()
        scored.eval()
        metrics = {k: float(v) for k, v in validate(scored).items()}
        method.train()
        metrics["step"] = step
        validations.append(metrics)
        if cfg.select_metric != "last" and cfg.select_metric not in metrics:
            raise ConfigError(f"select_metric {cfg.select_metric!r} is not among the validation "
                              f"metrics {sorted(metrics)}")
        better = cfg.select_metric == "last" or best is None or \
            metrics[cfg.select_metric] > best[cfg.select_metric]
        if better:
            best = dict(metrics)
            if out is not None:
                save_checkpoint(out / "best.pt", payload(step, metrics))

    t0 = time.perf_counter()
    method.train()
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    bar = progress_bar(range(start, end), enabled=progress and rank == 0, initial=start,
                       total=cfg.steps, desc=f"train {method.name}", dynamic_ncols=True)
    for step in bar:
        for g, lr in zip(optimizer.param_groups, base_lrs):
            g["lr"] = lr * _lr_factor(cfg, step)
        idx = data.indices(step, cfg.batch_size, cfg.seed, rank, world)
        batch = data.batch(idx, device)
        if channels_last:
            batch.images = batch.images.contiguous(memory_format=torch.channels_last)
        gen = step_generator(cfg.seed, step, rank, device)
        rng_before = torch.get_rng_state()
        ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
        with ctx:
            losses = model(batch, gen)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            saved = ""
            if out is not None and rank == 0:
                # the weights are still those after `step` good steps: keep them
                torch.set_rng_state(rng_before)
                save_checkpoint(out / "last.pt", payload(step, None))
                saved = f"; the last good state (after {step} steps) is in {out / 'last.pt'}"
            raise TrainingDiverged(
                f"loss is {loss.item()} at step {step}{saved}. Train again in a new --out with "
                "a lower learning rate, grad_clip, or amp='off'")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.grad_clip is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(method.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        if ema is not None:
            ema_step(ema, method)
        logs = {k: float(v.detach()) for k, v in losses.items()}
        logs["step"] = step
        history.append(logs)
        if step % cfg.log_every == 0:
            bar.set_postfix(loss=f"{logs['loss']:.4f}")
        done = step + 1
        if cfg.val_every and done % cfg.val_every == 0 and done < cfg.steps:
            run_validation(done)
            if out is not None and rank == 0:
                save_checkpoint(out / "last.pt", payload(done, validations[-1] if validations else None))
    bar.close()
    done = end
    if done >= cfg.steps and (not validations or validations[-1]["step"] != done):
        run_validation(done)
    last_path = best_path = None
    if out is not None and rank == 0:
        last_path = save_checkpoint(out / "last.pt", payload(done, validations[-1] if validations else None))
        best_path = out / "best.pt" if (out / "best.pt").exists() else None
        atomic_write_text(out / "history.json",
                          json.dumps({"history": history, "validations": validations, "best": best}))
    if ema is not None:
        # the caller gets the averaged weights (buffers, e.g. a calibration, stay the method's)
        method.load_state_dict(ema.module.state_dict())
    return TrainResult(history, validations, best, last_path, best_path,
                       time.perf_counter() - t0)


__all__ = [
    "TrainConfig", "TrainData", "TrainResult", "TrainingDiverged", "train", "seed_everything",
    "step_generator", "resolve_amp", "default_device", "resolve_device", "prepare_out_dir",
    "to_uint8", "ema_average", "ema_decay_at", "make_ema", "ema_step",
]
