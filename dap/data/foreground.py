"""Foreground masks: where on an image an anomaly may be synthesised.

DiffusionAD multiplies its Perlin mask by the object's foreground (paper eq. 12, taught in
``notebooks/05_anomaly_synthesis``) so that synthetic defects land on the object, not on the
background. The paper used a salient-object network and the official code loads precomputed
mask files users could not find or regenerate. dap computes its own, with classic image
processing anyone can inspect:

1. gray = mean of the RGB channels, shrunk to at most ``work_size`` px (antialiased), and
   smoothed (Gaussian, sigma = 1 px);
2. Otsu's threshold splits it into a bright and a dark class;
3. the object is the ``bright`` or ``dark`` class, or for ``auto`` the class that covers less
   of the image border (a photographed object rarely touches every border);
   uneven lighting is then removed: a quadratic surface a + bx + cy + dx^2 + exy + fy^2 is
   fitted (least squares) to the *background* pixels only, subtracted, and steps 2-3 are
   repeated (three rounds). Without it one global threshold fails on a photograph whose
   background is brighter at one edge than the darkest objects (scikit-image's coins: a
   bright band along the top became "foreground"). On an evenly lit image the fitted surface
   is flat and nothing changes;
4. morphology: opening then closing (discs of ~1 % and ~2 % of the side), holes filled,
   components smaller than 10 % of the largest one dropped, then a ~1 % dilation so a defect
   on the outline counts as foreground;
5. if less than 0.5 % of the image remains, the whole image is returned (safe fallback).

Modes: ``"full"`` (textures: every pixel), ``"auto"``, ``"bright"``, ``"dark"``. Masks of
object categories are cached as PNG files next to the data
(``<root>/<category>/.dap_foreground/<mode>/<split>/<...>/<name>.png``; a non-PNG image keeps
its extension, ``<name>.jpg.png``) and recomputed when the image is newer than its cached mask
or the sizes differ. The cache key is the image's path below the category folder as written,
not resolved, so image files and folders may be symbolic links to elsewhere.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

from dap.io import clean_stale

FOREGROUND_MODES: tuple[str, ...] = ("full", "auto", "bright", "dark")
CACHE_DIR = ".dap_foreground"
MIN_FRACTION = 0.005
ILLUMINATION_ROUNDS = 3  # fit the background's lighting, re-threshold; 3 rounds settle it
_CLEANED: set[Path] = set()  # cache folders already rid of dead writers' temp files


def _disk(radius: int) -> np.ndarray:
    r = max(int(radius), 1)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return xx * xx + yy * yy <= r * r


def _split(gray: np.ndarray, mode: str) -> np.ndarray:
    """Steps 2-3: Otsu's threshold, then the object's class (``bright``, ``dark``, ``auto``)."""
    from skimage.filters import threshold_otsu

    bright = gray > threshold_otsu(gray)
    if mode == "bright":
        return bright
    if mode == "dark":
        return ~bright
    border = np.concatenate([bright[0], bright[-1], bright[:, 0], bright[:, -1]])
    return bright if border.mean() < 0.5 else ~bright


def _background_surface(gray: np.ndarray, background: np.ndarray) -> np.ndarray:
    """The quadratic surface in (x, y) fitted by least squares to ``gray`` on ``background``.

    Coordinates are centred and scaled to [-0.5, 0.5] so the fit is well conditioned. With
    fewer background pixels than coefficients the surface is the constant mean (no fit).
    """
    h, w = gray.shape
    y, x = np.mgrid[0:h, 0:w]
    x, y = x / max(w - 1, 1) - 0.5, y / max(h - 1, 1) - 0.5
    design = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=-1).reshape(-1, 6)
    sel = background.reshape(-1)
    if sel.sum() < 4 * design.shape[1]:
        return np.full_like(gray, float(gray.mean()))
    coef, *_ = np.linalg.lstsq(design[sel], gray.reshape(-1)[sel].astype(np.float64), rcond=None)
    return (design @ coef).reshape(h, w).astype(gray.dtype)


def foreground_mask(image: np.ndarray, mode: str = "auto", work_size: int = 256) -> np.ndarray:
    """The foreground of ``image`` as an ``(H, W) bool`` mask (see the module docstring).

    Parameters
    ----------
    image : (H, W, 3) or (H, W) uint8
    mode : ``"full"``, ``"auto"``, ``"bright"`` or ``"dark"``
    work_size : the longest side the threshold and morphology work at (speed)
    """
    if mode not in FOREGROUND_MODES:
        raise ValueError(f"foreground mode must be one of {FOREGROUND_MODES}, got {mode!r}")
    h, w = image.shape[:2]
    if mode == "full":
        return np.ones((h, w), dtype=bool)
    gray = image.astype(np.float32).mean(axis=-1) if image.ndim == 3 else image.astype(np.float32)
    scale = min(1.0, work_size / max(h, w))
    sh, sw = max(int(round(h * scale)), 1), max(int(round(w * scale)), 1)
    if (sh, sw) != (h, w):
        gray = np.asarray(Image.fromarray(gray).resize((sw, sh), Image.Resampling.BILINEAR))
    gray = ndimage.gaussian_filter(gray, 1.0)
    if float(gray.max() - gray.min()) < 1e-3:  # a flat image: nothing to separate
        return np.ones((h, w), dtype=bool)
    fg = _split(gray, mode)
    for _ in range(ILLUMINATION_ROUNDS):
        flat = gray - _background_surface(gray, ~fg)
        if float(flat.max() - flat.min()) < 1e-3:
            break
        fg = _split(flat, mode)
    side = min(sh, sw)
    fg = ndimage.binary_opening(fg, _disk(round(0.01 * side)))
    fg = ndimage.binary_closing(fg, _disk(round(0.02 * side)), border_value=0)
    fg = ndimage.binary_fill_holes(fg)
    labels, n = ndimage.label(fg)
    if n > 1:
        areas = ndimage.sum_labels(fg, labels, index=np.arange(1, n + 1))
        keep = np.flatnonzero(areas >= 0.1 * areas.max()) + 1
        fg = np.isin(labels, keep)
    fg = ndimage.binary_dilation(fg, _disk(round(0.01 * side)))
    if fg.mean() < MIN_FRACTION:
        return np.ones((h, w), dtype=bool)
    if fg.shape != (h, w):
        fg = np.asarray(Image.fromarray(fg.astype(np.uint8) * 255).resize(
            (w, h), Image.Resampling.NEAREST)) > 127
    return fg


def cache_path(category_dir: str | os.PathLike, image_path: str | os.PathLike, mode: str
               ) -> Path:
    """Where the cached mask of ``image_path`` (inside ``category_dir``) lives.

    The key is ``image_path`` relative to ``category_dir`` without resolving symbolic links,
    so a linked image file or folder (``train/good -> /data/elsewhere``) is cached under its
    place in the category. An image outside the category folder altogether is cached under
    ``_external/<stem>-<hash of its resolved path>``.
    """
    category_dir = Path(category_dir)
    try:
        rel = Path(os.path.relpath(os.path.abspath(image_path), os.path.abspath(category_dir)))
    except ValueError:  # another drive (Windows)
        rel = None
    if rel is None or rel.is_absolute() or (rel.parts and rel.parts[0] == ".."):
        resolved = str(Path(image_path).resolve())
        digest = hashlib.sha1(resolved.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        rel = Path("_external") / f"{Path(image_path).stem}-{digest}.png"
    elif rel.suffix.lower() != ".png":  # 000.jpg and 000.png must not share a cache file
        rel = rel.with_name(rel.name + ".png")
    return category_dir / CACHE_DIR / mode / rel


def cached_foreground(category_dir: str | os.PathLike, image_path: str | os.PathLike, mode: str,
                      load: Callable[[], np.ndarray], write: bool = True,
                      shape: tuple[int, int] | None = None) -> np.ndarray:
    """The foreground of one image file, from the disk cache when it is fresh.

    ``load`` returns the image (called only on a cache miss). A cached mask is used when it
    is at least as new as the image and, if ``shape`` (the image's ``(H, W)``) is given, of
    that size; otherwise it is recomputed. A read-only dataset folder is fine: the mask is
    then computed and not stored.
    """
    from dap.data.imageio import read_mask, write_png

    if mode == "full":
        img = load()
        return np.ones(img.shape[:2], dtype=bool)
    path = cache_path(category_dir, image_path, mode)
    try:
        if path.stat().st_mtime >= Path(image_path).stat().st_mtime:
            cached = read_mask(path)
            if shape is None or cached.shape == tuple(shape):
                return cached
    except (OSError, ValueError):
        pass
    fg = foreground_mask(load(), mode)
    if write:
        try:
            if path.parent not in _CLEANED:  # temp files of killed writers, once per folder
                clean_stale(path.parent, ".*.tmp-*")
                _CLEANED.add(path.parent)
            write_png(path, fg)  # atomic: temp file + rename
        except OSError:
            pass
    return fg


__all__ = ["FOREGROUND_MODES", "CACHE_DIR", "foreground_mask", "cache_path", "cached_foreground"]
