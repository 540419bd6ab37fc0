"""Exact, fast anomaly-detection metrics: image AUROC, pixel AUROC, pixel AP, AUPRO, F1-max.

All pixel metrics come from ONE sort of all pixels (see :mod:`dap._metrics_core`): after the
sort, the cumulative counts at the end of each group of tied scores are the exact points of the
ROC, precision-recall and PRO curves -- no threshold grid, no approximation. On an MVTec-scale
test set (1725 maps of 256 x 256, 113 M pixels) :func:`evaluate_maps` computes all of them about
10x faster than scikit-learn computes AUROC and AP alone, with ~8 bytes of extra memory per
pixel (``benchmarks/metrics.py``).

Conventions (the same in every function):

* ``maps``: anomaly maps ``(N, H, W)`` or ``(N, 1, H, W)``, any real dtype, NumPy or torch on any
  device (a CUDA tensor is sorted on its GPU); larger = more anomalous. Scores are used as they
  are: no sigmoid, no normalisation (torchmetrics applies a sigmoid by default).
* ``masks``: ground truth of the same shape, values in {0, 1} (bool, int or float).
* ``scores`` / ``labels``: one score per image ``(N,)`` and its label in {0, 1}.
* A thresholded prediction is ``map >= threshold``.
* Invalid input raises :class:`MetricError` (a ``ValueError``) that says what to do.

Sources. ROC AUC: Fawcett, "An introduction to ROC analysis" (Pattern Recognition Letters,
2006), trapezoid rule over the curve points, one point per distinct score (= scikit-learn's
``roc_auc_score``). AP: scikit-learn's ``average_precision_score`` step sum. F1: van Rijsbergen's
F-measure, ``F1 = 2PR / (P + R)``. PRO / AUPRO: Bergmann et al., "The MVTec Anomaly Detection
Dataset: A Comprehensive Real-World Dataset for Unsupervised Anomaly Detection" (IJCV 2021), the
section defining the per-region overlap (PRO), as implemented by the official MVTec AD
evaluation code v1.0.

Taught in ``notebooks/06_train_and_evaluate``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from dap._metrics_core import MetricError, Summary, check_chunk, summarize

__all__ = [
    "MetricError",
    "F1Max",
    "image_auroc",
    "pixel_auroc",
    "pixel_ap",
    "aupro",
    "f1_max",
    "evaluate_maps",
    "MetricAccumulator",
]


class F1Max(NamedTuple):
    """The best F1 over all thresholds and the threshold reaching it (``map >= threshold``)."""

    f1: float
    threshold: float


def _array(x: Any, name: str, where: str) -> Any:
    """A torch tensor (detached, any device) or a real NumPy array, never copied."""
    if isinstance(x, Tensor):
        return x.detach()
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise MetricError(f"{where}: {name} must be a real-valued array, got dtype {a.dtype}")
    return a


def _stored(x: Any, dtype: torch.dtype) -> Tensor:
    """A private copy of ``x`` as a contiguous tensor of ``dtype`` on x's device."""
    t = x if isinstance(x, Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return t.to(dtype=dtype, copy=True).contiguous()


def _as_maps(maps: Any, masks: Any, where: str) -> tuple[Any, Any]:
    """``(N, H, W)`` score maps and masks (views), or a :class:`MetricError` naming the shapes."""
    s, m = _array(maps, "maps", where), _array(masks, "masks", where)
    s = s[:, 0] if s.ndim == 4 and s.shape[1] == 1 else s
    m = m[:, 0] if m.ndim == 4 and m.shape[1] == 1 else m
    if s.ndim != 3:
        raise MetricError(
            f"{where}: maps must be (N, H, W) or (N, 1, H, W), got shape {tuple(s.shape)}; "
            "add a batch axis for a single map (maps[None])."
        )
    if tuple(s.shape) != tuple(m.shape):
        raise MetricError(
            f"{where}: maps {tuple(s.shape)} and masks {tuple(m.shape)} differ in shape; resize "
            "the maps to the mask size (bilinear) or the masks to the map size (nearest) first."
        )
    if 0 in s.shape:
        raise MetricError(f"{where}: got no pixels (shape {tuple(s.shape)})")
    return s, m


def _check_limit(fpr_limit: float) -> float:
    if not 0.0 < float(fpr_limit) <= 1.0:
        raise MetricError(f"aupro: fpr_limit must be in (0, 1], got {fpr_limit} (standard: 0.3)")
    return float(fpr_limit)


def image_auroc(scores: Any, labels: Any) -> float:
    """Image-level AUROC: area under the ROC curve of one score per image.

    Parameters
    ----------
    scores : array or tensor, shape (N,) or (N, 1), any real dtype
        One anomaly score per image (DiffusionAD: the mean of the top-50 map pixels).
    labels : array or tensor, same shape, values in {0, 1}
        1 = anomalous image.

    Returns
    -------
    float in [0, 1]
        Trapezoid area under (FPR, TPR) with one point per distinct score (Fawcett 2006; equal
        to scikit-learn's ``roc_auc_score``). 0.5 for a constant score.
    """
    s, y = _array(scores, "scores", "image_auroc"), _array(labels, "labels", "image_auroc")
    s = s[:, 0] if s.ndim == 2 and s.shape[1] == 1 else s
    y = y[:, 0] if y.ndim == 2 and y.shape[1] == 1 else y
    if s.ndim != 1 or tuple(s.shape) != tuple(y.shape) or len(s) == 0:
        raise MetricError(
            f"image_auroc: scores {tuple(s.shape)} and labels {tuple(y.shape)} must both be (N,) "
            "with N > 0 (one score and one label per image)."
        )
    return summarize([(s, y)], regions=False, fpr_limit=1.0, where="image_auroc").auroc


def _pixel(maps: Any, masks: Any, where: str, regions: bool = False, fpr_limit: float = 0.3):
    blocks = [_as_maps(maps, masks, where)]
    # AUPRO alone may stop streaming once the FPR passes the limit
    return summarize(blocks, regions=regions, fpr_limit=fpr_limit, where=where, only_pro=regions)


def pixel_auroc(maps: Any, masks: Any) -> float:
    """Pixel-level AUROC over every pixel of every image (normal images included).

    Parameters
    ----------
    maps : array or tensor, (N, H, W) or (N, 1, H, W), any real dtype
    masks : same shape, values in {0, 1}

    Returns
    -------
    float in [0, 1]
        Trapezoid area under the exact ROC curve (Fawcett 2006; = ``roc_auc_score`` on the
        flattened pixels, from one sort and without its several-GB temporaries).
    """
    return _pixel(maps, masks, "pixel_auroc").auroc


def pixel_ap(maps: Any, masks: Any) -> float:
    """Pixel-level average precision, scikit-learn's step-sum definition.

    ``AP = sum_i (R_i - R_{i-1}) P_i`` over the distinct thresholds in descending order, with
    ``P_i = TP_i / (TP_i + FP_i)``, ``R_i = TP_i / n_pos`` and ``R_0 = 0`` -- exactly
    ``sklearn.metrics.average_precision_score`` (and torchmetrics' AP). It is NOT the trapezoid
    area under the PR curve that anomalib's AUPR reports (slightly different numbers).

    Parameters
    ----------
    maps : array or tensor, (N, H, W) or (N, 1, H, W), any real dtype
    masks : same shape, values in {0, 1}

    Returns
    -------
    float in [0, 1]
    """
    return _pixel(maps, masks, "pixel_ap").ap


def aupro(maps: Any, masks: Any, fpr_limit: float = 0.3) -> float:
    """Normalised area under the per-region-overlap curve up to ``fpr_limit`` (AUPRO).

    The official MVTec AD algorithm (Bergmann et al., IJCV 2021, PRO; evaluation code v1.0),
    exact:

    1. label each mask's connected defect regions with 8-connectivity (3x3 structure);
    2. each background pixel adds ``1 / N_bg`` to the FPR; each defect pixel of region ``r``
       adds ``1 / (|r| * N_regions)`` to the PRO (the mean over all regions of their overlap);
    3. visit all scores in descending order; the cumulative sums at the end of each tie group are
       the curve points (FPR, PRO), preceded by (0, 0);
    4. integrate PRO over FPR from 0 to ``fpr_limit`` with the trapezoid rule, interpolating
       linearly at the limit, and divide by ``fpr_limit``.

    Images without defects contribute only background pixels. (anomalib <= 2.2 divided by the
    curve's last FPR instead of the limit; DiffusionAD used a 1000-step grid; neither matches.)

    Parameters
    ----------
    maps : array or tensor, (N, H, W) or (N, 1, H, W), any real dtype
    masks : same shape, values in {0, 1}
    fpr_limit : float in (0, 1], default 0.3

    Returns
    -------
    float in [0, 1]
    """
    return _pixel(maps, masks, "aupro", True, _check_limit(fpr_limit)).aupro


def f1_max(maps: Any, masks: Any) -> F1Max:
    """The best pixel F1 over all thresholds, and that threshold.

    ``F1 = 2 P R / (P + R) = 2 TP / (TP + FP + n_pos)`` (van Rijsbergen's F-measure, beta = 1)
    at every distinct score; the prediction is ``map >= threshold``. Of equal maxima the highest
    threshold is returned. Equal to the maximum of F1 over ``precision_recall_curve``.

    Parameters
    ----------
    maps : array or tensor, (N, H, W) or (N, 1, H, W), any real dtype
    masks : same shape, values in {0, 1}

    Returns
    -------
    F1Max
        ``(f1, threshold)``: Python floats; ``threshold`` is one of the map values.
    """
    r = _pixel(maps, masks, "f1_max")
    return F1Max(r.f1, r.f1_threshold)


def _as_dict(r: Summary) -> dict[str, float]:
    return {
        "pixel_auroc": r.auroc,
        "pixel_ap": r.ap,
        "aupro": r.aupro,
        "f1_max": r.f1,
        "f1_threshold": r.f1_threshold,
    }


def evaluate_maps(maps: Any, masks: Any, fpr_limit: float = 0.3) -> dict[str, float]:
    """All pixel metrics from one sort of all pixels.

    Parameters
    ----------
    maps : array or tensor, (N, H, W) or (N, 1, H, W), any real dtype; a CUDA tensor is sorted
        on its GPU
    masks : same shape, values in {0, 1}
    fpr_limit : float in (0, 1], default 0.3
        AUPRO integration limit.

    Returns
    -------
    dict
        ``pixel_auroc``, ``pixel_ap`` (step sum), ``aupro``, ``f1_max``, ``f1_threshold`` --
        each exactly what the single-metric function of that name returns.

    Notes
    -----
    Extra memory: 8 bytes per pixel for float32 / float16 maps (and for float64 maps whose
    values are float32 numbers), plus ~25 MB of streaming temporaries; other maps (e.g. true
    float64 values) take a general argsort path of ~20 bytes per pixel.
    """
    s, m = _as_maps(maps, masks, "evaluate_maps")
    limit = _check_limit(fpr_limit)
    return _as_dict(summarize([(s, m)], regions=True, fpr_limit=limit, where="evaluate_maps"))


class MetricAccumulator:
    """Collect maps, masks and image scores batch by batch; compute every metric at the end.

    Maps are stored as float32 and masks as uint8 (5 bytes per pixel) on the device they
    arrive on; they are never concatenated: :meth:`compute` builds its sort keys straight from
    the stored batches. Inputs are validated in :meth:`update`, so a bad batch fails where it is
    produced. Used by :func:`dap.engine.evaluate.evaluate`.

    Parameters
    ----------
    fpr_limit : float in (0, 1], default 0.3
        AUPRO integration limit.

    Examples
    --------
    >>> acc = MetricAccumulator()
    >>> for batch in loader:  # doctest: +SKIP
    ...     acc.update(maps, batch["mask"], scores, batch["label"])
    >>> acc.compute()  # doctest: +SKIP
    {'image_auroc': ..., 'pixel_auroc': ..., 'pixel_ap': ..., 'aupro': ..., ...}
    """

    def __init__(self, fpr_limit: float = 0.3) -> None:
        self.fpr_limit = _check_limit(fpr_limit)
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        self._maps: list[tuple[Tensor, Tensor]] = []
        self._scores: list[Tensor] = []
        self._labels: list[Tensor] = []

    def update(
        self, maps: Any = None, masks: Any = None, scores: Any = None, labels: Any = None
    ) -> None:
        """Add one batch: maps ``(B, [1,] H, W)`` with masks, and/or scores ``(B,)`` with labels.

        Everything is copied (the caller may reuse its buffers).
        """
        where = "MetricAccumulator.update"
        if (maps is None) != (masks is None) or (scores is None) != (labels is None):
            raise MetricError(f"{where}: pass maps together with masks, scores with labels")
        if maps is not None:
            s, m = _as_maps(maps, masks, where)
            if self._maps and tuple(s.shape[1:]) != tuple(self._maps[0][0].shape[1:]):
                raise MetricError(
                    f"{where}: map size {tuple(s.shape[1:])} differs from the first batch's "
                    f"{tuple(self._maps[0][0].shape[1:])}; resize all maps to one size."
                )
            check_chunk(s, m, where, 0)
            self._maps.append((_stored(s, torch.float32), _stored(m != 0, torch.uint8)))
        if scores is not None:
            s, y = _array(scores, "scores", where), _array(labels, "labels", where)
            s, y = s.reshape(-1), y.reshape(-1)
            if tuple(s.shape) != tuple(y.shape):
                raise MetricError(f"{where}: {len(s)} scores but {len(y)} labels")
            check_chunk(s, y, where, 0)
            self._scores.append(_stored(s, torch.float64).cpu())
            self._labels.append(_stored(y != 0, torch.uint8).cpu())

    def compute(self) -> dict[str, float]:
        """``image_auroc`` (if scores were given) and every key of :func:`evaluate_maps`."""
        out: dict[str, float] = {}
        if self._scores:
            out["image_auroc"] = image_auroc(torch.cat(self._scores), torch.cat(self._labels))
        if self._maps:
            r = summarize(self._maps, regions=True, fpr_limit=self.fpr_limit,
                          where="MetricAccumulator.compute")
            out.update(_as_dict(r))
        if not out:
            raise MetricError("MetricAccumulator.compute: nothing accumulated; call update() first")
        return out
