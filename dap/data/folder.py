"""One dataset class for every MVTec-layout folder: MVTec AD, MPDD, VisA and DAGM (after
``data_scripts/`` converted them) and dap's built-in benchmark.

Layout read (MVTec AD)::

    <root>/<category>/train/good/*.png
    <root>/<category>/validation/good/*.png        optional (the built-in benchmark has it)
    <root>/<category>/test/good/*.png
    <root>/<category>/test/<defect>/*.png
    <root>/<category>/ground_truth/<defect>/<name>_mask.png   (or <name>.png)
    <root>/<category>/clean/<defect>/<name>.png    optional (built-in: the pre-defect image)

Splits. ``"train"`` and ``"val"`` are both normal images. When the category has its own
``validation/good`` folder, ``val`` is that folder and ``train`` is all of ``train/good``;
otherwise (MVTec AD, VisA, MPDD, DAGM have none) ``val`` is a deterministic ``val_fraction``
of ``train/good`` drawn with ``split_seed`` and ``train`` is the rest. Use ``val`` (plus
synthetic anomalies) to select checkpoints and hyperparameters; ``"test"`` never is.

Items (every key present in every item, so ``torch.utils.data.default_collate`` batches them):

=============== =========================================================================
``image``       (3, H, W) float32 in [-1, 1]; grayscale repeated on 3 channels, alpha dropped
``mask``        (1, H, W) float32 in {0, 1}; zeros for normal images
``label``       int, 0 normal, 1 anomalous
``defect``      str, ``"good"`` or the defect folder name
``path``        str, the image file
``clean``       (3, H, W) float32 in [-1, 1]: the pre-defect image when the dataset has one
                (built-in defects), else the image itself
``has_clean``   bool, True when ``clean`` is a real pre-defect image
``foreground``  (1, H, W) float32 in {0, 1} (:mod:`dap.data.foreground`; ones for textures)
=============== =========================================================================

Resizing: images with antialiased bilinear interpolation (Pillow); masks with
``mask_resize="nearest"`` (default: stays exactly binary, no border erosion) or
``"bilinear"`` (interpolate then keep >= 0.5). Taught in ``notebooks/06_train_and_evaluate``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

import numpy as np
import torch
from torch.utils.data import Dataset

from dap.data.foreground import FOREGROUND_MODES, cached_foreground
from dap.data.imageio import (DataError, MaskResize, list_images, read_image, read_mask,
                              resize_image, resize_mask)
from dap.data.registry import BUILTIN, DATASETS, DatasetInfo, find_dataset, known_categories_text

Split = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = ("train", "val", "test")
DATASET_NAMES: tuple[str, ...] = (*DATASETS, "folder")


class DatasetItem(TypedDict):
    """One item of :class:`AnomalyDataset` (shapes for ``image_size = (H, W)``)."""

    image: torch.Tensor
    mask: torch.Tensor
    label: int
    defect: str
    path: str
    clean: torch.Tensor
    has_clean: bool
    foreground: torch.Tensor


@dataclass(frozen=True)
class Sample:
    """One file of a split: the image, its label and (for defects) mask and clean image."""

    path: Path
    label: int
    defect: str
    mask_path: Path | None = None
    clean_path: Path | None = None


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [-1, 1]: x / 127.5 - 1."""
    t = torch.from_numpy(np.require(image, requirements=("C", "W"))).permute(2, 0, 1).float()
    return t / 127.5 - 1.0


def _mask_tensor(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]


def _find_mask(cat_dir: Path, defect: str, image: Path) -> Path | None:
    folder = cat_dir / "ground_truth" / defect
    for name in (f"{image.stem}_mask.png", f"{image.stem}.png", f"{image.stem}_mask.PNG",
                 f"{image.stem}.PNG"):
        if (folder / name).is_file():
            return folder / name
    return None


def _same_size(path: Path, array: np.ndarray, image_path: Path, image: np.ndarray,
               what: str) -> None:
    """Refuse a mask / clean image whose size differs from its image (no silent stretching)."""
    (h, w), (ih, iw) = array.shape[:2], image.shape[:2]
    if (h, w) != (ih, iw):
        raise DataError(f"{what} {path} is {w} x {h} px but its image {image_path} is {iw} x "
                        f"{ih} px; dap does not stretch a {what} to fit. Make both the same size "
                        f"(e.g. restore the {what} from the original dataset archive), or remove "
                        "the pair")


def carve_validation(n: int, fraction: float, seed: int) -> np.ndarray:
    """Indices (sorted) of the ``round(fraction * n)`` (at least 1) validation images among
    ``n`` sorted training files, drawn with ``numpy.random.default_rng(seed)``."""
    if n == 0 or fraction <= 0:
        return np.zeros(0, dtype=int)
    k = min(max(int(round(fraction * n)), 1), n - 1) if n > 1 else 0
    return np.sort(np.random.default_rng(seed).permutation(n)[:k])


