"""DDAD: anomaly detection with conditioned denoising diffusion models.

Paper: Mousakhan, Brox, Tayyub, "Anomaly Detection with Conditioned Denoising Diffusion Models"
(DDAD). Taught in ``notebooks/07_conditioned_denoising``.

``config``      :class:`DDADConfig` and the presets (:func:`ddad_config`)
``ops``         the equations: conditioned trajectory, map terms, adaptation loss
``adaptation``  the domain-adaptation loop (:func:`adapt`)
``model``       :class:`DDAD`, the module

* **Training** (Sec. 3.1): a plain DDPM noise predictor on normal images only,
  L = ||eps - eps_theta(x_t, t)||^2, t ~ U[0, T). No synthetic anomalies, no segmenter.
* **Conditioned denoising** (Sec. 3.2, :func:`conditioned_reconstruct`): noise the input to
  t' = 250, then take 10 DDIM steps whose noise estimates are pulled towards the target y (the
  input itself) by :func:`dap.diffusion.conditioned_guidance` with weight w = 2.
* **Anomaly map** (Sec. 3.3, :meth:`DDAD.map_terms`, :meth:`DDAD.anomaly_map`): feature distance
  (1 - cosine, 3 x 3 patches, two pyramid levels, upsampled and summed) plus v * s * pixel
  distance (channel-mean |x0 - x|), Gaussian blur, image score = max.
* **Domain adaptation** (Sec. 3.4, :func:`adapt`): fine-tune a copy of the feature extractor so
  that features of conditioned reconstructions of normal images match those of their targets,
  with a distillation term to the frozen extractor (weight lambda).

Where dap differs from the official code (each documented on :class:`DDADConfig`):

1. **Batch-independent scores.** The official s = max f / max p is taken over the *test batch*,
   so an image's score depends on what it was batched with. dap uses a constant estimated on
   normal training images (:meth:`DDAD.calibrate`) and, until calibrated, per-image maxima. The
   noise of the reconstruction is shared by all images of a batch ("common random numbers"),
   so batch 1 and batch 16 give the same scores.
2. **Offline feature extractor.** The default extractor is the trained denoiser's own encoder at
   t = 0 (no download). The paper's ImageNet WideResNet-50-2 is available when its torchvision
   weights file is at hand (``extractor="wide_resnet50_2"``, :mod:`dap.features`).
3. **Noise loss** is the mean (not the sum) of squared errors: the same minimiser, and Adam is
   insensitive to the constant factor 3HW.
4. **Trajectory.** :func:`dap.diffusion.ddim_timesteps` ``(250, 10)`` = 250, 225, ..., 25, then
   x_0: 10 network evaluations, as in the official code.

The official configuration's names map as ``test_trajectoy_steps`` -> ``t_start``, ``skip`` ->
``t_start / ddim_steps``, ``eta`` -> ``eta``, ``w`` -> ``w``, ``v`` -> ``v``, ``DLlambda`` ->
``da_lambda``, ``DA_epochs`` -> ``domain_adaptation_steps`` (counted in steps here).
"""

from dap.methods.ddad.adaptation import adapt
from dap.methods.ddad.config import Adaptation, DDADConfig, Extractor, ddad_config
from dap.methods.ddad.model import DDAD
from dap.methods.ddad.ops import (adaptation_loss, combine_map, conditioned_reconstruct,
                                  per_image_scale, pixel_distance)

__all__ = ["DDAD", "DDADConfig", "ddad_config", "Extractor", "Adaptation", "adapt",
           "conditioned_reconstruct", "pixel_distance", "per_image_scale", "combine_map",
           "adaptation_loss"]
