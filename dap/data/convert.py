"""Convert VisA and DAGM 2007 to the MVTec AD layout that :class:`dap.data.AnomalyDataset` reads.

VisA (1-class split, as in the VisA paper and the diffusion AD papers)
    ``split_csv/1cls.csv`` (columns ``object,split,label,image,mask``, paths relative to the
    VisA root) decides everything: ``train``/``normal`` -> ``<obj>/train/good``,
    ``test``/``normal`` -> ``<obj>/test/good``, ``test``/``anomaly`` -> ``<obj>/test/bad`` with
    its mask binarised (``!= 0`` -> 255) to ``<obj>/ground_truth/bad/<name>_mask.png``.

DAGM 2007
    ``ClassN/Train`` and ``ClassN/Test`` hold ``*.PNG`` images; a defective image ``XXXX.PNG``
    has a weak elliptical label ``Label/XXXX_label.PNG``, a normal one has none. Train normal
    -> ``ClassN/train/good``; Test normal -> ``ClassN/test/good``; Test defective ->
    ``ClassN/test/defect`` with the ellipse as mask. Defective *training* images are left out
    (unsupervised training sees normal images only); their number is reported.

Both write into a hidden temporary folder ``.<dst>.convert-<pid>-<token>`` next to ``dst`` and
rename it when complete (:func:`dap.io.atomic_path`); such folders of killed runs are removed
first. The names in VisA's CSV come from an archive: object names must be one safe file name
and image / mask paths relative, without ``..`` (:class:`dap.data.fetch.UnsafeNameError`).
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import shutil
from pathlib import Path, PurePosixPath
from typing import Iterator, Literal

from dap.data.fetch import UnsafeNameError, check_name
from dap.data.imageio import is_image_file, read_mask, write_png
from dap.io import atomic_path, clean_stale
from dap.progress import progress_bar

Mode = Literal["copy", "move", "link"]


def _transfer(src: Path, dst: Path, mode: Mode) -> None:
    if dst.exists():
        raise ValueError(f"two source files map to {dst}; the source tree is not as expected")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if mode == "move":
        os.replace(src, dst)
    elif mode == "link":
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    else:
        shutil.copy2(src, dst)


def _binarise(src: Path, dst: Path) -> None:
    if dst.exists():
        raise ValueError(f"two masks map to {dst}; the source tree is not as expected")
    write_png(dst, read_mask(src))


@contextlib.contextmanager
def _atomic_output(dst: Path) -> Iterator[Path]:
    """Yield a new PID-tagged temp folder next to ``dst``; rename it to ``dst`` on success."""
    if dst.exists():
        raise FileExistsError(f"conversion target {dst} already exists")
    dst.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(dst.parent, f".{dst.name}.convert-*")
    with atomic_path(dst, kind="convert") as tmp:
        tmp.mkdir()
        yield tmp


def _csv_path(base: Path, value: str, csv_path: Path, column: str) -> Path:
    """``base / value`` for a relative path from the CSV that cannot leave ``base``."""
    raw = value.replace("\\", "/")
    parts = PurePosixPath(raw).parts
    if (not raw or "\x00" in raw or raw.startswith("/") or re.match(r"^[A-Za-z]:", raw)
            or ".." in parts):
        raise UnsafeNameError(f"{csv_path}: the {column} path {value!r} is absolute or contains "
                              "'..'; refused before anything was written (the archive is "
                              "damaged or not VisA)")
    return base.joinpath(*parts)


def find_visa_csv(src: str | os.PathLike) -> Path:
    """``split_csv/1cls.csv`` inside ``src`` (at most two folders deep)."""
    src = Path(src)
    for pattern in ("split_csv/1cls.csv", "*/split_csv/1cls.csv", "*/*/split_csv/1cls.csv"):
        hits = sorted(src.glob(pattern))
        if hits:
            return hits[0]
    raise FileNotFoundError(f"no split_csv/1cls.csv under {src}: is this the unpacked VisA "
                            "archive (VisA_20220922.tar)?")


def convert_visa(src: str | os.PathLike, dst: str | os.PathLike, mode: Mode = "copy",
                 progress: bool = True) -> dict[str, dict[str, int]]:
    """Convert raw VisA under ``src`` into the 1-class MVTec layout in the new folder ``dst``.

    Returns ``{object: {"train": n, "test_good": n, "test_defect": n}}``.
    """
    csv_path = find_visa_csv(src)
    base = csv_path.parent.parent
    dst = Path(dst)
    counts: dict[str, dict[str, int]] = {}
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"object", "split", "label", "image", "mask"}
    if not rows or not need <= set(rows[0]):
        raise ValueError(f"{csv_path}: expected the columns {sorted(need)}")
    # every row is checked before anything is moved or written
    plan: list[tuple[str, str, Path, Path | None]] = []
    for row in rows:
        obj, split, label = row["object"].strip(), row["split"].strip(), row["label"].strip()
        check_name(obj, f"{csv_path}: the object name")
        image = _csv_path(base, row["image"].strip(), csv_path, "image")
        if not image.is_file():
            raise FileNotFoundError(f"{csv_path} lists {image}, which does not exist")
        mask = None
        if split == "test" and label == "anomaly":
            mask = (_csv_path(base, row["mask"].strip(), csv_path, "mask")
                    if row["mask"].strip() else None)
            if mask is None or not mask.is_file():
                raise FileNotFoundError(f"{csv_path}: anomalous image {image} has no mask "
                                        f"file ({mask})")
            kind = "bad"
        elif split in ("train", "test") and label == "normal":
            kind = split
        else:
            raise ValueError(f"{csv_path}: unexpected split/label {split!r}/{label!r} for "
                             f"{image}")
        plan.append((obj, kind, image, mask))
    with _atomic_output(dst) as out:
        for obj, kind, image, mask in progress_bar(plan, progress, desc="VisA -> MVTec layout",
                                                   unit="image"):
            c = counts.setdefault(obj, {"train": 0, "test_good": 0, "test_defect": 0})
            if kind == "train":
                _transfer(image, out / obj / "train" / "good" / image.name, mode)
                c["train"] += 1
            elif kind == "test":
                _transfer(image, out / obj / "test" / "good" / image.name, mode)
                c["test_good"] += 1
            else:
                _transfer(image, out / obj / "test" / "bad" / image.name, mode)
                _binarise(mask, out / obj / "ground_truth" / "bad" / f"{image.stem}_mask.png")
                c["test_defect"] += 1
    return counts


_CLASS = re.compile(r"^Class(\d+)$", re.IGNORECASE)


def _sub(folder: Path, name: str) -> Path | None:
    for p in folder.iterdir():
        if p.is_dir() and p.name.lower() == name.lower():
            return p
    return None


def find_dagm_classes(src: str | os.PathLike) -> dict[str, Path]:
    """``{"Class1": path, ...}``: folders named ClassN with Train and Test inside (3 deep)."""
    src = Path(src)
    found: dict[str, Path] = {}
    for depth in ("*", "*/*", "*/*/*"):
        for p in sorted(src.glob(depth)):
            m = _CLASS.match(p.name)
            if m and p.is_dir() and _sub(p, "Train") and _sub(p, "Test"):
                found.setdefault(f"Class{int(m.group(1))}", p)
    return found


def _dagm_split(folder: Path) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """(normal images, [(defective image, its label)]) of one DAGM Train or Test folder."""
    label_dir = _sub(folder, "Label")
    labels = {}
    if label_dir is not None:
        for p in label_dir.iterdir():
            m = re.match(r"^(.*)_label$", p.stem, re.IGNORECASE)
            if m and is_image_file(p):
                labels[m.group(1)] = p
    normal, defective = [], []
    for p in sorted(folder.iterdir()):
        if p.is_file() and is_image_file(p):
            if p.stem in labels:
                defective.append((p, labels[p.stem]))
            else:
                normal.append(p)
    return normal, defective


def convert_dagm(src: str | os.PathLike, dst: str | os.PathLike, mode: Mode = "copy",
                 progress: bool = True) -> dict[str, dict[str, int]]:
    """Convert DAGM 2007 under ``src`` into MVTec layout in the new folder ``dst``.

    Returns ``{class: {"train", "test_good", "test_defect", "train_defect_skipped"}}``.
    """
    classes = find_dagm_classes(src)
    if not classes:
        raise FileNotFoundError(f"no DAGM class folders (Class1 ... Class10, each with Train/ "
                                f"and Test/) under {src}")
    counts: dict[str, dict[str, int]] = {}
    ordered = sorted(classes.items(), key=lambda kv: int(kv[0][5:]))
    with _atomic_output(Path(dst)) as out:
        for name, folder in progress_bar(ordered, progress, desc="DAGM -> MVTec layout",
                                         unit="class"):
            train_normal, train_bad = _dagm_split(_sub(folder, "Train"))
            test_normal, test_bad = _dagm_split(_sub(folder, "Test"))
            for p in train_normal:
                _transfer(p, out / name / "train" / "good" / p.name, mode)
            for p in test_normal:
                _transfer(p, out / name / "test" / "good" / p.name, mode)
            for p, label in test_bad:
                _transfer(p, out / name / "test" / "defect" / p.name, mode)
                _binarise(label, out / name / "ground_truth" / "defect" / f"{p.stem}_mask.png")
            counts[name] = {"train": len(train_normal), "test_good": len(test_normal),
                            "test_defect": len(test_bad), "train_defect_skipped": len(train_bad)}
    return counts


__all__ = ["convert_visa", "convert_dagm", "find_visa_csv", "find_dagm_classes"]
