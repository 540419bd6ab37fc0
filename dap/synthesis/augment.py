"""The ten appearance augmenters of the DRAEM / DiffusionAD recipe, batched in pure torch.

DRAEM (Zavrtanik et al., ICCV 2021), and DiffusionAD after it (the appearance A of eq. 12),
pass the anomaly source through 3 of these 10 augmenters, chosen per sample without
replacement. The official code uses imgaug on uint8 images; here each augmenter is a torch
function on a batch ``(B, 3, H, W)`` in **[0, 1]** with its own per-sample parameters, so it
runs on any device. Value ranges are imgaug's 0..255 units divided by 255:

=================  =========================================================================
name               operation (parameter range drawn by :func:`random_augment`)
=================  =========================================================================
``gamma``          x ** gamma, gamma ~ U(0.5, 2) per sample and channel (imgaug GammaContrast,
                   ``per_channel=True``)
``brightness``     luma Y (BT.601) -> mul * Y + add, mul ~ U(0.8, 1.2), add ~ U(-30, 30)/255;
                   the luma change is added to R, G and B, which is exactly the YCbCr
                   round trip with Cb, Cr held (imgaug MultiplyAndAddToBrightness)
``sharpen``        PIL's Sharpness: blend of the image with its 3x3 SMOOTH filter
                   ([[1,1,1],[1,5,1],[1,1,1]] / 13, replicate border), factor ~ U(0, 2);
                   0 = smoothed, 1 = unchanged, 2 = sharpened
``hue_saturation`` HSV: hue += dh / 255 of a full turn, saturation += ds / 255, with dh, ds ~
                   U(-50, 50) drawn independently. imgaug's hue unit maps [-255, 255] onto
                   [-360, 360] degrees, so +-50 units = +-70.6 degrees
``solarize``       with p = 0.5 per sample: x -> 1 - x where x >= threshold, threshold ~
                   U(32, 128)/255 (imgaug ``Solarize(0.5, threshold=(32, 128))``)
``posterize``      keep the top ``bits`` bits of the 8-bit value, bits ~ U{1..8} (PIL)
``invert``         1 - x
``autocontrast``   per channel, clip ``cutoff`` of the pixels at each end of the 8-bit
                   histogram and stretch the rest to [0, 1], cutoff ~ U(0, 0.2) (PIL)
``equalize``       per channel, PIL's histogram equalisation of the 8-bit values
``rotate``         rotation by U(-45, 45) degrees about the centre, bilinear, black fill
=================  =========================================================================

Batching: :func:`random_augment` draws, for every sample, which 3 augmenters it gets, then
applies the augmenters **in the fixed order of the table above** (imgaug applied the chosen
three in the drawn order; a fixed order lets each augmenter run once on the sub-batch that
selected it). All per-sample parameters are drawn for the whole batch whether used or not, so
the random stream does not depend on which augmenters were picked. On a GPU each augmenter runs
on its sub-batch; on the CPU each sample goes through its three augmenters on its own, in place
where the augmenter can (``inplace=True``), so an image stays in cache and nothing is gathered
or scattered. Both give the same result.

Taught in ``notebooks/05_anomaly_synthesis``.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from dap.synthesis import _random
from dap.synthesis.geometry import rotate

AUGMENTER_NAMES: tuple[str, ...] = (
    "gamma", "brightness", "sharpen", "hue_saturation", "solarize",
    "posterize", "invert", "autocontrast", "equalize", "rotate",
)

_LUMA = (0.299, 0.587, 0.114)  # BT.601 weights of R, G, B
_LEVEL_VALUES = torch.arange(256, dtype=torch.float32)  # the 8-bit levels 0 .. 255
_CHANNEL_OFFSETS = torch.tensor([5.0, 3.0, 1.0]).reshape(1, 3, 1, 1)  # n of R, G, B (HSV)


def _per_sample(v: Tensor | float, x: Tensor) -> Tensor:
    """A ``(B,)`` or ``(B, C)`` parameter shaped to broadcast over ``(B, C, H, W)``."""
    if not (isinstance(v, Tensor) and v.dtype == x.dtype and v.device == x.device):
        v = torch.as_tensor(v, dtype=x.dtype, device=x.device)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim)) if 0 < v.ndim < x.ndim else v


def _levels(x: Tensor, inplace: bool = False) -> Tensor:
    """8-bit levels round(255 x) as floats, the values imgaug and PIL operate on (``inplace``:
    computed in ``x``)."""
    return (x.clamp_(0.0, 1.0) if inplace else x.clamp(0.0, 1.0)).mul_(255.0).round_()


def _flat_levels(levels: Tensor) -> Tensor:
    """``(B, C, H, W)`` float levels -> int32 indices ``level + 256 * (b * C + c)``, so one
    ``bincount`` / ``index_select`` serves every (sample, channel) at once."""
    b, c = levels.shape[:2]
    return levels.to(torch.int32).add_(_level_offsets(b, c, str(levels.device))).reshape(-1)


@functools.lru_cache(maxsize=64)
def _level_offsets(b: int, c: int, device: str) -> Tensor:
    """``256 * (b * C + c)`` as ``(B, C, 1, 1)`` int32 (see :func:`_flat_levels`)."""
    with torch.inference_mode(False):  # an ordinary tensor, whatever mode fills the cache
        offsets = torch.arange(0, b * c * 256, 256, device=device, dtype=torch.int32)
        return offsets.reshape(b, c, 1, 1)


def _histograms(flat: Tensor, b: int, c: int) -> Tensor:
    """Per-channel 256-bin histograms ``(B, C, 256)`` from :func:`_flat_levels` indices."""
    return torch.bincount(flat, minlength=b * c * 256).reshape(b, c, 256)


# ----------------------------------------------------------------------------------------------
# The ten augmenters (deterministic given their parameters); images (B, 3, H, W) in [0, 1]
# ----------------------------------------------------------------------------------------------
def gamma_contrast(x: Tensor, gamma: Tensor | float, inplace: bool = False) -> Tensor:
    """x ** gamma; ``gamma`` ``(B,)`` or ``(B, C)`` (per channel).

    Computed as 2 ** (gamma log2 x) (0 -> 0, 1 -> 1; within a few float32 ulps of ``pow``),
    which is about twice as fast as ``pow`` on CPUs. ``inplace``: may overwrite ``x`` (as
    every augmenter with this flag; use the returned tensor).
    """
    y = x.clamp_(0.0, 1.0) if inplace else x.clamp(0.0, 1.0)
    return y.log2_().mul_(_per_sample(gamma, x)).exp2_()


def luma(x: Tensor) -> Tensor:
    """BT.601 luma Y = 0.299 R + 0.587 G + 0.114 B, ``(B, 1, H, W)``."""
    return _LUMA[0] * x[:, 0:1] + _LUMA[1] * x[:, 1:2] + _LUMA[2] * x[:, 2:3]


def multiply_add_brightness(x: Tensor, mul: Tensor | float, add: Tensor | float,
                            inplace: bool = False) -> Tensor:
    """Luma Y -> clip(mul * Y + add); chroma (Cb, Cr) kept. ``mul``, ``add`` ``(B,)``.

    Converting back from YCbCr with Cb, Cr unchanged adds the luma change to each of R, G, B,
    so for a grey image this is exactly ``clip(mul * x + add, 0, 1)``.
    """
    y = luma(x)
    # the luma change y_new - y, y_new = clip(mul y + add)
    change = (y * _per_sample(mul, x)).add_(_per_sample(add, x)).clamp_(0.0, 1.0).sub_(y)
    return (x.add_(change) if inplace else x + change).clamp_(0.0, 1.0)


def sharpen(x: Tensor, factor: Tensor | float, inplace: bool = False) -> Tensor:
    """PIL ``ImageEnhance.Sharpness``: smooth + factor (x - smooth), ``factor`` ``(B,)``.

    smooth = PIL's SMOOTH filter [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 = (3x3 box sum + 4 x)
    / 13, with replicated borders.
    """
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    rows = p[..., :-2, :] + p[..., 1:-1, :]
    rows += p[..., 2:, :]
    box = rows[..., :-2] + rows[..., 1:-1]
    box += rows[..., 2:]
    # smooth + f (x - smooth) with smooth = (box + 4 x) / 13, regrouped as a x + c box
    f = _per_sample(factor, x)
    a = f + 4.0 * (1.0 - f) / 13.0
    out = x.mul_(a) if inplace else x * a
    out += box.mul_((1.0 - f) / 13.0)
    return out.clamp_(0.0, 1.0)


def _hsv_planes(x: Tensor, turns: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """RGB ``(B, 3, H, W)`` -> hue, saturation, value, each ``(B, 1, H, W)``.

    Hue in sixths of a turn: (G - B) / d where R is the max, 2 + (B - R) / d where G is,
    4 + (R - G) / d where B is (d = max - min; R wins ties, then G, as in matplotlib; a tie
    gives the same hue either way). Branch-free: the sector is picked by two ``lerp`` with
    0/1 weights, which return one of their ends exactly (``torch.where`` and bool tensors are
    slow on some CPU builds). ``turns=True``: the hue in turns, wrapped to [0, 1);
    ``turns=False``: in sixths, unwrapped, in [-1, 5) (for a caller that wraps it later).
    """
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    v = x.amax(dim=1, keepdim=True)
    delta = v - x.amin(dim=1, keepdim=True)
    s = delta / v.clamp(min=1e-12)
    inv_d = delta.clamp_(min=1e-12).reciprocal_()
    h = (r - g).mul_(inv_d).add_(4.0)                               # B is the max
    t = (b - r).mul_(inv_d).add_(2.0)
    w = torch.sub(v, g).sign_().neg_().add_(1.0)                    # 1[v == c] = 1 - sign(v - c)
    h.lerp_(t, w)                                                   # G is the max
    torch.sub(g, b, out=t).mul_(inv_d)
    torch.sub(v, r, out=w).sign_().neg_().add_(1.0)
    h.lerp_(t, w)                                                   # R is the max (first)
    if turns:
        h.div_(6.0)
        h -= torch.floor(h)  # (G - B) / d in [-1, 0) -> [5, 6) sixths
    return h, s, v


def _rgb_from_hsv(h: Tensor, s: Tensor, v: Tensor, sixths: bool = False,
                  out: Tensor | None = None) -> Tensor:
    """Channel n of RGB is v - v s clip(min(k, 4 - k), 0, 1), k = (n + 6 h) mod 6, with
    n = 5, 3, 1 for R, G, B (h in turns, any real: the mod wraps it; ``sixths=True``: h is in
    sixths of a turn, k = (n + h) mod 6). ``out``: where to write the ``(B, 3, H, W)``."""
    k = (h if sixths else h * 6.0) + _CHANNEL_OFFSETS.to(h.device, h.dtype)
    k.sub_(torch.floor_(k * (1.0 / 6.0)), alpha=6.0)                # k mod 6
    f = torch.rsub(k, 4.0)
    torch.minimum(k, f, out=f).clamp_(0.0, 1.0)
    return torch.sub(v, f.mul_(v * s), out=f if out is None else out)


def rgb_to_hsv(x: Tensor) -> Tensor:
    """RGB in [0, 1] -> HSV ``(B, 3, H, W)``: hue in [0, 1) (turns), saturation, value."""
    return torch.cat(_hsv_planes(x), 1)


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_hsv`."""
    return _rgb_from_hsv(hsv[:, 0:1], hsv[:, 1:2], hsv[:, 2:3])


