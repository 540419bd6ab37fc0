"""DDAD's domain adaptation (Sec. 3.4): fine-tune a copy of the feature extractor.

Paper: Mousakhan, Brox, Tayyub, "Anomaly Detection with Conditioned Denoising Diffusion Models"
(DDAD), Sec. 3.4. Taught in ``notebooks/07_conditioned_denoising`` (section 5).

The extractor sees reconstructions, which differ from photographs in small systematic ways: a
domain gap that shows up as feature distance on *normal* images. :func:`adapt` fine-tunes a copy
A of the frozen extractor F so that features of conditioned reconstructions of normal training
images match those of their targets, anchored to F by distillation
(:func:`dap.methods.ddad.ops.adaptation_loss`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from dap.config import ConfigError, replace
from dap.features import DenoiserFeatures
from dap.methods.ddad.ops import adaptation_loss, as_model_images

if TYPE_CHECKING:
    from dap.methods.ddad.model import DDAD


def adapt(method: "DDAD", images: Tensor, steps: int | None = None, seed: int = 0,
          progress: bool = False) -> dict[str, float]:
    """Domain adaptation (DDAD Sec. 3.4): fine-tune ``method``'s extractor copy on normal images.

    The copy starts from the frozen extractor; each AdamW step takes a batch y of normal
    training images, reconstructs it conditioned on itself (no gradient) and minimises

        L = mean f_A(x0, y) + lambda * mean f(A(y), F(y)),

    where f is the map's feature distance, A the copy and F the frozen extractor: the copy
    learns to see the reconstructions' domain as the inputs', without drifting from F.
    BatchNorm statistics stay frozen. The denoiser and F are not changed.

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
    ext.to(device).eval().requires_grad_(True)
    params = [p for p in ext.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=c.da_lr)
    gen = torch.Generator().manual_seed(seed)
    n = len(images)
    size = tuple(images.shape[-2:])
    losses = []
    order = torch.randperm(n, generator=gen)
    pos = 0
    for step in progress_bar(range(steps), enabled=progress, desc="domain adaptation"):
        if pos + c.da_batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + c.da_batch_size]
        pos += c.da_batch_size
        y = as_model_images(images[idx], device)
        with torch.no_grad():
            g = torch.Generator(device).manual_seed(seed * 1_000_003 + step)
            rec = method.reconstruct(y, generator=g).sample
            frozen = method.features(y, adapted=False)
        with torch.enable_grad():
            loss = adaptation_loss(ext(rec), ext(y), frozen, size, c.feature_pool, c.da_lambda)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        losses.append(float(loss.detach()))
    ext.requires_grad_(False).eval()
    method.adapted.fill_(True)
    method.pixel_scale_adapted.fill_(float("nan"))
    return {"da_steps": float(steps), "da_loss_first": losses[0] if losses else math.nan,
            "da_loss_last": losses[-1] if losses else math.nan}


__all__ = ["adapt"]
