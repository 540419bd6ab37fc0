"""dap.data.foreground under uneven lighting: the background's illumination is fitted and
removed before the threshold (the coins of notebook 05 and a synthetic case with a known
answer)."""

import numpy as np
from scipy import ndimage

from dap.data.foreground import _background_surface, _split, foreground_mask


def _lit_discs(size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Bright discs (+50 over their background) on a background lit from the top
    (180 at the top row, 40 at the bottom): the bottom discs (~90) are darker than the top
    background, so no single threshold separates them. Returns (image uint8, true mask)."""
    y, x = np.mgrid[0:size, 0:size]
    background = 180 - 140 * y / (size - 1)
    truth = np.zeros((size, size), bool)
    for cy in (24, 64, 104):
        for cx in (24, 64, 104):
            truth |= (y - cy) ** 2 + (x - cx) ** 2 <= 12 ** 2
    return np.clip(background + 50 * truth, 0, 255).astype(np.uint8), truth


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_uneven_lighting_is_removed_before_the_threshold():
    image, truth = _lit_discs()
    fg = foreground_mask(image, "bright")
    assert _iou(fg, truth) > 0.8                       # dilated by ~1 % of the side
    assert ndimage.label(fg)[1] == 9
    # the check can fail: one global threshold (the previous rule) misses it badly
    assert _iou(_split(image.astype(np.float32), "bright"), truth) < 0.6


def test_background_surface_recovers_a_quadratic_exactly():
    y, x = np.mgrid[0:40, 0:50].astype(np.float64)
    surface = 3 + 0.5 * x - 0.2 * y + 0.01 * x * x + 0.003 * x * y - 0.004 * y * y
    background = np.ones_like(surface, bool)
    background[10:20, 10:30] = False                   # an "object" the fit must ignore
    gray = surface + 100 * ~background
    np.testing.assert_allclose(_background_surface(gray, background), surface, atol=1e-8)


def test_evenly_lit_object_is_unchanged_and_coins_lose_the_bright_band():
    from skimage import data

    flat = np.full((64, 64), 30, np.uint8)
    flat[16:48, 16:48] = 200
    assert foreground_mask(flat, "auto")[20:44, 20:44].all()
    assert not foreground_mask(flat, "auto")[:8].any()
    coins = data.coins()
    side = min(coins.shape)
    top, left = (coins.shape[0] - side) // 2, (coins.shape[1] - side) // 2
    square = coins[top:top + side, left:left + side]    # as notebook 05 shows it
    fg = foreground_mask(square, "bright")
    assert fg[:10].mean() < 0.2                        # the lit band along the top
    assert ndimage.label(fg)[1] >= 18                  # the coins, one component each
