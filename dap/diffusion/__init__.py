"""The DDPM machinery of DiffusionAD: schedules, eq. 1, eq. 3, eq. 6, DDIM, norm guidance.

Taught in ``notebooks/01_forward_process`` to ``notebooks/04_norm_guidance``; DDAD's
conditioned guidance in ``notebooks/07_conditioned_denoising``.
"""

from dap.diffusion.guidance import NormGuidedOutput, conditioned_guidance, norm_guided
from dap.diffusion.sampling import (SAMPLERS, Denoised, LoopOutput, Step, ddim_timesteps,
                                   denoise_loop, reconstruct)
from dap.diffusion.schedule import NoiseSchedule, StepOutput, cosine_betas, linear_betas

__all__ = [
    "NoiseSchedule",
    "StepOutput",
    "linear_betas",
    "cosine_betas",
    "reconstruct",
    "Denoised",
    "denoise_loop",
    "Step",
    "LoopOutput",
    "ddim_timesteps",
    "SAMPLERS",
    "norm_guided",
    "NormGuidedOutput",
    "conditioned_guidance",
]
