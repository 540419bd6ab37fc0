"""The losses of DiffusionAD: masked noise loss, focal loss, smooth L1 (Sec. III-E).

Paper (Zhang et al., DiffusionAD, Sec. III-E; L_noise is eq. 9 - the official code's comment
names it "formula 9" - and L_mask, L_total follow it)::

    L_noise = (1 - y) (||eps_s - eps_theta(x_ts, t_s)||^2 + ||eps_b - eps_theta(x_tb, t_b)||^2) / 2
    L_mask  = SmoothL1(M, M_hat) + w_focal * Focal(M, M_hat),     w_focal = 5
    L_total = L_noise + L_mask

y = 1 marks a synthetic anomalous sample, M its ground-truth mask, M_hat the segmentation
network's sigmoid output. Taught in ``notebooks/06_train_and_evaluate``.

What the official code computes, and how dap relates to it:

* noise: the paper's squared norm is implemented as a mean over elements (as DDPM's "simple"
  loss is in practice): per-sample MSE (mean over C, H, W) at each scale, the two scales
  SUMMED (not halved), then the mean over the normal samples. An all-anomalous batch gave
  the mean of nothing = NaN, patched later with ``if isnan: loss.fill_(0)``.
  :func:`masked_noise_loss` is the mean over normal samples of one scale's per-sample MSE,
  exactly 0 (and differentiable) without a normal sample; the paper's L_noise is the average
  of two calls (the official value is twice that).
* mask: ``5 * focal + smooth_l1``, both on the sigmoid output, focal with alpha = 0.5 and
  gamma = 4. :func:`focal_loss` and :func:`smooth_l1_loss` accept probabilities (the official
  path) or logits (``from_logits=True``, computed with log-sigmoid: no clamping, no saturation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: Probabilities are clamped to [EPS, 1 - EPS] before their logarithm (the probability path).
EPS = 1e-6


def _bce(pred: Tensor, target: Tensor, from_logits: bool) -> Tensor:
    """Element-wise binary cross-entropy -[y log p + (1 - y) log(1 - p)], float32 or wider."""
    dtype = torch.promote_types(pred.dtype, torch.float32)
    pred, target = pred.to(dtype), target.to(dtype)
    if from_logits:
        # log p = logsigmoid(z), log(1 - p) = logsigmoid(-z): stable for any z
        return -(target * F.logsigmoid(pred) + (1 - target) * F.logsigmoid(-pred))
    p = pred.clamp(EPS, 1 - EPS)
    return -(target * torch.log(p) + (1 - target) * torch.log1p(-p))


def focal_loss(pred: Tensor, target: Tensor, alpha: float = 0.5, gamma: float = 4.0, *,
               from_logits: bool) -> Tensor:
    """Binary focal loss (Lin et al., "Focal Loss for Dense Object Detection", 2017, eq. 5).

    For each pixel with target y in {0, 1} and predicted probability p::

        p_t     = p       if y = 1,  1 - p      if y = 0
        alpha_t = alpha   if y = 1,  1 - alpha  if y = 0
        FL      = -alpha_t (1 - p_t)^gamma log(p_t)

    averaged over all elements. With the defaults (alpha = 0.5, gamma = 4, DiffusionAD's official
    values) it is the official ``BinaryFocalLoss``; with gamma = 0 it is alpha_t times the binary
    cross-entropy (0.5 * BCE at alpha = 0.5).

    Soft targets y in [0, 1] (e.g. bilinearly resized masks) follow the official code's form:
    ``log p_t = -BCE(p, y)``, ``p_t = exp(-BCE)`` and ``alpha_t = alpha y + (1 - alpha)(1 - y)``,
    which reduces to the definition above for y in {0, 1}. (The official code weights every pixel
    by ``alpha``, not ``alpha_t``; the two agree at the default alpha = 0.5.)

    Parameters
    ----------
    pred : Tensor, any shape
        Probabilities M_hat in [0, 1] (``from_logits=False``, the official path; clamped to
        [EPS, 1 - EPS]) or logits (``from_logits=True``; stable for any value).
    target : Tensor, same shape, in [0, 1]
        The ground-truth mask M.
    alpha, gamma : float
        Class weight and focusing parameter.
    from_logits : bool, keyword only, required
        Which of the two ``pred`` is. Required so that a logit is never mistaken for a probability.

    Returns
    -------
    Tensor, scalar float32: the mean focal loss.
    """
    bce = _bce(pred, target, from_logits)
    target = target.to(bce.dtype)
    # p_t = exp(log p_t) = exp(-BCE)
    p_t = torch.exp(-bce)
    # alpha_t = alpha y + (1 - alpha)(1 - y)
    alpha_t = alpha * target + (1 - alpha) * (1 - target)
    # FL = -alpha_t (1 - p_t)^gamma log p_t
    return (alpha_t * (1 - p_t).pow(gamma) * bce).mean()


def smooth_l1_loss(pred: Tensor, target: Tensor, beta: float = 1.0, *,
                   from_logits: bool = False) -> Tensor:
    """Smooth L1 (Huber) loss, mean over all elements (Girshick, "Fast R-CNN", 2015, eq. 3).

    With d = p - y::

        l(d) = 0.5 d^2 / beta     if |d| < beta
               |d| - 0.5 beta     otherwise

    DiffusionAD applies it to the sigmoid mask M_hat and M (Sec. III-E); since both lie in [0, 1]
    and beta = 1, it is 0.5 * MSE there. ``from_logits=True`` applies the sigmoid first.
    """
    if from_logits:
        pred = torch.sigmoid(pred.float())
    dtype = torch.promote_types(pred.dtype, torch.float32)
    return F.smooth_l1_loss(pred.to(dtype), target.to(dtype), beta=beta)


def masked_noise_loss(eps_pred: Tensor, eps_true: Tensor, normal_mask: Tensor) -> Tensor:
    """Noise-prediction MSE averaged over the normal samples only (DiffusionAD Sec. III-E).

    ::

        mse_i  = mean_{c,h,w} (eps_pred_i - eps_true_i)^2        (per sample)
        L      = sum_i n_i mse_i / max(sum_i n_i, 1),   n_i = 1 if sample i is normal

    The two noise scales of the paper's L_noise combine as their average::

        L_noise = (masked_noise_loss(eps_theta(x_ts), eps_s, n)
                   + masked_noise_loss(eps_theta(x_tb), eps_b, n)) / 2

    (equal to one call on both scales concatenated along the batch; the official code sums the
    two scales, i.e. twice this). Anomalous samples (synthetic defects) are excluded because
    their "clean" image is not normal: the denoiser must learn the normal distribution only.

    Parameters
    ----------
    eps_pred, eps_true : Tensor, ``(B, C, H, W)``
        Predicted and true noise.
    normal_mask : Tensor, ``(B,)`` bool, or 0/1 numbers (1 = normal, i.e. 1 - y)
        Which samples are normal. Anything of B elements is accepted (``(B, 1)`` too).

    Returns
    -------
    Tensor, scalar float32. Exactly 0.0 when no sample is normal (the official code's NaN bug),
    still attached to the graph so ``backward()`` gives zero, finite gradients.
    """
    if eps_pred.shape != eps_true.shape:
        raise ValueError(f"eps_pred {tuple(eps_pred.shape)} and eps_true "
                         f"{tuple(eps_true.shape)} differ in shape")
    batch = eps_pred.shape[0]
    normal = normal_mask.reshape(-1).to(eps_pred.device)
    if normal.numel() != batch:
        raise ValueError(f"normal_mask has {normal.numel()} entries for a batch of {batch}")
    normal = normal.bool() if normal.dtype != torch.bool else normal
    dtype = torch.promote_types(eps_pred.dtype, torch.float32)
    # mse_i = mean over (C, H, W) of (eps_pred - eps_true)^2
    per_sample = (eps_pred.to(dtype) - eps_true.to(dtype)).square().reshape(batch, -1).mean(dim=1)
    # where(), not a product: a non-finite prediction on an anomalous sample cannot leak in
    kept = torch.where(normal, per_sample, torch.zeros_like(per_sample))
    return kept.sum() / normal.sum().clamp(min=1).to(dtype)


__all__ = [
    "EPS",
    "focal_loss",
    "smooth_l1_loss",
    "masked_noise_loss",
]
