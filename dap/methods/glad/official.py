"""GLAD: where dap differs from the official code, one record per difference.

The official code is hyao1/GLAD, read at commit 7fef283 (``main.py``, ``pipeline.py``,
``ddim_scheduling.py``, ``utilize/utilize.py``, ``dataset/dataset.py``). The records are rendered
into the package docstring (:mod:`dap.methods.glad`) and into ``notebooks/08_adaptive_diffusion``
by :mod:`dap.methods.official`. Records whose ``dap`` text begins with "The same" were checked
to match.
"""

from __future__ import annotations

from dap.methods.official import Difference

DIFFERENCES: tuple[Difference, ...] = (
    Difference(
        "denoiser and space",
        "Fine-tunes the U-Net of Stable Diffusion v1-4 in its VAE latent space (512 px images, "
        "64 x 64 x 4 latents, ATP blends latents); text prompt \"a photo of sks\" with "
        "classifier-free guidance scale 9 at inference; a fine-tuned VAE for the PCB classes.",
        "A pixel-space noise predictor (DenoiserUNet) trained from scratch, without text or "
        "guidance, at 64, 128 or 256 px; ATP blends pixels.",
        "The Stable Diffusion weights are not available offline and do not fit a CPU course "
        "budget; ATP, the adaptive stop and SAFF do not depend on the latent space.",
    ),
    Difference(
        "features",
        "DINO ViT-B/8 patch tokens of the decoded images: the stop compares the tokens of block "
        "12; the anomaly map sums the nearest-neighbour distances of blocks 3, 6, 9 and 12 "
        "(DINO fine-tuned for VisA and PCBBank).",
        "The denoiser's own encoder levels at t = 0 (feature_levels), each L2-normalised and "
        "joined into one vector per patch; one nearest-neighbour distance of that vector "
        "serves both the stop and the map.",
        "No DINO weights offline; the encoder of the model being trained is the feature "
        "extractor available without downloads.",
    ),
    Difference(
        "beta schedule",
        "Stable Diffusion's scaled_linear betas: sqrt(beta_t) evenly spaced from "
        "sqrt(0.00085) to sqrt(0.012), T = 1000.",
        "DDPM's linear betas 1e-4 -> 0.02, T = 1000 (DiffusionAD's schedule).",
        "dap's denoiser lives in pixel space and shares its schedule with the other methods "
        "(notebook 08 borrows DiffusionAD's denoiser); its start and min steps were measured "
        "on this schedule (notebook 03). The same t is a different noise level on the two "
        "schedules (notebook 08 plots both).",
    ),
    Difference(
        "DDIM grid",
        "diffusers' DDIMScheduler with \"leading\" spacing and steps_offset 1 after "
        "num_train_timesteps is overwritten with the start step: 25 steps on MVTec and MPDD "
        "(721, 691, ..., 1 for a start of 750), 15 on VisA. The input is noised to the start "
        "step (750), but the first step is evaluated below it (721).",
        "10 steps evenly spaced from the start (400, 360, ..., 40); the input is noised to "
        "the first step.",
        "The even grid is dap's one DDIM grid (dap.diffusion.ddim_timesteps); on it the first "
        "step's noise level is the input's.",
        "timestep_spacing=\"leading\"",
    ),
    Difference(
        "start and min step",
        "Set per class in main.py: start 750 on MVTec (capsule 600, transistor 850), 450-500 on "
        "MPDD, 450 on VisA; min step 350 on MVTec and MPDD (bracket_white 200), 200 on VisA.",
        "t_start = 400 and min_step = 200 for every class (DiffusionAD's t_b and t_s, "
        "notebook 03). Both are config fields; the official numbers on dap's linear schedule "
        "are the official step numbers, not its noise levels.",
        "The official values belong to the scaled_linear schedule and SD latents; dap tunes "
        "nothing per class on the test split.",
    ),
    Difference(
        "stop thresholds",
        "One threshold per class (0.32-0.5 on MVTec), typed into main.py beside the per-class "
        "checkpoint step; the code reads no validation split.",
        "A threshold per step, lambda rho_k, from the normal images of the validation split "
        "(GLAD.calibrate): rho_k their median score, lambda such that 95 % of them never stop "
        "early.",
        "Hyperparameters must not come from the test split; per step, because a normal "
        "image's discrepancy changes with t.",
    ),
    Difference(
        "stop test at the first step",
        "Tests the stop at every step, the first included; x0_i and x0_r differ there (input "
        "noised to 750, first step 721), so a sample can stop at the first step.",
        "The first step is not tested by default: on the even grid the input is noised to the "
        "first step, where x0_i = x0_r by construction.",
        "No test where the two predictions are equal by construction.",
        "stop_at_first_step=True (with timestep_spacing=\"leading\")",
    ),
    Difference(
        "min-step rule",
        "Stops when t < min_step.",
        "Stops when t <= min_step (min_step is the last step a sample may run).",
        "On every official grid (MVTec, MPDD, VisA) both rules stop at the same step; dap's "
        "even grid contains min_step = 200 itself.",
    ),
    Difference(
        "after the stop",
        "The fused x0 enters that one DDIM update and DDIM goes on to t = 1 for every sample "
        "(the trajectory's own x0 from then on); the last update goes to abar_0 "
        "(set_alpha_to_one false), not to abar = 1.",
        "The fused x0 is the reconstruction (after_stop=\"freeze\"; the sample leaves the "
        "network).",
        "Freezing keeps SAFF's fusion as the output and saves the remaining network "
        "evaluations; continuing lets later steps redraw the regions SAFF kept.",
        "after_stop=\"continue\" (its last update goes to abar = 1)",
    ),
    Difference(
        "SAFF mask",
        "m = sigmoid(D) on the DINO patch grid (the latent grid), neither upsampled nor "
        "blurred, so m lies in [0.5, 0.88] for D in [0, 2]; used only when the score passed the "
        "threshold; a sample stopped by the min step takes x0_i whole.",
        "m = clip((D - mu_k) / (threshold_k - mu_k), 0, 1) with levels calibrated on normal "
        "validation images, D upsampled and blurred (smoothing_sigma, truncate 3), at every "
        "stop.",
        "sigmoid(D) never falls below 0.5: every pixel takes at least half of the "
        "reconstruction. The calibrated ramp lets typical normal regions keep the input's x0 "
        "whole.",
        "saff_mask=\"sigmoid\", saff_blur=False",
    ),
    Difference(
        "x0 clamp",
        "No clamp of x0 (latents); DDIM along the network's raw eps.",
        "x0 clamped to [-1, 1] (clip_sample=True); DDIM along the raw eps as well.",
        "Pixel images live in [-1, 1]; the clamp removes out-of-range estimates at large t.",
        "clip_sample=False",
    ),
    Difference(
        "anomaly-map terms",
        "MVTec and MPDD: v = 0, no pixel term: the summed DINO distances, upsampled to 512 px.",
        "The feature distance plus the pixel distance mean_c |x - x_rec|, each divided by its "
        "mean over normal validation pixels.",
        "dap's stand-in features come from a small denoiser, so the pixel term stays as a "
        "second cue (DDAD's form).",
        "pixel_weight=0 (map_preset=\"official\")",
    ),
    Difference(
        "pixel-term scale (VisA)",
        "VisA: v = 1-7, the pixel term scaled by max(feature map) / max(pixel map) over the "
        "whole test batch (32 images), so a score depends on the other images in the batch.",
        "Each term divided by a mean fixed at calibration; a score does not depend on the batch.",
        "Scores must not depend on the test batch.",
    ),
    Difference(
        "map smoothing",
        "Gaussian sigma 6 with truncate 4 (kernel 49) on the 512 px map.",
        "Gaussian sigma 4 at 256 px (scaled with the image side) with truncate 3; the SAFF mask "
        "with the same blur.",
        "dap's choice; the official setting is an option.",
        "smoothing_sigma=6*size/512, smoothing_truncate=4 (map_preset=\"official\")",
    ),
    Difference(
        "object mask",
        "The map is multiplied by an object mask: an Otsu foreground (dilated and blurred, "
        "sigma 6) for screw, capsule and the MPDD brackets; all ones for every other class, "
        "textures included.",
        "No object mask.",
        "predict(images) receives no foreground, and the built-in textures would get all ones.",
    ),
    Difference(
        "reverse direction",
        "For transistor, pcb1 and pcb4 the map adds the reverse nearest-neighbour direction "
        "(reconstruction patches against the input).",
        "Input patches against the reconstruction only, for every class.",
        "One rule for every class.",
    ),
    Difference(
        "image score",
        "Mean of the top 250 values of the 512 x 512 map.",
        "Mean of the top_k values, 50 at 256 px (scaled with the image area).",
        "dap's choice; the official count is an option.",
        "top_k=round(250*(size/512)**2) (map_preset=\"official\")",
    ),
    Difference(
        "ATP target sign",
        "At 7fef283 main.py's target is eps - sqrt(abar_t / (1 - abar_t)) (x_blend - N), whose "
        "implied x0 is 2 x_blend - N. The sign flipped between commits: correct at 79c08c5 and "
        "221f31e, flipped at 9d6326f and from 6dc6f8c on (main.py's history).",
        "The derived target eps* = (x_t - sqrt(abar_t) N) / sqrt(1 - abar_t), implied x0 = N "
        "(tested in float64).",
        "The flipped target teaches the network to double the anomaly (notebook 08 shows it); "
        "flipped_atp_noise_target exists only to show that.",
    ),
    Difference(
        "checkpoint selection",
        "The checkpoint step per class (500-7000) is typed into main.py; no validation split.",
        "The checkpoint is selected on the synthetic validation split.",
        "Hyperparameters must not come from the test split.",
    ),
    Difference(
        "stop score and direction",
        "Score = mean of the 10 largest patch distances; each input-x0 patch against its "
        "nearest reconstruction-x0 patch; x0_i from the input noised with the same eps0 as x_t "
        "and the same network eps.",
        "The same (discrepancy_top_k = 10, patch_discrepancy(query = x0_i), the same eps0).",
        "Checked: no difference.",
    ),
)

__all__ = ["DIFFERENCES"]