def hue_saturation(x: Tensor, hue: Tensor | float, saturation: Tensor | float,
                   inplace: bool = False) -> Tensor:
    """Add to hue and saturation in imgaug units (``(B,)`` each, 255 = a full turn / full S)."""
    h, s, v = _hsv_planes(x, turns=False)
    h += _per_sample(hue, x) * (6.0 / 255.0)  # in sixths; wrapped by _rgb_from_hsv
    s = s.add_(_per_sample(saturation, x) / 255.0).clamp_(0.0, 1.0)
    out = x if inplace and x.is_contiguous() else None
    return _rgb_from_hsv(h, s, v, sixths=True, out=out).clamp_(0.0, 1.0)


def solarize(x: Tensor, threshold: Tensor | float, apply: Tensor | bool = True,
             inplace: bool = False) -> Tensor:
    """x -> 1 - x where x >= threshold (``(B,)`` in [0, 1]); samples with ``apply`` False pass.

    Values below the threshold are returned bit for bit.
    """
    # flip = 1[x >= threshold] (sign(x - threshold) + 1, clipped at 1) for the samples that
    # apply it; lerp(x, 1 - x, flip) is x itself wherever flip = 0 and 1 - x where it is 1
    flip = (x - _per_sample(threshold, x)).sign_().add_(1.0).clamp_(max=1.0)
    flip.mul_(_per_sample(apply, x))
    return x.lerp_(1.0 - x, flip) if inplace else torch.lerp(x, 1.0 - x, flip)


