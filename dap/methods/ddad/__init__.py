"""DDAD: anomaly detection with conditioned denoising diffusion models.

Paper: Mousakhan, Brox, Tayyub, "Anomaly Detection with Conditioned Denoising Diffusion Models"
(DDAD). Taught in ``notebooks/07_conditioned_denoising``.

``config``      :class:`DDADConfig` and the presets (:func:`ddad_config`)
``ops``         the equations: the grid, conditioned trajectory, map terms, adaptation loss
``adaptation``  the domain-adaptation loop (:func:`adapt`)
``model``       :class:`DDAD`, the module
``official``    the records of where dap differs from the official code (below)

* **Training** (Sec. 3.1): a plain DDPM noise predictor on normal images only,
  L = ||eps - eps_theta(x_t, t)||^2, t ~ U[0, T). No synthetic anomalies, no segmenter.
* **Conditioned denoising** (Sec. 3.2, :func:`conditioned_reconstruct`): noise the input to
  t' = 250, then take 10 DDIM steps at t = 225, 200, ..., 0 (:func:`ddad_timesteps`) whose noise
  estimates are pulled towards the target y (the input itself) by
  :func:`dap.diffusion.conditioned_guidance` with weight w = 2.
* **Anomaly map** (Sec. 3.3, :meth:`DDAD.map_terms`, :meth:`DDAD.anomaly_map`): feature distance
  (1 - cosine, 3 x 3 patches, two pyramid levels, upsampled and summed) plus v * s * pixel
  distance (channel-mean |x0 - x|), Gaussian blur; image score = the max of the central
  224/256 of the map (:func:`crop_score`).
* **Domain adaptation** (Sec. 3.4, :func:`adapt`): fine-tune a copy of the feature extractor so
  that features of conditioned reconstructions of normal images match those of their targets,
  with distillation terms to the frozen extractor (weight lambda).

The official configuration's names map as ``test_trajectoy_steps`` -> ``t_start``, ``skip`` ->
``t_start / ddim_steps``, ``eta`` -> ``eta``, ``w`` -> ``w``, ``v`` -> ``v``,
``feature_extractor`` -> ``extractor``, ``weight_decay`` -> ``weight_decay``, ``w_DA`` ->
``da_w``, ``DLlambda`` -> ``da_lambda``, ``DA_batch_size`` -> ``da_batch_size``, ``DA_epochs`` ->
``domain_adaptation_steps`` (counted in steps here), ``learning_rate`` and ``batch_size`` ->
``TrainConfig.lr`` and ``TrainConfig.batch_size``.
"""

from dap.methods.ddad.adaptation import adapt
from dap.methods.ddad.config import Adaptation, DDADConfig, Extractor, Grid, ddad_config
from dap.methods.ddad.model import DDAD
from dap.methods.ddad.official import DIFFERENCES
from dap.methods.ddad.ops import (adaptation_loss, combine_map, conditioned_reconstruct,
                                  crop_score, ddad_timesteps, global_cosine_distance,
                                  per_image_scale, pixel_distance)
from dap.methods.official import docstring_section

__doc__ = (__doc__ or "") + docstring_section(DIFFERENCES)

__all__ = ["DDAD", "DDADConfig", "ddad_config", "Extractor", "Adaptation", "Grid", "adapt",
           "conditioned_reconstruct", "ddad_timesteps", "pixel_distance", "per_image_scale",
           "combine_map", "crop_score", "global_cosine_distance", "adaptation_loss",
           "DIFFERENCES"]
