"""Image and mask IO for dap's data layer: read any common format as RGB, write PNG atomically,
resize images (antialiased) and masks (nearest, or bilinear then a 0.5 threshold).

Everything here works on numpy arrays: ``(H, W, 3) uint8`` images and ``(H, W) bool`` masks.
Conversion to dap's tensor convention (``(3, H, W)`` float32 in [-1, 1]) happens in
:mod:`dap.data.folder`.

Every failure names the file: an unreadable, truncated or oversized image (Pillow's
decompression-bomb limit) raises :class:`ImageReadError`; data that would be silently wrong
(a mask whose size differs from its image, a 32-bit image beyond 16-bit range) raises
:class:`DataError`. Both are ``ValueError`` subclasses.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from dap.io import atomic_path

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})

MaskResize = Literal["nearest", "bilinear"]


class DataError(ValueError):
    """A dataset file is unusable as it is (the message names it and says what to do)."""


class ImageReadError(DataError):
    """An image file cannot be read: not an image, truncated, or too large to decode safely."""


def is_image_file(path: str | os.PathLike) -> bool:
    """True for a visible file with an image extension (case-insensitive: ``.PNG``, ``.JPG``)."""
    p = Path(path)
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name (``[]`` if it is missing)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


def _declared_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """The (width, height) a file declares, read by Pillow's format plugins without the
    decompression-bomb check (nothing is decoded); ``None`` if no plugin reads it."""
    try:
        Image.init()
        with open(path, "rb") as fp:
            prefix = fp.read(16)
            for fmt in Image.ID:
                factory, accept = Image.OPEN[fmt]
                if accept is not None and not accept(prefix):
                    continue
                fp.seek(0)
                try:
                    return tuple(factory(fp, str(path)).size)  # type: ignore[return-value]
                except Exception:  # noqa: BLE001 - any plugin may fail on a foreign format
                    continue
    except Exception:  # noqa: BLE001 - a size for the message only
        return None
    return None


def _open(path: str | os.PathLike) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except Image.DecompressionBombError as exc:
        size = _declared_size(path)
        dims = f"it is {size[0]} x {size[1]} pixels and " if size else ""
        raise ImageReadError(
            f"cannot read image file {path}: {dims}Pillow refuses to decode it as a possible "
            f"decompression bomb ({exc}). Downscale it (anomaly detection images are at most a "
            "few thousand pixels per side), or, if you trust the file, raise the limit before "
            "reading: PIL.Image.MAX_IMAGE_PIXELS = None") from None
    except MemoryError:
        raise ImageReadError(f"cannot read image file {path}: not enough memory to decode it; "
                             "downscale it") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageReadError(f"cannot read image file {path}: {exc}. Replace the file (it is "
                             "not an image, truncated or damaged)") from None
    return img


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I;16S")


def _gray_to_uint8(path: str | os.PathLike, img: Image.Image) -> np.ndarray:
    """A high-bit-depth grey image as uint8, scaled by its bit depth (never by its values)."""
    a = np.asarray(img)
    if img.mode in _SIXTEEN_BIT or img.mode == "I":
        # "I;16*": 16-bit; "I": 32-bit integers, how older Pillow opens 16-bit PNGs (and TIFF)
        a = a.astype(np.float64)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo < 0 or hi > 65535:
            raise DataError(f"{path}: a {img.mode!r} image with values from {lo:.0f} to "
                            f"{hi:.0f}, outside 16-bit range 0..65535; dap cannot tell its "
                            "scale. Convert it to an 8- or 16-bit PNG")
        scale = 65535.0
    else:  # "F": floats carry no bit depth
        a = a.astype(np.float64)
        if not np.isfinite(a).all():
            raise DataError(f"{path}: a float image with NaN or infinite values; convert it to "
                            "an 8- or 16-bit PNG")
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo < 0 or hi > 255:
            raise DataError(f"{path}: a float image with values from {lo:g} to {hi:g}; dap "
                            "reads float images as 0..1 or 0..255 only. Convert it to an 8- or "
                            "16-bit PNG")
        scale = 1.0 if hi <= 1.0 else 255.0
    return np.clip(np.rint(a / scale * 255.0), 0, 255).astype(np.uint8)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as ``(H, W, 3) uint8`` RGB.

    Grayscale is repeated on three channels, palette images are expanded, the alpha channel of
    RGBA / LA images is dropped. 16-bit images (modes ``I;16*``, and ``I``, as which older
    Pillow opens 16-bit PNGs) are scaled by their bit depth, ``x / 65535 * 255``, whatever
    their values: a dark 16-bit image whose values all lie below 256 stays dark. Float images
    (mode ``F``) carry no depth: values in [0, 1] are scaled by 255, values up to 255 are
    taken as they are.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ImageReadError
        If the file is not a readable image, is truncated, or exceeds Pillow's
        decompression-bomb limit (a ``ValueError``; the message names the path).
    DataError
        A 32-bit or float image whose values dap cannot map to 8 bits.
    """
    img = _open(path)
    if img.mode in (*_SIXTEEN_BIT, "I", "F"):
        a = _gray_to_uint8(path, img)
        return np.repeat(a[..., None], 3, axis=-1)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a ground-truth mask as ``(H, W) bool``: any non-zero pixel is defective."""
    img = _open(path)
    a = np.asarray(img)
    if a.ndim == 3:
        a = a[..., :3].max(axis=-1) if a.shape[-1] >= 3 else a[..., 0]
    return a != 0


def write_png(path: str | os.PathLike, array: np.ndarray, compress_level: int = 1) -> None:
    """Write ``array`` (``(H, W)`` bool/uint8 or ``(H, W, 3)`` uint8) as a PNG, atomically.

    The bytes go to a temporary file in the same folder, which is then renamed over ``path``
    (:func:`dap.io.atomic_path`): a reader never sees half a PNG. Bool masks are written as
    0 / 255. The output is byte-for-byte deterministic for a given array. ``compress_level`` 1
    (zlib) is ~3x faster than Pillow's default 6 for files ~25 % larger.
    """
    path = Path(path)
    a = np.asarray(array)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.dtype != np.uint8:
        raise ValueError(f"write_png expects uint8 or bool, got {a.dtype} for {path}")
    with atomic_path(path) as tmp:
        with open(tmp, "xb") as f:
            Image.fromarray(a).save(f, format="PNG", compress_level=compress_level)


def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def resize_image(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize ``(H, W, 3) uint8`` to ``size`` with antialiased bilinear interpolation.

    Pillow widens the bilinear filter by the scale factor when it shrinks an image, so
    downsampling does not alias (unlike ``torch.nn.functional.interpolate`` without
    ``antialias=True``). Returns the input unchanged when it already has the size.
    """
    h, w = _size_hw(size)
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))


