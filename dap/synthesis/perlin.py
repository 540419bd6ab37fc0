"""Batched Perlin-noise anomaly masks M (DiffusionAD eq. 12; the DRAEM recipe).

DRAEM (Zavrtanik et al., ICCV 2021) and DiffusionAD draw the anomaly shape as thresholded 2-D
Perlin noise: a lattice of ``2^k_h x 2^k_w`` cells with ``k_h, k_w`` drawn independently from
{0, ..., 5}, random unit gradients at the lattice points, the noise rotated by U(-90, 90) degrees,
thresholded at 0.5 (GLAD uses 0.3) and multiplied by the object's foreground mask; a sample whose
mask comes out empty is drawn again.

Gradient noise, made batched. At pixel p with lattice cell (i, j) and offsets (f_r, f_c) in
[0, 1) inside the cell, Perlin noise is

    n(p) = sum_{a, b in {0, 1}} w_a(f_r) w_b(f_c) g_{i+a, j+b} . (f_r - a, f_c - b),

with w_1(f) = fade(f) = 6 f^5 - 15 f^4 + 10 f^3 and w_0 = 1 - w_1. Every term is a row factor
times a lattice value times a column factor, so the whole image is two small matrix products,

    N = P_off G_r V_val^T + P_val G_c V_off^T = [P_off, P_val] [G_r V_val^T; G_c V_off^T],

where ``G_r, G_c`` are the ``(L, L)`` gradient components and ``P_*`` (``H x L``) and ``V_*``
(``W x L``) hold the interpolation weights (two non-zeros per row). On a GPU every sample's
lattice is padded to ``L = 2^5 + 1`` so that all share one batched ``matmul`` (the unused
lattice lines simply get zero weight). On the CPU each sample is three small matrix products
over only the ``res + 1`` lattice lines it uses, with the weight matrices of each resolution
built once and cached. No per-pixel gathers, no grouping by scale.

Taught in ``notebooks/05_anomaly_synthesis``.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
from torch import Tensor

from dap.synthesis import _random
from dap.synthesis.geometry import rotate_window


def fade(t: Tensor) -> Tensor:
    """Perlin's quintic fade 6t^5 - 15t^4 + 10t^3 (first and second derivatives 0 at 0 and 1)."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def _axis_weights(length: int, res: Tensor, lattice: int, first: str = "offset",
                  reverse: bool = False) -> Tensor:
    """Interpolation weights along one axis for a batch of lattice resolutions.

    Returns ``(n, length, 2 L)``: at pixel ``x``, the fade weight of lattice line ``i``
    ("value") and the same weight times the signed distance from ``x`` to line ``i`` in cell
    units ("offset"), side by side: ``first`` (``"offset"`` or ``"value"``) of line ``i`` in
    column ``i`` (``L - 1 - i`` with ``reverse``), the other in column ``L + i``.
    """
    pos = torch.arange(length, device=res.device, dtype=torch.float32)
    # u = x * res / length: the position in lattice units; cell i = floor(u), offset f = u - i
    u = pos[None, :] * res[:, None].to(torch.float32) / length
    cell = u.floor().clamp_(max=res[:, None].to(torch.float32) - 1).long()
    f = u - cell
    w1 = fade(f)
    w0 = 1.0 - w1
    out = torch.zeros(res.shape[0], length, 2 * lattice, device=res.device)
    lo, hi = cell.unsqueeze(-1), (cell + 1).unsqueeze(-1)

    def first_at(i: Tensor) -> Tensor:
        return lattice - 1 - i if reverse else i

    def second_at(i: Tensor) -> Tensor:
        return lattice + i

    value_at, offset_at = (first_at, second_at) if first == "value" else (second_at, first_at)
    out.scatter_(2, value_at(lo), w0.unsqueeze(-1)).scatter_(2, value_at(hi), w1.unsqueeze(-1))
    out.scatter_(2, offset_at(lo), (w0 * f).unsqueeze(-1))
    out.scatter_(2, offset_at(hi), (w1 * (f - 1.0)).unsqueeze(-1))
    return out


