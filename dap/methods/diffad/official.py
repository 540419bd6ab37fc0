"""DiffAD in dap vs the official code (Loco-Roco/DiffAD, commit 0c39d44): one record each.

Read side by side with the official repository: ``configs/kl.yaml`` (autoencoder),
``configs/mvtec.yaml`` (latent diffusion model), ``rec_network/`` (Latent Diffusion's code),
``seg_network/train.py`` and ``test.py`` (segmenter), ``scripts/mvtec.py`` (reconstructions) and
the README's commands. The records are rendered into :mod:`dap.methods.diffad`'s docstring and
into ``notebooks/09_latent_diffusion`` (:mod:`dap.methods.official`).
"""

from __future__ import annotations

from dap.methods.official import Difference

DIFFERENCES: tuple[Difference, ...] = (
    # -- the networks --------------------------------------------------------------------------
    Difference(
        "latent denoiser widths",
        "configs/mvtec.yaml: UNetModel with model_channels 256, channel_mult 1, 2, 4, 2 res "
        "blocks, attention_resolutions 4, 2, 1 (down-sampling rates: attention on the 32, 16 "
        "and 8 px feature maps of the 32 x 32 x 4 latent), num_head_channels 32, convolutional "
        "down/up-sampling; in 8 = concat(z_t, c), out 4.",
        "The paper preset is that network: the same parameter shapes (257.7 M parameters; "
        "tests/test_diffad_official.py). The ci and cpu presets are small U-Nets (ci: 1.3 M).",
        "Matches at the paper preset; the small presets fit a CPU.",
        "diffad_config('paper')"),
    Difference(
        "autoencoder",
        "LDM's AutoencoderKL (kl-f8): ch 128, ch_mult 1, 2, 4, 4, 2 res blocks, attention only "
        "in the middle block, 1 x 1 quant_conv and post_quant_conv; trained with dropout 0.5 "
        "(configs/kl.yaml).",
        "The paper preset has the same widths and 92 parameters fewer (no quant_conv and "
        "post_quant_conv; q, k, v fused into one convolution; tests/test_diffad_official.py); "
        "no dropout. "
        "The small presets down-sample 4 x (64 px -> 16 x 16 x 4 latents).",
        "The 1 x 1 convolutions are linear maps the encoder and decoder can absorb; 8 x "
        "down-sampling of a 64 px image leaves 8 x 8 latents, too coarse for small defects.",
        ""),
    Difference(
        "autoencoder loss",
        "LPIPSWithDiscriminator: (L1 + 1.0 LPIPS) / exp(s) + s with a learned scalar s, summed "
        "per image, + 1e-6 KL (summed per image), + a hinge PatchGAN discriminator (weight 0.5, "
        "adaptive) from step 50001; Adam (0.5, 0.9), lr 4.5e-6 scaled by batch 8 x 2 "
        "accumulated batches (LDM's scale_lr).",
        "mean L1 + 1e-6 KL / (3 H W): the official ratio of the two terms when s = 0. No "
        "LPIPS by default, no discriminator, no learned s; one optimiser for the three phases "
        "(dap.engine.train's).",
        "LPIPS needs pretrained weights that cannot be downloaded offline; a perceptual "
        "distance can be registered (DiffAD.set_perceptual).",
        "perceptual_weight=1.0 (with set_perceptual(lpips))"),
    Difference(
        "latent scale",
        "scale_factor 1.0: configs/mvtec.yaml sets neither scale_factor nor scale_by_std, so "
        "the latents are used as the encoder gives them.",
        "Latents are divided by their standard deviation, fitted on the first denoiser batch "
        "(LDM's scale_by_std).",
        "Unit-variance latents match the N(0, I) of z_T whatever the autoencoder learnt.",
        "scale_latents=False"),
    Difference(
        "denoiser target latent",
        "z_0 is a sample of the posterior q(z | x) (get_first_stage_encoding); the condition is "
        "its mean (mode()).",
        "z_0 and the condition are both the posterior mean.",
        "A deterministic target; the condition is the mean in both codes.",
        ""),
    # -- the denoiser and its condition --------------------------------------------------------
    Difference(
        "noise schedule",
        "LDM's 'linear' schedule with linear_start 0.0015, linear_end 0.02, T = 1000: sqrt(beta) "
        "evenly spaced, beta_t = (sqrt(0.0015) + t / 999 (sqrt(0.02) - sqrt(0.0015)))^2 "
        "(diffusers' 'scaled_linear').",
        "DDPM's linear schedule, beta evenly spaced from 1e-4 to 0.02 (dap.config."
        "DiffusionConfig has no sqrt-spaced schedule yet).",
        "Not yet implemented in dap's schedule.",
        ""),
    Difference(
        "prediction target",
        "eps (parameterization 'eps'), MSE.",
        "eps at the paper preset; the ci and cpu presets predict z_0 ('sample'): after their "
        "~1000 CPU steps an eps model sampled from pure noise ignored its condition (notebook "
        "09, exercise 5).",
        "The eps loss barely rewards using the condition at the high-noise steps where only the "
        "condition can tell what z_0 is.",
        "prediction_type='epsilon'"),
    Difference(
        "denoiser training",
        "AdamW, lr 2e-6 scaled by batch 32 (LDM's scale_lr), 4000 epochs (the README's "
        "command), the autoencoder trained before and loaded from a checkpoint.",
        "Adam at the TrainConfig's lr, denoiser_steps of the preset (paper: 40000) right after "
        "the autoencoder phase in one run (DiffAD's phases).",
        "One training loop and one checkpoint for the three networks; exact resume.",
        ""),
    Difference(
        "condition in training",
        "c = E(S).mode() of a DRAEM-synthesised anomalous version S of the image "
        "(cond_stage_key augmented_image; half of the samples left normal); the target stays "
        "the normal latent.",
        "The same (the default); 'input' conditions on the normal latent itself.",
        "Matches.",
        "condition_source='synthetic'"),
    Difference(
        "noisy condition's t",
        "c_noisy = q_sample(c, t_c) with t_c ~ U{0, ..., 999} drawn apart from the denoiser's t "
        "(LatentDiffusion.shared_step).",
        "The same (the default); 'same' uses the denoiser's own t (the equation as printed).",
        "Matches.",
        "condition_timestep='independent'"),
    Difference(
        "sampling condition",
        "seg_network/test.py, train.py and scripts/mvtec.py sample with the clean c; the "
        "alternative, commented out ('# or conditioning=c_noisy'), noises c once to t_c ~ "
        "U{400, ..., 499} and keeps that c_noisy for every DDIM step.",
        "'clean' by default; 'noisy_fixed' is the official alternative (t_c drawn by the seeded "
        "inference generator, or fixed with sample_condition_t); 'noisy_per_step' re-noises c "
        "to each step's t from T - 1 down, a variant of dap's own that the official code does "
        "not have.",
        "Matches by default; the per-step variant is the training distribution of "
        "condition_timestep='same'.",
        "sample_condition='noisy_fixed'"),
    # -- sampling ------------------------------------------------------------------------------
    Difference(
        "DDIM steps",
        "seg_network/test.py samples with S = 10 DDIM steps; the segmenter trains on "
        "reconstructions with S = 50 (seg_network/train.py); scripts/mvtec.py defaults to 50. "
        "The paper states 50.",
        "Paper preset: 50 at test and 50 in training (the paper's number); ci: 10 and 5; cpu: "
        "20 and 10.",
        "The preset follows the paper's text; the small presets save CPU time.",
        "ddim_steps=10, train_ddim_steps=50"),
    Difference(
        "DDIM grid",
        "LDM's uniform grid t = 1 + k (T // S) (901, 801, ..., 1 for S = 10), eta 0; the last "
        "step lands on abar_0 = 1 - beta_0, not on z_0.",
        "S steps evenly from T - 1 (999, 899, ..., 100), eta 0, the last step to z_0; "
        "ddim_grid='ldm' takes the official grid (its last step still ends on z_0).",
        "dap's one DDIM loop (dap.diffusion.denoise_loop) always ends on z_0.",
        "ddim_grid='ldm'"),
    Difference(
        "inference noise and weights",
        "Batch 1, a fresh unseeded z_T per test image; scripts/mvtec.py samples with the EMA "
        "of the denoiser's weights (ema_scope), the segmentation scripts with the raw weights.",
        "One seeded z_T (inference_seed) shared by every image, so a prediction depends neither "
        "on the batch nor on the run; no EMA of the denoiser's weights.",
        "Reproducible, batch-independent scores.",
        ""),
    # -- the segmenter -------------------------------------------------------------------------
    Difference(
        "segmenter input",
        "concat(D(z_r), D(0.5 z_r + 0.5 c), x) (9 channels), decoder outputs not clamped, "
        "images in [0, 1] in BGR order (cv2).",
        "concat(x_r, x_inter, x) with lambda = 0.5, decoder outputs clamped to [-1, 1], RGB in "
        "[-1, 1].",
        "dap's one image convention.",
        ""),
    Difference(
        "segmenter loss and output",
        "DRAEM's DiscriminativeSubNetwork with 2 output channels, softmax, focal loss gamma 2 "
        "(alpha None, smooth 1e-5); conv weights N(0, 0.02).",
        "One logit per pixel, sigmoid, binary focal loss gamma 2 with alpha 0.5 (half the "
        "official two-class value); PyTorch's default initialisation.",
        "One logit carries the same information as two softmax channels.",
        "focal_weight=2.0"),
    Difference(
        "segmenter training",
        "700 epochs at batch 32 (the README's command; Adam lr 1e-3, x 0.2 at 80 % and 90 % of "
        "the epochs); for MVTec bottle's 209 training images about 4,900 steps.",
        "segmenter_steps of the preset (paper: 20000) at the TrainConfig's batch and lr.",
        "Steps, not epochs, so categories of any size train alike.",
        ""),
    Difference(
        "anomaly synthesis",
        "DRAEM's: a DTD texture for every category, 3 of 10 augmenters, Perlin scales 2^0..2^5 "
        "thresholded at 0.5, beta ~ U[0, 0.8), half of the samples left normal; 30 % of the "
        "training images rotated by U(-90, 90) degrees first.",
        "dap.synthesis's DiffusionAD recipe: beta ~ U[0.2, 0.8), bundled textures offline (DTD "
        "with texture_source='folder'), self-augmentation and foreground masks for objects; no "
        "rotation of the training images.",
        "One synthesis for every method in dap, usable offline.",
        ""),
    Difference(
        "image score",
        "max of the softmax anomaly map average-pooled with a 21 x 21 window (stride 1, zero "
        "padding) at 256 px.",
        "The same at 256 px; the window scales with the image size (5 at 64 px).",
        "Matches at 256 px.",
        "score_pool=21"),
    Difference(
        "copy PSNR",
        "Not in the code: the paper reports 36.73 dB (DiffAD) and 38.49 dB (DRAEM) on MVTec AD "
        "without its formula.",
        "dap.copy_metrics reports both readings: PSNR over the defect's pixels and PSNR of the "
        "masked images over the whole image (= the former + 10 log10(1 / mask fraction)); only "
        "the second is on the paper's scale.",
        "The paper's definition is not known; the two differ by about 15 dB at a 3 % mask.",
        ""),
)

__all__ = ["DIFFERENCES"]
