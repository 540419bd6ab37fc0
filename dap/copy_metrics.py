"""DiffAD's "direct copy" measure: how much of an anomaly the reconstruction keeps.

A reconstruction-based detector fails when its reconstruction copies the defect instead of
repairing it. DiffAD (Zhang et al., ICCV 2023) measures this with the PSNR between the
reconstruction and the input *inside the ground-truth anomaly regions*: a high PSNR there means
the defect was copied, a lower one that it was repaired (paper, MVTec AD: DiffAD 36.73 dB vs
DRAEM 38.49 dB). Taught in ``notebooks/09_latent_diffusion``.

Read it beside the PSNR *outside* the regions (:func:`copy_psnr` with ``1 - mask``): a blurry
reconstruction also has a low PSNR inside the regions, but then it is low outside them too.
A method-agnostic metric: it takes tensors, or a method and a test dataset (:func:`copy_psnr_on`).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor


def _masked_mse(reconstruction: Tensor, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per image: the squared error summed over mask pixels and channels, and the element count."""
    if reconstruction.shape != image.shape or image.ndim != 4:
        raise ValueError(f"reconstruction {tuple(reconstruction.shape)} and image "
                         f"{tuple(image.shape)} must both be (B, C, H, W)")
    b, ch, h, w = image.shape
    if mask.ndim == 4:
        if mask.shape[1] != 1:
            raise ValueError(f"mask must be (B, H, W) or (B, 1, H, W), got {tuple(mask.shape)}")
        mask = mask[:, 0]
    if mask.shape != (b, h, w):
        raise ValueError(f"mask {tuple(mask.shape)} does not match images {tuple(image.shape)}")
    inside = (mask.to(image.device) > 0.5).to(torch.float64)[:, None]        # (B, 1, H, W)
    sq = (reconstruction.to(torch.float64) - image.to(torch.float64)).square()
    # SSE_i = sum over channels and mask pixels of (x_r - x)^2
    sse = (sq * inside).flatten(1).sum(dim=1)
    count = inside.flatten(1).sum(dim=1) * ch
    return sse, count


def copy_psnr(reconstruction: Tensor, image: Tensor, mask: Tensor, data_range: float = 2.0,
              reduction: Literal["mean", "none", "pooled"] = "mean") -> Tensor:
    """PSNR between ``reconstruction`` and ``image`` inside ``mask`` (DiffAD's direct-copy measure).

    PSNR = 10 log10(data_range^2 / MSE), MSE over the mask pixels (all channels) of each image.
    Lower = less of the anomaly copied.

    Parameters
    ----------
    reconstruction, image : Tensor ``(B, C, H, W)``, in [-1, 1] by default.
    mask : Tensor ``(B, H, W)`` or ``(B, 1, H, W)``; pixels > 0.5 count, the others do not.
    data_range : float
        Peak-to-peak range of the images: 2 for [-1, 1] (the same dB as 255 for uint8 images).
    reduction : {"mean", "none", "pooled"}
        ``none``: one PSNR per image ``(B,)``; ``mean``: their average (the usual report);
        ``pooled``: one PSNR of the MSE over all mask pixels of all images.

    Returns
    -------
    Tensor, float64: ``(B,)`` or a scalar. +inf where the MSE is 0 (a perfect copy).

    Raises
    ------
    ValueError
        If an image's mask is empty: select the anomalous images first (``mask.flatten(1).any(1)``).
    """
    if reduction not in ("mean", "none", "pooled"):
        raise ValueError(f"reduction must be 'mean', 'none' or 'pooled', got {reduction!r}")
    sse, count = _masked_mse(reconstruction, image, mask)
    empty = (count == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"copy_psnr: the mask of image(s) {empty} is empty; the copy measure is "
                         "defined on anomalous regions only - pass anomalous images (with a "
                         "non-empty ground-truth mask)")
    peak = 20.0 * math.log10(data_range)
    if reduction == "pooled":
        # PSNR = 10 log10(R^2 / MSE) = 20 log10(R) - 10 log10(MSE)
        return peak - 10.0 * torch.log10(sse.sum() / count.sum())
    psnr = peak - 10.0 * torch.log10(sse / count)
    return psnr if reduction == "none" else psnr.mean()


def copy_measures(reconstruction: Tensor, image: Tensor, mask: Tensor,
                  clean: Tensor | None = None, data_range: float = 2.0) -> dict[str, float]:
    """The copy measure and its two companions on a batch of defective images, in dB.

    ``copy_psnr``: reconstruction vs input inside the defects (lower = less copied);
    ``context_psnr``: the same outside the defects (higher = normal detail kept);
    ``repair_psnr``: reconstruction vs the *clean* image inside the defects, when the clean image
    is known (the built-in benchmark keeps it; higher = repaired, not merely blurred).
    Each is the mean over images of the per-image PSNR (:func:`copy_psnr`).
    """
    out = {"copy_psnr": float(copy_psnr(reconstruction, image, mask, data_range)),
           "context_psnr": float(copy_psnr(reconstruction, image, 1.0 - mask.float(), data_range))}
    if clean is not None:
        out["repair_psnr"] = float(copy_psnr(reconstruction, clean, mask, data_range))
    return out


@torch.no_grad()
def copy_psnr_on(method: Any, dataset, batch_size: int = 16, data_range: float = 2.0,
                 progress: bool = False) -> dict[str, float]:
    """The copy measure of ``method`` on the anomalous images of a test ``dataset``.

    ``dataset`` items are dicts with ``image`` (3, H, W) in [-1, 1] and ``mask`` (1, H, W) (see
    :class:`dap.data.AnomalyDataset`); ``method.predict`` must return a reconstruction.

    Returns ``copy_psnr`` (mean over images, inside the regions), ``copy_psnr_pooled``,
    ``context_psnr`` (mean over the same images, outside the regions) and ``images``.
    """
    from dap.progress import progress_bar

    device = next(method.parameters()).device
    method.eval()
    inside, outside, sse_all, cnt_all = [], [], 0.0, 0.0
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    bar = progress_bar(total=len(dataset), enabled=progress, desc="copy PSNR")
    for batch in loader:
        masks = batch["mask"][:, 0]
        keep = masks.flatten(1).gt(0.5).any(dim=1)
        bar.update(len(masks))
        if not keep.any():
            continue
        images = batch["image"][keep].to(device)
        pred = method.predict(images)
        if pred.reconstruction is None:
            raise ValueError(f"{getattr(method, 'name', method)!r} has no reconstruction")
        rec, m = pred.reconstruction.float().cpu(), masks[keep]
        images = images.float().cpu()
        inside.append(copy_psnr(rec, images, m, data_range, "none"))
        ctx = (m <= 0.5).flatten(1).any(dim=1)        # images with some normal pixels left
        if ctx.any():
            outside.append(copy_psnr(rec[ctx], images[ctx], 1.0 - m[ctx], data_range, "none"))
        sse, cnt = _masked_mse(rec, images, m)
        sse_all, cnt_all = sse_all + float(sse.sum()), cnt_all + float(cnt.sum())
    bar.close()
    if not inside:
        raise ValueError("copy_psnr_on: the dataset has no anomalous image")
    peak = 20.0 * math.log10(data_range)
    return {"copy_psnr": float(torch.cat(inside).mean()),
            "copy_psnr_pooled": peak - 10.0 * math.log10(sse_all / cnt_all),
            "context_psnr": float(torch.cat(outside).mean()) if outside else float("nan"),
            "images": int(sum(len(x) for x in inside))}


__all__ = ["copy_psnr", "copy_measures", "copy_psnr_on"]
