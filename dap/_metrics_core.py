"""The one-sort engine behind :mod:`dap.metrics` (private; read :mod:`dap.metrics` first).

Every threshold metric of a binary scoring problem is a function of the cumulative counts
(TP, FP) -- and, for AUPRO, of the cumulative per-region overlap -- taken at the end of each
group of tied scores, the scores visited in descending order. So we sort all pixels ONCE and
stream through the sorted array in chunks, integrating every curve on the fly:

1. **Keys.** A float32 score is turned into an int32 whose integer order is the float order
   (flip the magnitude bits of negative numbers; ``-0.0`` is first mapped to ``+0.0``). Its
   bitwise NOT goes into the high 32 bits of one int64 and the pixel's *payload* into the low
   32 bits -- 0 for a normal pixel, else 1 or, for AUPRO, the global id of its connected defect
   region. Sorting these int64 ascending sorts the scores descending: 8 bytes per pixel and an
   in-place sort (NumPy's SIMD sort on CPU, ``torch.sort`` on CUDA), no argsort, no gathers.
2. **Stream.** Chunk by chunk (NumPy, single-threaded, 256 k pixels):
   ``TP = cumsum(payload != 0)``, ``TP + FP = rank``,
   ``PRO = cumsum(1 / |region(payload)|) / n_regions``; a tie group ends where the high 32
   bits change. The values at group ends are the exact ROC / PR / PRO curve points.

Scores that are not exactly float32 (e.g. float64 image scores) take a general path: a stable
argsort of float64 scores (about 20 bytes per pixel instead of 8).

Taught in ``notebooks/06_train_and_evaluate``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

CHUNK = 1 << 18  # pixels per streamed chunk: bounds the temporaries at ~25 MB
_MAG31 = 0x7FFFFFFF
_LITTLE = sys.byteorder == "little"
# 8-connectivity inside each image, none across images: label a (n, H, W) stack in one call.
_STRUCT_2D_STACK = np.zeros((3, 3, 3), dtype=bool)
_STRUCT_2D_STACK[1] = True


class MetricError(ValueError):
    """An input to a metric is invalid or the metric is undefined; the message says what to do."""


class _NotFloat32(Exception):
    """Internal: a score is not exactly a float32; use the general path."""


@dataclass
class Summary:
    """Everything one pass over the sorted scores yields."""

    n_pos: int
    n_neg: int
    auroc: float
    ap: float
    f1: float
    f1_threshold: float
    aupro: float | None


def _np(x: Any) -> np.ndarray:
    """A NumPy view (CPU tensors, arrays) or copy (CUDA tensors, bfloat16) of ``x``."""
    if isinstance(x, Tensor):
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    return np.asarray(x)


def _dtype(x: Any) -> str:
    return str(x.dtype).removeprefix("torch.")


def check_chunk(s: Any, m: Any, where: str, first: int) -> None:
    """Finite scores and {0, 1} masks (arrays or tensors), or a :class:`MetricError`."""
    # a sum is NaN/inf if any term is (or, rarely, by overflow): only then the full check
    if _dtype(s).startswith(("float", "bfloat")) and not math.isfinite(float(s.sum())):
        sn = _np(s)
        bad = ~np.isfinite(sn)
        if bad.any():
            idx = first + int(bad.reshape(len(sn), -1).any(1).argmax())
            raise MetricError(
                f"{where}: {int(bad.sum())} NaN/inf score(s), the first in item {idx}. Scores "
                "must be finite real numbers: fix the model output or replace them "
                "(torch.nan_to_num / np.nan_to_num) before evaluating."
            )
    if _dtype(m) == "bool":
        return
    ok = bool(m.max() <= 1) if _dtype(m) == "uint8" else bool(((m == 0) | (m == 1)).all())
    if not ok:
        mn = _np(m)
        vals = np.unique(mn[(mn != 0) & (mn != 1)])[:5].tolist()
        raise MetricError(
            f"{where}: ground truth must contain only 0 and 1 (bool, int or float), found "
            f"{vals}. Binarise it first (e.g. mask > 0.5) and resize masks with nearest-neighbour "
            "interpolation."
        )


def _pack(out: Any, s: Any) -> None:
    """``out[:] = ~key(s) << 32`` (int64) for float32 scores ``s`` (arrays or tensors)."""
    gpu = isinstance(s, Tensor)
    b = s + 0.0  # a new array; + 0.0 maps -0.0 to +0.0, so equal scores get equal keys
    b = b.view(torch.int32) if gpu else b.view(np.int32)
    # negative floats: flip the 31 magnitude bits so that larger magnitudes sort lower
    b ^= (b >> 31) & _MAG31
    b = ~b  # ascending order of ~key = descending order of the scores
    if gpu:
        out.copy_(b)
    else:
        out[...] = b
    out <<= 32


def _decode_float32(desc_key: int) -> float:
    """Inverse of :func:`_pack`: the float32 score of a descending key (the high 32 bits)."""
    k = ~int(desc_key)
    b = k ^ ((k >> 31) & _MAG31)
    return float(np.array([b], dtype=np.int64).astype(np.int32).view(np.float32)[0])


def _batches(blocks: Sequence[tuple[Any, Any]], per_item: int) -> Iterator[tuple]:
    """(scores, masks, first item index) sub-batches of about CHUNK pixels each."""
    step = max(1, CHUNK // max(per_item, 1))
    first = 0
    for s, m in blocks:
        for a in range(0, len(s), step):
            yield s[a : a + step], m[a : a + step], first + a
        first += len(s)


def summarize(
    blocks: Sequence[tuple[Any, Any]],
    *,
    regions: bool,
    fpr_limit: float,
    where: str,
    only_pro: bool = False,
) -> Summary:
    """All metrics of scores vs. binary ground truth from one sort.

    Parameters
    ----------
    blocks : sequence of (scores, masks), NumPy arrays or torch tensors
        Equal shapes ``(n, H, W)`` (maps) or ``(n,)`` (image scores); the same trailing shape in
        every block; scores real, masks in {0, 1}. If every block is on one CUDA device, keys
        are built and sorted there.
    regions : bool
        Label the connected defect regions (8-connectivity, per image) and compute AUPRO.
    fpr_limit : float
        Upper FPR limit of the AUPRO integral, in (0, 1].
    where : str
        The public function's name, for error messages.
    only_pro : bool
        Stop streaming once the PRO curve passes ``fpr_limit`` (the other fields are then NaN).
    """
    devs = {x.device if isinstance(x, Tensor) else torch.device("cpu") for b in blocks for x in b}
    device = devs.pop() if len(devs) == 1 else torch.device("cpu")
    per_item = math.prod(blocks[0][0].shape[1:])
    n = sum(math.prod(s.shape) for s, _ in blocks)
    fast32 = ("float32", "float16", "bfloat16")
    try:
        if not all(_dtype(s) in fast32 for s, _ in blocks):
            for s, _, _ in _batches(blocks, per_item):  # exact float32 values stay fast
                sn = _np(s)
                if sn.dtype.kind not in "biuf" or not np.array_equal(sn.astype(np.float32), sn):
                    raise _NotFloat32
        return _run(blocks, regions, fpr_limit, where, device, per_item, n, True, only_pro)
    except _NotFloat32:
        cpu = torch.device("cpu")
        return _run(blocks, regions, fpr_limit, where, cpu, per_item, n, False, only_pro)


def _run(
    blocks, regions, fpr_limit, where, device, per_item, n, fast, only_pro, gpu=None
) -> Summary:
    # gpu: build and sort the keys with torch on ``device`` (tests force it on CPU tensors)
    gpu = device.type != "cpu" if gpu is None else gpu
    # ---- 1. keys and payloads, batch by batch (validation on the way) -------------------
    if fast:
        packed = torch.empty(n, dtype=torch.int64, device=device) if gpu else np.empty(n, np.int64)
    else:
        scores64 = np.empty(n, dtype=np.float64)
        payload = np.empty(n, dtype=np.int32)
    sizes = [np.zeros(1, dtype=np.int64)]  # region sizes; index 0 = background
    n_regions = n_pos = off = 0
    for s, m, first in _batches(blocks, per_item):
        if gpu:
            s, m = s.reshape(-1), m.reshape(-1)
        else:
            s, m = _np(s).reshape(-1), _np(m).reshape(-1)
        check_chunk(s.reshape(-1, per_item), m, where, first)
        k = len(s)
        if regions:
            mn = _np(m).reshape(-1, *blocks[0][0].shape[1:]) != 0
            lab, cnt = ndimage.label(mn, structure=_STRUCT_2D_STACK)
            size = np.bincount(lab.ravel(), minlength=cnt + 1)[1:]
            sizes.append(size)
            # global region ids 1..n_regions over the whole set; 0 = background
            np.add(lab, n_regions, out=lab, where=lab > 0)
            n_regions += cnt
            n_pos += int(size.sum())
            pay = lab.reshape(-1)
            pay = torch.from_numpy(pay).to(device) if gpu else pay
        else:
            pay = m != 0
            n_pos += int(pay.sum())
        if fast:
            # packed = (~key << 32) | payload
            dst = packed[off : off + k]
            _pack(dst, s.to(torch.float32) if gpu else s.astype(np.float32, copy=False))
            dst |= pay
        else:
            scores64[off : off + k] = s
            payload[off : off + k] = pay
        off += k
    n_neg = n - n_pos
    what = "pixel" if per_item > 1 else "image"
    if n_pos == 0 or n_neg == 0:
        missing = "anomalous (1)" if n_pos == 0 else "normal (0)"
        raise MetricError(
            f"{where}: the ground truth has no {missing} {what}, so the metric is undefined. "
            f"Evaluate on a set with both normal and anomalous {what}s (e.g. the whole test split "
            "of a category, not only its 'good' or only its defective images)."
        )
    if regions:
        # PRO increment of a defect pixel: 1 / |region| (divided by n_regions below)
        table = 1.0 / np.maximum(np.concatenate(sizes), 1)
        table[0] = 0.0

    # ---- 2. one sort -----------------------------------------------------------------------
    if fast:
        if gpu:
            packed = torch.sort(packed).values
        else:
            packed.sort()  # in place (NumPy's SIMD sort)

        def chunks():  # (descending key, payload) of each chunk and one look-ahead key
            for a in range(0, n, CHUNK):
                c = packed[a : a + CHUNK + 1]
                c = c.cpu().numpy() if gpu else c
                if _LITTLE:  # views, no copies: each int64 is the int32 pair (payload, ~key)
                    c32 = c.view(np.int32)
                    yield c32[1::2], c32[0::2]
                else:
                    yield (c >> 32).astype(np.int32), (c & 0xFFFFFFFF).astype(np.int32)

    else:
        order = np.argsort(scores64, kind="stable")[::-1]  # descending

        def chunks():
            for a in range(0, n, CHUNK):
                idx = order[a : a + CHUNK + 1]
                yield scores64.take(idx), payload.take(idx)

    # ---- 3. stream: curve points at tie-group ends, integrals on the fly ------------------
    # running sums through the previous chunk, and the last curve point (a tie group may span
    # chunks, so the two differ)
    tp_run = rank = 0
    pro_run = 0.0
    tp_pt = cnt_pt = pro_pt = 0.0
    roc_area = ap_sum = pro_area = 0.0
    pro_done = not regions
    best_f1, best_key = -1.0, 0
    for hi, lo in chunks():
        k = min(CHUNK, n - rank)  # the chunk; hi[k], if present, is the next chunk's first key
        ends = np.ones(k, dtype=bool)  # the last pixel of a chunk ends a group if n is reached
        np.not_equal(hi[1:], hi[:-1], out=ends[: len(hi) - 1])
        lo = lo[:k]
        # j: 1-based positions of the tie-group ends in this chunk, after a 0 for the last point
        j = np.zeros(np.count_nonzero(ends) + 1, dtype=np.int64)
        np.add(np.flatnonzero(ends), 1, out=j[1:])
        ctp = np.zeros(k + 1, dtype=np.int64)
        np.cumsum(lo != 0, out=ctp[1:])
        if not pro_done:
            cpro = np.zeros(k + 1, dtype=np.float64)
            np.cumsum(table.take(lo), out=cpro[1:])
        if len(j) > 1:
            # TP and TP + FP (= rank) at [the last point, each threshold of this chunk]
            tp = ctp.take(j).astype(np.float64) + tp_run
            cnt = (j + rank).astype(np.float64)
            tp[0], cnt[0] = tp_pt, cnt_pt
            fp = cnt - tp
            # ROC trapezoid, in counts: sum dFP * (TP + TP_prev) / 2
            roc_area += float(np.dot(np.diff(fp), tp[1:] + tp[:-1])) / 2
            # AP step sum: sum (TP - TP_prev) * precision, precision = TP / (TP + FP)
            ap_sum += float(np.dot(np.diff(tp), tp[1:] / cnt[1:]))
            # F1 = 2PR / (P + R) = 2 TP / (TP + FP + n_pos); the first (highest) maximum wins
            f1 = tp[1:] / (cnt[1:] + n_pos)
            i = int(np.argmax(f1))
            if 2 * float(f1[i]) > best_f1:
                best_f1, best_key = 2 * float(f1[i]), hi[j[i + 1] - 1].item()
            tp_pt, cnt_pt = tp[-1], cnt[-1]
            if not pro_done:
                # (FPR, PRO) at [the last point, each threshold of this chunk]
                x = fp / n_neg
                y = cpro.take(j) / n_regions + pro_run
                y[0] = pro_pt
                full = int(np.searchsorted(x, fpr_limit, side="right")) - 1  # whole segments
                pro_area += float(np.dot(np.diff(x[: full + 1]), y[1 : full + 1] + y[:full])) / 2
                if full < len(x) - 1:  # the segment crossing the limit: interpolate linearly
                    x0, x1, y0, y1 = x[full], x[full + 1], y[full], y[full + 1]
                    y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
                    pro_area += float(0.5 * (y0 + y_lim) * (fpr_limit - x0))
                    pro_done = True
                pro_pt = float(y[-1])
        if not pro_done:
            pro_run += float(cpro[-1]) / n_regions
        elif only_pro:
            break
        tp_run, rank = tp_run + int(ctp[-1]), rank + k
    nan = float("nan")
    if rank < n:  # stopped early: only AUPRO is complete
        return Summary(n_pos, n_neg, nan, nan, nan, nan, pro_area / fpr_limit)
    return Summary(
        n_pos=n_pos,
        n_neg=n_neg,
        auroc=roc_area / (n_pos * n_neg),
        ap=ap_sum / n_pos,
        f1=best_f1,
        f1_threshold=_decode_float32(best_key) if fast else float(best_key),
        aupro=pro_area / fpr_limit if regions else None,
    )