def resize_mask(mask: np.ndarray, size: int | tuple[int, int],
                mode: MaskResize = "nearest") -> np.ndarray:
    """Resize an ``(H, W) bool`` mask, keeping it binary.

    ``"nearest"`` copies the nearest source pixel: the mask stays exactly binary and a defect
    keeps its pixels' labels (a thin scratch can vanish when shrinking a lot). ``"bilinear"``
    interpolates the 0/1 mask (antialiased) and keeps pixels ``>= 0.5``: smoother borders; the
    same area in expectation. The official DiffusionAD code resizes bilinearly and keeps only
    values equal to 1, which erodes every defect border: dap does not.
    """
    h, w = _size_hw(size)
    if mask.shape[:2] == (h, w):
        return mask.astype(bool)
    if mode == "nearest":
        img = Image.fromarray(mask.astype(np.uint8) * 255)
        return np.asarray(img.resize((w, h), Image.Resampling.NEAREST)) > 127
    if mode == "bilinear":
        img = Image.fromarray(mask.astype(np.float32))  # mode "F"
        return np.asarray(img.resize((w, h), Image.Resampling.BILINEAR)) >= 0.5
    raise ValueError(f"mask_resize must be 'nearest' or 'bilinear', got {mode!r}")


__all__ = [
    "DataError",
    "ImageReadError",
    "IMAGE_EXTENSIONS",
    "MaskResize",
    "is_image_file",
    "list_images",
    "read_image",
    "read_mask",
    "write_png",
    "resize_image",
    "resize_mask",
]
