"""DRAEM: a discriminatively trained reconstruction embedding, the non-diffusion baseline.

Paper: Zavrtanik, Kristan, Skocaj, "DRAEM - A discriminatively trained reconstruction embedding
for surface anomaly detection", ICCV 2021. Every diffusion detector in dap compares against it;
here it answers the first question of a reading group: does the diffusion model beat a plain
auto-encoder trained on the same synthetic anomalies, at the same budget? Taught beside
DiffusionAD in ``notebooks/06_train_and_evaluate``.

``config``    :class:`DRAEMConfig` and the presets (:func:`draem_config`)
``ops``       the equations: SSIM (Wang et al. 2004, eq. 13), L_rec, L_seg, the image score
``model``     :class:`DRAEM`, the module
``official``  the records of where dap differs from the official code (below)

* **Reconstructive sub-network** (Sec. 3.1, :class:`~dap.models.reconstructive.ReconstructiveAE`):
  an encoder-decoder without skips, trained to restore the anomaly-free image I from a
  synthetically corrupted I_a with L_rec = l2(I, I_r) + lambda L_SSIM(I, I_r), lambda = 1.
* **Discriminative sub-network** (Sec. 3.2): the segmentation U-Net DiffusionAD uses
  (:class:`~dap.models.segmentation.SegmentationUNet`) on concat(I_r, I_a), trained with the
  focal loss (gamma = 2); L = L_rec + L_seg, both networks at once.
* **Scores** (Sec. 3.4): the pixel map is the predicted mask; the image score is the maximum of
  the mask averaged by a 21 x 21 box filter (:func:`image_score`).
* **Training** (official): Adam, lr 1e-4, batch 8, 700 epochs, the learning rate x 0.2 at 80 %
  and 90 % of them; anomalies from :mod:`dap.synthesis` (DiffusionAD's recipe, so both methods
  see the same anomalies).
"""

from dap.methods.draem.config import SCORE_WINDOWS, DRAEMConfig, draem_config
from dap.methods.draem.model import DRAEM, from_unit, to_unit
from dap.methods.draem.official import DIFFERENCES
from dap.methods.draem.ops import (DRAEMLoss, draem_loss, gaussian_window, image_score,
                                   official_init, reconstruction_loss, segmentation_loss,
                                   ssim_loss, ssim_map)
from dap.methods.official import docstring_section

__doc__ = (__doc__ or "") + docstring_section(DIFFERENCES)

__all__ = ["DRAEM", "DRAEMConfig", "draem_config", "SCORE_WINDOWS", "DIFFERENCES", "to_unit",
           "from_unit", "ssim_map", "ssim_loss", "gaussian_window", "reconstruction_loss",
           "segmentation_loss", "draem_loss", "DRAEMLoss", "image_score", "official_init"]
