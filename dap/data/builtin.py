"""The built-in offline benchmark: real photographed textures, disjoint splits, unseen defects.

Normal images are crops of three 512 x 512 grayscale photographs that ship inside
scikit-image's wheel (``skimage.data.brick``, ``grass``, ``gravel``; CC0), so the benchmark
needs no network. Each source photo is cut into three regions that share no pixel::

    rows   0..320, cols   0..512   train       (62.5 % of the photo)
    rows 320..512, cols   0..192   validation  (14 %)
    rows 320..512, cols 192..512   test        (23 %)

(:func:`split_regions`; boxes are half-open ``[row0, col0, row1, col1)``). Every image is a
128 x 128 crop lying entirely inside its split's region, turned by one of the 8 symmetries of
the square (``k``: ``np.rot90(crop, k % 4)``, then a left-right flip if ``k >= 4``) and resized
to ``size`` (bicubic, antialiased; 128 px is the field of view at every size, so the 64 px and
256 px benchmarks show the same surfaces). A model therefore never sees a test pixel in
training, and model selection on the validation split never sees one either.

Half of the test images carry a defect drawn by :mod:`dap.data.defects` (scratch, crack, hole,
stain, foreign, smear), *not* the Perlin synthesis used in training; within each family the
sizes are stratified from a few pixels to ~25 % of the image area, so notebooks can split small
from large defects by ``area_fraction``.

Layout written by :func:`write_builtin` (MVTec AD layout, plus three extras)::

    <root>/<category>/train/good/000.png ...         normal training images
    <root>/<category>/validation/good/000.png ...    normal validation images (extra; the
                                                      MVTec LOCO AD convention)
    <root>/<category>/test/good/000.png ...
    <root>/<category>/test/<family>/000.png ...
    <root>/<category>/ground_truth/<family>/000_mask.png   0 / 255
    <root>/<category>/clean/<family>/000.png ...     the same image before the defect (extra)
    <root>/<category>/meta.json                      per image: split, box, transform, seed;
                                                      per defect: family, area_fraction, params
    <root>/<category>/.dap_stamp.json                fingerprint of (size, seed, counts, version)

Everything is a pure function of ``(category, size, seed, GENERATOR_VERSION)``: the same
arguments give byte-identical files. A category whose stamp matches is not rebuilt (the second
call costs a file read). A category is built in a hidden temporary folder next to its target
(``.<category>.tmp-<pid>-<token>``) and renamed into place when complete, so a reader never sees
half a benchmark; a later run removes such folders of killed builds (:mod:`dap.io`).

Taught in ``notebooks/03_noise_scales`` (the clean images) and ``notebooks/06_train_and_evaluate``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from dap.data.defects import DEFECT_FAMILIES, draw_defect
from dap.data.imageio import write_png
from dap.data.registry import BUILTIN_CATEGORIES
from dap.io import clean_stale, make_temp_dir, tag_pid
from dap.progress import progress_bar

# Bump when any generator changes its output: cached benchmarks are then rebuilt.
GENERATOR_VERSION = "2"
SOURCE_SHAPE: tuple[int, int] = (512, 512)
CROP = 128  # field of view of every image, in source pixels
STAMP = ".dap_stamp.json"
META = "meta.json"
MIN_SIZE, MAX_SIZE = 32, 512


@dataclass(frozen=True)
class BuiltinSpec:
    """How many images each category of the built-in benchmark has."""

    train: int = 160
    val: int = 20
    test_good: int = 30
    per_family: int = 5  # defective test images per defect family
    families: tuple[str, ...] = DEFECT_FAMILIES

    @property
    def test_defect(self) -> int:
        return self.per_family * len(self.families)


SPEC = BuiltinSpec()

# stream ids that seed each split independently (so changing one count never shifts another)
_STREAM = {"train": 1, "val": 2, "test_good": 3}


def split_regions(shape: tuple[int, int] = SOURCE_SHAPE) -> dict[str, tuple[int, int, int, int]]:
    """The disjoint source regions ``[row0, col0, row1, col1)`` of train, val and test."""
    h, w = shape
    r = int(round(h * 0.625))
    c = int(round(w * 0.375))
    return {"train": (0, 0, r, w), "val": (r, 0, h, c), "test": (r, c, h, w)}


def boxes_overlap(a: Iterable[int], b: Iterable[int]) -> bool:
    """True when two half-open boxes ``[row0, col0, row1, col1)`` share a pixel."""
    a0, a1, a2, a3 = a
    b0, b1, b2, b3 = b
    return a0 < b2 and b0 < a2 and a1 < b3 and b1 < a3


def box_inside(inner: Iterable[int], outer: Iterable[int]) -> bool:
    """True when box ``inner`` lies entirely inside box ``outer``."""
    i0, i1, i2, i3 = inner
    o0, o1, o2, o3 = outer
    return o0 <= i0 and o1 <= i1 and i2 <= o2 and i3 <= o3


def load_texture(category: str) -> np.ndarray:
    """The source photograph of ``category`` as (512, 512) uint8 (``skimage.data``)."""
    import skimage.data

    if category not in BUILTIN_CATEGORIES:
        raise ValueError(f"unknown built-in category {category!r}; known: "
                         f"{', '.join(BUILTIN_CATEGORIES)}")
    img = np.asarray(getattr(skimage.data, category)())
    if img.ndim == 3:
        img = img[..., :3].mean(axis=-1).astype(np.uint8)
    return img


def _category_code(category: str) -> int:
    return zlib.crc32(category.encode())


def _seed_for(seed: int, category: str, stream: int, index: int) -> list[int]:
    """The numpy seed of one image: recorded in meta.json so a notebook can redraw it."""
    return [int(seed), _category_code(category), int(stream), int(index)]


def _crop(texture: np.ndarray, region: tuple[int, int, int, int], size: int,
          rng: np.random.Generator) -> tuple[np.ndarray, list[int], int]:
    """A random CROP x CROP crop inside ``region``, a random square symmetry, resized.

    Returns the (size, size, 3) uint8 image, its source box and the symmetry index k.
    """
    from PIL import Image

    r0, c0, r1, c1 = region
    top = int(rng.integers(r0, r1 - CROP + 1))
    left = int(rng.integers(c0, c1 - CROP + 1))
    k = int(rng.integers(0, 8))
    crop = np.rot90(texture[top:top + CROP, left:left + CROP], k % 4)
    if k >= 4:
        crop = np.fliplr(crop)
    crop = np.ascontiguousarray(crop)
    if size != CROP:
        crop = np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BICUBIC))
    rgb = np.repeat(crop[..., None], 3, axis=-1)
    return rgb, [top, left, top + CROP, left + CROP], k


def _check_args(size: int, seed: int, categories: Iterable[str]) -> tuple[str, ...]:
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be an integer in [{MIN_SIZE}, {MAX_SIZE}] "
                         f"(64, 128 and 256 are the usual ones), got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    cats = tuple(categories)
    unknown = [c for c in cats if c not in BUILTIN_CATEGORIES]
    if unknown or not cats:
        raise ValueError(f"unknown built-in categor{'y' if len(unknown) == 1 else 'ies'} "
                         f"{unknown or '(none given)'}; known: {', '.join(BUILTIN_CATEGORIES)}")
    return cats


def fingerprint(category: str, size: int, seed: int, spec: BuiltinSpec = SPEC) -> str:
    """sha256 of everything the files of one category depend on."""
    params = {"category": category, "size": size, "seed": seed, "version": GENERATOR_VERSION,
              "crop": CROP, "regions": split_regions(), "spec": dataclasses.asdict(spec)}
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def is_built(root: str | os.PathLike, category: str, size: int, seed: int = 0) -> bool:
    """True when ``<root>/<category>`` holds a complete build of exactly these parameters."""
    stamp = Path(root) / category / STAMP
    try:
        return json.loads(stamp.read_text())["fingerprint"] == fingerprint(category, size, seed)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _generate(out: Path, category: str, size: int, seed: int, spec: BuiltinSpec) -> None:
    """Write one category into the (empty) folder ``out``."""
    texture = load_texture(category)
    regions = split_regions(texture.shape)
    images: list[dict[str, Any]] = []

    def normal(split: str, folder: str, stream: str, count: int, region: str) -> None:
        for i in range(count):
            s = _seed_for(seed, category, _STREAM[stream], i)
            img, box, k = _crop(texture, regions[region], size, np.random.default_rng(s))
            rel = f"{folder}/{i:03d}.png"
            write_png(out / rel, img)
            images.append({"path": rel, "split": split, "label": 0, "defect": "good",
                           "box": box, "transform": k, "seed": s})

    normal("train", "train/good", "train", spec.train, "train")
    normal("val", "validation/good", "val", spec.val, "val")
    normal("test", "test/good", "test_good", spec.test_good, "test")
    for f_index, family in enumerate(spec.families):
        for j in range(spec.per_family):
            s = _seed_for(seed, category, 10 + f_index, j)
            rng = np.random.default_rng(s)
            clean, box, k = _crop(texture, regions["test"], size, rng)
            # stratified sizes: the j-th image of a family draws from the j-th size stratum
            scale = (j + rng.uniform()) / spec.per_family
            d = draw_defect(clean, family, scale, rng)
            rel, mask_rel, clean_rel = (f"test/{family}/{j:03d}.png",
                                        f"ground_truth/{family}/{j:03d}_mask.png",
                                        f"clean/{family}/{j:03d}.png")
            write_png(out / rel, d.image)
            write_png(out / mask_rel, d.mask)
            write_png(out / clean_rel, clean)
            images.append({"path": rel, "split": "test", "label": 1, "defect": family,
                           "mask": mask_rel, "clean": clean_rel,
                           "area_fraction": round(d.area_fraction, 6), "box": box,
                           "transform": k, "seed": s, "params": d.params})
    meta = {
        "dataset": "builtin", "category": category, "size": size, "seed": seed,
        "version": GENERATOR_VERSION, "fingerprint": fingerprint(category, size, seed, spec),
        "source": f"skimage.data.{category}", "source_shape": list(texture.shape),
        "crop_px": CROP,
        "box_convention": "[row0, col0, row1, col1), half-open, in source pixels",
        "transform_convention": "k: np.rot90(crop, k % 4), then np.fliplr if k >= 4",
        "regions": {k_: list(v) for k_, v in regions.items()},
        "counts": {"train": spec.train, "val": spec.val, "test_good": spec.test_good,
                   "test_defect": spec.test_defect},
        "families": list(spec.families),
        "images": images,
    }
    (out / META).write_text(json.dumps(meta, indent=1))
    # the stamp is the last file: a folder with a stamp is complete
    (out / STAMP).write_text(json.dumps({"fingerprint": meta["fingerprint"], "size": size,
                                         "seed": seed, "version": GENERATOR_VERSION}))


def _clean_stale(root: Path, category: str, max_age_s: float = 3600.0) -> None:
    """Remove temporary folders an interrupted (killed) build left behind.

    PID-tagged ones (``.<category>.tmp-<pid>-<token>``, :mod:`dap.io`) as soon as their
    process is dead, never those of a live process; untagged ones of older dap versions
    (``tempfile.mkdtemp`` names) after an hour.
    """
    for kind in ("tmp", "old"):
        clean_stale(root, f".{category}.{kind}-*")
    now = time.time()
    for p in root.glob(f".{category}.*-*"):
        try:
            if tag_pid(p.name) is None and p.is_dir() and now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def _build_category(root: Path, category: str, size: int, seed: int, force: bool,
                    spec: BuiltinSpec) -> str:
    dest = root / category
    if not force and is_built(root, category, size, seed):
        return "cached"
    if dest.exists() and not (dest / STAMP).exists():
        raise ValueError(f"{dest} exists but was not written by 'dap data builtin' (no {STAMP}); "
                         "remove it or choose another --root")
    _clean_stale(root, category)
    tmp = make_temp_dir(root, category, "tmp")
    try:
        _generate(tmp, category, size, seed, spec)
        if is_built(root, category, size, seed):  # a concurrent build finished first
            shutil.rmtree(tmp, ignore_errors=True)
            return "cached"
        if dest.exists():  # a build with other parameters: swap it out, then delete it
            old = make_temp_dir(root, category, "old")
            os.rename(dest, old / category)
            os.rename(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.rename(tmp, dest)
            except OSError:  # dest appeared meanwhile (a concurrent build)
                if not is_built(root, category, size, seed):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
                return "cached"
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return "written"


def write_builtin(root: str | os.PathLike, size: int = 64, seed: int = 0,
                  categories: Iterable[str] = BUILTIN_CATEGORIES, force: bool = False,
                  progress: bool = True) -> dict[str, str]:
    """Write (or reuse) the built-in benchmark under ``root`` in MVTec AD layout.

    Parameters
    ----------
    root : folder that will hold ``<root>/<category>/...`` (created if missing)
    size : image side in pixels, in [32, 512] (64 for ``ci``, 128 ``cpu``, 256 ``full``)
    seed : non-negative integer; the same seed gives byte-identical files
    categories : any of :data:`BUILTIN_CATEGORIES`
    force : rebuild even when the stamp matches
    progress : show a tqdm bar (quiet under ``TQDM_DISABLE=1``)

    Returns
    -------
    dict
        ``{category: "written" | "cached"}``.
    """
    cats = _check_args(size, seed, categories)
    root = Path(root).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    status = {}
    for cat in progress_bar(cats, progress, desc=f"built-in benchmark {size}px"):
        status[cat] = _build_category(root, cat, size, seed, force, SPEC)
    return status


def default_builtin_root(size: int = 64, seed: int = 0) -> Path:
    """``data_root()/builtin/<size>`` (``.../<size>-seed<S>`` for a seed other than 0)."""
    from dap.config import data_root

    name = str(size) if seed == 0 else f"{size}-seed{seed}"
    return Path(data_root()) / "builtin" / name


def builtin_root(size: int = 64, root: str | os.PathLike | None = None, seed: int = 0,
                 categories: Iterable[str] = BUILTIN_CATEGORIES, progress: bool = False
                 ) -> Path:
    """Make sure the built-in benchmark exists and return its root.

    ``root`` defaults to :func:`default_builtin_root`. Costs one stamp read per category
    when the benchmark is already there.

    Examples
    --------
    >>> from dap.data import AnomalyDataset, builtin_root
    >>> ds = AnomalyDataset(builtin_root(64), "brick", split="test", image_size=64)
    """
    root = Path(root) if root is not None else default_builtin_root(size, seed)
    write_builtin(root, size=size, seed=seed, categories=categories, progress=progress)
    return root.expanduser().resolve()


def load_meta(root: str | os.PathLike, category: str) -> dict[str, Any]:
    """The ``meta.json`` of one built-in category (see the module docstring)."""
    path = Path(root) / category / META
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; build the benchmark with: "
                                f"python -m dap data builtin --root {root}")
    return json.loads(path.read_text())


__all__ = [
    "GENERATOR_VERSION",
    "BUILTIN_CATEGORIES",
    "BuiltinSpec",
    "SPEC",
    "CROP",
    "split_regions",
    "boxes_overlap",
    "box_inside",
    "load_texture",
    "fingerprint",
    "is_built",
    "write_builtin",
    "builtin_root",
    "default_builtin_root",
    "load_meta",
]