@functools.lru_cache(maxsize=512)
def _axis_table(length: int, res: int, lattice: int, first: str, reverse: bool) -> Tensor:
    """:func:`_axis_weights` of one resolution, ``(length, 2 L)`` on the CPU, built once."""
    with torch.inference_mode(False):  # an ordinary tensor, whatever mode fills the cache
        return _axis_weights(length, torch.tensor([res]), lattice, first, reverse)[0]


def _perlin_factors(size: tuple[int, int], res: Tensor, angles: Tensor) -> tuple[Tensor, Tensor]:
    """The two factors of N = P_off G_r V_val^T + P_val G_c V_off^T = A B, for all samples.

    ``A = [P_off G_r, P_val G_c]`` ``(B, H, 2L)`` and ``B = [V_val^T; V_off^T]`` ``(B, 2L, W)``
    over the whole padded lattice, with ``G_r = sqrt(2) cos(angles)``,
    ``G_c = sqrt(2) sin(angles)`` (the batched path, for GPUs).
    """
    h, w = size
    lattice = angles.shape[-1]
    if int(res.max()) + 1 > lattice:
        raise ValueError(f"a lattice of {lattice} points cannot hold res up to {int(res.max())}")
    res = res.to(angles.device)
    rows = _axis_weights(h, res[:, 0], lattice, "offset")   # [P_off, P_val]
    cols = _axis_weights(w, res[:, 1], lattice, "value")    # [V_val, V_off]
    # g = (cos, sin): the row and column components of the unit gradients (sqrt(2) folded in)
    g_r = torch.cos(angles).mul_(math.sqrt(2.0))
    g_c = torch.sin(angles).mul_(math.sqrt(2.0))
    a = torch.cat([torch.bmm(rows[:, :, :lattice], g_r), torch.bmm(rows[:, :, lattice:], g_c)], 2)
    return a, cols.transpose(1, 2)


def _perlin_product(factors: tuple[Tensor, Tensor], rows: slice = slice(None)) -> Tensor:
    """``(b, 1, H, W)`` noise of the samples ``rows`` from :func:`_perlin_factors` (one batched
    product over the whole padded lattice: the GPU path)."""
    a, b = factors
    return torch.bmm(a[rows], b[rows]).unsqueeze(1)


def _perlin_noise_cpu(size: tuple[int, int], res: list[list[int]], g_r: Tensor, g_c: Tensor,
                      rows: slice = slice(None)) -> Tensor:
    """``(b, 1, H, W)`` noise of the samples ``rows``, one sample at a time (CPU).

    The same N = P_off G_r V_val^T + P_val G_c V_off^T, contracted over only the lattice lines
    each sample uses (``k_h = res_h + 1`` rows, ``k_w = res_w + 1`` columns):
    N = [P_off, P_val] [G_r V_val^T; G_c V_off^T], three small matrix products. The weight
    matrices P, V of each resolution are built once and cached, the first block of P with its
    lattice rows reversed (and so are those of ``g_r``, ``sqrt(2) cos`` of the gradient
    angles; ``g_c`` is ``sqrt(2) sin``), so the ``2 k_h`` entries used are contiguous.
    """
    h, w = size
    lattice = g_r.shape[-1]
    idx = range(len(res))[rows]
    out = torch.empty(len(idx), 1, h, w, dtype=g_r.dtype)
    for j, i in enumerate(idx):
        kh, kw = res[i][0] + 1, res[i][1] + 1
        p = _axis_table(h, res[i][0], lattice, "offset", True)   # [P_off rev., P_val]
        v = _axis_table(w, res[i][1], lattice, "value", False)   # [V_val, V_off]
        right = torch.empty(2 * kh, w, dtype=g_r.dtype)
        torch.mm(g_r[i, lattice - kh:, :kw], v[:, :kw].t(), out=right[:kh])  # rev. G_r V_val^T
        torch.mm(g_c[i, :kh, :kw], v[:, lattice:lattice + kw].t(), out=right[kh:])
        torch.mm(p[:, lattice - kh:lattice + kh], right, out=out[j, 0])
    return out