class AnomalyDataset(Dataset):
    """An MVTec-layout anomaly detection dataset (see the module docstring for layout and items).

    Parameters
    ----------
    root : folder holding ``<root>/<category>/...``
    category : e.g. ``"bottle"`` (MVTec AD), ``"pcb1"`` (VisA), ``"Class3"`` (DAGM),
        ``"brick"`` (built-in)
    split : ``"train"``, ``"val"`` or ``"test"``
    image_size : output side (int) or ``(H, W)``
    dataset : ``"mvtec"``, ``"visa"``, ``"mpdd"``, ``"dagm"``, ``"builtin"``, or ``"folder"``
        for your own data (no category check); ``None`` infers it from the category name
    val_fraction, split_seed : the validation carve from ``train/good`` (when the category has
        no ``validation/good`` folder)
    mask_resize : ``"nearest"`` or ``"bilinear"`` (then >= 0.5), see :func:`dap.data.imageio.resize_mask`
    foreground : ``"full"``, ``"auto"``, ``"bright"`` or ``"dark"``; ``None`` takes the
        dataset's default (``"full"`` for textures, ``"auto"`` for objects and own folders)
    with_foreground : compute the ``foreground`` key (ones when False)
    cache_foreground : store object foregrounds under ``<root>/<category>/.dap_foreground``

    Raises
    ------
    FileNotFoundError
        Missing root / category / split folder (the message gives the command that fetches the
        data), an empty image folder, a defective image without its mask.
    ValueError
        Unknown category (the message lists the known ones), split, dataset or option.

    Reading an item raises :class:`~dap.data.imageio.ImageReadError` for an unreadable,
    truncated or oversized file and :class:`~dap.data.imageio.DataError` for a mask or clean
    image whose size differs from its image (both ``ValueError``; the message names the file).
    """

    def __init__(self, root: str | os.PathLike, category: str, split: Split = "train",
                 image_size: int | tuple[int, int] = 256, *, dataset: str | None = None,
                 val_fraction: float = 0.1, split_seed: int = 0,
                 mask_resize: MaskResize = "nearest", foreground: str | None = None,
                 with_foreground: bool = True, cache_foreground: bool = True) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if mask_resize not in ("nearest", "bilinear"):
            raise ValueError(f"mask_resize must be 'nearest' or 'bilinear', got {mask_resize!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        if len(image_size) != 2 or min(image_size) < 1:
            raise ValueError(f"image_size must be a positive int or (H, W), got {image_size!r}")
        self.root = Path(root).expanduser()
        self.category = category
        self.split = split
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.mask_resize = mask_resize
        self.val_fraction = float(val_fraction)
        self.split_seed = int(split_seed)
        self.info = self._resolve_dataset(dataset)
        self.dataset = self.info.name if self.info is not None else "folder"
        if foreground is None:
            foreground = self.info.foreground_mode(category) if self.info is not None else "auto"
        if foreground not in FOREGROUND_MODES:
            raise ValueError(f"foreground must be one of {FOREGROUND_MODES}, got {foreground!r}")
        self.foreground_mode = foreground
        self.with_foreground = with_foreground
        self.cache_foreground = cache_foreground
        self.category_dir = self._check_folders()
        self.samples: list[Sample] = self._list_samples()

    # ----------------------------------------------------------------------------------------
    def _how_to_get(self) -> str:
        info = self.info
        if info is None:
            return "put an MVTec-layout folder there"
        return f"get {info.title} with: {info.how_to_get(str(self.root))}"

    def _resolve_dataset(self, dataset: str | None) -> DatasetInfo | None:
        if dataset is not None:
            key = dataset.strip().lower()
            if key not in DATASET_NAMES:
                raise ValueError(f"dataset must be one of {DATASET_NAMES}, got {dataset!r}")
            if key == "folder":
                return None
            info = DATASETS[key]
            if self.category not in info.counts:
                raise ValueError(f"unknown {info.title} category {self.category!r}; known: "
                                 f"{', '.join(info.categories)}")
            return info
        if (self.root / self.category / ".dap_stamp.json").is_file():
            return BUILTIN
        info = find_dataset(self.category)
        if info is None:
            raise ValueError(f"unknown category {self.category!r}. Known categories: "
                             f"{known_categories_text()}. For your own MVTec-layout data pass "
                             "dataset='folder'.")
        return info

    def _check_folders(self) -> Path:
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root {self.root} does not exist; "
                                    f"{self._how_to_get()}")
        cat_dir = self.root / self.category
        if not cat_dir.is_dir():
            raise FileNotFoundError(f"category folder {cat_dir} does not exist; "
                                    f"{self._how_to_get()}")
        return cat_dir

    def _images_in(self, folder: Path) -> list[Path]:
        if not folder.is_dir():
            raise FileNotFoundError(f"folder {folder} does not exist (expected the MVTec AD "
                                    f"layout); {self._how_to_get()}")
        files = list_images(folder)
        if not files:
            raise FileNotFoundError(f"no images (.png, .jpg, .bmp, .tif) in {folder}")
        return files

    def _list_samples(self) -> list[Sample]:
        cat = self.category_dir
        if self.split in ("train", "val"):
            own_val = cat / "validation" / "good"
            if own_val.is_dir():
                files = self._images_in(own_val if self.split == "val" else cat / "train" / "good")
            else:
                train = self._images_in(cat / "train" / "good")
                chosen = set(carve_validation(len(train), self.val_fraction, self.split_seed))
                if self.split == "val" and not chosen:
                    raise ValueError(f"{cat} has no validation/good folder and val_fraction is "
                                     f"{self.val_fraction} with {len(train)} training images: "
                                     "no validation images")
                files = [p for i, p in enumerate(train) if (i in chosen) == (self.split == "val")]
            return [Sample(p, 0, "good") for p in files]
        test = cat / "test"
        if not test.is_dir():
            raise FileNotFoundError(f"folder {test} does not exist (expected the MVTec AD "
                                    f"layout); {self._how_to_get()}")
        defects = sorted(d.name for d in test.iterdir() if d.is_dir() and d.name != "good"
                         and not d.name.startswith("."))
        samples = []
        if (test / "good").is_dir():
            samples += [Sample(p, 0, "good") for p in list_images(test / "good")]
        for defect in defects:
            for p in list_images(test / defect):
                mask = _find_mask(cat, defect, p)
                if mask is None:
                    raise FileNotFoundError(
                        f"defective image {p} has no mask: expected "
                        f"{cat / 'ground_truth' / defect / (p.stem + '_mask.png')}")
                clean = cat / "clean" / defect / f"{p.stem}.png"
                samples.append(Sample(p, 1, defect, mask, clean if clean.is_file() else None))
        if not samples:
            raise FileNotFoundError(f"no images (.png, .jpg, .bmp, .tif) in {test} or its "
                                    "sub-folders")
        return samples

    # ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        """The 0/1 label of every item, in order (no image is read)."""
        return [s.label for s in self.samples]

    @property
    def defects(self) -> list[str]:
        """The defect name of every item, in order (``"good"`` for normal images)."""
        return [s.defect for s in self.samples]

    def __getitem__(self, index: int) -> DatasetItem:
        s = self.samples[index]
        raw = read_image(s.path)
        image = resize_image(raw, self.image_size)
        if s.mask_path is not None:
            mask = read_mask(s.mask_path)
            _same_size(s.mask_path, mask, s.path, raw, "mask")
            mask = resize_mask(mask, self.image_size, self.mask_resize)
        else:
            mask = np.zeros(self.image_size, dtype=bool)
        if s.clean_path is not None:
            clean_raw = read_image(s.clean_path)
            _same_size(s.clean_path, clean_raw, s.path, raw, "clean image")
            clean = _to_tensor(resize_image(clean_raw, self.image_size))
        else:
            clean = None
        image_t = _to_tensor(image)
        if not self.with_foreground or self.foreground_mode == "full":
            fg = np.ones(self.image_size, dtype=bool)
        else:
            fg = cached_foreground(self.category_dir, s.path, self.foreground_mode,
                                   load=lambda: raw, write=self.cache_foreground,
                                   shape=raw.shape[:2])
            fg = resize_mask(fg, self.image_size, "nearest")
        return DatasetItem(image=image_t, mask=_mask_tensor(mask), label=s.label,
                           defect=s.defect, path=str(s.path),
                           clean=clean if clean is not None else image_t.clone(),
                           has_clean=clean is not None, foreground=_mask_tensor(fg))

    def __repr__(self) -> str:
        n_bad = sum(self.labels)
        return (f"AnomalyDataset({self.dataset}/{self.category}, split={self.split!r}, "
                f"{len(self)} images ({len(self) - n_bad} normal, {n_bad} anomalous), "
                f"size={self.image_size}, root={str(self.root)!r})")

    def summary(self) -> dict[str, Any]:
        """Counts per defect folder, for a quick look in a notebook."""
        out: dict[str, Any] = {}
        for s in self.samples:
            out[s.defect] = out.get(s.defect, 0) + 1
        return out


__all__ = ["AnomalyDataset", "DatasetItem", "Sample", "SPLITS", "carve_validation"]
