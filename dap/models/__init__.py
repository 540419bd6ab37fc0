"""The two networks of DiffusionAD: the denoiser eps_theta(x_t, t) and the segmentation U-Net.

* :mod:`dap.models.denoiser`: guided-diffusion U-Net noise predictor (presets ``paper``, ``ci``,
  ``cpu``), also an encoder-pyramid feature extractor (DDAD, GLAD).
* :mod:`dap.models.segmentation`: DRAEM-style discriminative U-Net on concat(x_0, x0_g).

The profile table (:mod:`dap.profiles`) names the preset each profile builds. Taught in
``notebooks/06_train_and_evaluate``.
"""

from dap.models.common import count_parameters, zero_module
from dap.models.denoiser import (
    DENOISER_PRESETS,
    DenoiserConfig,
    DenoiserUNet,
    attention_rates_from_sizes,
    attention_sizes_from_rates,
    denoiser_config,
    timestep_embedding,
)
from dap.models.segmentation import (
    SEGMENTER_PRESETS,
    SegmentationUNet,
    SegmenterConfig,
    segmenter_config,
)

__all__ = [
    "DenoiserConfig",
    "DenoiserUNet",
    "DENOISER_PRESETS",
    "denoiser_config",
    "attention_sizes_from_rates",
    "attention_rates_from_sizes",
    "timestep_embedding",
    "SegmenterConfig",
    "SegmentationUNet",
    "SEGMENTER_PRESETS",
    "segmenter_config",
    "count_parameters",
    "zero_module",
]
