"""
Paper: X. Zhang, N. Li, J. Li, T. Dai, Y. Jiang, S.-T. Xia, "Unsupervised Surface Anomaly
Detection with Diffusion Probabilistic Model", ICCV 2023 (DiffAD). Taught in
``notebooks/09_latent_diffusion``.

Three parts, all in one :class:`DiffAD` module:

* a **KL autoencoder** E, D (:mod:`dap.models.autoencoder`) trained per category on normal images;
  the diffusion model lives in its latent space (Latent Diffusion, Rombach et al. 2022);
* a **latent denoiser** f(concat(z_t, c), t) (:class:`DenoiserUNet`, 2 x 4 input channels)
  conditioned by concatenating a condition latent c. With the **noisy condition embedding** the
  condition is itself noised during training, ``c_noisy = sqrt(abar_t') c + sqrt(1 - abar_t')
  eps'`` (:func:`noisy_condition`), so the model cannot solve the task by copying c.
  Reconstruction: DDIM from pure noise z_T ~ N(0, I), conditioned on c = E(x) of the test image
  (:func:`sample_conditioned`: the clean c, c noised once to a fixed t_c, or c noised to each
  step);
* a **segmentation network** (DRAEM's discriminative U-Net, :class:`SegmentationUNet`) on
  ``concat(x_r, x_inter, x)`` (9 channels), where x_r = D(z_r) is the reconstruction and
  x_inter = D(lambda c + (1 - lambda) z_r) the **interpolated channel** (lambda = 0.5,
  :func:`interpolate_latents`), trained with the focal loss on synthetic anomalies
  (:mod:`dap.synthesis`). Image score: the maximum of the anomaly map average-pooled with a
  21 x 21 window at 256 px (DRAEM's score), scaled with the image size (:func:`score_pool_size`).

The paper's "direct copy" measure (copy PSNR) is :mod:`dap.copy_metrics`; the interpolated
channels' ablation on one frozen reconstruction pipeline is :meth:`DiffAD.segmenter_variant`
(driven by :func:`dap.analysis.diffad.interpolated_channels_ablation`).

``config``   :class:`DiffADConfig`, the latent denoisers and the presets (:func:`diffad_config`)
``ops``      the equations: noisy condition, interpolated latent, pooled-max score, DDIM grids
``sampler``  the conditioned DDIM sampler (:func:`sample_conditioned`)
``model``    :class:`DiffAD`, the module, and its training phases
``official`` where dap differs from the official code (below)
"""

from dap.methods.diffad.config import (DENOISER, DDIMGrid, DiffADConfig, SampleCondition,
                                       diffad_config, latent_denoiser_config)
from dap.methods.diffad.model import PHASES, SEGMENTER_SETTINGS, DiffAD
from dap.methods.diffad.official import DIFFERENCES
from dap.methods.diffad.ops import (interpolate_latents, noisy_condition, pooled_max_score,
                                    sampling_timesteps, score_pool_size)
from dap.methods.diffad.sampler import NOISY_FIXED_RANGE, SAMPLE_CONDITIONS, sample_conditioned
from dap.methods.official import docstring_section

__doc__ = (__doc__ or "") + docstring_section(DIFFERENCES)

__all__ = ["DiffAD", "DiffADConfig", "diffad_config", "noisy_condition", "interpolate_latents",
           "score_pool_size", "pooled_max_score", "sampling_timesteps", "sample_conditioned",
           "latent_denoiser_config", "PHASES", "SEGMENTER_SETTINGS", "DENOISER",
           "SampleCondition", "SAMPLE_CONDITIONS", "NOISY_FIXED_RANGE", "DDIMGrid",
           "DIFFERENCES"]
