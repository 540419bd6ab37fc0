"""DiffusionAD's configuration and presets (paper values as defaults).

Paper: DiffusionAD, Sec. III and IV-A. Differences to the official code are options, each
documented on :class:`DiffusionADConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from dap.config import ConfigError, DiffusionConfig, replace
from dap.methods.base import check_preset
from dap.models.denoiser import DenoiserConfig, denoiser_config
from dap.models.segmentation import SegmenterConfig, segmenter_config
from dap.synthesis import SynthesisConfig

#: how ``reconstruct`` makes x0 (the paper, and the ablations of Table VII)
ReconstructionMode = Literal["norm_guided", "one_step_s", "one_step_b", "ddpm", "ddim"]
#: the range the two networks see: [-1, 1] (dap, the DDPM convention) or [0, 1] (official code)
InputRange = Literal["signed", "unit"]
RECONSTRUCTIONS: tuple[str, ...] = ("norm_guided", "one_step_s", "one_step_b", "ddpm", "ddim")


@dataclass
class DiffusionADConfig:
    """Everything that defines a DiffusionAD model (paper values as defaults).

    Attributes
    ----------
    denoiser, segmenter, diffusion, synthesis
        The sub-network, schedule and synthesis configs.
    tau : int
        Split of the training steps: t_s ~ U[0, tau), t_b ~ U[tau, T) (paper: 300).
    t_s, t_b, w : inference steps and guidance weight (paper: 200, 400, 1).
    top_k : pixels averaged into the image score (paper: 50).
    focal_weight, focal_gamma, focal_alpha, smooth_l1_weight
        L_mask = smooth_l1_weight * SmoothL1 + focal_weight * Focal, the focal loss with
        exponent ``focal_gamma`` and balance ``focal_alpha`` (official code: 1, 5, 4, 0.5).
    mask_loss_into_denoiser : bool
        Whether L_mask back-propagates into the denoiser through x0_g (official: True).
    clip_sample : bool
        Clamp one-step predictions to [-1, 1] (the official code clamps).
    input_range : ``"signed"`` or ``"unit"``
        What the networks see. ``"signed"``: images in [-1, 1], the DDPM convention the paper's
        equations assume. ``"unit"``: x / 255 in [0, 1] as the official code feeds both networks
        (its predictions are still clamped to [-1, 1]; ``"signed"`` stays the default: in the
        recipe study ``"unit"`` lost 3.5 dB of reconstruction PSNR and doubled the colour
        speckle of grey inputs). The signal then has a quarter of the
        variance, so the same t has a quarter of the signal-to-noise ratio (abar_t Var(x0) /
        (1 - abar_t)). Every public interface stays in [-1, 1]: the method maps inputs
        to its range and reconstructions back (x -> (x + 1) / 2, x0 -> 2 x0 - 1).
    noise_loss_reduction : ``"sum"`` or ``"mean"``
        L_noise as the sum of the two scales' MSE (the official code; the default, chosen by the
        recipe study in ``results/recipe-study.json``: better on every validation metric) or
        their average (the paper's equation in Sec. III-E, which halves L_noise relative to
        L_mask).
    reconstruction : str
        ``norm_guided`` (the paper), or an ablation: ``one_step_s`` / ``one_step_b`` (eq. 6 from
        t_s or t_b), ``ddpm`` (eq. 3 iterated from ``iterative_t``), ``ddim`` (``ddim_steps`` steps
        from ``iterative_t``). Training always uses norm guidance.
    inference_seed : int
        Seed of the inference noise (the same image always gets the same noise).
    """

    denoiser: DenoiserConfig = field(default_factory=lambda: denoiser_config("paper"))
    segmenter: SegmenterConfig = field(default_factory=lambda: segmenter_config("paper"))
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    tau: int = 300
    t_s: int = 200
    t_b: int = 400
    w: float = 1.0
    top_k: int = 50
    focal_weight: float = 5.0
    focal_gamma: float = 4.0
    focal_alpha: float = 0.5
    smooth_l1_weight: float = 1.0
    mask_loss_into_denoiser: bool = True
    clip_sample: bool = True
    input_range: InputRange = "signed"
    noise_loss_reduction: Literal["mean", "sum"] = "sum"
    reconstruction: ReconstructionMode = "norm_guided"
    iterative_t: int = 400
    ddim_steps: int = 30
    inference_seed: int = 0

    def __post_init__(self) -> None:
        T = self.diffusion.num_train_timesteps
        if not 0 < self.tau < T:
            raise ConfigError(f"DiffusionADConfig.tau must lie in (0, {T}), got {self.tau}")
        if not 0 <= self.t_s < self.t_b < T:
            raise ConfigError(f"DiffusionADConfig needs 0 <= t_s < t_b < {T}, "
                              f"got t_s={self.t_s}, t_b={self.t_b}")
        if self.segmenter.in_channels != 2 * self.denoiser.in_channels:
            raise ConfigError("the segmenter sees concat(x, x0_g): segmenter.in_channels must be "
                              f"2 * denoiser.in_channels = {2 * self.denoiser.in_channels}")


def diffusionad_config(preset: str = "paper", **overrides: Any) -> DiffusionADConfig:
    """A DiffusionAD config for ``paper`` (256 px), ``cpu`` (128 px) or ``ci`` (64 px).

    The small presets shrink the networks (and the top-K to keep the same image fraction);
    everything else keeps the paper's values.
    """
    check_preset(preset, "DiffusionAD")
    size = denoiser_config(preset).image_size
    base = DiffusionADConfig(
        denoiser=denoiser_config(preset),
        segmenter=segmenter_config(preset),
        top_k=max(1, round(50 * (size / 256) ** 2)) if preset != "paper" else 50,
    )
    return replace(base, **overrides) if overrides else base


__all__ = ["DiffusionADConfig", "diffusionad_config", "ReconstructionMode", "RECONSTRUCTIONS",
           "InputRange"]
