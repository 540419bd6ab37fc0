"""Observation II measured: how much of a defect a one-step reconstruction from t removes.

DiffusionAD, Sec. III-C: small anomalies are repaired well from a small step (t_s = 200), while
large or semantic ones survive it and need a big step (t_b = 400), which in turn loses detail.
Because the built-in benchmark keeps the clean image under every synthetic defect, we can
measure both sides of that trade-off against the truth:

* **residual anomaly**: the error between reconstruction and *clean* image inside the defect
  mask (how much of the defect is still there);
* **fidelity**: the same error outside the mask (how much normal detail was lost).

Taught in ``notebooks/03_noise_scales`` (and used by ``notebooks/04_norm_guidance``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import torch
from torch import Tensor

from dap.analysis.stats import chunks, median_iqr
from dap.diffusion import NoiseSchedule, reconstruct
from dap.diffusion.sampling import NoiseModel
from dap.progress import progress_bar

ErrorKind = Literal["mae", "mse"]


def _mask_bhw(mask: Tensor, like: Tensor) -> Tensor:
    m = mask.to(like.device)
    if m.ndim == 4:
        if m.shape[1] != 1:
            raise ValueError(f"mask must be (B, 1, H, W) or (B, H, W), got {tuple(mask.shape)}")
        m = m[:, 0]
    if m.shape != (like.shape[0], *like.shape[2:]):
        raise ValueError(f"mask {tuple(mask.shape)} does not match images {tuple(like.shape)}")
    return (m > 0.5).double()


def repair_errors(recon: Tensor, clean: Tensor, mask: Tensor, kind: ErrorKind = "mae"
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per-image error against the clean image, inside and outside the defect mask.

    err(p) = mean over channels of |recon - clean| (``mae``) or (recon - clean)^2 (``mse``);
    inside = mean of err over mask pixels, outside = mean over the other pixels.

    Parameters
    ----------
    recon : Tensor ``(B, C, H, W)`` in [-1, 1], a reconstruction (or the defective input)
    clean : Tensor ``(B, C, H, W)`` in [-1, 1], the image before the defect was drawn
    mask : Tensor ``(B, 1, H, W)`` or ``(B, H, W)``, defect pixels (> 0.5)
    kind : {"mae", "mse"}

    Returns
    -------
    inside, outside : numpy.ndarray ``(B,)`` float64, in [-1, 1] units (mae: 0 .. 2)
        ``inside`` is NaN for an empty mask, ``outside`` for a full one.

    Notes
    -----
    For the defective input itself ``outside`` is exactly 0 on the built-in benchmark (its
    defect generators never touch a pixel outside the mask) and ``inside`` is the defect's
    strength, the yardstick :func:`remaining_fraction` divides by.
    """
    if recon.shape != clean.shape:
        raise ValueError(f"recon {tuple(recon.shape)} and clean {tuple(clean.shape)} differ")
    if kind not in ("mae", "mse"):
        raise ValueError(f"kind must be 'mae' or 'mse', got {kind!r}")
    diff = recon.double() - clean.double().to(recon.device)
    err = (diff.abs() if kind == "mae" else diff ** 2).mean(dim=1)        # (B, H, W)
    m = _mask_bhw(mask, recon)
    n_in, n_out = m.sum(dim=(1, 2)), (1 - m).sum(dim=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        inside = ((err * m).sum(dim=(1, 2)) / n_in).cpu().numpy()
        outside = ((err * (1 - m)).sum(dim=(1, 2)) / n_out).cpu().numpy()
    return inside, outside


def remaining_fraction(inside: np.ndarray, outside: np.ndarray, input_inside: np.ndarray
                       ) -> np.ndarray:
    """The part of a defect still in a reconstruction: (inside - outside) / input_inside.

    1 means the defect was copied unchanged, 0 that the defect region is reconstructed as well
    as its surroundings (the excess error is gone), negative that it is reconstructed better
    than them. A uniformly bad reconstruction also scores 0: read it with the fidelity error,
    or use :func:`residual_fraction`, which counts that error too. ``input_inside`` is the
    defective input's own inside error (:func:`repair_errors` of the input). Shapes broadcast,
    e.g. ``(T, N)`` and ``(N,)``.
    """
    return (np.asarray(inside) - np.asarray(outside)) / np.asarray(input_inside)


def residual_fraction(inside: np.ndarray, input_inside: np.ndarray) -> np.ndarray:
    """How far the defect region still is from the clean image: inside / input_inside.

    The reconstruction's error inside the mask (:func:`repair_errors`, against the clean
    image) as a fraction of the defective input's own error there (the defect's strength).
    0 = the region is exactly the clean image; 1 = as far from it as the defect was (e.g. the
    defect copied); above 1 = further than leaving the defect alone. Never negative.

    It is the sum of two parts: :func:`remaining_fraction`, the excess of the inside error
    over the same reconstruction's error on the normal pixels (negative when the defect region
    comes out *better* than its surroundings, e.g. a flat patch that is easy to smooth), and
    ``outside / input_inside``, the ordinary reconstruction error measured in units of the
    defect. So a reconstruction that is uniformly bad (inside = outside, both large) has a
    remaining fraction of 0 but a large residual fraction: it is not a repair. Used by
    ``notebooks/03_noise_scales``.
    """
    return np.asarray(inside) / np.asarray(input_inside)


@dataclass
class RepairSweep:
    """What :func:`sweep_repair` measured (T = len(ts), N defective images).

    Attributes
    ----------
    ts : numpy.ndarray ``(T,)`` int
    inside, outside : numpy.ndarray ``(T, N)``, residual anomaly and fidelity error (mae)
    input_inside : numpy.ndarray ``(N,)``, the defect strength (input vs clean, inside the mask)
    samples : Tensor ``(T, N, C, H, W)``, the one-step reconstructions (if ``keep_samples``)
    """

    ts: np.ndarray
    inside: np.ndarray
    outside: np.ndarray
    input_inside: np.ndarray
    samples: Tensor | None = field(default=None, repr=False)

    @property
    def remaining(self) -> np.ndarray:
        """``(T, N)`` :func:`remaining_fraction` of every image at every t."""
        return remaining_fraction(self.inside, self.outside, self.input_inside)

    @property
    def residual(self) -> np.ndarray:
        """``(T, N)`` :func:`residual_fraction` of every image at every t."""
        return residual_fraction(self.inside, self.input_inside)

    def index(self, t: int) -> int:
        """Position of step ``t`` in :attr:`ts`."""
        hits = np.flatnonzero(self.ts == t)
        if not len(hits):
            raise KeyError(f"t = {t} is not in the sweep's grid {self.ts.tolist()}")
        return int(hits[0])


@torch.no_grad()
def sweep_repair(
    model: NoiseModel,
    schedule: NoiseSchedule,
    images: Tensor,
    cleans: Tensor,
    masks: Tensor,
    ts: Sequence[int],
    generator: torch.Generator | None = None,
    clip_sample: bool = False,
    kind: ErrorKind = "mae",
    batch_size: int = 32,
    keep_samples: bool = True,
    progress: bool = True,
) -> RepairSweep:
    """One-step reconstruction (eq. 6) of defective images from every t, scored against the
    clean originals inside and outside the defect (Observation II).

    One forward noise per image is drawn and reused for every t, so the curves over t differ
    only by the noise level, not by the noise draw.

    Parameters
    ----------
    model : callable ``(x_t, t) -> eps``
    schedule : NoiseSchedule
    images : Tensor ``(N, C, H, W)`` in [-1, 1], defective images
    cleans : Tensor ``(N, C, H, W)`` in [-1, 1], the same images before the defect
    masks : Tensor ``(N, 1, H, W)`` in {0, 1}
    ts : sequence of int (paper: t_s = 200, t_b = 400)
    generator : torch.Generator, optional (default: seed 0)
    clip_sample : bool, clamp x0_hat to [-1, 1] (pass the model's setting)
    kind : {"mae", "mse"}, the per-pixel error (:func:`repair_errors`)
    batch_size, keep_samples, progress : as in :func:`sweep_one_step_vs_iterative`

    Returns
    -------
    RepairSweep
    """
    ts = [int(t) for t in ts]
    gen = generator if generator is not None else torch.Generator(images.device).manual_seed(0)
    noise = torch.randn(images.shape, generator=gen, device=images.device, dtype=images.dtype)
    samples = torch.empty((len(ts), *images.shape), dtype=images.dtype, device=images.device)
    for i, t in enumerate(progress_bar(ts, progress, desc="t")):
        for sl in chunks(images.shape[0], batch_size):
            samples[i, sl] = reconstruct(model, schedule, images[sl], t, "one_step",
                                         noise=noise[sl], clip_sample=clip_sample).sample
    errs = [repair_errors(samples[i], cleans, masks, kind) for i in range(len(ts))]
    input_inside, _ = repair_errors(images, cleans, masks, kind)
    return RepairSweep(np.asarray(ts), np.stack([e[0] for e in errs]),
                       np.stack([e[1] for e in errs]), input_inside,
                       samples if keep_samples else None)


def first_t_below(ts: Sequence[int], values: np.ndarray, threshold: float) -> int | None:
    """The first t (in grid order) whose median over images (last axis) is <= ``threshold``.

    ``values`` is ``(T, N)`` (e.g. :attr:`RepairSweep.remaining` of one group) or ``(T,)``.
    Returns None when no t of the grid gets there.
    """
    v = np.asarray(values, dtype=np.float64)
    med = median_iqr(v, axis=-1).median if v.ndim == 2 else v
    hits = np.flatnonzero(med <= threshold)
    return int(np.asarray(ts)[hits[0]]) if len(hits) else None
