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
  Reconstruction: DDIM from pure noise z_T ~ N(0, I), conditioned on c = E(x) of the test image;
* a **segmentation network** (DRAEM's discriminative U-Net, :class:`SegmentationUNet`) on
  ``concat(x_r, x_inter, x)`` (9 channels), where x_r = D(z_r) is the reconstruction and
  x_inter = D(lambda c + (1 - lambda) z_r) the **interpolated channel** (lambda = 0.5,
  :func:`interpolate_latents`), trained with the focal loss on synthetic anomalies
  (:mod:`dap.synthesis`). Image score: the maximum of the anomaly map average-pooled with a
  21 x 21 window at 256 px (DRAEM's score), scaled with the image size (:func:`score_pool_size`).

Paper text and public code (repository Loco-Roco/DiffAD, read for facts) differ; dap follows the
code where the text is silent or ambiguous and exposes the other reading as an option:

=============================  ==================================  =============================
option                         public code (dap default)           alternative
=============================  ==================================  =============================
``condition_source``           ``synthetic``: c = E(S) of a        ``input``: c = E(x), the
                               DRAEM-synthesised anomalous S,      target itself
                               target z_0 = E(x) (half of the S
                               left normal)
``condition_timestep``         ``independent``: t' ~ U[0, T)       ``same``: t' = t (the
                               drawn apart from the denoiser's t   equation as printed)
``sample_condition``           ``clean``: c at every DDIM step     ``noisy``: c noised to the
                                                                   step's t (one fixed eps')
=============================  ==================================  =============================

``prediction_type``: DiffAD (as LDM) predicts the noise eps. The ``ci`` and ``cpu`` presets predict
z_0 instead (``sample``): the eps loss barely rewards using the condition at the high-noise steps
where only the condition can tell what z_0 is, and after the ~1000 CPU steps of the small presets
an eps model sampled from pure noise ignored its condition (brick, 64 px: PSNR outside the
defects 16.7 dB with eps, 27.1 dB with z_0 prediction; autoencoder ceiling 31.4 dB).

Other differences: the perceptual (LPIPS) term of the autoencoder loss is off (no pretrained
weights offline, see :meth:`DiffAD.set_perceptual`) and LDM's patch discriminator is not used;
the schedule is DDPM's linear 1e-4 -> 0.02 (the public code: LDM's 0.0015 -> 0.02 in sqrt space);
the focal loss is DRAEM's (gamma = 2) on one logit per pixel with balanced alpha = 0.5 (DRAEM's
two-class focal loss is twice this value).

``config``  :class:`DiffADConfig`, the latent denoisers and the presets (:func:`diffad_config`)
``ops``     the equations: noisy condition, interpolated latent, pooled-max image score
``model``   :class:`DiffAD`, the module, and its training phases
"""

from dap.methods.diffad.config import (DENOISER, DiffADConfig, SampleCondition, diffad_config,
                                       latent_denoiser_config)
from dap.methods.diffad.model import PHASES, DiffAD
from dap.methods.diffad.ops import (interpolate_latents, noisy_condition, pooled_max_score,
                                    score_pool_size)

__all__ = ["DiffAD", "DiffADConfig", "diffad_config", "noisy_condition", "interpolate_latents",
           "score_pool_size", "pooled_max_score", "latent_denoiser_config", "PHASES", "DENOISER",
           "SampleCondition"]
