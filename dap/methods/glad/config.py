"""GLAD's configuration and its presets (``paper`` 256 px, ``cpu`` 128 px, ``ci`` 64 px).

Paper: Yao et al., "GLAD: Towards Better Reconstruction with Global and Local Adaptive Diffusion
Models for Unsupervised Anomaly Detection" (ECCV 2024). Taught in
``notebooks/08_adaptive_diffusion``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from dap.config import ConfigError, DiffusionConfig, replace
from dap.methods.base import check_preset
from dap.models.denoiser import DenoiserConfig, denoiser_config
from dap.synthesis import SynthesisConfig

AfterStop = Literal["freeze", "continue"]
TimestepSpacing = Literal["even", "leading"]
SaffMask = Literal["calibrated", "sigmoid"]
MapPreset = Literal["dap", "official"]


@dataclass
class GLADConfig:
    """Everything that defines a GLAD model in dap.

    Attributes
    ----------
    denoiser, diffusion : the noise predictor and the DDPM schedule (T = 1000, linear).
    synthesis : the anomaly synthesis for ATP and the validation set (GLAD's preset).
    atp : bool
        Anomaly-aware training (True) or plain DDPM training on normal images (False).
    t_start : int
        The input is noised to this step before DDIM (400 = DiffusionAD's t_b).
    num_inference_steps : int
        DDIM steps below ``t_start``.
    timestep_spacing : {"even", "leading"}
        ``even``: t_start, ..., evenly spaced (:func:`dap.diffusion.ddim_timesteps`; the first
        step is t_start itself). ``leading``: diffusers' "leading" spacing over [0, t_start) with
        steps_offset 1 (:func:`~dap.methods.glad.adaptive.leading_timesteps`; 750 and 25 steps:
        721, 691, ..., 1), the official code's grid: the input is noised to t_start but denoised
        from the first grid step below it.
    min_step : int
        The latest stop: every sample stops at the first DDIM step t <= min_step (200).
    adaptive : bool
        Per-sample stop by the calibrated thresholds (True) or every sample at ``min_step``.
    stop_at_first_step : bool
        Test the stop at the first DDIM step too (the official code). Needs ``leading``
        spacing: with ``even`` spacing the input's x0 equals the trajectory's there.
    saff : bool
        Fuse x0_r and x0_i at the stop (True) or keep the trajectory's x0_r.
    saff_mask : {"calibrated", "sigmoid"}
        ``calibrated``: m = clip((D - mu_k) / (threshold_k - mu_k), 0, 1) at every stop.
        ``sigmoid``: the official m = sigmoid(D), only where the score passed the threshold; a
        sample stopped by ``min_step`` takes x0_i whole.
    saff_blur : bool
        Gaussian-blur the upsampled SAFF discrepancy (``smoothing_sigma``, ``smoothing_truncate``)
        before the mask is formed (True) or not (False, the official code).
    after_stop : {"freeze", "continue"}
        ``freeze``: the stop's x0 is the reconstruction; ``continue``: it replaces x0 in that
        DDIM step and denoising goes on to t = 0 (the official code).
    threshold_quantile : float
        Fraction of normal validation images that never stop early; sets the per-step
        thresholds (:meth:`GLAD.calibrate`, 0.95).
    discrepancy_top_k : int
        Patches averaged into the discrepancy score (GLAD: 10).
    feature_levels : tuple of int
        Encoder levels of the denoiser used as patch features (each L2-normalised, then joined).
    feature_size : int
        Side of the patch grid the features are resampled to.
    feature_weight, pixel_weight : weights of the two anomaly-map terms.
    smoothing_sigma : float
        Gaussian sigma in pixels for the SAFF mask and the anomaly map (4 at 256 px).
    smoothing_truncate : float
        Kernel radius int(truncate sigma + 0.5) of that blur (dap 3; the official map 4).
    top_k : int
        Pixels averaged into the image score (1 = the maximum).
    clip_sample : bool
        Clamp every x0 estimate to [-1, 1].
    inference_seed : int
        Seed of eps0 when ``predict`` gets no generator.
    """

    denoiser: DenoiserConfig = field(default_factory=lambda: denoiser_config("paper"))
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    synthesis: SynthesisConfig = field(default_factory=lambda: SynthesisConfig.preset("glad"))
    atp: bool = True
    t_start: int = 400
    num_inference_steps: int = 10
    timestep_spacing: TimestepSpacing = "even"
    min_step: int = 200
    adaptive: bool = True
    stop_at_first_step: bool = False
    saff: bool = True
    saff_mask: SaffMask = "calibrated"
    saff_blur: bool = True
    after_stop: AfterStop = "freeze"
    threshold_quantile: float = 0.95
    discrepancy_top_k: int = 10
    feature_levels: tuple[int, ...] = (1, 2)
    feature_size: int = 32
    feature_weight: float = 1.0
    pixel_weight: float = 1.0
    smoothing_sigma: float = 4.0
    smoothing_truncate: float = 3.0
    top_k: int = 50
    clip_sample: bool = True
    inference_seed: int = 0

    def __post_init__(self) -> None:
        T = self.diffusion.num_train_timesteps

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"GLADConfig: {msg}")

        need(0 <= self.min_step <= self.t_start < T,
             f"need 0 <= min_step <= t_start < {T}, got min_step={self.min_step}, "
             f"t_start={self.t_start}")
        need(self.num_inference_steps >= 1, "num_inference_steps must be >= 1")
        need(0.0 < self.threshold_quantile <= 1.0, "threshold_quantile must be in (0, 1]")
        need(self.discrepancy_top_k >= 1 and self.top_k >= 1, "top-k counts must be >= 1")
        n_levels = len(self.denoiser.channel_mult)
        need(len(self.feature_levels) > 0 and all(0 <= i < n_levels for i in self.feature_levels),
             f"feature_levels must be non-empty encoder levels in [0, {n_levels - 1}], "
             f"got {self.feature_levels}")
        need(self.feature_size >= 1, "feature_size must be >= 1")
        need(self.feature_weight >= 0 and self.pixel_weight >= 0
             and self.feature_weight + self.pixel_weight > 0,
             "feature_weight and pixel_weight must be >= 0, not both 0")
        need(self.smoothing_sigma >= 0, "smoothing_sigma must be >= 0")
        need(self.smoothing_truncate > 0, "smoothing_truncate must be > 0")
        need(self.timestep_spacing == "even" or self.t_start >= 2 * self.num_inference_steps,
             "timestep_spacing='leading' needs t_start >= 2 * num_inference_steps (a grid step "
             f"of at least 2), got t_start={self.t_start}, "
             f"num_inference_steps={self.num_inference_steps}")
        need(not self.stop_at_first_step or self.timestep_spacing == "leading",
             "stop_at_first_step=True needs timestep_spacing='leading': with 'even' spacing "
             "the input is noised to the first DDIM step, where its x0 equals the trajectory's")


#: the official code's MVTec / MPDD map and SAFF mask are made at 512 px
OFFICIAL_MAP_SIZE = 512


def official_map_settings(image_size: int) -> dict[str, Any]:
    """The official MVTec / MPDD anomaly map and SAFF mask as GLADConfig fields at
    ``image_size``: no pixel term (v = 0), Gaussian sigma 6 with truncate 4 and the top-250 mean
    at 512 px (sigma and the count scaled to the image's side and area), the SAFF mask
    sigmoid(D), unblurred. The official DINO layers and object mask have no dap counterpart
    (:mod:`dap.methods.glad.official`).
    """
    scale = image_size / OFFICIAL_MAP_SIZE
    return {"pixel_weight": 0.0, "smoothing_sigma": 6.0 * scale, "smoothing_truncate": 4.0,
            "top_k": max(1, round(250 * scale**2)), "saff_mask": "sigmoid", "saff_blur": False}


def glad_config(preset: str = "paper", map_preset: MapPreset = "dap", **overrides: Any
                ) -> GLADConfig:
    """A GLAD config for ``paper`` (256 px), ``cpu`` (128 px) or ``ci`` (64 px).

    The small presets shrink the denoiser, the top-K (same image fraction), the smoothing and
    the patch grid; every step and threshold setting stays the same. ``map_preset="official"``
    sets the official map and SAFF mask (:func:`official_map_settings`); ``overrides`` win.
    """
    check_preset(preset, "GLAD")
    if map_preset not in ("dap", "official"):
        raise ConfigError(f"GLAD: map_preset must be 'dap' or 'official', got {map_preset!r}")
    den = denoiser_config(preset)
    scale = den.image_size / 256
    base = GLADConfig(denoiser=den, top_k=max(1, round(50 * scale**2)),
                      smoothing_sigma=4.0 * scale, feature_size=64 if preset == "paper" else 32)
    if map_preset == "official":
        overrides = {**official_map_settings(den.image_size), **overrides}
    return replace(base, **overrides) if overrides else base


__all__ = ["AfterStop", "TimestepSpacing", "SaffMask", "MapPreset", "GLADConfig",
           "OFFICIAL_MAP_SIZE", "official_map_settings", "glad_config"]
