"""Measurements behind the paper's observations: each of notebooks 02-04 drives one of them.

* :func:`load_test_tensors` -- test images with masks, clean originals and defect areas.
* :func:`sweep_one_step_vs_iterative` -- Observation I / Fig. 4: MSE between one-step and
  iterative (DDPM, DDIM) reconstructions against t, and the cost of each.
  Taught in ``notebooks/02_one_step_vs_iterative``.
* :func:`repair_errors`, :func:`sweep_repair` -- Observation II: residual anomaly (error
  against the clean image inside the defect) and fidelity (outside) against t, for small and
  large defects. Taught in ``notebooks/03_noise_scales``.
* :func:`check_guidance_identity` -- x0_g = x0_s + w (1 - abar_ts)(x0_b - x0_s) (eqs. 7-8);
  :func:`sweep_guidance_weight` -- the w ablation (Fig. 10). Taught in
  ``notebooks/04_norm_guidance``.
* :mod:`dap.analysis.verdicts` -- the explicit rules by which notebooks 02-04 compare these
  measurements with the paper's claims.
* :func:`run_adaptive` -- GLAD's adaptive reconstructions, stop steps and anomaly maps over a
  stack of test images. Taught in ``notebooks/08_adaptive_diffusion``.

* :func:`psnr`, :func:`channel_spread`, :class:`WienerDenoiser` -- reconstruction quality
  against the linear (Wiener) estimate of x0 from x_t, and colour speckle on grey inputs.

Every sweep returns per-image values (never only a mean), so a notebook can show the spread;
:func:`median_iqr` summarises them.
"""

from dap.analysis.adaptive import run_adaptive
from dap.analysis.data import KINDS, TestTensors, load_test_tensors, split_by_area, spread_indices
from dap.analysis.guidance import (METRIC_NAMES, GuidanceSweep, IdentityCheck,
                                   check_guidance_identity, sweep_guidance_weight)
from dap.analysis.iterative import IterativeSweep, sweep_one_step_vs_iterative
from dap.analysis.repair import (RepairSweep, first_t_below, remaining_fraction, repair_errors,
                                 residual_fraction, sweep_repair)
from dap.analysis.quality import WienerDenoiser, channel_spread, psnr
from dap.analysis.stats import Spread, auroc_standard_error, median_iqr, per_image_mse

__all__ = [
    "WienerDenoiser", "channel_spread", "psnr",
    "KINDS", "TestTensors", "load_test_tensors", "split_by_area", "spread_indices",
    "IterativeSweep", "sweep_one_step_vs_iterative",
    "RepairSweep", "repair_errors", "remaining_fraction", "residual_fraction", "sweep_repair",
    "first_t_below",
    "IdentityCheck", "check_guidance_identity", "GuidanceSweep", "sweep_guidance_weight",
    "METRIC_NAMES", "Spread", "median_iqr", "per_image_mse", "auroc_standard_error",
    "run_adaptive",
]