def posterize(x: Tensor, bits: Tensor | int, inplace: bool = False) -> Tensor:
    """Keep the top ``bits`` (``(B,)`` in 1..8) of each 8-bit value: at most 2^bits levels."""
    step = 2.0 ** (8.0 - _per_sample(bits, x))
    return _levels(x, inplace).div_(step).floor_().mul_(step / 255.0)


def invert(x: Tensor, inplace: bool = False) -> Tensor:
    """1 - x (in place as -x + 1: the same bits)."""
    return x.neg_().add_(1.0) if inplace else 1.0 - x


def autocontrast(x: Tensor, cutoff: Tensor | float = 0.0, inplace: bool = False) -> Tensor:
    """PIL ``ImageOps.autocontrast`` per channel on 8-bit levels, ``cutoff`` ``(B,)`` in [0, 0.5).

    The darkest and the brightest ``cutoff`` fraction of each channel's pixels are clipped and
    the remaining level range [lo, hi] is stretched to [0, 1]; a channel with hi <= lo is left
    unchanged. With ``cutoff = 0`` every non-constant channel spans exactly [0, 1].
    """
    b, c, h, w = x.shape
    cut = _per_sample(cutoff, x).reshape(-1, 1, 1) * (h * w)
    levels = _levels(x, inplace)
    hist = _histograms(_flat_levels(levels), b, c)
    cum = hist.cumsum(-1)
    # lo = first level whose cumulative count exceeds the cut; hi = last level with more than
    # `cut` pixels at or above it
    lo = (cum <= cut).sum(-1, keepdim=True)
    at_or_above = (h * w) - (cum - hist)
    hi = (at_or_above > cut).sum(-1, keepdim=True) - 1
    ok = hi > lo
    lo = torch.where(ok, lo, torch.zeros_like(lo)).to(x.dtype)  # unchanged channel: lo 0, hi 255
    scale = torch.where(ok, hi - lo, torch.full_like(hi, 255)).to(x.dtype)
    return levels.sub_(lo[..., None]).div_(scale[..., None]).clamp_(0.0, 1.0)


