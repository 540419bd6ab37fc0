"""DDAD's domain adaptation (Sec. 3.4): fine-tune a copy of the feature extractor.

Paper: Mousakhan, Brox, Tayyub, "Anomaly Detection with Conditioned Denoising Diffusion Models"
(DDAD), Sec. 3.4. Taught in ``notebooks/07_conditioned_denoising`` (section 5).

The extractor sees reconstructions, which differ from photographs in small systematic ways: a
domain gap that shows up as feature distance on *normal* images. :func:`adapt` fine-tunes a copy
A of the frozen extractor F so that features of conditioned reconstructions of normal training
images match those of their targets, anchored to F by distillation
(:func:`dap.methods.ddad.ops.adaptation_loss`). The defaults follow the official code's recipe
(``feature_extractor.py``): one half of each batch reconstructed towards the other with
w_DA = 3, three loss terms on layers 1-3 with a globally flattened cosine distance, the copy's
BatchNorm in train mode; each part has an option (:class:`~dap.methods.ddad.DDADConfig`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from dap.config import ConfigError, replace
from dap.features import DenoiserFeatures
from dap.methods.ddad.ops import adaptation_loss, as_model_images, conditioned_reconstruct

if TYPE_CHECKING:
    from dap.methods.ddad.model import DDAD


def set_batchnorm_mode(module: nn.Module, mode: str) -> nn.Module:
    """``module`` in eval mode, except its BatchNorm layers in ``mode`` (``"train"``: batch
    statistics, running statistics updated; ``"eval"``: the stored ones). Dropout stays off."""
    module.eval()
    if mode == "train":
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
                m.train()
    return module


def adaptation_pairs(y: Tensor, pairing: str) -> tuple[Tensor, Tensor]:
    """(images to reconstruct, their targets) of a batch ``y`` ``(B, 3, H, W)``.

    ``"halves"`` (official): the second half is reconstructed towards the first half (B even);
    ``"self"``: every image towards itself.
    """
    if pairing == "self":
        return y, y
    if pairing != "halves" or len(y) % 2:
        raise ConfigError(f"adaptation pairing {pairing!r} needs 'self' or 'halves' with an even "
                          f"batch, got a batch of {len(y)}")
    half = len(y) // 2
    return y[half:], y[:half]


def adapt(method: "DDAD", images: Tensor, steps: int | None = None, seed: int = 0,
          progress: bool = False) -> dict[str, float]:
    """Domain adaptation (DDAD Sec. 3.4): fine-tune ``method``'s extractor copy on normal images.

    The copy A starts from the frozen extractor F; each AdamW step takes a batch of normal
    training images, pairs them (:func:`adaptation_pairs`: sources x, targets y), reconstructs
    x conditioned on y with weight ``da_w`` (no gradient) and minimises

        L = sum_l d(A_l(x0), A_l(y)) + lambda d(A_l(y), F_l(y)) [+ lambda d(A_l(x0), F_l(x0))]

    over ``da_levels`` (:func:`dap.methods.ddad.ops.adaptation_loss`): A learns to see the
    reconstructions' domain as the inputs', without drifting from F. A's BatchNorm runs in
    ``da_batchnorm`` mode. The denoiser and F are not changed.

    Parameters
    ----------
    method : the DDAD model (changed in place: its ``adapted_extractor``, ``adapted`` and
        ``pixel_scale_adapted``, which is reset to "not calibrated")
    images : ``(N, 3, H, W)`` uint8 or float in [-1, 1], *training* images (never test)
    steps : optimiser steps (default ``domain_adaptation_steps``). A model built with
        ``domain_adaptation_steps = 0`` gets its extractor copy here, and its config then
        records ``steps``.
    seed : seed of the batch order and of the reconstruction noise
    progress : show a progress bar

    Returns
    -------
    dict: ``da_steps``, ``da_loss_first``, ``da_loss_last``.
    """
    from dap.progress import progress_bar

    c = method.config
    steps = c.domain_adaptation_steps if steps is None else int(steps)
    if steps < 1:
        raise ConfigError(f"domain adaptation needs steps >= 1, got {steps} (pass steps= or "
                          "build the model with domain_adaptation_steps > 0)")
    batch = min(c.da_batch_size, len(images) - len(images) % 2 if c.da_pairing == "halves"
                else len(images))
    if batch < (2 if c.da_pairing == "halves" else 1):
        raise ConfigError(f"domain adaptation with da_pairing={c.da_pairing!r} needs at least "
                          f"{2 if c.da_pairing == 'halves' else 1} images, got {len(images)}")
    if method.adapted_extractor is None:
        # a model built without adaptation gets its copy now; the config records it, so
        # checkpoints written from here on rebuild the same modules
        method.config = c = replace(c, domain_adaptation_steps=steps)
        method.adapted_extractor = method.new_extractor()
    device = next(method.denoiser.parameters()).device
    ext = method.adapted_extractor
    if isinstance(ext, DenoiserFeatures):
        ext.load_from(method.denoiser)
    else:
        assert method.extractor is not None
        ext.load_state_dict(method.extractor.state_dict())
    ext.to(device).requires_grad_(True)
    params = [p for p in ext.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=c.da_lr)
    gen = torch.Generator().manual_seed(seed)
    n = len(images)
    size = (int(images.shape[-2]), int(images.shape[-1]))
    schedule = method.schedule_on(device)
    losses = []
    order = torch.randperm(n, generator=gen)
    pos = 0
    for step in progress_bar(range(steps), enabled=progress, desc="domain adaptation"):
        if pos + batch > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + batch]
        pos += batch
        source, target = adaptation_pairs(as_model_images(images[idx], device), c.da_pairing)
        with torch.no_grad():
            g = torch.Generator(device).manual_seed(seed * 1_000_003 + step)
            rec = conditioned_reconstruct(
                method.denoiser, schedule, source, target, c.t_start, c.ddim_steps, c.da_w,
                c.eta, generator=g, shared_noise=True, clip_sample=c.clip_sample,
                grid=c.grid).sample
            frozen_target = method.features(target, adapted=False, levels=c.da_levels)
            frozen_rec = method.features(rec, adapted=False, levels=c.da_levels) \
                if c.da_distill_reconstruction else None
        set_batchnorm_mode(ext, c.da_batchnorm)
        with torch.enable_grad():
            a_rec = method.features(rec, adapted=True, levels=c.da_levels)
            a_target = method.features(target, adapted=True, levels=c.da_levels)
            loss = adaptation_loss(a_rec, a_target, frozen_target, frozen_rec, c.da_lambda,
                                   c.da_distance, size, c.feature_pool, c.align_corners)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        losses.append(float(loss.detach()))
    ext.requires_grad_(False).eval()
    method.adapted.fill_(True)
    method.pixel_scale_adapted.fill_(float("nan"))
    return {"da_steps": float(steps), "da_loss_first": losses[0] if losses else math.nan,
            "da_loss_last": losses[-1] if losses else math.nan}


__all__ = ["adapt", "adaptation_pairs", "set_batchnorm_mode"]
