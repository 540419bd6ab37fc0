"""Observation I measured: one-step (eq. 6) against iterative (eq. 3, DDIM) reconstruction.

DiffusionAD, Sec. III-B, Fig. 4: the mean squared error between the one-step prediction x0_hat
from x_t and the x_0 reached by iterating the reverse process from the same x_t stays low for
t <= 400 and grows for t >= 500, while one step costs 1 network evaluation instead of t + 1.
Taught in ``notebooks/02_one_step_vs_iterative``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from dap.analysis.stats import child_generator, chunks, per_image_mse
from dap.diffusion import NoiseSchedule, reconstruct
from dap.diffusion.sampling import NoiseModel
from dap.progress import progress_bar


@dataclass
class IterativeSweep:
    """What :func:`sweep_one_step_vs_iterative` measured (T = len(ts), N images).

    Attributes
    ----------
    ts : numpy.ndarray ``(T,)`` int, the noise steps
    names : tuple of str, the reconstructions: ``"one_step"``, ``"ddpm"``, ``"ddim<k>"``
    mse_to_one_step : dict name -> numpy.ndarray ``(T, N)``
        Per-image MSE between that reconstruction and the one-step one (Fig. 4's quantity);
        every name except ``"one_step"``.
    mse_to_input : dict name -> numpy.ndarray ``(T, N)``
        Per-image MSE between the reconstruction and the input x_0.
    evals_per_image : dict name -> numpy.ndarray ``(T,)`` int
        Network evaluations per image (1, t + 1 and k).
    seconds_per_image : dict name -> numpy.ndarray ``(T,)`` float
        Wall-clock seconds per image (batched; the batch time divided by its size).
    samples : dict name -> Tensor ``(T, N, C, H, W)`` (empty unless ``keep_samples``)
    noisy : Tensor ``(T, N, C, H, W)``, the x_t every method started from (if ``keep_samples``)
    noise : Tensor ``(N, C, H, W)``, the forward noise eps, shared by every t and method
    """

    ts: np.ndarray
    names: tuple[str, ...]
    mse_to_one_step: dict[str, np.ndarray]
    mse_to_input: dict[str, np.ndarray]
    evals_per_image: dict[str, np.ndarray]
    seconds_per_image: dict[str, np.ndarray]
    samples: dict[str, Tensor] = field(default_factory=dict)
    noisy: Tensor | None = None
    noise: Tensor | None = None

    def index(self, t: int) -> int:
        """Position of step ``t`` in :attr:`ts`."""
        hits = np.flatnonzero(self.ts == t)
        if not len(hits):
            raise KeyError(f"t = {t} is not in the sweep's grid {self.ts.tolist()}")
        return int(hits[0])


def _plan(ddim_steps: int | Sequence[int], include_ddpm: bool) -> list[tuple[str, str, int]]:
    """(name, reconstruct method, num_inference_steps) of every reconstruction to run."""
    ks = [ddim_steps] if isinstance(ddim_steps, int) else list(ddim_steps)
    plan = [("one_step", "one_step", 1)]
    if include_ddpm:
        plan.append(("ddpm", "ddpm", 1))
    plan += [(f"ddim{k}", "ddim", int(k)) for k in ks]
    return plan


@torch.no_grad()
def sweep_one_step_vs_iterative(
    model: NoiseModel,
    schedule: NoiseSchedule,
    images: Tensor,
    ts: Sequence[int],
    ddim_steps: int | Sequence[int] = 10,
    include_ddpm: bool = True,
    generator: torch.Generator | None = None,
    clip_sample: bool = False,
    batch_size: int = 16,
    keep_samples: bool = True,
    progress: bool = True,
    warmup: bool = True,
) -> IterativeSweep:
    """Reconstruct ``images`` from every t by one step, by DDPM and by DDIM, from the SAME x_t.

    For each image one forward noise eps is drawn and reused for every t and every method,
    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (eq. 1); so the methods differ only in how
    they go back. DDPM's own reverse noise comes from a second stream seeded from
    ``generator``.

    Parameters
    ----------
    model : callable ``(x_t, t) -> eps``, e.g. ``zoo.load(...).denoiser``
    schedule : NoiseSchedule
    images : Tensor ``(N, C, H, W)`` in [-1, 1]
    ts : sequence of int, the steps to noise to (paper Fig. 4: 0 .. 1000)
    ddim_steps : int or sequence of int
        DDIM steps k (eta = 0) for each DDIM variant (paper's ablation: DDIM-30).
    include_ddpm : bool
        Run DDPM (eq. 3, t + 1 evaluations per image; the expensive one).
    generator : torch.Generator, optional
        Source of every random number (default: seed 0).
    clip_sample : bool
        Clamp every x0 estimate to [-1, 1] (the official code does; pass the model's setting).
    batch_size : int
        Images per network call.
    keep_samples : bool
        Keep the reconstructions and the x_t (``(T, N, C, H, W)`` each) for figures.
    progress : bool
        A progress bar over t (quiet under ``TQDM_DISABLE=1``).
    warmup : bool
        Run every reconstruction once, untimed, before timing any (DDPM from a tiny t): the
        first call of each code path pays start-up costs (memory allocation, kernel
        selection), which would otherwise be charged to the first t of the grid, so that
        DDPM's 51 evaluations from t = 50 could take longer than its 601 from t = 600. The
        warm-up draws from its own generator: the results do not depend on it.

    Returns
    -------
    IterativeSweep

    Notes
    -----
    Cost grows like N * sum_t (t + 1) network evaluations with DDPM; keep ``ts`` and N small
    on a CPU.
    """
    ts = [int(t) for t in ts]
    device = images.device
    gen = generator if generator is not None else torch.Generator(device).manual_seed(0)
    noise = torch.randn(images.shape, generator=gen, device=device, dtype=images.dtype)
    reverse_gen = child_generator(gen, device)
    plan = _plan(ddim_steps, include_ddpm)
    names = tuple(p[0] for p in plan)
    T, N = len(ts), images.shape[0]
    out = {name: torch.empty((T, *images.shape), dtype=images.dtype, device=device)
           for name in names}
    noisy = torch.empty((T, *images.shape), dtype=images.dtype, device=device)
    evals = {name: np.zeros(T, dtype=np.int64) for name in names}
    seconds = {name: np.zeros(T) for name in names}
    if warmup:  # each reconstruction once, untimed, on its own random stream (see below)
        first = chunks(N, batch_size)[0]
        spare = torch.Generator(device).manual_seed(0)
        for name, how, k in plan:
            t_warm = min(ts[0], 4) if how == "ddpm" else max(ts[0], k) if how == "ddim" else ts[0]
            reconstruct(model, schedule, images[first], t_warm, how, num_inference_steps=k,
                        noise=noise[first], generator=spare, clip_sample=clip_sample)
    for i, t in enumerate(progress_bar(ts, progress, desc="t")):
        for sl in chunks(N, batch_size):
            for name, how, k in plan:
                start = time.perf_counter()
                rec = reconstruct(model, schedule, images[sl], t, how, num_inference_steps=k,
                                  noise=noise[sl], generator=reverse_gen,
                                  clip_sample=clip_sample)
                seconds[name][i] += time.perf_counter() - start
                evals[name][i] = rec.num_model_evals
                out[name][i, sl] = rec.sample
                noisy[i, sl] = rec.noisy
    seconds = {name: s / N for name, s in seconds.items()}
    mse_one = {name: np.stack([per_image_mse(out[name][i], out["one_step"][i]) for i in range(T)])
               for name in names if name != "one_step"}
    mse_in = {name: np.stack([per_image_mse(out[name][i], images) for i in range(T)])
              for name in names}
    return IterativeSweep(np.asarray(ts), names, mse_one, mse_in, evals, seconds,
                          out if keep_samples else {}, noisy if keep_samples else None, noise)