def equalize(x: Tensor, inplace: bool = False) -> Tensor:
    """PIL ``ImageOps.equalize`` per channel on 8-bit levels (the CDF made about uniform).

    lut[l] = floor((n_<l + step / 2) / step) with n_<l the number of pixels below level l and
    step = (N - count of the highest occupied level) / 255; a channel with step 0 (one level)
    is left unchanged.
    """
    b, c, h, w = x.shape
    n = h * w
    flat = _flat_levels(_levels(x, inplace))
    hist = _histograms(flat, b, c)
    cum = hist.cumsum(-1)
    below = (cum - hist).to(x.dtype)
    # N - count of the highest occupied level = the largest cumulative count short of N
    step = torch.where(cum < n, cum, 0).amax(-1, keepdim=True).to(x.dtype) / 255.0
    lut = below.add_(step / 2.0).div_(step.clamp(min=1e-12)).floor_().clamp_(max=255.0)
    lut = torch.where(step > 0, lut, _LEVEL_VALUES.to(lut.device, lut.dtype)).div_(255.0)
    if inplace and x.is_contiguous():  # x holds the levels now: overwrite them
        return torch.index_select(lut.reshape(-1), 0, flat, out=x.view(-1)).view(b, c, h, w)
    return lut.reshape(-1).index_select(0, flat).reshape(b, c, h, w)


# ----------------------------------------------------------------------------------------------
# Parameter draws and the batched "3 of 10"
# ----------------------------------------------------------------------------------------------
class Augmenter(NamedTuple):
    """One augmenter: ``apply(x, *params)`` and ``sample(n, generator, device) -> params``;
    ``identity(*params)``, when given, flags the samples the parameters leave unchanged (they are
    skipped); ``inplace``: ``apply`` takes ``inplace=True`` (it may then overwrite ``x``, so
    a batch of buffers the caller owns is worked on without new allocations)."""

    name: str
    apply: Callable[..., Tensor]
    sample: Callable[[int, torch.Generator | None, torch.device], tuple[Tensor, ...]]
    identity: Callable[..., Tensor] | None = None  # params -> (B,) bool: sample left unchanged
    inplace: bool = True


