"""Data specs: ``DATASET:CATEGORY`` strings (``builtin:brick``, ``mvtec:bottle``) and their splits.

The built-in benchmark is written on first use; the other datasets are read from
``$DAP_DATA/<dataset>`` (or a given root), where ``python -m dap data download`` puts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from dap.config import ConfigError, data_root


@dataclass
class DataSpec:
    """One category of one dataset and the folder that holds the dataset."""

    dataset: str
    category: str
    root: Path

    def __str__(self) -> str:
        return f"{self.dataset}:{self.category}"

    @property
    def slug(self) -> str:
        """``dataset-category``: a file-name-safe form of the spec."""
        return f"{self.dataset}-{self.category}"


def parse_data(spec: str, image_size: int, data_root_override: str | None = None) -> DataSpec:
    """``builtin:brick`` -> the built-in benchmark at ``image_size``; ``mvtec:bottle`` ->
    ``$DAP_DATA/mvtec``."""
    if ":" not in spec:
        raise ConfigError(f"data spec {spec!r} should be DATASET:CATEGORY, e.g. builtin:brick "
                          "or mvtec:bottle")
    dataset, category = spec.split(":", 1)
    dataset = dataset.lower()
    if dataset == "builtin":
        from dap.data.builtin import builtin_root

        size = image_size if image_size in (64, 128, 256) else 256
        root = builtin_root(size, root=Path(data_root_override) / "builtin" / str(size)
                            if data_root_override else None)
        return DataSpec(dataset, category, root)
    base = Path(data_root_override) if data_root_override else Path(data_root())
    return DataSpec(dataset, category, base / dataset)


def datasets(spec: DataSpec, image_size: int):
    """The train, validation and test splits (:class:`dap.data.AnomalyDataset`) of a category."""
    from dap.data.folder import AnomalyDataset

    kw = dict(image_size=image_size, dataset=spec.dataset)
    return (AnomalyDataset(spec.root, spec.category, "train", **kw),
            AnomalyDataset(spec.root, spec.category, "val", **kw),
            AnomalyDataset(spec.root, spec.category, "test", **kw))


def is_texture(dataset) -> bool:
    """Whether a dataset's category is a texture (no object foreground)."""
    return getattr(dataset, "foreground_mode", "full") == "full"


def stack(dataset, key: str) -> Tensor:
    """``dataset[i][key]`` for every item, stacked."""
    return torch.stack([dataset[i][key] for i in range(len(dataset))])


__all__ = ["DataSpec", "parse_data", "datasets", "is_texture", "stack"]
