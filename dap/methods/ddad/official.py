"""Where dap's DDAD differs from the official code (arimousa/DDAD, commit 4323a15), one record each.

Read side by side with the official ``config.yaml``, ``reconstruction.py``, ``anomaly_map.py``,
``ddad.py``, ``feature_extractor.py``, ``loss.py``, ``train.py`` and ``dataset.py``. Rendered into
the package docstring (``help(dap.methods.ddad)``) and into ``notebooks/07_conditioned_denoising``
by :mod:`dap.methods.official`. Where dap's default is the official behaviour, the record says so
and names the option that keeps it.
"""

from __future__ import annotations

from dap.methods.official import Difference

DIFFERENCES: tuple[Difference, ...] = (
    Difference(
        "denoising grid",
        "`reconstruction.py` noises the input to t' = 250 (`test_trajectoy_steps`) and evaluates "
        "the network at `range(0, 250, 25)` reversed: t = 225, 200, ..., 0 (10 evaluations, "
        "`skip` = 25); the first one sees the sample noised to 250, the step from t = 0 goes to "
        "x_0.",
        "The same by default (`grid='official'`, `ddad_timesteps`, run by the one "
        "`denoise_loop`). `grid='dap'` evaluates at 250, 225, ..., 25, each sample at its own "
        "noise level (dap's earlier grid, which it wrongly called the official one).",
        "A reproduction follows the official trajectory; the other grid stays as an option.",
        "grid='official'"),
    Difference(
        "DDIM noise",
        "eta = 1 (`eta`): sigma = eta sqrt((1 - a_t / a_next)(1 - a_next) / (1 - a_t)), fresh "
        "`torch.randn_like` noise for every image and step; x0 estimates are not clamped.",
        "The same sigma and no clamping (`eta=1`, `clip_sample=False`), but each noise tensor is "
        "drawn once per batch and shared by its images, seeded by `inference_seed`.",
        "An image's reconstruction, and so its score, never depends on its batch or position "
        "(tested).",
        ""),
    Difference(
        "pixel-term scale s",
        "`anomaly_map.py`: map = f + v (max f / max p) p with the maxima over the whole test "
        "batch (`test_batch_size` 16 for MVTec): an image's score depends on its companions.",
        "s is one constant estimated on normal training images (`calibrate`, run before every "
        "validation and after training); until then each image's own maxima.",
        "Batch-independent scores.",
        ""),
    Difference(
        "image score",
        "`ddad.py` centre-crops each 256 x 256 map to 224 x 224 (`transforms.CenterCrop(224)`) "
        "and scores its max.",
        "The same by default: the max of the central `score_crop` = 224/256 of each side at any "
        "size (56 of 64 px); `score_crop=1.0` scores the whole map.",
        "A reproduction scores as the official code does; the crop also ignores the border, where "
        "blur padding and upsampled features are least reliable.",
        "score_crop=0.875"),
    Difference(
        "pixel-metric region",
        "The same centre crop is applied to the ground-truth masks and maps before pixel AUROC "
        "and PRO: the outer band (16 px at 256) is never evaluated.",
        "Pixel metrics use the whole map and mask: the method returns the full map and the "
        "method-agnostic evaluation does not crop.",
        "One evaluation for every method; a defect in the border band counts.",
        ""),
    Difference(
        "feature extractor",
        "`config.yaml`: `feature_extractor: wide_resnet101_2` (ImageNet weights fetched by "
        "`torch.hub` at run time; `wide_resnet50_2` and `resnet50` are the other choices); the "
        "map compares layer2 and layer3.",
        "Default: the trained denoiser's own encoder at t = 0 (levels 1, 2). "
        "`extractor='wide_resnet101_2'` (or `'wide_resnet50_2'`) with torchvision's weights "
        "file is the official backbone, layer2 and layer3.",
        "dap runs offline and downloads no weights.",
        "extractor='wide_resnet101_2', extractor_weights=PATH"),
    Difference(
        "feature upsampling",
        "Each level's 1 - cos map is upsampled bilinearly with `align_corners=True`.",
        "The same by default; `align_corners=False` is torch's default (dap's earlier one).",
        "Reproduction.",
        "align_corners=True"),
    Difference(
        "patch pooling",
        "3 x 3 means of `Unfold` patches with zero padding (border patches divided by 9).",
        "`avg_pool2d` without the padded zeros: a border patch is rescaled, and the cosine "
        "ignores scale, so the maps are the same.",
        "Equivalent.",
        ""),
    Difference(
        "noise loss",
        "`loss.py`: the sum of (eps - eps_theta)^2 over C, H, W, averaged over the batch.",
        "The mean over C, H, W (`loss_reduction='mean'`), averaged over the batch; the optimiser "
        "is scaled to match (next record).",
        "Readable loss values, comparable across image sizes and with the other methods; the "
        "minimiser and, with the scaled decay, the Adam steps are the official ones.",
        "loss_reduction='sum'"),
    Difference(
        "weight decay",
        "`train.py`: Adam with coupled weight decay 0.05 (`weight_decay`) and eps 1e-8 on the "
        "summed loss.",
        "The denoiser's parameter group gets decay 0.05 / (3 H W) and eps 1e-8 / (3 H W) with the "
        "mean loss (`loss_scale`; 0.05 and 1e-8 as they are with `'sum'`): Adam then takes the "
        "official steps (tested). Decay 0.05 on the mean loss would be 3 H W times stronger "
        "relative to the gradient (196,608 at 256 px). It replaces `TrainConfig.weight_decay`.",
        "Adam is invariant to the loss scale except through the decay and eps.",
        "weight_decay=0.05"),
    Difference(
        "training schedule",
        "`train.py`: batch 32, lr 3e-4 (`learning_rate`), up to 3000 epochs; the checkpoint "
        "`load_chp` is loaded for testing (README: 500 to 3000 epochs per category).",
        "`TrainConfig`: the profile's batch and steps, lr 1e-4 unless given; the checkpoint is "
        "chosen on the validation split.",
        "No selection on the test set; profiles size training to the hardware.",
        "train_overrides={'lr': 3e-4, 'batch_size': 32}"),
    Difference(
        "per-category settings",
        "The README lists per category w (0 to 11), training epochs and FE epochs (0 to 16); the "
        "code holds out no validation split (`dataset.py` reads train/good and test only).",
        "One setting for every category (w = 2, v = 1).",
        "Nothing is tuned on the test set.",
        ""),
    Difference(
        "adaptation pairs",
        "`feature_extractor.py`: each batch of `DA_batch_size` (16) is split; its second half is "
        "reconstructed towards its first half (`reconstruction(input, target, w_DA)`), so x0 and "
        "its target are different images.",
        "The same by default (`da_pairing='halves'`); `'self'` reconstructs every image towards "
        "itself, as at test time (dap's earlier recipe).",
        "Reproduction.",
        "da_pairing='halves'"),
    Difference(
        "adaptation weight",
        "w_DA = 3 (`w_DA`) for the adaptation's reconstructions.",
        "The same by default (`da_w=3`); dap earlier used the test weight w = 2.",
        "Reproduction.",
        "da_w=3"),
    Difference(
        "adaptation loss terms",
        "`loss_fucntion`: d(A(x0), A(y)) + lambda d(A(y), F(y)) + lambda d(A(x0), F(x0)), "
        "lambda = `DLlambda` (0.1 MVTec), A the adapted and F the frozen extractor.",
        "The same by default (`da_distill_reconstruction=True`); False drops the third term "
        "(dap's earlier loss).",
        "Reproduction.",
        "da_distill_reconstruction=True"),
    Difference(
        "adaptation features",
        "Every level the extractor returns, layer1 to layer3, each compared as one vector per "
        "image: 1 - cos of `x.view(B, -1)`, averaged over the batch, summed over levels.",
        "The same by default (`da_levels=(0, 1, 2)`, `da_distance='global'`); `'map'` uses the "
        "map's pooled per-position distance (dap's earlier loss, on levels 1 and 2).",
        "Reproduction.",
        "da_levels=(0, 1, 2), da_distance='global'"),
    Difference(
        "adaptation BatchNorm",
        "`feature_extractor.train()`: the copy's BatchNorm normalises with batch statistics and "
        "updates its running statistics while adapting; the frozen extractor is in eval mode.",
        "The same by default (`da_batchnorm='train'`, dropout off); `'eval'` keeps the stored "
        "statistics (dap's earlier recipe). The denoiser encoder has no BatchNorm.",
        "Reproduction.",
        "da_batchnorm='train'"),
    Difference(
        "adaptation length",
        "`DA_epochs` (4) epochs over the training set at batch 16 (`drop_last`), AdamW lr 1e-4 "
        "with torch's default decay; the extractor saved after epoch `DA_chp` is used.",
        "`domain_adaptation_steps` AdamW steps (lr `da_lr` 1e-4, the same default decay) at "
        "`da_batch_size`.",
        "Steps fit every dataset size and profile.",
        ""),
    Difference(
        "scoring extractor",
        "`ddad.py` scores with the extractor saved after `DA_chp` adaptation epochs "
        "(`feat{DA_chp}`; `feat0` is the unadapted one, the README's FE epochs per category).",
        "`use_adaptation='auto'` scores with the adapted copy once adaptation has run, else with "
        "the frozen one; the benchmark reports both.",
        "The effect of adaptation is shown, not assumed; no per-category choice.",
        "use_adaptation='require'"),
    Difference(
        "map blur",
        "kornia `gaussian_blur2d`, sigma 4, kernel 2 int(4 sigma + 0.5) + 1 = 33, reflect border.",
        "The same kernel rule and border (`gaussian_blur`, tested against scipy) with sigma "
        "4 x image_size / 256: 4 at 256 px, 1 at 64 px.",
        "The same smoothing relative to the image at every size.",
        "blur_sigma=4"),
    Difference(
        "schedule precision",
        "abar_t is a float32 cumulative product of float32 betas.",
        "Every table is computed in float64 and cast to float32 once.",
        "1 - abar_t loses digits near t = 0 in float32.",
        ""),
)

__all__ = ["DIFFERENCES"]
