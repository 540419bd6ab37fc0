"""DiffusionAD eq. 12 and the batched :class:`AnomalySynthesizer`.

    S = beta (M * N) + (1 - beta) (M * A) + (1 - M) * N,        beta ~ U[0.2, 0.8)

N is the normal image, M the Perlin mask (:mod:`dap.synthesis.perlin`), A the augmented
appearance source (:mod:`dap.synthesis.sources`, :mod:`dap.synthesis.augment`) and beta the
opacity of the *normal* image inside the mask: beta = 1 leaves N untouched, beta = 0 pastes A.
The recipe is DRAEM's (Zavrtanik et al., ICCV 2021); DiffusionAD adds the foreground mask and
self-augmentation for objects. Each training sample is normal with probability 0.5 (the official
code) or the batch is split exactly (the paper's 8 + 8; ``exact_split=True``).

The official code has no synthesis config (its constants are inline); dap's
:class:`SynthesisConfig` names each one, and the preset ``"glad"`` switches to GLAD's variant
(threshold 0.3, beta ~ U[0, 0.8), 8 x 8 grid shuffle).

Taught in ``notebooks/05_anomaly_synthesis``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from dap.config import ConfigError, data_root, from_dict
from dap.synthesis import _random
from dap.synthesis.augment import (AUGMENTER_NAMES, AugmentParams, augment_samples, equal_runs,
                                   apply_augment, draw_augment_params)
from dap.synthesis.perlin import perlin_masks_for
from dap.synthesis.sources import (CropParams, ShuffleParams, TextureBank, draw_crops,
                                   draw_shuffle, self_shuffle)

# Output kinds (SynthesisOutput.kind)
NORMAL, TEXTURE, SELF_AUG = 0, 1, 2
KIND_NAMES = {NORMAL: "normal", TEXTURE: "texture", SELF_AUG: "self-aug"}


def blend(normal: Tensor, source: Tensor, mask: Tensor, beta: Tensor | float) -> Tensor:
    """DiffusionAD eq. 12: S = beta (M * N) + (1 - beta) (M * A) + (1 - M) * N.

    Parameters
    ----------
    normal : Tensor
        N, ``(B, 3, H, W)`` in [-1, 1].
    source : Tensor
        A, ``(B, 3, H, W)`` in [-1, 1].
    mask : Tensor
        M, ``(B, 1, H, W)`` in {0, 1}.
    beta : Tensor or float
        ``(B,)`` opacity of the normal image inside the mask, in [0, 1].

    Returns
    -------
    Tensor
        S, ``(B, 3, H, W)`` in [-1, 1]; equal to N outside the mask.
    """
    beta = torch.as_tensor(beta, dtype=normal.dtype, device=normal.device)
    if beta.ndim:
        beta = beta.reshape(-1, 1, 1, 1)
    return _blend(normal, source * (1.0 - beta), mask, beta)


def _blend(normal: Tensor, scaled_source: Tensor, mask: Tensor, beta: Tensor,
           out: Tensor | None = None, scratch: Tensor | None = None) -> Tensor:
    """Eq. 12 from ``scaled_source = (1 - beta) A``: S = lerp(N, beta N + (1 - beta) A, M).

    N + M (beta N + (1 - beta) A - N) is eq. 12 regrouped. For a binary M it is eq. 12 bit for
    bit: where M = 0 lerp returns N, where M = 1 it returns beta N + (1 - beta) A, the same two
    rounded products and one rounded sum as the expression (whose other terms are exact zeros).
    Three passes over the image instead of eight. ``scaled_source`` is overwritten (it holds
    beta N + (1 - beta) A); ``scratch`` (optional) holds beta N; ``out`` (default: a new tensor)
    may be a view, e.g. a row of the output batch, which is then written only once.
    """
    t = scaled_source.add_(torch.mul(normal, beta, out=scratch))  # (1 - beta) A + beta N
    return torch.lerp(normal, t, mask.to(normal.dtype), out=out)  # (1 - M) N + M t


@dataclass
class SynthesisConfig:
    """Every constant of the anomaly-synthesis recipe (defaults: DiffusionAD's code, except the
    texture window ``crop_scale`` and ``max_rounds``: see ``preset("diffusionad_official")`` and
    :mod:`dap.methods.diffusionad.official`).

    Build with ``from_dict(SynthesisConfig, {...})`` (unknown keys are rejected) or
    :meth:`preset`.

    perlin_threshold : noise > threshold is anomalous (0.5; GLAD 0.3).
    min_scale_exp, max_scale_exp : lattice of 2^k cells per axis, k in [min, max] (0..5).
    max_degrees : mask rotation U(-max_degrees, max_degrees) (90).
    max_rounds : redraws of an empty mask before the disc fallback (8).
    disc_radius : fallback disc radius as a fraction of min(H, W) (1/16).
    beta_range : beta ~ U[lo, hi) (0.2, 0.8; GLAD 0.0, 0.8).
    normal_prob : probability that a sample stays normal (0.5).
    exact_split : exactly round(B * (1 - normal_prob)) anomalous samples per batch, at random
        positions, instead of independent coins.
    self_aug_prob : for objects (``is_texture=False``), probability of a self-augmented source
        instead of a texture (0.5); textures always use the texture bank.
    num_augmenters, augmenters : how many of which augmenters per source (3 of all 10), applied
        in the order of ``augmenters``.
    shuffle, num_strips : self-augmentation: ``"strips"`` (8 column then 8 row strips) or
        ``"grid"`` (GLAD: 8 x 8 tiles).
    texture_source : ``"skimage"`` (offline, bundled photographs) or ``"folder"`` (DTD).
    texture_root : the folder for ``"folder"``; None = ``$DAP_DATA/dtd/images``.
    max_textures : at most this many folder images are loaded (512).
    crop_scale : texture window side ~ U(crop_scale) of the largest window (0.5, 1.0).
    chunk_size : samples computed at once; None = automatic (whole batch on GPUs, about
        2^18 pixels per chunk on CPUs, where it keeps the working set in cache). Never changes
        the result: every random draw is made for the whole batch first.
    """

    perlin_threshold: float = 0.5
    min_scale_exp: int = 0
    max_scale_exp: int = 5
    max_degrees: float = 90.0
    max_rounds: int = 8
    disc_radius: float = 1.0 / 16.0
    beta_range: tuple[float, float] = (0.2, 0.8)
    normal_prob: float = 0.5
    exact_split: bool = False
    self_aug_prob: float = 0.5
    num_augmenters: int = 3
    augmenters: tuple[str, ...] = AUGMENTER_NAMES
    shuffle: Literal["strips", "grid"] = "strips"
    num_strips: int = 8
    texture_source: Literal["skimage", "folder"] = "skimage"
    texture_root: str | None = None
    max_textures: int = 512
    crop_scale: tuple[float, float] = (0.5, 1.0)
    chunk_size: int | None = None

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"SynthesisConfig: {msg}")

        need(0.0 <= self.min_scale_exp <= self.max_scale_exp <= 10,
             f"need 0 <= min_scale_exp <= max_scale_exp <= 10, got {self.min_scale_exp}, "
             f"{self.max_scale_exp}")
        need(-1.0 < self.perlin_threshold < 1.0, "perlin_threshold must be in (-1, 1)")
        need(0.0 <= self.beta_range[0] <= self.beta_range[1] <= 1.0,
             f"beta_range must satisfy 0 <= lo <= hi <= 1, got {self.beta_range}")
        need(0.0 <= self.normal_prob <= 1.0, "normal_prob must be in [0, 1]")
        need(0.0 <= self.self_aug_prob <= 1.0, "self_aug_prob must be in [0, 1]")
        need(self.max_rounds >= 1, "max_rounds must be >= 1")
        need(0.0 < self.disc_radius <= 0.5, "disc_radius must be in (0, 0.5]")
        bad = [a for a in self.augmenters if a not in AUGMENTER_NAMES]
        need(not bad, f"unknown augmenter(s) {bad}; valid: {list(AUGMENTER_NAMES)}")
        need(0 <= self.num_augmenters <= len(self.augmenters),
             f"num_augmenters must be in [0, {len(self.augmenters)}]")
        need(self.num_strips >= 1, "num_strips must be >= 1")
        need(0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0,
             f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        need(self.max_textures >= 1, "max_textures must be >= 1")
        need(self.chunk_size is None or self.chunk_size >= 1, "chunk_size must be >= 1 or None")

    @classmethod
    def preset(cls, name: str, **overrides) -> "SynthesisConfig":
        """``"diffusionad"`` (the defaults), ``"diffusionad_official"`` (the official code's whole
        texture picture and 50 redraws of an empty mask) or ``"glad"``, with overrides."""
        presets = {
            "diffusionad": {},
            "diffusionad_official": {"crop_scale": (1.0, 1.0), "max_rounds": 50},
            "glad": {"perlin_threshold": 0.3, "beta_range": (0.0, 0.8), "shuffle": "grid"},
        }
        if name not in presets:
            raise ConfigError(f"unknown synthesis preset {name!r}; valid: {sorted(presets)}")
        return from_dict(cls, {**presets[name], **overrides})


@dataclass
class SynthesisOutput:
    """A synthesised batch (all tensors on the images' device).

    image : ``(B, 3, H, W)`` in [-1, 1], S of eq. 12 (= N for normal samples).
    mask : ``(B, 1, H, W)`` in {0, 1}, M (all zero for normal samples).
    label : ``(B,)`` float, 1 = anomalous.
    source : ``(B, 3, H, W)`` in [-1, 1], the augmented appearance A (= N for normal samples);
        None unless the call asked for ``return_source=True``.
    beta : ``(B,)`` the opacity used (1 for normal samples).
    kind : ``(B,)`` int64, 0 normal, 1 texture source, 2 self-augmentation.
    augmenters : ``(B, K)`` bool, which of ``config.augmenters`` each source got.
    """

    image: Tensor
    mask: Tensor
    label: Tensor
    source: Tensor | None
    beta: Tensor
    kind: Tensor
    augmenters: Tensor


class AnomalySynthesizer:
    """Batched DRAEM / DiffusionAD anomaly synthesis (DiffusionAD eq. 12) on any device.

    Parameters
    ----------
    config : SynthesisConfig or mapping, optional
        A mapping goes through :func:`dap.config.from_dict` (unknown keys are errors).
    bank : TextureBank, optional
        The texture sources; by default built on first need from ``config.texture_source``.

    Notes
    -----
    On a CPU a batch is a few thousand small tensor operations (one image at a time, so it
    stays in cache): give it one intra-op thread (``torch.set_num_threads(1)``, e.g. in each
    data-loader worker). With more, every operation pays for waking and joining the other
    threads, which costs more than it saves: ``benchmarks/synthesis.py`` prints both.

    Examples
    --------
    >>> synth = AnomalySynthesizer({"normal_prob": 0.0})
    >>> g = torch.Generator().manual_seed(0)
    >>> out = synth(torch.zeros(2, 3, 64, 64), generator=g)
    >>> out.image.shape, out.label.tolist()
    (torch.Size([2, 3, 64, 64]), [1.0, 1.0])

    Taught in ``notebooks/05_anomaly_synthesis``.
    """

    def __init__(self, config: SynthesisConfig | dict | None = None,
                 bank: TextureBank | None = None):
        if config is None:
            config = SynthesisConfig()
        elif not isinstance(config, SynthesisConfig):
            config = from_dict(SynthesisConfig, config)
        self.config = config
        self._bank = bank

    @property
    def bank(self) -> TextureBank:
        """The texture bank (loaded once, on first use)."""
        if self._bank is None:
            cfg = self.config
            if cfg.texture_source == "folder":
                root = cfg.texture_root or os.path.join(data_root(), "dtd", "images")
                self._bank = TextureBank.from_folder(root, cfg.max_textures)
            else:
                self._bank = TextureBank.from_skimage()
        return self._bank

    def _chunk(self, n: int, h: int, w: int, device: torch.device) -> int:
        if self.config.chunk_size is not None:
            return self.config.chunk_size
        if device.type != "cpu":
            return max(n, 1)
        return max(1, (1 << 18) // (h * w))

    def _chunk_cpu(self, out: SynthesisOutput, images: Tensor, mask: Tensor, beta4: Tensor,
                   crops: CropParams, aug: AugmentParams, shuf: ShuffleParams,
                   rows_l: list[int], own_l: list[bool], sl: slice) -> None:
        """The samples ``sl`` of the anomalous ones, on the CPU, written into ``out``.

        Every row is addressed by a Python int, so rows of a batch are views: no gather or
        scatter (on CPUs, copying a view is several times cheaper than ``index`` or
        ``index_put`` of the same rows). The crops are cut for the chunk at once; then each
        sample goes alone through its augmenters, shuffle and eq. 12 while it is in cache.
        """
        cfg, (h, w) = self.config, images.shape[-2:]
        s, k = sl.start, sl.stop - sl.start
        half = torch.tensor(0.5, dtype=images.dtype)
        minus_one = torch.tensor(-1.0, dtype=images.dtype)
        scratch = torch.empty(1, 3, h, w, dtype=images.dtype)  # beta N of one sample at a time
        one_minus_beta4 = 1.0 - beta4[sl]
        own = [j for j in range(k) if own_l[s + j]]
        tex = [j for j in range(k) if not own_l[s + j]]
        # A before augmentation, in [0, 1]: a bank crop, or the normal image itself
        if not own:
            raw = self.bank.crop(crops.select(sl), (h, w)).to(images.dtype)
        else:
            raw = torch.empty(k, 3, h, w, dtype=images.dtype, device=images.device)
            for j in own:
                # (N + 1) / 2 as 1/2 + N / 2 in one pass (halving is exact: the same bits)
                torch.add(half, images[rows_l[s + j]], alpha=0.5, out=raw[j]).clamp_(0.0, 1.0)
            if tex:
                sub = crops.select(sl).select(torch.tensor(tex, device=images.device))
                _copy_rows(raw, tex, self.bank.crop(sub, (h, w)))
        samples = augment_samples(list(raw.split(1)), aug, s)
        masks, betas, one_minus = mask[sl].split(1), beta4[sl].split(1), one_minus_beta4.split(1)
        for j, a01 in enumerate(samples):
            i, r = s + j, rows_l[s + j]
            if own_l[i]:
                a01 = self_shuffle(a01, shuf.select(slice(i, i + 1)), cfg.shuffle,
                                   cfg.num_strips)
            # A = 2 a - 1 as -1 + 2 a in one pass (doubling is exact: the same bits)
            source = torch.add(minus_one, a01, alpha=2.0)
            if out.source is not None:
                out.source[r:r + 1].copy_(source)
            # eq. 12, straight into the output row (the source is scaled in place)
            _blend(images[r:r + 1], source.mul_(one_minus[j]), masks[j], betas[j],
                   out=out.image[r:r + 1], scratch=scratch)

    @torch.no_grad()
    def __call__(self, images: Tensor, foreground: Tensor | None = None,
                 generator: torch.Generator | None = None,
                 is_texture: bool = True, return_source: bool = False) -> SynthesisOutput:
        """Synthesise anomalies on a batch of normal images.

        Parameters
        ----------
        images : Tensor
            N, ``(B, 3, H, W)`` float in [-1, 1].
        foreground : Tensor, optional
            ``(B, 1, H, W)`` in {0, 1}: where anomalies may go (objects); None = everywhere.
        generator : torch.Generator, optional
            Every random draw comes from it (on the images' device, or the CPU): re-seed it to
            regenerate the same batch exactly.
        is_texture : bool
            Texture category (sources from the bank only) or object (bank or self-augmentation
            with ``self_aug_prob``).
        return_source : bool
            Also return the augmented appearance A (``output.source``), e.g. to check eq. 12
            or to look at it; off by default (one image-sized tensor less per batch).

        Returns
        -------
        SynthesisOutput
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        cfg = self.config
        b, _, h, w = images.shape
        device = images.device
        if foreground is not None and foreground.shape != (b, 1, h, w):
            raise ValueError(f"foreground must be {(b, 1, h, w)}, got {tuple(foreground.shape)}")

        # Which samples become anomalous
        if cfg.exact_split:
            n_anomalous = round(b * (1.0 - cfg.normal_prob))
            order = _random.permutations(1, b, generator, device)[0]
            anomalous = torch.zeros(b, dtype=torch.bool, device=device)
            anomalous[order[:n_anomalous]] = True
        else:
            anomalous = _random.rand((b,), generator, device) >= cfg.normal_prob
        idx = anomalous.nonzero().squeeze(1)
        n = idx.numel()
        cpu = device.type == "cpu"

        # On the CPU every row is addressed by a Python int: rows of a batch are views, and
        # copying a view is several times cheaper than a gather (index) or scatter (index_put).
        # The rows of the anomalous samples are then written once, by the loop below.
        views = cpu and n > 0
        rows_l = idx.tolist() if views else None
        normal_l = sorted(set(range(b)).difference(rows_l)) if views else None
        if views:
            image = torch.empty_like(images)
            _copy_rows(image, normal_l, images, same=True)
            source_out = None
            if return_source:
                source_out = torch.empty_like(images)
                _copy_rows(source_out, normal_l, images, same=True)
            mask_out = torch.empty(b, 1, h, w, device=device)
            for lo, hi in equal_runs(normal_l):
                mask_out[lo:hi].zero_()
        else:
            image, mask_out = images.clone(), torch.zeros(b, 1, h, w, device=device)
            source_out = images.clone() if return_source else None
        out = SynthesisOutput(
            image=image, mask=mask_out, label=anomalous.to(torch.float32), source=source_out,
            beta=torch.ones(b, device=device), kind=torch.zeros(b, dtype=torch.long, device=device),
            augmenters=torch.zeros(b, len(cfg.augmenters), dtype=torch.bool, device=device))
        if n == 0:
            return out
        # The outputs above are ordinary tensors; everything below only writes into them, so
        # it runs in inference mode (no autograd bookkeeping: less overhead per operation)
        with torch.inference_mode():
            self._anomalies(out, images, foreground, generator, is_texture, idx, rows_l)
        return out

    def _anomalies(self, out: SynthesisOutput, images: Tensor, foreground: Tensor | None,
                   generator: torch.Generator | None, is_texture: bool, idx: Tensor,
                   rows_l: list[int] | None) -> None:
        """Draw and write the anomalous samples ``idx`` of ``out`` (rows ``rows_l`` on the
        CPU)."""
        cfg = self.config
        _, _, h, w = images.shape
        device = images.device
        cpu = device.type == "cpu"
        n = idx.numel()
        # M: Perlin masks inside the foreground
        chunk = self._chunk(n, h, w, device)
        mask = perlin_masks_for(n, (h, w), foreground, idx, generator, cfg.perlin_threshold,
                             cfg.min_scale_exp, cfg.max_scale_exp, cfg.max_degrees,
                             cfg.max_rounds, cfg.disc_radius, chunk, device).mask
        # beta ~ U[lo, hi); the source of each sample; crops, augmenters, shuffles (all drawn
        # for every anomalous sample before any arithmetic, so chunking never changes them)
        beta = _random.uniform((n,), cfg.beta_range[0], cfg.beta_range[1], generator, device)
        self_aug = _random.rand((n,), generator, device) < cfg.self_aug_prob
        if is_texture:
            self_aug = torch.zeros_like(self_aug)
        crops = draw_crops(n, generator, device, cfg.crop_scale)
        aug = draw_augment_params(n, generator, device, cfg.num_augmenters, cfg.augmenters)
        shuf = draw_shuffle(n, cfg.num_strips, generator, device, cfg.shuffle)
        beta4 = beta.to(images.dtype).reshape(n, 1, 1, 1)

        own_l = self_aug.tolist() if cpu else None
        for s in range(0, n, chunk):
            sl = slice(s, min(s + chunk, n))
            if cpu:
                self._chunk_cpu(out, images, mask, beta4, crops, aug, shuf, rows_l, own_l, sl)
                continue
            rows = idx[sl]
            # A before augmentation, in [0, 1]: a bank crop, or the normal image itself
            own = self_aug[sl].nonzero().squeeze(1)
            tex = (~self_aug[sl]).nonzero().squeeze(1)
            if own.numel() == 0:
                raw = self.bank.crop(crops.select(sl), (h, w)).to(images.dtype)
            else:
                raw = ((images[rows] + 1.0) * 0.5).clamp_(0.0, 1.0)
                if tex.numel():
                    raw[tex] = self.bank.crop(crops.select(sl).select(tex), (h, w)).to(raw.dtype)
            a01 = apply_augment(raw, aug, inplace=True, start=s)
            if own.numel():
                a01[own] = self_shuffle(a01[own], shuf.select(sl).select(own), cfg.shuffle,
                                        cfg.num_strips)
            source = a01.mul_(2.0).sub_(1.0)
            if out.source is not None:
                out.source[rows] = source
            # eq. 12 (the source is scaled in place: it is not needed afterwards)
            out.image[rows] = _blend(images[rows], source.mul_(1.0 - beta4[sl]), mask[sl],
                                     beta4[sl])

        if cpu:
            _copy_rows(out.mask, rows_l, mask)
        else:
            out.mask[idx] = mask
        out.beta[idx] = beta
        out.kind[idx] = torch.where(self_aug, SELF_AUG, TEXTURE)
        out.augmenters[idx] = aug.chosen


def _copy_rows(dst: Tensor, rows: list[int], src: Tensor, same: bool = False) -> None:
    """``dst[rows] = src`` (``same=True``: ``dst[rows] = src[rows]``) for sorted row numbers,
    one ``copy_`` per run of consecutive rows."""
    pos = 0
    for lo, hi in equal_runs(rows):
        dst[lo:hi].copy_(src[lo:hi] if same else src[pos:pos + hi - lo])
        pos += hi - lo


__all__ = ["blend", "SynthesisConfig", "SynthesisOutput", "AnomalySynthesizer", "NORMAL",
           "TEXTURE", "SELF_AUG", "KIND_NAMES"]
