"""DiffusionAD: norm-guided one-step denoising diffusion for anomaly detection.

Paper: Zhang, Wang, Zeng, Wu, Jiang, "DiffusionAD: Norm-guided One-step Denoising Diffusion for
Anomaly Detection". Taught in ``notebooks/06_train_and_evaluate``.

``config``  :class:`DiffusionADConfig` and the presets (:func:`diffusionad_config`)
``ops``     the losses of Sec. III-E (norm guidance itself is :func:`dap.diffusion.norm_guided`)
``model``   :class:`DiffusionAD`, the module
"""

from dap.methods.diffusionad.config import (RECONSTRUCTIONS, DiffusionADConfig, ReconstructionMode,
                                            diffusionad_config)
from dap.methods.diffusionad.model import DiffusionAD
from dap.methods.diffusionad.ops import joint_noise_loss, mask_loss

__all__ = ["DiffusionAD", "DiffusionADConfig", "diffusionad_config", "RECONSTRUCTIONS",
           "ReconstructionMode", "joint_noise_loss", "mask_loss"]
