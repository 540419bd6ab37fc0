"""GLAD: global and local adaptive diffusion, taught on dap's pixel-space denoiser.

Paper: Yao et al., "GLAD: Towards Better Reconstruction with Global and Local Adaptive Diffusion
Models for Unsupervised Anomaly Detection" (ECCV 2024). Taught in
``notebooks/08_adaptive_diffusion``.

dap's GLAD is a pixel-space denoiser trained from scratch that compares images through its own
encoder's features, where the paper fine-tunes Stable Diffusion v1-4 in its latent space and
compares DINO features. Neither set of weights is available offline; dap teaches the paper's
three ideas on :class:`~dap.models.denoiser.DenoiserUNet` with that denoiser's encoder features
(:func:`dap.features.denoiser_features` at t = 0) in place of DINO.

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
   shrinks like t, so small steps are asked to remove only faint anomalies. The official code's
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
   (:func:`stopping_rule`). On dap's even grid the first step is t_start itself, where
   x0_i = x0_r by construction, so it is not tested; the official grid
   (``timestep_spacing="leading"``, :func:`leading_timesteps`) starts below t_start and
   ``stop_at_first_step=True`` tests it too. Defective samples are meant to stop at large t,
   normal ones to run to ``min_step`` and keep their detail. Thresholds are calibrated per step
   on the normal images of the *validation* split (:meth:`GLAD.calibrate`), never on the test
   split.

3. **SAFF, spatial-adaptive feature fusion** (:func:`saff_mask`, :func:`saff_blend`). At the stop
   step, x0 = m * x0_r + (1 - m) * x0_i with a smooth mask m in [0, 1] from D: upsampled,
   Gaussian-blurred, and ramped between two levels calibrated for that step on normal
   validation images, m = clip((D - mu) / (tau - mu), 0, 1): mu the mean patch discrepancy, tau
   the stop threshold (the level of a normal image's most discrepant patches). Typical normal
   regions keep the input's detail; regions as discrepant as the stop take the reconstruction.
   The official mask sigmoid(D) is ``saff_mask="sigmoid"`` (:func:`sigmoid_saff_mask`).

Anomaly map: the same feature discrepancy between the input and the final reconstruction plus
the pixel distance mean_c |x - x_rec|, each divided by its mean over normal validation pixels
(1 before calibration), weighted, summed and Gaussian-smoothed. Image score: the mean of the
``top_k`` largest map values (``top_k = 1`` is the maximum). ``glad_config(preset,
map_preset="official")`` sets the official MVTec / MPDD map and SAFF mask
(:func:`official_map_settings`: no pixel term, sigma 6 and truncate 4 and the top 250 at 512 px,
scaled to the image; sigmoid SAFF mask, unblurred).

``config``       :class:`GLADConfig` and the presets (:func:`glad_config`)
``ops``          the equations: ATP's target, the patch discrepancy, the stop, SAFF
``adaptive``     :func:`adaptive_denoise`, the per-sample stop on :func:`dap.diffusion.denoise_loop`
``calibration``  the checks and thresholds of :meth:`GLAD.calibrate` (validation split only)
``model``        :class:`GLAD`, the module
``official``     ``DIFFERENCES``: every difference from the official code, one record each
"""

from dap.methods.glad.adaptive import AdaptiveOutput, adaptive_denoise, leading_timesteps
from dap.methods.glad.config import AfterStop, GLADConfig, glad_config, official_map_settings
from dap.methods.glad.model import GLAD
from dap.methods.glad.official import DIFFERENCES
from dap.methods.glad.ops import (atp_blend, atp_noise_target, flipped_atp_noise_target,
                                  patch_discrepancy, saff_blend, saff_mask, sigmoid_saff_mask,
                                  stopping_rule)
from dap.methods.official import docstring_section

__doc__ = (__doc__ or "") + docstring_section(DIFFERENCES)

__all__ = [
    "GLAD", "GLADConfig", "glad_config", "official_map_settings", "AfterStop", "atp_blend",
    "atp_noise_target", "flipped_atp_noise_target", "patch_discrepancy", "stopping_rule",
    "saff_mask", "sigmoid_saff_mask", "saff_blend", "adaptive_denoise", "leading_timesteps",
    "AdaptiveOutput", "DIFFERENCES",
]
