"""Batched geometric resampling shared by the Perlin masks, the sources and the augmenters.

Both maps are bilinear with ``align_corners=False`` and zero fill, the conventions of
``grid_sample``, and run on any device. :func:`rotate` builds one affine sampling grid per
sample and calls ``grid_sample`` once for the whole batch. :func:`crop_resize` (an axis-aligned
map) is separable, so it is computed as a row pass and a column pass of gathers and ``lerp``
instead: the same values up to float rounding, at a fraction of the cost. Angles are in
degrees; a positive angle turns the picture counter-clockwise *as displayed* (row 0 at the
top), about the image centre, with the aspect ratio preserved on non-square images.

Taught in ``notebooks/05_anomaly_synthesis``.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor


@functools.lru_cache(maxsize=64)
def _centres(n: int, device: str, dtype: torch.dtype) -> Tensor:
    """Pixel centres of an axis of ``n`` pixels in normalised coordinates
    (``align_corners=False``): ``(2 i + 1) / n - 1``, built once per size."""
    with torch.inference_mode(False):  # an ordinary tensor, whatever mode fills the cache
        return (torch.arange(n, device=device, dtype=dtype) * 2 + 1) / n - 1


def rotate(images: Tensor, degrees: Tensor | float) -> Tensor:
    """Rotate every image of the batch by its own angle, filling uncovered pixels with 0.

    Parameters
    ----------
    images : Tensor
        ``(B, C, H, W)`` float, any range (0 is the fill value: black for images in [0, 1],
        "no noise" for Perlin noise).
    degrees : Tensor or float
        ``(B,)`` angles in degrees (or one angle for all); positive = counter-clockwise.

    Returns
    -------
    Tensor
        ``(B, C, H, W)``, bilinear interpolation. ``degrees = 0`` returns the input (up to
        float rounding of the sampling grid).
    """
    return rotate_window(images, degrees)


def rotate_window(images: Tensor, degrees: Tensor | float, rows: slice = slice(None),
            cols: slice = slice(None)) -> Tensor:
    """The window ``rows x cols`` of :func:`rotate` (the same values: the grid of the window
    is cut from the full one), e.g. only where a foreground can use it."""
    b, _, h, w = images.shape
    a = torch.as_tensor(degrees, dtype=torch.float32, device=images.device).reshape(-1)
    a = a.expand(b) * (math.pi / 180.0)
    c, s = torch.cos(a), torch.sin(a)
    # Output pixel (X, Y) (x right, y down, centred) samples the source at R^-1 (X, Y) with
    # R^-1 = [[c, -s], [s, c]]; in normalised coordinates the off-diagonals pick up H/W, W/H:
    # source (x, y) = x_out (c, s W / H) + y_out (-s H / W, c), a part per column plus a part
    # per row, so one broadcast add writes the (B, H, W, 2) grid (``F.affine_grid`` is the
    # same map, but its batched small matrix product is slow on some CPU builds)
    # (the parts are made as (B, 2, W) and (B, 2, H) and added through transposed views: with
    # the x / y axis strided, the add runs along W, several times faster on CPUs)
    dev, dtype = str(images.device), images.dtype
    col = torch.stack([c, s * (w / h)], 1).to(dtype)[:, :, None] * _centres(w, dev, dtype)[cols]
    row = torch.stack([-s * (h / w), c], 1).to(dtype)[:, :, None] * _centres(h, dev, dtype)[rows]
    grid = col.transpose(1, 2)[:, None, :, :] + row.transpose(1, 2)[:, :, None, :]
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def _axis_taps(out_len: int, in_len: int, scale: Tensor, center: Tensor
               ) -> tuple[Tensor, Tensor]:
    """The bilinear taps of every output position along one axis of an axis-aligned map.

    Output position ``i`` (normalised ``x = (2 i + 1) / out_len - 1``, ``align_corners=False``)
    reads the source at ``scale * x + center``, i.e. pixel coordinate
    ``u = ((scale * x + center + 1) in_len - 1) / 2``: the value is ``lerp(src[floor(u)],
    src[floor(u) + 1], u - floor(u))``, ``grid_sample``'s bilinear weights along this axis.
    Pixels outside ``[0, in_len)`` are zeros, read from a zero border (one pixel before the
    picture, two after): ``u`` is clipped to ``[-1, in_len]``, where both taps lie in the
    border or the weight of the inner one is 0. Returns ``(index, fraction)``, ``(n, out_len)``
    each, the index of the first tap in the bordered source.
    """
    xs = _centres(out_len, str(scale.device), torch.float32)
    u = ((scale[:, None] * xs + center[:, None] + 1.0) * in_len - 1.0) / 2.0
    u.clamp_(-1.0, float(in_len))
    i0 = u.floor()
    return i0.long().add_(1), u.sub_(i0)


def pad_for_crop(images: Tensor) -> Tensor:
    """The zero border :func:`crop_resize_from` reads: one row / column before, two after."""
    return F.pad(images, (1, 2, 1, 2))


def crop_resize_from(source: Tensor, pick: Tensor, scale: Tensor, center: Tensor,
                     size: tuple[int, int], gain: float = 1.0, padded: bool = False) -> Tensor:
    """:func:`crop_resize` of the images ``source[pick]``, without gathering them first.

    ``source`` ``(N, C, h, w)`` (any dtype, e.g. a uint8 texture bank) is read in place: the
    window's rows are picked straight from it. ``padded=True``: ``source`` already has the zero
    border of :func:`pad_for_crop` (``h`` and ``w`` then include it), e.g. cached once for a
    bank. The result is float32 (or the source's wider float type) times ``gain``, applied as
    a division by ``1 / gain`` (``gain = 1 / 255`` divides 8-bit levels by 255, so level 255
    is exactly 1).

    Bilinear resampling along an axis-aligned map is separable: with the per-axis taps of
    :func:`_axis_taps`, the value is a ``lerp`` along x of two ``lerp`` along y, computed as a
    row pass (two row gathers and a ``lerp``) followed by a column pass (two column gathers
    and a ``lerp``): the same value as ``grid_sample`` up to float rounding.
    """
    if not padded:
        source = pad_for_crop(source)
    n = pick.shape[0]
    _, c, h_in, w_in = source.shape
    h, w = size
    y0, fy = _axis_taps(h, h_in - 3, scale[:, 0], center[:, 0])
    x0, fx = _axis_taps(w, w_in - 3, scale[:, 1], center[:, 1])
    # rows: (n, C, H, w_in) = lerp(src[y0, :], src[y0 + 1, :], fy), from the (N C h, w) view
    base = ((pick.long() * c)[:, None] + torch.arange(c, device=pick.device)) * h_in  # (n, C)
    first = (base[:, :, None] + y0[:, None, :]).reshape(-1)
    flat = source.reshape(-1, w_in)
    dtype = torch.promote_types(source.dtype, torch.float32)
    r0 = flat.index_select(0, first).to(dtype).reshape(n, c, h, w_in)
    r1 = flat.index_select(0, first + 1).to(dtype).reshape(n, c, h, w_in)
    rows = r0.lerp_(r1, fy.reshape(n, 1, h, 1).to(dtype))
    # columns: (n, C, H, W) = lerp(rows[..., x0], rows[..., x0 + 1], fx)
    x0 = x0.reshape(n, 1, 1, w)
    out = rows.gather(3, x0.expand(n, c, h, w))
    out.lerp_(rows.gather(3, (x0 + 1).expand(n, c, h, w)), fx.reshape(n, 1, 1, w).to(dtype))
    return out if gain == 1.0 else out.div_(1.0 / gain)


def crop_resize(images: Tensor, scale: Tensor, center: Tensor, size: tuple[int, int]) -> Tensor:
    """Cut a window from each image and resize it to ``size`` (bilinear, zero fill).

    The same map as ``grid_sample`` with the affine ``[[sx, 0, cx], [0, sy, cy]]``
    (``align_corners=False``), computed separably (:func:`crop_resize_from`).

    Parameters
    ----------
    images : Tensor
        ``(B, C, h, w)`` float.
    scale : Tensor
        ``(B, 2)`` window height and width as fractions of the image's height and width, in
        (0, 1].
    center : Tensor
        ``(B, 2)`` window centre (row, column) in normalised coordinates [-1, 1]; keep
        ``|center| <= 1 - scale`` for a window that stays inside the image.
    size : tuple of int
        Output ``(H, W)``.

    Returns
    -------
    Tensor
        ``(B, C, H, W)``.
    """
    pick = torch.arange(images.shape[0], device=images.device)
    return crop_resize_from(images, pick, scale, center, size).to(images.dtype)


__all__ = ["rotate", "crop_resize", "crop_resize_from", "pad_for_crop"]