def _u(lo: float, hi: float, *extra: int):
    return lambda n, g, d: (_random.uniform((n, *extra), lo, hi, g, d),)


AUGMENTERS: dict[str, Augmenter] = {
    a.name: a for a in (
        Augmenter("gamma", gamma_contrast, _u(0.5, 2.0, 3)),
        Augmenter("brightness", multiply_add_brightness,
                  lambda n, g, d: (_random.uniform((n,), 0.8, 1.2, g, d),
                                   _random.uniform((n,), -30 / 255, 30 / 255, g, d))),
        Augmenter("sharpen", sharpen, _u(0.0, 2.0)),
        Augmenter("hue_saturation", hue_saturation,
                  lambda n, g, d: (_random.uniform((n,), -50.0, 50.0, g, d),
                                   _random.uniform((n,), -50.0, 50.0, g, d))),
        Augmenter("solarize", solarize,
                  lambda n, g, d: (_random.uniform((n,), 32 / 255, 128 / 255, g, d),
                                   _random.rand((n,), g, d) < 0.5),
                  lambda threshold, apply: ~apply),
        Augmenter("posterize", posterize, lambda n, g, d: (_random.randint(1, 9, (n,), g, d),)),
        Augmenter("invert", invert, lambda n, g, d: ()),
        Augmenter("autocontrast", autocontrast, _u(0.0, 0.2)),
        Augmenter("equalize", equalize, lambda n, g, d: ()),
        Augmenter("rotate", rotate, _u(-45.0, 45.0), inplace=False),
    )
}


class AugmentParams(NamedTuple):
    """Everything :func:`apply_augment` needs, drawn up front for a batch of ``B`` samples.

    chosen : ``(B, K)`` bool, which of the ``K`` augmenters ``names`` each sample gets.
    params : one tuple of ``(B, ...)`` tensors per augmenter, in the order of ``names``.
    names : the augmenter names, in the (fixed) order they are applied.
    """

    chosen: Tensor
    params: tuple[tuple[Tensor, ...], ...]
    names: tuple[str, ...]

    def select(self, index: Tensor | slice) -> "AugmentParams":
        """The parameters of a subset of the samples (rows ``index``)."""
        return AugmentParams(self.chosen[index],
                             tuple(tuple(t[index] for t in p) for p in self.params), self.names)


def draw_augment_params(n: int, generator: torch.Generator | None = None,
                        device: torch.device | str = "cpu", num: int = 3,
                        names: tuple[str, ...] = AUGMENTER_NAMES) -> AugmentParams:
    """Draw which ``num`` of ``names`` each of ``n`` samples gets, and all their parameters."""
    unknown = [a for a in names if a not in AUGMENTERS]
    if unknown:
        raise ValueError(f"unknown augmenter(s) {unknown}; valid: {list(AUGMENTER_NAMES)}")
    if not 0 <= num <= len(names):
        raise ValueError(f"num={num} must be in [0, {len(names)}]")
    device = torch.device(device)
    # "3 of 10 without replacement": the first `num` entries of a random permutation
    order = _random.permutations(n, len(names), generator, device)
    chosen = torch.zeros(n, len(names), dtype=torch.bool, device=device)
    chosen.scatter_(1, order[:, :num], True)
    params = tuple(AUGMENTERS[a].sample(n, generator, device) for a in names)
    return AugmentParams(chosen, params, tuple(names))


