"""Images per second: dap's batched anomaly synthesis vs a per-sample numpy reference.

Both sides run the SAME recipe (DiffusionAD eq. 12 with DRAEM's Perlin masks and 3-of-10
augmenters, texture-bank or self-augmented sources) at 256 x 256:

* ``numpy``: the straightforward way the official code (and DRAEM) does it, one sample at a
  time in a data-loader ``__getitem__``: numpy Perlin noise on the full grid,
  ``scipy.ndimage.rotate`` for the mask and the rotate augmenter, PIL's resize for the
  texture crop (on the uint8 picture, as data loaders do), a vectorised numpy RGB <-> HSV
  (matplotlib's is ~10x slower), ``np.bincount`` histograms. Written plainly, not
  deliberately slow: float32 arrays, vectorised within each image, the texture bank decoded
  once up front (as dap does).
* ``dap``: :class:`dap.synthesis.AnomalySynthesizer`, one call per batch.

Both are timed in the same process, interleaved round by round (throughput over all rounds),
on the same normal images, for texture categories (no foreground, bank sources) and object
categories (an elliptical foreground, bank or self-augmentation with p = 0.5). Exactly half of
each batch is anomalous on both sides (dap's ``exact_split=True``), so both do the same work.
The headline ratio runs dap on 1 thread, like the numpy reference (equal resources); dap on all
of torch's threads is printed next to it. With CUDA, also dap on the GPU.

The process uses fixed glibc malloc thresholds (mmap above 32 MiB, heap trimmed only above
1 GiB free) for both sides. With glibc's default, adaptive thresholds the heap of this process,
where numpy and dap rounds allocate and free batch-sized arrays in turn, is trimmed and regrown
or not depending on its allocation history: whole runs then either have ~0 or thousands of
page faults per batch (fresh pages zeroed by the kernel), which moved the ratio by up to ~30%
from one run to the next. Fixed thresholds keep freed memory in the process, on both sides
alike; ``--default-malloc`` keeps glibc's default.

    python benchmarks/synthesis.py            # full run (~10 s on 2 CPU cores)
    python benchmarks/synthesis.py --quick    # a few-second smoke run (used by the tests)
"""

from __future__ import annotations

import argparse
import ctypes
import os
import time

# Idle OpenMP threads sleep instead of spinning: on a shared machine (other jobs on the same
# cores) spinning threads make every torch op wait for a descheduled partner. Set it yourself
# to override; it has to be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import scipy.ndimage as ndi
import torch
from PIL import Image

from dap.synthesis import AnomalySynthesizer, TextureBank

# ----------------------------------------------------------------------------------------------
# The per-sample numpy reference (images (H, W, 3) float32 in [0, 1])
# ----------------------------------------------------------------------------------------------
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32)[:, :, None] / 13.0


def np_perlin(h: int, w: int, res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Gradient noise with DRAEM's fade, evaluated on the full grid."""
    angles = rng.uniform(0.0, 2 * np.pi, (res[0] + 1, res[1] + 1)).astype(np.float32)
    grad = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    u = np.arange(h, dtype=np.float32) * res[0] / h
    v = np.arange(w, dtype=np.float32) * res[1] / w
    i, j = u.astype(np.int64), v.astype(np.int64)
    fr = np.broadcast_to((u - i)[:, None], (h, w))
    fc = np.broadcast_to((v - j)[None, :], (h, w))

    def corner(a: int, b: int) -> np.ndarray:
        g = grad[i[:, None] + a, j[None, :] + b]
        return g[..., 0] * (fr - a) + g[..., 1] * (fc - b)

    fade = lambda t: t * t * t * (t * (t * 6 - 15) + 10)  # noqa: E731
    sr, sc = fade(fr), fade(fc)
    top = corner(0, 0) * (1 - sr) + corner(1, 0) * sr
    bottom = corner(0, 1) * (1 - sr) + corner(1, 1) * sr
    return np.sqrt(2.0).astype(np.float32) * (top * (1 - sc) + bottom * sc)


def np_mask(fg: np.ndarray, rng: np.random.Generator, threshold: float = 0.5,
            max_rounds: int = 8) -> np.ndarray:
    h, w = fg.shape
    for _ in range(max_rounds):
        res = (2 ** rng.integers(0, 6), 2 ** rng.integers(0, 6))
        noise = np_perlin(h, w, res, rng)
        noise = ndi.rotate(noise, rng.uniform(-90, 90), reshape=False, order=1, cval=0.0)
        m = (noise > threshold).astype(np.float32) * fg
        if m.any():
            return m
    ys, xs = np.nonzero(fg)
    k = rng.integers(len(ys))
    yy, xx = np.mgrid[:h, :w]
    r = max(1.5, min(h, w) / 16)
    return ((yy - ys[k]) ** 2 + (xx - xs[k]) ** 2 <= r * r).astype(np.float32) * fg


def _levels(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0, 1) * 255).astype(np.int64)


