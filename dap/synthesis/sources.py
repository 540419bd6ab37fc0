"""Appearance sources A of DiffusionAD eq. 12: a texture bank and self-augmentation.

DiffusionAD (after DRAEM, Zavrtanik et al., ICCV 2021) takes the anomaly's appearance either
from an unrelated texture photograph (DTD, the Describable Textures Dataset) or, for object
categories with p = 0.5, from the normal image itself: an augmented copy cut into 8 column
strips that are shuffled, then into 8 row strips that are shuffled ("self-augmentation").
GLAD shuffles an 8 x 8 grid of tiles instead (``grid_shuffle``).

:class:`TextureBank` loads the source photographs once and keeps them on the device as one
uint8 tensor; each sample then gets a random crop (a window of U(0.5, 1) of the side, anywhere
inside the picture) resized to the image size, all in one batched resample. Sources:

* :meth:`TextureBank.from_folder` - any folder of images, e.g. DTD once downloaded
  (``dtd/images/<class>/*.jpg``, fetched by ``data_scripts/``);
* :meth:`TextureBank.from_skimage` - offline: the photographs that ship inside the
  scikit-image wheel (:data:`SKIMAGE_SOURCES`). brick, grass and gravel are deliberately left
  out: they are the *normal* classes of dap's built-in benchmark, and an anomaly source must
  not look like the normal data.

Taught in ``notebooks/05_anomaly_synthesis``.
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dap.synthesis import _random
from dap.synthesis.geometry import crop_resize_from

# scikit-image's bundled photographs that load with no network (checked on 0.21-0.26).
SKIMAGE_SOURCES: tuple[str, ...] = (
    "astronaut", "coffee", "chelsea", "camera", "coins", "rocket", "hubble_deep_field",
    "immunohistochemistry", "retina", "moon", "page", "text", "clock", "colorwheel", "cell",
)

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def _to_rgb_uint8(img: np.ndarray) -> np.ndarray:
    """Any 2-D / RGB / RGBA array (uint8, bool or float in [0, 1]) -> ``(H, W, 3)`` uint8."""
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    elif img.dtype != np.uint8:
        img = (np.clip(img.astype(np.float64), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


class CropParams(NamedTuple):
    """Random crops for ``n`` samples, all in [0, 1) so they can be drawn before the bank loads.

    pick : ``(n,)`` which image (``floor(pick * len(bank))``).
    scale : ``(n,)`` window side as a fraction of the largest window of the output's aspect.
    where : ``(n, 2)`` window position (row, column) inside the free range, 0 = top/left.
    """

    pick: Tensor
    scale: Tensor
    where: Tensor

    def select(self, index: Tensor | slice) -> "CropParams":
        return CropParams(self.pick[index], self.scale[index], self.where[index])


def draw_crops(n: int, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu",
               crop_scale: tuple[float, float] = (0.5, 1.0)) -> CropParams:
    """Draw ``n`` random crops (image, window size ~ U(crop_scale), position)."""
    pick = _random.rand((n,), generator, device)
    scale = _random.uniform((n,), crop_scale[0], crop_scale[1], generator, device)
    where = _random.rand((n, 2), generator, device)
    return CropParams(pick, scale, where)


class TextureBank:
    """Source photographs held once on a device as a ``(N, 3, S, S)`` uint8 tensor.

    Parameters
    ----------
    images : sequence of ndarray
        ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` arrays, uint8 (or float in [0, 1]).
    names : sequence of str, optional
        One label per image (shown in notebook 05).

    Notes
    -----
    The tensor for an output size ``(H, W)`` is built on first use (each picture resized,
    antialiased, so its short side is ``S = max(H, W)``, then centre-cropped to ``S x S``) and
    cached per ``(S, device)``: ``N * 3 * (S + 3)^2`` bytes (512 DTD images at 256: 100 MB).
    """

    def __init__(self, images: Sequence[np.ndarray], names: Sequence[str] | None = None):
        if len(images) == 0:
            raise ValueError("a TextureBank needs at least one image")
        self.images = [_to_rgb_uint8(im) for im in images]
        self.names = list(names) if names is not None else [str(i) for i in range(len(images))]
        self._cache: dict[tuple[int, str], Tensor] = {}

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def from_skimage(cls, names: Sequence[str] = SKIMAGE_SOURCES) -> "TextureBank":
        """The photographs bundled with scikit-image (no network)."""
        import skimage.data

        return cls([getattr(skimage.data, n)() for n in names], names)

    @classmethod
    def from_folder(cls, root: str, max_images: int = 512, max_side: int = 512) -> "TextureBank":
        """All images under ``root`` (recursively, sorted); at most ``max_images``.

        With more files than ``max_images``, evenly spaced files of the sorted list are kept
        (deterministic, and for DTD's ``images/<class>/`` layout every class stays present).
        Pictures are shrunk on load so their long side is at most ``max_side``.
        """
        from PIL import Image

        files = sorted(
            os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
            if f.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not files:
            raise FileNotFoundError(
                f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root!r}; for DTD point to "
                "its 'images' folder (see data_scripts/), or use TextureBank.from_skimage()")
        if len(files) > max_images:
            keep = np.linspace(0, len(files) - 1, max_images).round().astype(int)
            files = [files[i] for i in keep]
        images = []
        for f in files:
            with Image.open(f) as im:
                im = im.convert("RGB")
                im.thumbnail((max_side, max_side))
                images.append(np.array(im))
        return cls(images, [os.path.relpath(f, root) for f in files])

    def tensor(self, side: int, device: torch.device | str = "cpu") -> Tensor:
        """The bank as ``(N, 3, side, side)`` uint8 on ``device`` (built once, then cached).

        A view into the cached tensor, which also holds the zero border that :meth:`crop`
        reads (:func:`~dap.synthesis.geometry.pad_for_crop`)."""
        return self._bordered(side, device)[:, :, 1:side + 1, 1:side + 1]

    def _bordered(self, side: int, device: torch.device | str = "cpu") -> Tensor:
        """The cached bank with its zero border, ``(N, 3, side + 3, side + 3)``."""
        key = (int(side), str(torch.device(device)))
        if key not in self._cache:
            with torch.inference_mode(False):  # an ordinary tensor, whatever mode builds it
                self._cache[key] = self._build(side, device)
        return self._cache[key]

    def _build(self, side: int, device: torch.device | str) -> Tensor:
        """Each picture resized (antialiased) so its short side is ``side``, centre-cropped,
        inside a zero border: ``(N, 3, side + 3, side + 3)`` uint8 on ``device``."""
        out = torch.zeros(len(self), 3, side + 3, side + 3, dtype=torch.uint8)
        for i, im in enumerate(self.images):
            t = torch.from_numpy(im).permute(2, 0, 1)[None].float()
            h, w = t.shape[-2:]
            k = side / min(h, w)
            size = (max(side, round(h * k)), max(side, round(w * k)))
            t = F.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)
            top, left = (size[0] - side) // 2, (size[1] - side) // 2
            out[i, :, 1:side + 1, 1:side + 1] = (
                t[0, :, top:top + side, left:left + side].round().clamp(0, 255).byte())
        return out.to(device)

    def crop(self, params: CropParams, size: tuple[int, int]) -> Tensor:
        """Cut the drawn crops and resize them to ``size``: ``(n, 3, H, W)`` float in [0, 1]."""
        h, w = size
        side = max(h, w)
        device = params.pick.device
        bank = self._bordered(side, device)
        idx = (params.pick * len(self)).long().clamp_(max=len(self) - 1)
        # window of the output's aspect: (h, w) / side of the bank picture, times the scale
        frac = torch.stack([params.scale * (h / side), params.scale * (w / side)], 1)
        center = (2.0 * params.where - 1.0) * (1.0 - frac)
        # the windows are read straight from the uint8 bank (no per-sample copy of the pictures)
        # lerps of levels in [0, 255], divided by 255: in [0, 1] without a clamp
        return crop_resize_from(bank, idx, frac, center, size, gain=1.0 / 255.0, padded=True)

    def sample(self, n: int, size: tuple[int, int], generator: torch.Generator | None = None,
               device: torch.device | str = "cpu",
               crop_scale: tuple[float, float] = (0.5, 1.0)) -> Tensor:
        """``n`` random crops ``(n, 3, H, W)`` in [0, 1] (:func:`draw_crops` + :meth:`crop`)."""
        return self.crop(draw_crops(n, generator, device, crop_scale), size)


# ----------------------------------------------------------------------------------------------
# Self-augmentation: shuffled strips (DiffusionAD) or tiles (GLAD)
# ----------------------------------------------------------------------------------------------
class ShuffleParams(NamedTuple):
    """``rows``, ``cols``: ``(n, k)`` permutations of the strips (``grid`` mode: ``rows`` holds
    the ``(n, k * k)`` tile permutation and ``cols`` is unused)."""

    rows: Tensor
    cols: Tensor

    def select(self, index: Tensor | slice) -> "ShuffleParams":
        return ShuffleParams(self.rows[index], self.cols[index])


def draw_shuffle(n: int, num_strips: int = 8, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu", mode: str = "strips") -> ShuffleParams:
    """Draw the strip (or tile) permutations for ``n`` samples."""
    if mode == "grid":
        return ShuffleParams(_random.permutations(n, num_strips * num_strips, generator, device),
                             torch.zeros(n, 0, dtype=torch.long, device=device))
    cols = _random.permutations(n, num_strips, generator, device)
    rows = _random.permutations(n, num_strips, generator, device)
    return ShuffleParams(rows, cols)


def _strip_source_index(perm: Tensor, length: int) -> Tensor:
    """For strips of (near-)equal width laid out in the order ``perm`` ``(n, k)``, the source
    position of every output position: ``(n, length)`` int64. Works for any ``length``."""
    n, k = perm.shape
    bounds = torch.linspace(0, length, k + 1, device=perm.device).round().long()
    width = (bounds[1:] - bounds[:-1])[perm]          # widths in output order
    end = width.cumsum(1)                              # output end of each slot
    pos = torch.arange(length, device=perm.device).expand(n, length).contiguous()
    slot = torch.searchsorted(end, pos, right=True)    # the slot holding each position
    start = end.gather(1, slot) - width.gather(1, slot)
    return bounds[perm].gather(1, slot) + (pos - start)


def shuffle_strips(x: Tensor, params: ShuffleParams) -> Tensor:
    """Cut each image into column strips and reorder them, then the same with row strips.

    Parameters
    ----------
    x : Tensor
        ``(n, C, H, W)``.
    params : ShuffleParams
        ``cols`` and ``rows``, ``(n, k)`` permutations (k = 8 in DiffusionAD).

    Returns
    -------
    Tensor
        ``(n, C, H, W)``, a permutation of the pixels of ``x``.
    """
    n, c, h, w = x.shape
    if x.device.type == "cpu":  # strips are blocks: two concatenations per sample, no gathers
        return _shuffle_strips_blocks(x, params)
    col = _strip_source_index(params.cols, w)
    x = x.gather(3, col[:, None, None, :].expand(n, c, h, w))
    # rows: whole-row copies, picked from the (n * c * h, w) view
    row = _strip_source_index(params.rows, h)
    flat = (torch.arange(n * c, device=x.device).reshape(n, c, 1) * h + row[:, None, :])
    return x.reshape(n * c * h, w).index_select(0, flat.reshape(-1)).reshape(n, c, h, w)


@functools.lru_cache(maxsize=64)
def _strip_bounds(length: int, k: int) -> tuple[int, ...]:
    """Edges of ``k`` (near-)equal strips of ``length`` (the same as
    :func:`_strip_source_index`)."""
    return tuple(torch.linspace(0, length, k + 1).round().long().tolist())


def _shuffle_strips_blocks(x: Tensor, params: ShuffleParams) -> Tensor:
    """:func:`shuffle_strips` as concatenations of strips, sample by sample (CPU)."""
    cols, rows = params.cols.tolist(), params.rows.tolist()
    cb, rb = _strip_bounds(x.shape[3], len(cols[0])), _strip_bounds(x.shape[2], len(rows[0]))
    out = []
    for i in range(x.shape[0]):
        xi = x[i:i + 1]
        xi = torch.cat([xi[..., cb[s]:cb[s + 1]] for s in cols[i]], dim=3)     # column strips
        out.append(torch.cat([xi[..., rb[s]:rb[s + 1], :] for s in rows[i]], dim=2))  # rows
    return out[0] if len(out) == 1 else torch.cat(out)


def grid_shuffle(x: Tensor, params: ShuffleParams, num_tiles: int = 8) -> Tensor:
    """GLAD's variant: permute a ``num_tiles x num_tiles`` grid of tiles (``params.rows``).

    Needs ``H`` and ``W`` divisible by ``num_tiles``.
    """
    n, c, h, w = x.shape
    k = num_tiles
    if h % k or w % k:
        raise ValueError(f"grid_shuffle needs H, W divisible by {k}, got {h} x {w}")
    th, tw = h // k, w // k
    src_tile = params.rows                                         # (n, k*k)
    rr = torch.arange(h, device=x.device)
    cc = torch.arange(w, device=x.device)
    out_tile = (rr[:, None] // th) * k + (cc[None, :] // tw)       # (H, W)
    s = src_tile[:, out_tile.reshape(-1)].reshape(n, h, w)         # source tile of each pixel
    src = ((s // k) * th + (rr % th)[None, :, None]) * w + (s % k) * tw + (cc % tw)[None, None, :]
    flat = x.reshape(n, c, h * w)
    return flat.gather(2, src.reshape(n, 1, h * w).expand(n, c, h * w)).reshape(n, c, h, w)


def self_shuffle(x: Tensor, params: ShuffleParams, mode: str = "strips",
                 num_strips: int = 8) -> Tensor:
    """:func:`shuffle_strips` (``mode="strips"``) or :func:`grid_shuffle` (``"grid"``)."""
    if mode == "grid":
        return grid_shuffle(x, params, num_strips)
    return shuffle_strips(x, params)


__all__ = [
    "SKIMAGE_SOURCES", "TextureBank", "CropParams", "draw_crops", "ShuffleParams",
    "draw_shuffle", "shuffle_strips", "grid_shuffle", "self_shuffle",
]
