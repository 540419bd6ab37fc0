"""Model selection on the validation split: synthetic anomalies made once, and the score.

Model selection never touches the test split (DESIGN.md): every ``val_every`` steps the training
loop scores the model on the *validation* split's normal images, half of which the method's own
synthesizer turned anomalous once with a fixed seed, and keeps the best checkpoint by
``val_mean`` (the mean of image AUROC, pixel AUROC and pixel AP). Taught in
``notebooks/06_train_and_evaluate``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from dap.methods.base import AnomalyMethod, ValidationSet
from dap.metrics import MetricAccumulator

#: the validation metrics a run can select its checkpoint on (``TrainConfig.select_metric``)
SELECT_METRICS: tuple[str, ...] = ("val_mean", "val_image_auroc", "val_pixel_auroc", "val_aupro",
                                   "val_pixel_ap", "val_f1_max")


@torch.no_grad()
def synthetic_validation_set(synthesizer, images: Tensor, foreground: Tensor | None = None,
                             is_texture: bool = True, seed: int = 1234, copies: int = 2
                             ) -> ValidationSet:
    """Validation images + synthetic anomalies, made once with a fixed seed.

    images : (N, 3, H, W) in [-1, 1], the *validation* split's normal images. Each is used
    ``copies`` times; the synthesizer decides (with its normal probability) which copies become
    anomalous. Returns a :class:`ValidationSet` of ``M = copies * N`` images.
    """
    gen = torch.Generator(images.device).manual_seed(seed)
    reps = images.repeat(copies, 1, 1, 1)
    fg = None if foreground is None else foreground.repeat(copies, 1, 1, 1)
    out = synthesizer(reps, foreground=fg, generator=gen, is_texture=is_texture)
    return ValidationSet(out.image, out.mask[:, 0].float(), out.label.long())


@torch.no_grad()
def validate_on(method: AnomalyMethod, val: ValidationSet, batch_size: int = 16
                ) -> dict[str, float]:
    """Metrics of ``method.predict`` on a validation set, plus ``val_mean``, the selection
    score: the mean of image AUROC, pixel AUROC and pixel AP."""
    device = next(method.parameters()).device
    acc = MetricAccumulator()
    for i in range(0, len(val), batch_size):
        pred = method.predict(val.image[i:i + batch_size].to(device))
        acc.update(maps=pred.anomaly_map.float().cpu(), masks=val.mask[i:i + batch_size],
                   scores=pred.score.float().cpu(), labels=val.label[i:i + batch_size])
    m = acc.compute()
    out = {f"val_{k}": float(v) for k, v in m.items() if isinstance(v, (int, float))}
    # val_mean = (image AUROC + pixel AUROC + pixel AP) / 3
    out["val_mean"] = float(np.mean([m["image_auroc"], m["pixel_auroc"], m["pixel_ap"]]))
    return out


__all__ = ["SELECT_METRICS", "synthetic_validation_set", "validate_on"]