def _noise(size: tuple[int, int], res: Tensor, angles: Tensor):
    """A function ``rows -> (b, 1, H, W)`` noise of those samples (the per-round setup done
    once: per-sample products on the CPU, batched factors elsewhere)."""
    if angles.device.type != "cpu":
        factors = _perlin_factors(size, res, angles)
        return lambda rows=slice(None): _perlin_product(factors, rows)
    lattice = angles.shape[-1]
    if int(res.max()) + 1 > lattice:
        raise ValueError(f"a lattice of {lattice} points cannot hold res up to {int(res.max())}")
    g_r = torch.cos(angles).mul_(math.sqrt(2.0)).flip(1)  # lattice rows reversed, as in P
    g_c = torch.sin(angles).mul_(math.sqrt(2.0))
    res_l = res.tolist()
    return lambda rows=slice(None): _perlin_noise_cpu(size, res_l, g_r, g_c, rows)


def perlin_noise(size: tuple[int, int], res: Tensor, angles: Tensor) -> Tensor:
    """Deterministic 2-D gradient (Perlin) noise for a batch of lattices.

    Parameters
    ----------
    size : tuple of int
        Output ``(H, W)``; any size (the lattice need not divide it).
    res : Tensor
        ``(B, 2)`` int, lattice cells per axis (rows, columns), e.g. ``2^k``.
    angles : Tensor
        ``(B, L, L)`` gradient directions in radians with ``L >= max(res) + 1``; only the
        top-left ``(res_h + 1) x (res_w + 1)`` corner of each sample is used.

    Returns
    -------
    Tensor
        ``(B, 1, H, W)`` float32 in about [-1, 1] (the sum is scaled by sqrt(2), the bound of
        2-D Perlin noise being sqrt(1/2)); zero on every lattice point.
    """
    # n = sum_ab w_a(f_r) w_b(f_c) [g_r (f_r - a) + g_c (f_c - b)]  as matrix products
    return _noise(size, res, angles)()


def draw_scales(n: int, generator: torch.Generator | None, device: torch.device | str,
                min_scale_exp: int = 0, max_scale_exp: int = 5) -> Tensor:
    """``(n, 2)`` lattice resolutions ``2^k`` with ``k`` drawn per sample and per axis."""
    k = _random.randint(min_scale_exp, max_scale_exp + 1, (n, 2), generator, device)
    return 2 ** k


def draw_gradients(n: int, lattice: int, generator: torch.Generator | None,
                   device: torch.device | str) -> Tensor:
    """``(n, lattice, lattice)`` random gradient directions, U[0, 2 pi) radians."""
    return _random.uniform((n, lattice, lattice), 0.0, 2.0 * math.pi, generator, device)


def rand_perlin_noise(n: int, size: tuple[int, int], generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu", res: Tensor | None = None,
                      min_scale_exp: int = 0, max_scale_exp: int = 5) -> tuple[Tensor, Tensor]:
    """Random Perlin noise: ``(noise (n, 1, H, W), res (n, 2))``; ``res`` drawn unless given.

    ``res`` may be one ``(2,)`` pair for all samples, e.g. ``torch.tensor([4, 16])``.
    """
    if res is None:
        res = draw_scales(n, generator, device, min_scale_exp, max_scale_exp)
    res = torch.as_tensor(res, device=device).reshape(-1, 2).expand(n, 2)
    angles = draw_gradients(n, int(res.max()) + 1, generator, device)
    return perlin_noise(size, res, angles), res


class PerlinMasks(NamedTuple):
    """What :func:`perlin_masks` returns.

    mask : ``(B, 1, H, W)`` float in {0, 1}, inside the foreground, never empty.
    res : ``(B, 2)`` int64 lattice cells per axis of the draw that was kept.
    angle : ``(B,)`` rotation in degrees of the draw that was kept.
    rounds : ``(B,)`` int64 number of draws used (``max_rounds + 1`` = fell back to a disc).
    """

    mask: Tensor
    res: Tensor
    angle: Tensor
    rounds: Tensor


