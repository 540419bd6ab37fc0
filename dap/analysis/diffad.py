"""DiffAD's interpolated channels, ablated on one frozen reconstruction pipeline.

Paper: DiffAD (Zhang et al., ICCV 2023): the segmenter sees concat(x_r, x_inter, x) with
x_inter = D(0.5 c + 0.5 z_r); the ablation removes x_inter (concat(x_r, x), 6 channels).
Retraining the whole model for each arm would change the autoencoder and the denoiser too, so
their effect would mix with the channels'. Here both arms share *one* trained autoencoder and
denoiser (:meth:`~dap.methods.diffad.DiffAD.segmenter_variant`), only a fresh segmenter is
trained per arm, over several seeds, and both arms are scored on the same test reconstructions.
With the same seed the two arms also see the same training batches, synthetic anomalies and
reconstructions (the training loop draws them from the seed and the step), so each seed is a
paired comparison. Taught in ``notebooks/09_latent_diffusion``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from dap.analysis.data import TestTensors
from dap.engine.train import TrainConfig, TrainData, train
from dap.methods.base import Reconstruction
from dap.metrics import evaluate_maps, image_auroc

#: the two arms: label -> interpolated_channels
ARMS: dict[str, bool] = {"9 channels (x_r, x_inter, x)": True, "6 channels (x_r, x)": False}
ABLATION_METRICS: tuple[str, ...] = ("image_auroc", "pixel_auroc", "aupro", "pixel_ap")


@dataclass
class InterpAblation:
    """Per (seed, arm) metrics of :func:`interpolated_channels_ablation`.

    rows : one dict per trained segmenter: ``seed``, ``arm``, ``in_channels``, the four
        metrics (fractions) and ``final_loss`` (mean of the last 10 logged losses)
    examples : arm -> anomaly maps ``(k, H, W)`` of the first seed on the first ``k``
        defective test images (for a figure)
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    examples: dict[str, torch.Tensor] = field(default_factory=dict)

    def paired_differences(self) -> dict[str, np.ndarray]:
        """metric -> ``(n_seeds,)`` array of (9-channel - 6-channel) for each seed."""
        by = {(r["seed"], r["in_channels"]): r for r in self.rows}
        seeds = sorted({r["seed"] for r in self.rows})
        return {k: np.array([by[(s, 9)][k] - by[(s, 6)][k] for s in seeds])
                for k in ABLATION_METRICS}

    def summary(self) -> list[dict[str, Any]]:
        """One row per arm (mean and standard deviation over seeds) and one row of paired
        differences 9 - 6 (mean, std), metrics in percent."""
        out = []
        for label, interp in ARMS.items():
            vals = [r for r in self.rows if r["in_channels"] == (9 if interp else 6)]
            row: dict[str, Any] = {"arm": label, "seeds": len(vals)}
            for k in ABLATION_METRICS:
                v = 100 * np.array([r[k] for r in vals])
                row[k] = f"{v.mean():.1f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.1f}"
            out.append(row)
        diff = self.paired_differences()
        row = {"arm": "difference 9 - 6 (paired by seed)", "seeds": len(diff["image_auroc"])}
        for k, v in diff.items():
            v = 100 * v
            row[k] = f"{v.mean():+.1f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.1f}"
        out.append(row)
        return out

    def markdown(self) -> str:
        """:meth:`summary` as a Markdown table (computed on the spot, never typed)."""
        head = ["arm", "seeds", *ABLATION_METRICS]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.summary():
            lines.append("| " + " | ".join(str(r[h]) for h in head) + " |")
        return "\n".join(lines) + "\n"


@torch.no_grad()
def _reconstruct_all(method, images: torch.Tensor, batch_size: int) -> Reconstruction:
    parts = [method.reconstruct(images[i:i + batch_size]) for i in range(0, len(images),
                                                                         batch_size)]
    return Reconstruction(torch.cat([p.sample for p in parts]),
                          {k: torch.cat([p.extras[k] for p in parts]) for k in parts[0].extras})


def interpolated_channels_ablation(trained, data: TrainData, test: TestTensors,
                                   seeds: Sequence[int] = (0, 1, 2), steps: int = 300,
                                   batch_size: int = 8, lr: float = 5e-4,
                                   eval_batch_size: int = 16, num_examples: int = 4,
                                   progress: bool = False) -> InterpAblation:
    """Train a fresh 9-channel and a fresh 6-channel segmenter per seed on ``trained``'s frozen
    autoencoder and denoiser; score both on the same test reconstructions.

    Parameters
    ----------
    trained : DiffAD
        A model whose autoencoder and denoiser phases are done (its own segmenter is unused).
    data : TrainData
        Normal training images (the segmenter phase synthesises anomalies on them).
    test : TestTensors
        Test images with masks and labels, normal and defective (``kind="all"``), so image
        AUROC is defined.
    seeds : the seeds; each trains one segmenter per arm (initial weights, batches, synthesis)
    steps, batch_size, lr : the segmenter phase's length and settings (the ``ci`` benchmark
        trains 300 steps at batch 8, lr 5e-4)

    Returns
    -------
    InterpAblation
    """
    if int(test.labels.min()) == int(test.labels.max()):
        raise ValueError("interpolated_channels_ablation needs normal and defective test images "
                         "(load_test_tensors(..., kind='all'))")
    trained.eval()
    device = trained.latent_scale.device
    images = test.images.to(device)
    parts = _reconstruct_all(trained, images, eval_batch_size)     # shared by every segmenter
    masks = test.masks[:, 0]
    result = InterpAblation()
    for seed in seeds:
        for label, interp in ARMS.items():
            torch.manual_seed(seed)                 # the fresh segmenter's initial weights
            arm = trained.segmenter_variant(interpolated_channels=interp)
            cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, val_every=0,
                              select_metric="last", log_every=1)
            res = train(arm, data, cfg, progress=progress, device=device)
            arm.eval()
            maps, scores = [], []
            for i in range(0, len(images), eval_batch_size):
                sl = slice(i, i + eval_batch_size)
                sub = Reconstruction(parts.sample[sl], {k: v[sl] for k, v in parts.extras.items()})
                pred = arm.predict_from(images[sl], sub)
                maps.append(pred.anomaly_map.float().cpu())
                scores.append(pred.score.float().cpu())
            maps_all = torch.cat(maps)
            pix = evaluate_maps(maps_all, masks)
            if seed == seeds[0]:
                result.examples[label] = maps_all[test.labels == 1][:num_examples]
            losses = [h["loss"] for h in res.history][-10:]
            result.rows.append({
                "seed": int(seed), "arm": label, "in_channels": 9 if interp else 6,
                "image_auroc": image_auroc(torch.cat(scores), test.labels),
                **{k: pix[k] for k in ("pixel_auroc", "aupro", "pixel_ap")},
                "final_loss": float(np.mean(losses)) if losses else float("nan")})
    return result


__all__ = ["ARMS", "ABLATION_METRICS", "InterpAblation", "interpolated_channels_ablation"]
