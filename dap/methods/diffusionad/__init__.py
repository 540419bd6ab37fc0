"""DiffusionAD: norm-guided one-step denoising diffusion for anomaly detection.

Paper: Zhang, Wang, Zeng, Wu, Jiang, "DiffusionAD: Norm-guided One-step Denoising Diffusion for
Anomaly Detection". Taught in ``notebooks/06_train_and_evaluate``.

``config``  :class:`DiffusionADConfig` and the presets (:func:`diffusionad_config`)
``ops``     the losses of Sec. III-E (norm guidance itself is :func:`dap.diffusion.norm_guided`)
``model``   :class:`DiffusionAD`, the module
``official`` the records of where dap differs from the official code (below)
"""

from dap.methods.diffusionad.config import (RECONSTRUCTIONS, DiffusionADConfig, ReconstructionMode,
                                            diffusionad_config)
from dap.methods.diffusionad.model import DiffusionAD
from dap.methods.diffusionad.official import DIFFERENCES
from dap.methods.diffusionad.ops import joint_noise_loss, mask_loss
from dap.methods.official import docstring_section

__doc__ = (__doc__ or "") + docstring_section(DIFFERENCES)

__all__ = ["DiffusionAD", "DiffusionADConfig", "diffusionad_config", "RECONSTRUCTIONS",
           "ReconstructionMode", "joint_noise_loss", "mask_loss", "DIFFERENCES"]
