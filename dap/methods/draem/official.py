"""Where dap's DRAEM differs from the official code (VitjanZ/DRAEM, commit b5b11e7), one record
each.

Read side by side with the official ``model_unet.py``, ``loss.py``, ``train_DRAEM.py``,
``test_DRAEM.py`` and ``data_loader.py``, and its README's training command (``--lr 0.0001
--bs 8 --epochs 700``). Rendered into the package docstring (``help(dap.methods.draem)``) by
:mod:`dap.methods.official`. Where dap's default is the official behaviour, the record says so.
"""

from __future__ import annotations

from dap.methods.official import Difference

DIFFERENCES: tuple[Difference, ...] = (
    Difference(
        "reconstructive network",
        "`ReconstructiveSubNetwork(base_width=128)`: 5 encoder blocks of 2 x Conv3x3-BN-ReLU "
        "(128/256/512/1024/1024) with max-pools, 4 decoder stages of bilinear x2 "
        "(align_corners) + 3 Conv3x3-BN-ReLU (to 512/256/128/128), a Conv3x3 head to RGB with "
        "no activation; no skip connections.",
        "The same layers at the `paper` preset (`ReconstructiveAE`, 69.0 M parameters, counted "
        "against a closed form of the official layers in the tests). `ci` and `cpu` shrink the "
        "width (16, 32) and `ci` drops one block.",
        "Reproduction at 256 px; the small presets fit 64 / 128 px on a CPU.",
        ""),
    Difference(
        "discriminative network output",
        "`DiscriminativeSubNetwork(in_channels=6, out_channels=2)`: two logits per pixel, a "
        "softmax; the anomaly map is channel 1.",
        "dap's `SegmentationUNet` (the same layers, the network DiffusionAD uses) with one logit "
        "and a sigmoid.",
        "softmax(z0, z1)_1 = sigmoid(z1 - z0): the same family of maps with one output "
        "channel less (577 fewer parameters at base width 64), and the segmenter shared with "
        "DiffusionAD.",
        ""),
    Difference(
        "segmenter input",
        "`torch.cat((gray_rec, aug_gray_batch))`: the reconstruction first, then the input; "
        "the reconstruction is not detached in training (the focal loss trains the "
        "auto-encoder too), not clamped at test.",
        "The same order and gradient flow. (dap's DiffusionAD feeds concat(x, x0_g).)",
        "Reproduction.",
        ""),
    Difference(
        "image range",
        "Images divided by 255: [0, 1] into both networks, targets and SSIM.",
        "The same inside the method; dap's [-1, 1] at every public interface, and the returned "
        "reconstruction is clamped to [-1, 1] (the segmenter sees the unclamped one).",
        "One image convention for the package; the losses keep the official scale.",
        ""),
    Difference(
        "SSIM dynamic range",
        "`loss.py` guesses L from the reconstruction on every call: 255 if its max > 128, "
        "else 1, and L = 2 if its min < -0.5 (an early, unbounded reconstruction switches "
        "C1, C2 by a factor of 4).",
        "L = 1 always (the images are in [0, 1]); the same 11 x 11 Gaussian window "
        "(sigma 1.5), zero padding, K1 = 0.01, K2 = 0.03, the mean over every pixel and channel.",
        "The constants should not depend on how good the reconstruction is.",
        ""),
    Difference(
        "focal loss",
        "`FocalLoss()` on the softmax probabilities: gamma 2, no class weight (alpha=None), "
        "label smoothing 1e-5 (one-hot clamped to [1e-5, 1 - 1e-5], 1e-5 added to p_t "
        "inside the log), mean over pixels.",
        "gamma 2, no class weight, computed from the logit with log-sigmoid (no smoothing, no "
        "clamping).",
        "Numerically exact. The smoothing puts about p_t + 2e-5 inside the log: the two agree "
        "to about 1e-4 (relative) for moderate predictions (tested), the official one caps "
        "-log p_t near 10.8 on confidently wrong pixels.",
        "focal_gamma=2"),
    Difference(
        "loss weights",
        "`loss = l2_loss + ssim_loss + segment_loss` (lambda = 1; l2 = `MSELoss`).",
        "The same (`ssim_weight=1`, `seg_weight=1`).",
        "Reproduction.",
        "ssim_weight=1, seg_weight=1"),
    Difference(
        "initialisation",
        "`weights_init`: conv weights N(0, 0.02), BatchNorm weights N(1, 0.02), BatchNorm "
        "biases 0, on both networks.",
        "The same by default (`init='official'`); `init='pytorch'` keeps PyTorch's defaults.",
        "Reproduction.",
        "init='official'"),
    Difference(
        "optimiser and schedule",
        "Adam, lr 1e-4 for both networks, batch 8, 700 epochs, `MultiStepLR` x 0.2 at 80 % and "
        "90 % of the epochs.",
        "dap's one training loop: Adam with `TrainConfig.lr` / `batch_size` / `steps` "
        "(`--train-set lr=1e-4 batch_size=8`; 700 epochs of a 250-image category are about "
        "21,900 steps); its schedules are constant or cosine with warm-up, there is no "
        "step schedule.",
        "One loop for every method; a step schedule would be an engine option.",
        ""),
    Difference(
        "anomaly synthesis",
        "`data_loader.py`: Perlin masks (scales 2^0..2^5, threshold 0.5, rotation +-90), a "
        "DTD image resized whole, 3 of the same 10 augmenters, beta ~ U[0, 0.8), half of the "
        "samples left normal, an empty mask labelled normal; the normal image itself is rotated "
        "by U(-90, 90) degrees with probability 0.3.",
        "DiffusionAD's synthesis as dap implements it (`dap.synthesis`, the same for both "
        "methods): beta ~ U[0.2, 0.8), a random window of the texture, empty masks redrawn, "
        "no rotation of the normal image.",
        "DRAEM and DiffusionAD see the same anomalies, so a comparison measures the "
        "reconstruction, not the synthesis.",
        "synthesis={'beta_range': [0.0, 0.8]}"),
    Difference(
        "image score",
        "`test_DRAEM.py`: max of `avg_pool2d(mask, 21, stride=1, padding=10)` (zero padding "
        "counted) at 256 px; the pixel map is the mask itself.",
        "The same at `paper`; the window scales with the image side at the small presets "
        "(`score_window` 11 at 128 px, 5 at 64 px).",
        "The same fraction of the image at every preset.",
        "score_window=21"),
    Difference(
        "model selection",
        "The checkpoint after the last epoch is tested.",
        "The best checkpoint on the validation split (normal images + synthetic anomalies), or "
        "the last one with `select_metric='last'`.",
        "dap never selects on the test split and selects the same way for every method.",
        "select_metric='last' (TrainConfig)"),
)

__all__ = ["DIFFERENCES"]