def np_autocontrast(x: np.ndarray, cutoff: float) -> np.ndarray:
    q = _levels(x)
    out = np.empty_like(x)
    n = q.shape[0] * q.shape[1]
    for c in range(3):
        hist = np.bincount(q[..., c].ravel(), minlength=256)
        cum = np.cumsum(hist)
        lo = int((cum <= cutoff * n).sum())
        hi = int(((n - (cum - hist)) > cutoff * n).sum()) - 1
        out[..., c] = (np.clip((q[..., c] - lo) / (hi - lo), 0, 1) if hi > lo
                       else q[..., c] / 255.0)
    return out


def np_equalize(x: np.ndarray) -> np.ndarray:
    q = _levels(x)
    out = np.empty_like(x)
    n = q.shape[0] * q.shape[1]
    for c in range(3):
        hist = np.bincount(q[..., c].ravel(), minlength=256)
        step = (n - hist[np.nonzero(hist)[0][-1]]) / 255.0
        if step <= 0:
            out[..., c] = q[..., c] / 255.0
            continue
        lut = np.minimum(np.floor((np.cumsum(hist) - hist + step / 2) / step), 255) / 255.0
        out[..., c] = lut[q[..., c]]
    return out


def np_rgb_to_hsv(x: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB in [0, 1] -> HSV, hue in [0, 1) (matplotlib's version is ~10x slower)."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = np.maximum(np.maximum(r, g), b)
    d = v - np.minimum(np.minimum(r, g), b)
    s = d / np.maximum(v, 1e-12)
    dd = np.maximum(d, 1e-12)
    h = np.where(v == r, (g - b) / dd, np.where(v == g, 2 + (b - r) / dd, 4 + (r - g) / dd))
    h = np.where(h < 0, h + 6, h) / 6
    return np.stack([h, s, v], axis=-1)


def np_hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    h, s, v = hsv[..., 0:1], hsv[..., 1:2], hsv[..., 2:3]
    k = np.array([5, 3, 1], dtype=np.float32) + 6 * h
    k = np.where(k >= 6, k - 6, k)
    return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


def np_augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """3 of the 10 augmenters, in the fixed order, with per-sample parameters."""
    chosen = set(rng.permutation(10)[:3].tolist())
    if 0 in chosen:  # gamma, per channel
        x = np.clip(x, 0, 1) ** rng.uniform(0.5, 2.0, 3).astype(np.float32)
    if 1 in chosen:  # brightness on the luma
        y = x @ LUMA
        y_new = np.clip(rng.uniform(0.8, 1.2) * y + rng.uniform(-30, 30) / 255, 0, 1)
        x = np.clip(x + (y_new - y)[..., None], 0, 1)
    if 2 in chosen:  # sharpen (PIL Sharpness)
        smooth = ndi.convolve(x, SMOOTH, mode="nearest")
        x = np.clip(smooth + rng.uniform(0, 2) * (x - smooth), 0, 1)
    if 3 in chosen:  # hue and saturation
        hsv = np_rgb_to_hsv(np.clip(x, 0, 1))
        h = hsv[..., 0] + rng.uniform(-50, 50) / 255
        hsv[..., 0] = h - np.floor(h)
        hsv[..., 1] = np.clip(hsv[..., 1] + rng.uniform(-50, 50) / 255, 0, 1)
        x = np.clip(np_hsv_to_rgb(hsv), 0, 1).astype(np.float32)
    if 4 in chosen:  # solarize with p = 0.5
        t = rng.uniform(32, 128) / 255
        if rng.random() < 0.5:
            x = np.where(x >= t, 1 - x, x)
    if 5 in chosen:  # posterize
        step = 2.0 ** (8 - rng.integers(1, 9))
        x = (np.floor(_levels(x) / step) * step / 255).astype(np.float32)
    if 6 in chosen:
        x = 1 - x
    if 7 in chosen:
        x = np_autocontrast(x, rng.uniform(0, 0.2))
    if 8 in chosen:
        x = np_equalize(x)
    if 9 in chosen:
        x = ndi.rotate(x, rng.uniform(-45, 45), axes=(1, 0), reshape=False, order=1, cval=0.0)
    return x.astype(np.float32)


def np_texture_crop(bank: list[np.ndarray], h: int, w: int, rng: np.random.Generator
                    ) -> np.ndarray:
    """A random window of a random uint8 bank picture, resized with PIL (as loaders do)."""
    src = bank[rng.integers(len(bank))]
    side = src.shape[0]
    s = rng.uniform(0.5, 1.0)
    ch, cw = max(1, round(s * h * side / max(h, w))), max(1, round(s * w * side / max(h, w)))
    top, left = rng.integers(0, side - ch + 1), rng.integers(0, side - cw + 1)
    crop = Image.fromarray(src[top:top + ch, left:left + cw]).resize((w, h), Image.BILINEAR)
    return np.asarray(crop, dtype=np.float32) / 255.0


def np_strip_shuffle(x: np.ndarray, rng: np.random.Generator, k: int = 8) -> np.ndarray:
    cols = np.array_split(np.arange(x.shape[1]), k)
    x = x[:, np.concatenate([cols[i] for i in rng.permutation(k)])]
    rows = np.array_split(np.arange(x.shape[0]), k)
    return x[np.concatenate([rows[i] for i in rng.permutation(k)])]


def np_synthesize(normal: np.ndarray, fg: np.ndarray | None, bank: list[np.ndarray],
                  is_texture: bool, anomalous: bool, rng: np.random.Generator):
    """One sample of the recipe: (image in [0, 1], mask, label)."""
    h, w, _ = normal.shape
    if not anomalous:
        return normal, np.zeros((h, w), np.float32), 0.0
    mask = np_mask(fg if fg is not None else np.ones((h, w), np.float32), rng)
    beta = rng.uniform(0.2, 0.8)
    self_aug = (not is_texture) and rng.random() < 0.5
    raw = normal if self_aug else np_texture_crop(bank, h, w, rng)
    a = np_augment(raw, rng)
    if self_aug:
        a = np_strip_shuffle(a, rng)
    m = mask[..., None]
    image = beta * (m * normal) + (1 - beta) * (m * a) + (1 - m) * normal
    return image, mask, 1.0


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------
def make_inputs(batch: int, size: int):
    import skimage.data

    tiles = [getattr(skimage.data, n)() for n in ("brick", "grass", "gravel")]
    imgs = []
    rng = np.random.default_rng(0)
    for i in range(batch):
        t = tiles[i % 3]
        top, left = rng.integers(0, t.shape[0] - size + 1), rng.integers(0, t.shape[1] - size + 1)
        g = t[top:top + size, left:left + size].astype(np.float32) / 255.0
        imgs.append(np.repeat(g[:, :, None], 3, axis=2))
    yy, xx = np.mgrid[:size, :size]
    fg = (((yy - size / 2) / (0.4 * size)) ** 2 + ((xx - size / 2) / (0.3 * size)) ** 2 <= 1)
    return np.stack(imgs), fg.astype(np.float32)


def time_numpy(images, fg, bank_np, is_texture, seed) -> float:
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    # exactly half of the batch anomalous, like dap's exact_split=True
    anomalous = rng.permutation(len(images)) < len(images) // 2
    samples = [np_synthesize(img, None if is_texture else fg, bank_np, is_texture, a, rng)
               for img, a in zip(images, anomalous)]
    # collate into a batch, as a data loader does before the training step
    np.stack([s[0] for s in samples]), np.stack([s[1] for s in samples])
    return time.perf_counter() - t0


def time_dap(synth, x, fg_t, is_texture, seed, threads=None, sync=lambda: None) -> float:
    if threads is not None:
        torch.set_num_threads(threads)
    g = torch.Generator(device=x.device).manual_seed(seed)
    sync()
    t0 = time.perf_counter()
    synth(x, None if is_texture else fg_t, generator=g, is_texture=is_texture)
    sync()
    return time.perf_counter() - t0


def steady_malloc() -> str:
    """Fixed glibc malloc thresholds for the whole process (see the module docstring)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return "malloc: default (not glibc)"
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameters, <malloc.h>
    ok = libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30)
    return "malloc: fixed thresholds" if ok else "malloc: default (mallopt failed)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a few-second smoke run")
    p.add_argument("--default-malloc", action="store_true",
                   help="keep glibc's adaptive malloc thresholds (see the module docstring)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None)
    args = p.parse_args(argv)
    malloc = "malloc: default" if args.default_malloc else steady_malloc()
    batch = args.batch or (8 if args.quick else 32)
    rounds = args.rounds or (1 if args.quick else 6)
    size = 64 if args.quick and args.size == 256 else args.size
    max_threads = torch.get_num_threads()
    threads = [1] + ([max_threads] if max_threads > 1 else [])

    images, fg = make_inputs(batch, size)
    bank = TextureBank.from_skimage()
    bank_np = list(bank.tensor(size).permute(0, 2, 3, 1).numpy())  # the same pictures
    synth = AnomalySynthesizer({"exact_split": True}, bank=bank)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous() * 2 - 1
    fg_t = torch.from_numpy(fg)[None, None].expand(batch, 1, size, size).contiguous()
    print(f"anomaly synthesis at {size}x{size}, batch {batch} (half anomalous), {rounds} "
          f"interleaved rounds per mode; torch {torch.__version__}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, {malloc}")
    for t in threads:  # warm-up: bank tensor built, allocator settled
        time_dap(synth, x, fg_t, False, 0, t)
    time_numpy(images, fg, bank_np, False, 0)
    total = {"numpy": 0.0, **{t: 0.0 for t in threads}}
    for mode, is_texture in (("texture", True), ("object", False)):
        spent = {k: 0.0 for k in total}
        for r in range(rounds):
            spent["numpy"] += time_numpy(images, fg, bank_np, is_texture, r)
            for t in threads:
                spent[t] += time_dap(synth, x, fg_t, is_texture, r, t)
        for k in total:
            total[k] += spent[k]
        n = batch * rounds
        print(f"  {mode:8s} numpy per-sample {n / spent['numpy']:7.1f} img/s | " + " | ".join(
            f"dap {t} thread{'s' * (t > 1)} {n / spent[t]:7.1f} img/s "
            f"({spent['numpy'] / spent[t]:.1f}x)" for t in threads))
    torch.set_num_threads(max_threads)
    n = 2 * batch * rounds
    print(f"numpy per-sample: {n / total['numpy']:.1f} img/s (1 thread)")
    for t in threads:
        print(f"dap batched (cpu, {t} thread{'s' * (t > 1)}): {n / total[t]:.1f} img/s")
    print(f"ratio dap/numpy (cpu): {total['numpy'] / total[1]:.1f}x "
          f"(both on 1 thread; goal >= 5x)")
    if max_threads > 1:
        print(f"ratio dap/numpy (cpu, dap on {max_threads} threads): "
              f"{total['numpy'] / total[max_threads]:.1f}x")
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        gpu_batch = 4 * batch
        xg, fgg = x.to(dev).repeat(4, 1, 1, 1), fg_t.to(dev).repeat(4, 1, 1, 1)
        sync = torch.cuda.synchronize
        time_dap(synth, xg, fgg, False, 0, sync=sync)  # warm-up
        spent = sum(time_dap(synth, xg, fgg, m, r, sync=sync) for r in range(rounds)
                    for m in (True, False))
        rate = 2 * rounds * gpu_batch / spent
        print(f"dap batched (cuda, {torch.cuda.get_device_name()}, batch {gpu_batch}): "
              f"{rate:.1f} img/s; ratio to numpy per-sample: {rate / (n / total['numpy']):.1f}x")
    else:
        print("cuda: skipped (no CUDA device)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
