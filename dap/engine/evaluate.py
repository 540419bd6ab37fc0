"""One evaluation loop for every method: the four metrics on the test split, and FPS.

Taught in ``notebooks/06_train_and_evaluate``.

* Metrics come from :mod:`dap.metrics` (image AUROC on the image score; pixel AUROC, AUPRO with
  FPR <= 0.3, pixel AP and F1-max on the maps) — the method never sees the masks.
* FPS is measured two ways: batch-1 latency (what a line camera sees) and batched throughput,
  each after warm-up and with CUDA synchronisation.
* Both run on the fast path by default (:func:`dap.runtime.setup`: bf16 autocast where the
  device computes bf16 natively, channels_last, fused kernels, ``torch.inference_mode``);
  ``plain=True`` (or ``DAP_PLAIN=1``) predicts in float32 under ``torch.no_grad`` as before.
  The shipped models' metrics on both paths: the README's "Speed and memory".

Tables and figures of the results are :mod:`dap.report`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import contextlib

import numpy as np
import torch
from torch import Tensor

from dap import runtime
from dap.methods.base import AnomalyMethod
from dap.metrics import MetricAccumulator

@dataclass
class EvalResult:
    """Metrics (fractions in [0, 1]) and the per-image outputs of one evaluation."""

    metrics: dict[str, float]
    scores: np.ndarray
    labels: np.ndarray
    defects: list[str]
    examples: dict[str, Tensor] = field(default_factory=dict)
    seconds: float = 0.0


def _batches(dataset, batch_size: int) -> Iterable[dict[str, Any]]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         num_workers=0)
    yield from loader


def _predict_context(method: AnomalyMethod, device: torch.device, amp: str, plain: bool | None
                     ) -> tuple[Callable[[], contextlib.AbstractContextManager], bool]:
    """Put ``method`` on the fast or plain path; return (a maker of the context to predict
    in, whether inputs go channels_last)."""
    plain = runtime.resolve_plain(plain)
    dtype = runtime.setup(method, device, amp, plain)
    if plain:
        return torch.no_grad, False
    return (lambda: runtime.inference(device, dtype)), runtime.uses_channels_last(method)


def evaluate(method: AnomalyMethod, dataset, batch_size: int = 16,
             device: torch.device | str | None = None, num_examples: int = 8,
             fpr_limit: float = 0.3, progress: bool = True, desc: str = "evaluate",
             amp: str = "auto", plain: bool | None = None) -> EvalResult:
    """Run ``method.predict`` over a test dataset and compute every metric.

    ``dataset`` items are dicts with ``image`` (3, H, W) in [-1, 1], ``mask`` (1, H, W) in {0, 1},
    ``label`` and ``defect`` (see :class:`dap.data.AnomalyDataset`). ``num_examples`` images
    (anomalous first) are kept for figures. ``amp`` / ``plain``: the fast path (default) or the
    plain path (``plain=True``; None: ``DAP_PLAIN``), see :func:`dap.runtime.setup`; the fast
    path's options stay on ``method`` (they change no parameter).
    """
    from dap.progress import progress_bar

    device = torch.device(device) if device is not None else next(method.parameters()).device
    method.to(device).eval()
    context, channels_last = _predict_context(method, device, amp, plain)
    acc = MetricAccumulator(fpr_limit=fpr_limit)
    scores, labels, defects = [], [], []
    keep: dict[str, list[Tensor]] = {"image": [], "mask": [], "map": [], "reconstruction": []}
    t0 = time.perf_counter()
    n = len(dataset)
    bar = progress_bar(total=n, enabled=progress, desc=desc, dynamic_ncols=True)
    for batch in _batches(dataset, batch_size):
        images = batch["image"].to(device)
        with context():
            pred = method.predict(runtime.channels_last_input(images) if channels_last
                                  else images)
        masks = batch["mask"][:, 0]
        acc.update(maps=pred.anomaly_map.float().cpu(), masks=masks, scores=pred.score.float().cpu(),
                   labels=batch["label"])
        scores.append(pred.score.float().cpu().numpy())
        labels.append(np.asarray(batch["label"]))
        defects += list(batch["defect"])
        if sum(len(x) for x in keep["image"]) < 4 * num_examples:
            keep["image"].append(images.cpu())
            keep["mask"].append(masks)
            keep["map"].append(pred.anomaly_map.float().cpu())
            rec = pred.reconstruction if pred.reconstruction is not None else images
            keep["reconstruction"].append(rec.float().cpu())
        bar.update(len(images))
    bar.close()
    metrics = acc.compute()
    lab = np.concatenate(labels)
    examples = {k: torch.cat(v) for k, v in keep.items() if v}
    if examples:
        order = torch.argsort(torch.as_tensor(lab[: len(examples["image"])]), descending=True,
                              stable=True)[:num_examples]
        examples = {k: v[order] for k, v in examples.items()}
    return EvalResult(metrics, np.concatenate(scores), lab, defects, examples,
                      time.perf_counter() - t0)


def measure_fps(method: AnomalyMethod, image_size: int, device: torch.device | str | None = None,
                batch_size: int = 16, warmup: int = 2, iters: int = 5, amp: str = "auto",
                plain: bool | None = None) -> dict[str, float]:
    """Batch-1 latency (ms, FPS) and batched throughput (images/s) of ``method.predict``.

    Inputs are random images; each measurement is preceded by ``warmup`` calls and, on CUDA,
    bracketed by ``torch.cuda.synchronize()``. ``amp`` / ``plain``: as in :func:`evaluate`.
    """
    device = torch.device(device) if device is not None else next(method.parameters()).device
    method.to(device).eval()
    context, channels_last = _predict_context(method, device, amp, plain)

    def timed(b: int) -> float:
        x = torch.rand(b, 3, image_size, image_size, device=device) * 2 - 1
        if channels_last:
            x = runtime.channels_last_input(x)
        with context():
            for _ in range(warmup):
                method.predict(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with context():
            for _ in range(iters):
                method.predict(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - t0) / iters

    latency = timed(1)
    batched = timed(batch_size)
    return {"latency_ms": 1000 * latency, "fps_batch1": 1.0 / latency,
            "throughput": batch_size / batched, "fps_batch_size": batch_size}


__all__ = ["EvalResult", "evaluate", "measure_fps"]
