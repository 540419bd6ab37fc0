"""Where dap's DiffusionAD differs from the official code (HuiZhang0812/DiffusionAD, 8a64c03).

Read side by side with the official training script, dataset, loss and evaluation code; the
facts are in the project's reference notes. Rendered into the package docstring
(``help(dap.methods.diffusionad)``) and into ``notebooks/06_train_and_evaluate`` by
:mod:`dap.methods.official`. The networks themselves match exactly (the ``paper`` presets build
the official 131,654,403 + 28,373,569 parameters; with copied weights the outputs agree to 1e-7).
"""

from __future__ import annotations

from dap.methods.official import Difference

DIFFERENCES: tuple[Difference, ...] = (
    Difference(
        "input range",
        "The dataset feeds x / 255 in [0, 1] to both networks; one-step predictions are still "
        "clamped to [-1, 1].",
        "[-1, 1] by default (`input_range='signed'`, the DDPM convention the paper's equations "
        "assume); `input_range='unit'` feeds [0, 1] exactly as the official code. Every public "
        "interface stays in [-1, 1] either way.",
        "In [0, 1] the signal has a quarter of the variance, so t_s = 200 and t_b = 400 are "
        "as noisy as t = 331 and 530 in [-1, 1] (`NoiseSchedule.matching_timestep`). Measured "
        "(results/recipe-study.json): [0, 1] lost 3.5 dB of reconstruction PSNR and doubled "
        "the colour speckle on grey inputs, so [-1, 1] stays the default.",
        "input_range='unit'"),
    Difference(
        "noise loss",
        "Sums the two scales' MSE: L_noise = MSE_s + MSE_b.",
        "The same by default (`noise_loss_reduction='sum'`); `'mean'` averages them as the "
        "paper's equation writes it, (MSE_s + MSE_b) / 2, which halves L_noise relative to "
        "L_mask.",
        "Measured (results/recipe-study.json, grass, 400 steps, one seed): the sum was better "
        "on every validation metric (image AUROC 75.2 vs 62.5) at the same reconstruction PSNR.",
        "noise_loss_reduction='sum'"),
    Difference(
        "texture source window",
        "Resizes the whole DTD image to the input size (non-square images are squashed).",
        "Centre-crops each texture to a square, then cuts a window of side U(0.5, 1.0) of it "
        "(`SynthesisConfig.crop_scale=(0.5, 1.0)`).",
        "More appearance variety from the small offline texture bank; with crop_scale=(1, 1) "
        "the whole (square) picture is used, as the official code except for the squashing. "
        "Measured (results/recipe-study.json, with 50 redraws): mixed — image AUROC and AUPRO "
        "up, pixel AUROC and AP down, the same PSNR — so dap's window stays the default.",
        "synthesis=SynthesisConfig.preset('diffusionad_official')"),
    Difference(
        "empty Perlin masks",
        "Redraws an empty mask up to 50 times.",
        "Redraws up to 8 times (`max_rounds=8`), then places a small disc, so every "
        "anomalous sample has a defect.",
        "Bounded time per batch (all redraws are batched); the disc is needed in either case "
        "for the rare mask that stays empty.",
        "synthesis=SynthesisConfig.preset('diffusionad_official')"),
    Difference(
        "segmenter learning rate",
        "Adam(segmenter, 1e-5) with a cosine schedule, T_max = 10, stepped every iteration "
        "(the rate oscillates with a period of 20 iterations); Adam(denoiser, 1e-4).",
        "One Adam at 1e-4 for both by default; `TrainConfig.lr_segmenter` sets the segmenter's "
        "own rate (constant or the run's schedule). The 20-iteration oscillation is not offered.",
        "The oscillating schedule looks like a misuse of T_max (epochs vs iterations); a constant "
        "rate is what the paper states.",
        "TrainConfig.lr_segmenter=1e-5"),
    Difference(
        "all-anomalous batch",
        "The masked noise loss divided by zero normal samples (NaN); a later patch sets that "
        "batch's noise loss to zero.",
        "Zero by construction (the masked mean divides by max(n, 1)), and differentiable.",
        "The same value as the patched code, without a special case.",
        ""),
    Difference(
        "model selection",
        "Evaluates the test set every 50 epochs and keeps the checkpoint with the best test "
        "metrics.",
        "Selects on a validation split (normal images + synthetic anomalies made once with a "
        "fixed seed), scored with the same rule as the test; the test split is never seen.",
        "Selecting on the test set inflates the reported numbers.",
        ""),
    Difference(
        "foreground masks",
        "Loads precomputed object masks from disk (files that are not distributed).",
        "Computes foreground masks with `dap.data.foreground` (textures: the whole image).",
        "Everything a run needs is made by dap's own code.",
        ""),
    Difference(
        "ground-truth masks",
        "Resized bilinearly and truncated to int: only pixels exactly 1 count (eroded borders).",
        "Nearest-neighbour resizing by default (exactly binary, no erosion); "
        "`mask_resize='bilinear'` thresholds at 0.5.",
        "Erosion removes defect borders from the pixel metrics; the choice is a parameter.",
        ""),
    Difference(
        "evaluation",
        "Runs inference with gradients enabled.",
        "Under `torch.no_grad()` (the same outputs, 8-21 % faster on this CPU).",
        "Speed and memory.",
        ""),
    Difference(
        "seeding",
        "Seeds only Python's `random`.",
        "Every draw of step k comes from a generator seeded by (seed, k): same seed, same losses; "
        "an interrupted run resumes exactly.",
        "Reproducibility.",
        ""),
    Difference(
        "t split, guidance, score",
        "t_s ~ U[0, 300), t_b ~ U[300, 1000) (a config key for 600 is never read); inference "
        "t_s = 200, t_b = 400, w = 1; image score = mean of the top 50 mask pixels.",
        "The same (`tau=300`, `t_s=200`, `t_b=400`, `w=1`, `top_k=50` at 256 px; the small "
        "presets keep the same image fraction of pixels).",
        "Checked: dap matches.",
        ""),
)

__all__ = ["DIFFERENCES"]
