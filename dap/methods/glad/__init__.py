"""GLAD: global and local adaptive diffusion, taught on dap's pixel-space denoiser.

Paper: Yao et al., "GLAD: Towards Better Reconstruction with Global and Local Adaptive Diffusion
Models for Unsupervised Anomaly Detection" (ECCV 2024). Taught in
``notebooks/08_adaptive_diffusion``.

GLAD fine-tunes Stable Diffusion v1-4 in its latent space and compares images with DINO
features. Neither set of weights is available offline, so dap teaches the same three ideas with
its own pixel-space noise predictor (:class:`~dap.models.denoiser.DenoiserUNet`) and that
denoiser's encoder features (:func:`dap.features.denoiser_features` at t = 0) in place of DINO.

1. **ATP, anomaly-aware training** (:func:`atp_blend`, :func:`atp_noise_target`). Train on
   synthetic anomalies S too (Perlin threshold 0.3, beta ~ U[0, 0.8), 8 x 8 grid shuffle:
   ``SynthesisConfig.preset("glad")``). With alpha = t / T, t in {0, ..., T-1},

       x_blend = alpha * S + (1 - alpha) * N                 (N: the normal image)
       x_t     = sqrt(abar_t) x_blend + sqrt(1 - abar_t) eps
       eps*    = (x_t - sqrt(abar_t) N) / sqrt(1 - abar_t)   (the regression target)

   Derivation: the one-step estimate (DiffusionAD eq. 6) of a perfect predictor is
   x0_hat = (x_t - sqrt(1 - abar_t) eps*) / sqrt(abar_t). Asking x0_hat = N and solving for eps*
   gives the line above; substituting x_t, eps* = eps + sqrt(abar_t / (1 - abar_t)) alpha (S - N):
   the ordinary noise plus the anomaly, scaled so that removing the noise also removes the
   anomaly. Normal samples (S = N) get the ordinary target eps. The blend keeps the target
   bounded: sqrt(abar_t / (1 - abar_t)) grows like t^(-1/2) as t -> 0 while alpha = t / T
   shrinks like t, so small steps are asked to remove only faint anomalies. The public code's
   sign of the correction flipped between commits; with it flipped,
   eps = eps - sqrt(abar_t / (1 - abar_t)) alpha (S - N) implies x0 = 2 x_blend - N
   (:func:`flipped_atp_noise_target`, kept to show the bug numerically).

2. **Global adaptivity, a per-sample denoising depth** (:func:`adaptive_denoise`). Noise the
   input x to ``t_start`` with eps0 and run DDIM (eta = 0). At every step t compare the
   trajectory's prediction x0_r = x0_hat(x_t) with the *input's own* prediction at the same
   step, x0_i = x0_hat(sqrt(abar_t) x + sqrt(1 - abar_t) eps0) (the same network output, so both
   carry the same denoising blur and only the repair differs): D = nearest-neighbour patch
   distance (:func:`patch_discrepancy`), score = mean of its top 10. A sample stops at the first
   step where the score passes its threshold (the repair is visible) or t <= ``min_step``
   (:func:`stopping_rule`); never at the first step, where x0_i = x0_r by construction.
   Defective samples tend to stop at large t, normal ones run to ``min_step`` and keep their
   detail. Thresholds are calibrated per step on the normal images
   of the *validation* split (:meth:`GLAD.calibrate`), never on the test split.

3. **SAFF, spatial-adaptive feature fusion** (:func:`saff_mask`, :func:`saff_blend`). At the stop
   step, x0 = m * x0_r + (1 - m) * x0_i with a smooth mask m in [0, 1] from D: upsampled,
   Gaussian-blurred, and ramped between two levels calibrated for that step on normal
   validation images, m = clip((D - mu) / (tau - mu), 0, 1): mu the mean patch discrepancy, tau
   the stop threshold (the level of a normal image's most discrepant patches). Typical normal
   regions keep the input's detail; regions as discrepant as the stop take the reconstruction.

Anomaly map: the same feature discrepancy between the input and the final reconstruction plus
the pixel distance mean_c |x - x_rec|, each divided by its mean over normal validation pixels
(1 before calibration), weighted, summed and Gaussian-smoothed. Image score: the mean of the
``top_k`` largest map values (``top_k = 1`` is the maximum).

``config``       :class:`GLADConfig` and the presets (:func:`glad_config`)
``ops``          the equations: ATP's target, the patch discrepancy, the stop, SAFF
``adaptive``     :func:`adaptive_denoise`, the per-sample stop on :func:`dap.diffusion.denoise_loop`
``calibration``  the checks and thresholds of :meth:`GLAD.calibrate` (validation split only)
``model``        :class:`GLAD`, the module

Differences to the official code (each documented, two of them options):

* Pixel space, dap's denoiser and its encoder features instead of SD latents, a VAE and DINO.
* After its stop the official code replaces the sample's x0 and keeps running DDIM to t = 0;
  dap by default freezes the fused x0 as the reconstruction (``after_stop="freeze"``, which
  also skips the remaining network evaluations); ``after_stop="continue"`` is the official flow.
* The official SAFF mask is sigmoid(D), which lies in [0.5, 0.88] for D in [0, 2], and is used
  only for samples that passed the threshold (at the min step the input's x0 is taken whole);
  dap's mask is normalised by the calibrated threshold and used at every stop.
* Start step, min step and thresholds were tuned per class on the test set in the official
  code; dap fixes the steps in the config (t_start = 400 and min_step = 200, DiffusionAD's t_b
  and t_s, see ``notebooks/03_noise_scales``) and calibrates thresholds on validation only.
"""

from dap.methods.glad.adaptive import AdaptiveOutput, adaptive_denoise
from dap.methods.glad.config import AfterStop, GLADConfig, glad_config
from dap.methods.glad.model import GLAD
from dap.methods.glad.ops import (atp_blend, atp_noise_target, flipped_atp_noise_target,
                                  patch_discrepancy, saff_blend, saff_mask, stopping_rule)

__all__ = [
    "GLAD", "GLADConfig", "glad_config", "AfterStop", "atp_blend", "atp_noise_target",
    "flipped_atp_noise_target", "patch_discrepancy", "stopping_rule", "saff_mask", "saff_blend",
    "adaptive_denoise", "AdaptiveOutput",
]