def apply_augment(x: Tensor, params: AugmentParams, inplace: bool = False,
                  start: int = 0) -> Tensor:
    """Apply drawn :class:`AugmentParams` to ``x`` ``(B, 3, H, W)`` in [0, 1] (deterministic).

    Each augmenter runs once, on the sub-batch that selected it, in the order of
    ``params.names``. ``x`` holds the samples ``start .. start + B - 1`` of ``params`` (a chunk
    of a larger batch). With ``inplace=True``, ``x`` may be overwritten (fewer copies); use the
    returned tensor either way.
    """
    out = x if inplace else x.clone()
    b = out.shape[0]
    chosen = params.chosen[start:start + b]
    if out.device.type != "cpu":  # one gather / scatter per augmenter, no host sync
        for j, name in enumerate(params.names):
            idx = chosen[:, j].nonzero().squeeze(1)
            if idx.numel():
                p = (t[start:start + b][idx] for t in params.params[j])
                aug = AUGMENTERS[name]
                kw = {"inplace": True} if aug.inplace else {}  # out[idx] is a copy
                out[idx] = aug.apply(out[idx], *p, **kw)
        return out
    # On the CPU: one sample at a time (an image stays in cache through its three augmenters,
    # and nothing is gathered or scattered), then each result is copied back into its row
    views = [out[i:i + 1] for i in range(b)]
    for view, r in zip(views, augment_samples(views, params, start)):
        if r.data_ptr() != view.data_ptr():  # not done in place
            view.copy_(r)
    return out


def augment_samples(samples: list[Tensor], params: AugmentParams, start: int = 0
                     ) -> list[Tensor]:
    """:func:`apply_augment` on a list of ``(1, 3, H, W)`` samples (CPU): each sample goes
    through its own augmenters in the order of ``params.names``, in place where the augmenter
    can (the samples are overwritten); returns the new list (a sample may come back as the same
    tensor, modified or not, or as a new one)."""
    k = len(samples)
    chosen = params.chosen[start:start + k].tolist()
    augs = [AUGMENTERS[a] for a in params.names]
    per = [[t[start:start + k] for t in p] for p in params.params]
    skip = [a.identity(*per[j]).tolist() if a.identity else None for j, a in enumerate(augs)]
    # the parameters of each sample, as (1, ...) views: per[j][m][i]
    per = [[t.split(1) for t in p] for p in per]
    out = list(samples)
    for i, flags in enumerate(chosen):
        x = out[i]
        for j, aug in enumerate(augs):
            if flags[j] and not (skip[j] is not None and skip[j][i]):
                # e.g. solarize with p = 0.5: a sample its parameters leave unchanged is skipped
                args = [t[i] for t in per[j]]
                x = aug.apply(x, *args, inplace=True) if aug.inplace else aug.apply(x, *args)
        out[i] = x
    return out


def equal_runs(rows: list[int]) -> list[tuple[int, int]]:
    """Sorted row numbers -> ``(lo, hi)`` runs of consecutive rows, e.g. [0, 2, 3] ->
    [(0, 1), (2, 4)]."""
    runs: list[tuple[int, int]] = []
    for i in rows:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


class AugmentOutput(NamedTuple):
    """``image`` ``(B, 3, H, W)`` in [0, 1]; ``chosen`` ``(B, len(names))`` bool."""

    image: Tensor
    chosen: Tensor


def random_augment(x: Tensor, generator: torch.Generator | None = None, num: int = 3,
                   names: tuple[str, ...] = AUGMENTER_NAMES) -> AugmentOutput:
    """Apply ``num`` of the augmenters ``names`` to each sample, chosen without replacement.

    DRAEM (Zavrtanik et al., ICCV 2021) / DiffusionAD eq. 12 appearance recipe, batched: each
    augmenter runs once, on the sub-batch that selected it, in the order of ``names``, with
    per-sample parameters (see the module docstring for the ranges). Equivalent to
    :func:`draw_augment_params` followed by :func:`apply_augment`.

    Parameters
    ----------
    x : Tensor
        ``(B, 3, H, W)`` float in [0, 1].
    generator : torch.Generator, optional
        Source of every draw; the same generator state gives the same output.
    num : int
        Augmenters per sample (3 in the recipe), at most ``len(names)``.

    Returns
    -------
    AugmentOutput
        ``image`` ``(B, 3, H, W)`` in [0, 1] and ``chosen`` ``(B, len(names))`` bool.
    """
    params = draw_augment_params(x.shape[0], generator, x.device, num, names)
    return AugmentOutput(apply_augment(x, params), params.chosen)


__all__ = [
    "AUGMENTER_NAMES", "AUGMENTERS", "Augmenter", "AugmentOutput", "AugmentParams",
    "random_augment", "draw_augment_params", "apply_augment",
    "gamma_contrast", "multiply_add_brightness", "sharpen", "hue_saturation", "solarize",
    "posterize", "invert", "autocontrast", "equalize", "rotate", "luma", "rgb_to_hsv",
    "hsv_to_rgb",
]
