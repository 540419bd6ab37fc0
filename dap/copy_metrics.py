"""DiffAD's "direct copy" measure: how much of an anomaly the reconstruction keeps.

A reconstruction-based detector fails when its reconstruction copies the defect instead of
repairing it. DiffAD (Zhang et al., ICCV 2023) measures this with a PSNR between the
reconstruction and the input on the ground-truth anomaly regions: a high PSNR means the defect
was copied, a lower one that it was repaired (:data:`PAPER_COPY_PSNR`, MVTec AD). Taught in
``notebooks/09_latent_diffusion``.

The paper does not give its formula, and two readings differ by tens of dB::

    region        MSE over the C |m| values inside the mask      PSNR_region
    masked_image  MSE of x_r * m vs x * m over all C H W values   PSNR_region + 10 log10(H W / |m|)

(the masked images agree outside the mask, so the whole-image MSE is the region's MSE times the
mask fraction f = |m| / (H W)). At a 3 % mask the second reads 15.2 dB higher. dap reports both,
under these two names; only ``masked_image`` is on the scale of the paper's values (dap's region
values lie far below them), so a paper value is only ever shown beside dap's ``masked_image``
value, and labelled as the paper's.

Read it beside the PSNR *outside* the regions (``context_psnr``): a blurry reconstruction also
has a low PSNR inside the regions, but then it is low outside them too. A method-agnostic
metric: it takes tensors, or a method and a test dataset (:func:`copy_psnr_on`).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

Region = Literal["region", "masked_image"]
REGIONS: tuple[str, ...] = ("region", "masked_image")
#: the paper's copy PSNR (DiffAD, ICCV 2023; MVTec AD, 256 px), in dB; formula not stated, on
#: the scale of the ``masked_image`` reading
PAPER_COPY_PSNR: dict[str, float] = {"DiffAD": 36.73, "DRAEM": 38.49}


def _masked_sse(reconstruction: Tensor, image: Tensor, mask: Tensor, region: str = "region"
                ) -> tuple[Tensor, Tensor]:
    """Per image: the squared error summed over mask pixels and channels, and the element count
    the MSE divides by (C |m| for ``region``, C H W for ``masked_image``)."""
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
    if region == "masked_image":
        # MSE(x_r * m, x * m) over all C H W values: the same SSE, a larger count
        count = torch.where(count > 0, torch.full_like(count, ch * h * w), count)
    elif region != "region":
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    return sse, count


def copy_psnr(reconstruction: Tensor, image: Tensor, mask: Tensor, data_range: float = 2.0,
              reduction: Literal["mean", "none", "pooled"] = "mean", region: Region = "region"
              ) -> Tensor:
    """PSNR between ``reconstruction`` and ``image`` on ``mask`` (DiffAD's direct-copy measure).

    PSNR = 10 log10(data_range^2 / MSE). ``region``: the MSE over the mask pixels (all
    channels); ``masked_image``: the MSE of the masked images x_r * m and x * m over the whole
    image, which is PSNR_region + 10 log10(H W / |m|) (:func:`mask_gain_db`; see the module
    docs). Lower = less of the anomaly copied.

    Parameters
    ----------
    reconstruction, image : Tensor ``(B, C, H, W)``, in [-1, 1] by default.
    mask : Tensor ``(B, H, W)`` or ``(B, 1, H, W)``; pixels > 0.5 count, the others do not.
    data_range : float
        Peak-to-peak range of the images: 2 for [-1, 1] (the same dB as 255 for uint8 images).
    reduction : {"mean", "none", "pooled"}
        ``none``: one PSNR per image ``(B,)``; ``mean``: their average (the usual report);
        ``pooled``: one PSNR of the summed squared errors over the summed counts of all images.
    region : {"region", "masked_image"}
        Which reading of the paper's measure (module docs).

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
    sse, count = _masked_sse(reconstruction, image, mask, region)
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


def mask_gain_db(mask: Tensor) -> Tensor:
    """10 log10(H W / |m|) per image ``(B,)``, float64: how far the ``masked_image`` PSNR lies
    above the ``region`` PSNR of the same image (15.2 dB for a 3 % mask).

    mask : ``(B, H, W)`` or ``(B, 1, H, W)``; pixels > 0.5 count.
    """
    m = (mask.reshape(mask.shape[0], -1) > 0.5).to(torch.float64)
    # 10 log10(1 / f), f = |m| / (H W)
    return 10.0 * torch.log10(m.shape[1] / m.sum(dim=1))


#: the keys of :func:`copy_measures` (and of tools/copy_table.py's table), in dB
COPY_KEYS: tuple[str, ...] = ("copy_psnr_region", "copy_psnr_masked_image", "mask_gain_db",
                              "context_psnr", "repair_psnr")


def copy_measures(reconstruction: Tensor, image: Tensor, mask: Tensor,
                  clean: Tensor | None = None, data_range: float = 2.0) -> dict[str, float]:
    """The copy measure in both readings and its companions on defective images, in dB.

    ``copy_psnr_region``: reconstruction vs input over the defect's pixels (lower = less
    copied); ``copy_psnr_masked_image``: the same error over the whole masked image (the
    paper's scale); ``mask_gain_db``: the mean of 10 log10(1 / mask fraction), the difference of
    the two; ``context_psnr``: reconstruction vs input outside the defects (higher = normal
    detail kept); ``repair_psnr``: reconstruction vs the *clean* image over the defect's pixels,
    when the clean image is known (the built-in benchmark keeps it; higher = repaired, not
    merely blurred). Each is a mean over images of per-image values (:func:`copy_psnr`).
    """
    out = {"copy_psnr_region": float(copy_psnr(reconstruction, image, mask, data_range)),
           "copy_psnr_masked_image": float(copy_psnr(reconstruction, image, mask, data_range,
                                                     region="masked_image")),
           "mask_gain_db": float(mask_gain_db(mask).mean()),
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

    Returns the means over images of ``copy_psnr_region``, ``copy_psnr_masked_image``,
    ``mask_gain_db`` and ``context_psnr`` (images with some normal pixels), as
    :func:`copy_measures`; ``copy_psnr_region_pooled`` (one PSNR of all defect pixels); and
    ``images``.
    """
    from dap.progress import progress_bar

    device = next(method.parameters()).device
    method.eval()
    per: dict[str, list[Tensor]] = {"copy_psnr_region": [], "copy_psnr_masked_image": [],
                                    "mask_gain_db": [], "context_psnr": []}
    sse_all, cnt_all = 0.0, 0.0
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
        per["copy_psnr_region"].append(copy_psnr(rec, images, m, data_range, "none"))
        per["copy_psnr_masked_image"].append(copy_psnr(rec, images, m, data_range, "none",
                                                       region="masked_image"))
        per["mask_gain_db"].append(mask_gain_db(m))
        ctx = (m <= 0.5).flatten(1).any(dim=1)        # images with some normal pixels left
        if ctx.any():
            per["context_psnr"].append(copy_psnr(rec[ctx], images[ctx], 1.0 - m[ctx],
                                                 data_range, "none"))
        sse, cnt = _masked_sse(rec, images, m)
        sse_all, cnt_all = sse_all + float(sse.sum()), cnt_all + float(cnt.sum())
    bar.close()
    if not per["copy_psnr_region"]:
        raise ValueError("copy_psnr_on: the dataset has no anomalous image")
    out = {k: float(torch.cat(v).mean()) if v else float("nan") for k, v in per.items()}
    out["copy_psnr_region_pooled"] = 20.0 * math.log10(data_range) - 10.0 * math.log10(
        sse_all / cnt_all)
    out["images"] = int(sum(len(x) for x in per["copy_psnr_region"]))
    return out


__all__ = ["copy_psnr", "copy_measures", "copy_psnr_on", "mask_gain_db", "COPY_KEYS", "REGIONS",
           "Region", "PAPER_COPY_PSNR"]