def _box(f: Tensor) -> tuple[slice, slice]:
    """The rows and columns spanned by the non-zero pixels of ``f`` ``(b, 1, H, W)``, all
    samples together (``f`` is never all zero)."""
    ys = f.amax(dim=(0, 1, 3)).nonzero().squeeze(1)
    xs = f.amax(dim=(0, 1, 2)).nonzero().squeeze(1)
    (y0, y1), (x0, x1) = ys[[0, -1]].tolist(), xs[[0, -1]].tolist()
    return slice(y0, y1 + 1), slice(x0, x1 + 1)


def _fallback_disc(foreground: Tensor, generator: torch.Generator | None,
                   radius_fraction: float) -> Tensor:
    """A disc centred on a random foreground pixel, cut to the foreground: ``(n, 1, H, W)``."""
    n, _, h, w = foreground.shape
    flat = foreground.reshape(n, -1)
    cum = flat.cumsum(1)
    # the first pixel whose cumulative foreground count exceeds u * total is a foreground pixel
    target = _random.rand((n, 1), generator, foreground.device) * cum[:, -1:]
    idx = torch.searchsorted(cum, target, right=True).clamp_(max=h * w - 1).squeeze(1)
    cy, cx = (idx // w).float(), (idx % w).float()
    r = max(1.5, radius_fraction * min(h, w))
    yy = torch.arange(h, device=foreground.device, dtype=torch.float32)
    xx = torch.arange(w, device=foreground.device, dtype=torch.float32)
    d2 = (yy[None, :, None] - cy[:, None, None]) ** 2 + (xx[None, None, :] - cx[:, None, None]) ** 2
    return (d2 <= r * r).float().unsqueeze(1) * foreground


def perlin_masks(batch_size: int, size: tuple[int, int], foreground: Tensor | None = None,
                 generator: torch.Generator | None = None, threshold: float = 0.5,
                 min_scale_exp: int = 0, max_scale_exp: int = 5, max_degrees: float = 90.0,
                 max_rounds: int = 8, disc_radius: float = 1.0 / 16.0,
                 chunk_size: int | None = None, device: torch.device | str | None = None
                 ) -> PerlinMasks:
    """Anomaly masks M of DiffusionAD eq. 12: rotated, thresholded Perlin noise x foreground.

    DRAEM (Zavrtanik et al., ICCV 2021) recipe: per sample and per axis a lattice of ``2^k``
    cells, ``k ~ U{min_scale_exp..max_scale_exp}``; the noise is rotated by
    ``U(-max_degrees, max_degrees)`` (zero fill), thresholded (``noise > threshold``) and
    multiplied by the foreground. Samples whose mask is empty are redrawn together (only those)
    for at most ``max_rounds`` rounds; any still empty then get a disc of radius
    ``disc_radius * min(H, W)`` (at least 1.5 px) centred on a random foreground pixel, cut to
    the foreground, so every mask is non-empty. The result is a deterministic function of the
    generator state; ``chunk_size`` only splits the arithmetic (every draw is made for the
    whole round first), so it never changes the masks.

    Parameters
    ----------
    batch_size : int
        B, the number of masks.
    size : tuple of int
        ``(H, W)``.
    foreground : Tensor, optional
        ``(B, 1, H, W)`` in {0, 1} (float or bool): where an anomaly may go; None = anywhere.
        A sample whose foreground is empty is treated as all-foreground.
    generator : torch.Generator, optional
        Source of every random draw (on the images' device, or the CPU).
    threshold : float
        0.5 in DRAEM / DiffusionAD, 0.3 in GLAD; higher = smaller blobs.
    chunk_size : int, optional
        Samples computed at a time (None = all): keeps CPU working sets in cache.
    device : torch.device, optional
        Where the masks live (default: the foreground's device, else the CPU).

    Returns
    -------
    PerlinMasks
        ``mask (B, 1, H, W)`` float32 in {0, 1}, ``res``, ``angle``, ``rounds``.
    """
    b, (h, w) = batch_size, size
    if foreground is not None and foreground.shape != (b, 1, h, w):
        raise ValueError(f"foreground must be {(b, 1, h, w)}, got {tuple(foreground.shape)}")
    return perlin_masks_for(b, size, foreground, None, generator, threshold, min_scale_exp,
                         max_scale_exp, max_degrees, max_rounds, disc_radius, chunk_size, device)


def perlin_masks_for(b: int, size: tuple[int, int], foreground: Tensor | None,
                  fg_rows: Tensor | None, generator: torch.Generator | None, threshold: float,
                  min_scale_exp: int, max_scale_exp: int, max_degrees: float, max_rounds: int,
                  disc_radius: float, chunk_size: int | None,
                  device: torch.device | str | None) -> PerlinMasks:
    """:func:`perlin_masks`; sample ``i`` lies inside ``foreground[fg_rows[i]]`` (``fg_rows``
    None: ``foreground[i]``), so a caller need not gather the rows of a larger batch."""
    h, w = size
    if foreground is not None:
        device = foreground.device

    def fg(rows: slice | Tensor) -> Tensor:
        """F = 1[foreground > 0.5] of the samples ``rows`` as float (sign(f - 0.5) clipped at
        0: no bool round trip), made when needed, a chunk at a time."""
        if fg_rows is not None:
            f = foreground.index_select(0, fg_rows[rows])
        else:
            f = foreground[rows]
        f = (f.to(torch.float32) - 0.5).sign_().clamp_(min=0.0)
        empty = f.reshape(f.shape[0], -1).amax(1) == 0
        if f.device.type != "cpu" or bool(empty.any()):
            f.masked_fill_(empty.reshape(-1, 1, 1, 1), 1.0)  # an empty foreground -> everywhere
        return f

    device = torch.device(device if device is not None else "cpu")
    lattice = 2 ** max_scale_exp + 1
    mask = torch.empty(b, 1, h, w, device=device)
    res = torch.zeros(b, 2, dtype=torch.long, device=device)
    angle = torch.zeros(b, device=device)
    rounds = torch.zeros(b, dtype=torch.long, device=device)
    todo = torch.arange(b, device=device)
    for r in range(max_rounds):
        n = todo.numel()
        if n == 0:
            break
        res_n = draw_scales(n, generator, device, min_scale_exp, max_scale_exp)
        grads = draw_gradients(n, lattice, generator, device)
        angle_n = _random.uniform((n,), -max_degrees, max_degrees, generator, device)
        first = r == 0  # every sample: work on slices instead of gathers / scatters
        m = mask if first else torch.empty(n, 1, h, w, device=device)
        noise_of = _noise((h, w), res_n, grads)  # the per-round setup, once
        step = chunk_size or n
        peak = torch.empty(n, device=device)
        for s in range(0, n, step):
            sl = slice(s, s + step)
            noise = noise_of(sl)
            # M = 1[rot(noise) > threshold] * F  (sign(a - b) clipped at 0 is 1[a > b], in float)
            m_s = m[sl]
            f = None if foreground is None else fg(sl if first else todo[sl])
            rows = cols = slice(None)
            if f is not None and device.type == "cpu":
                # rotate only inside the box around the chunk's foregrounds: M = 0 outside
                rows, cols = _box(f)
                m_s.zero_()
            m_w = m_s[..., rows, cols]
            torch.sub(rotate_window(noise, angle_n[sl], rows, cols), threshold, out=m_w)
            m_w.sign_().clamp_(min=0.0)
            if f is not None:
                m_w *= f[..., rows, cols]
            peak[sl] = m_s.reshape(m_s.shape[0], -1).amax(1)
        if not first:
            mask[todo] = m
        res[todo], angle[todo] = res_n, angle_n
        rounds[todo] = r + 1
        todo = todo[peak == 0]
    if todo.numel() > 0:
        fg_t = (fg(todo) if foreground is not None
                else torch.ones(todo.numel(), 1, h, w, device=device))
        mask[todo] = _fallback_disc(fg_t, generator, disc_radius)
        rounds[todo] = max_rounds + 1
    return PerlinMasks(mask, res, angle, rounds)


__all__ = ["fade", "perlin_noise", "draw_scales", "draw_gradients", "rand_perlin_noise",
           "perlin_masks", "PerlinMasks"]
