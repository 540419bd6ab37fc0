"""Small plotting helpers shared by the notebooks (d2l-style).

Every function returns a matplotlib ``Figure`` and accepts ``ax=`` where one axis makes sense;
nothing here calls ``plt.show()``. Images are ``(C, H, W)`` or ``(B, C, H, W)`` tensors/arrays in
[-1, 1] (dap's convention) unless ``value_range`` says otherwise.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure


def to_numpy_image(x: torch.Tensor | np.ndarray, value_range: tuple[float, float] = (-1.0, 1.0)
                   ) -> np.ndarray:
    """A ``(C, H, W)`` / ``(H, W)`` image as an ``(H, W, 3)`` or ``(H, W)`` float array in [0, 1]."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=np.float32)
    lo, hi = value_range
    x = (x - lo) / (hi - lo)
    if x.ndim == 3:
        if x.shape[0] in (1, 3):
            x = np.moveaxis(x, 0, -1)
        if x.shape[-1] == 1:
            x = x[..., 0]
    return np.clip(x, 0.0, 1.0)


def show_images(
    images: Sequence[torch.Tensor | np.ndarray] | torch.Tensor,
    titles: Sequence[str] | None = None,
    ncols: int | None = None,
    value_range: tuple[float, float] = (-1.0, 1.0),
    cmap: str = "gray",
    size: float = 2.2,
    suptitle: str | None = None,
) -> Figure:
    """A grid of images with optional titles; returns the figure."""
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        images = list(images)
    images = list(images)
    n = len(images)
    ncols = ncols or n
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + 0.3),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = to_numpy_image(images[i], value_range)
        ax.imshow(img, cmap=cmap if img.ndim == 2 else None, vmin=0, vmax=1)
        if titles is not None and i < len(titles):
            ax.set_title(titles[i], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


MARKER_POINTS = 50  # plot_curves marks the points of curves with at most this many


def plot_curves(
    x: Sequence[float] | np.ndarray,
    ys: dict[str, Sequence[float] | np.ndarray],
    xlabel: str = "",
    ylabel: str = "",
    title: str | None = None,
    ax: plt.Axes | None = None,
    logy: bool = False,
    spread: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> Figure:
    """Line plot of several named curves over a shared x; ``spread`` adds shaded bands.

    Points are marked only on short curves (at most :data:`MARKER_POINTS` x values, e.g. a
    sweep over t): on a 1,000-point schedule markers would merge into a thick line."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
    else:
        fig = ax.figure
    for name, y in ys.items():
        (line,) = ax.plot(x, y, marker="o" if len(x) <= MARKER_POINTS else None, ms=3, label=name)
        if spread and name in spread:
            lo, hi = spread[name]
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    if len(ys) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
