# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 — Anomaly synthesis
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/dap/blob/main/notebooks/05_anomaly_synthesis.ipynb)
#
# DiffusionAD never sees a real defect during training. Its segmentation network learns from
# **synthetic anomalies** pasted onto normal images, with a mask that is exact by construction.
# The recipe comes from DRAEM (Zavrtanik et al., ICCV 2021) and is DiffusionAD's eq. 12:
#
# S = beta (M * N) + (1 - beta) (M * A) + (1 - M) * N
#
# with N the normal image, M a binary mask, A an "appearance" image and beta an opacity.
#
# **What you will learn**
# - how Perlin noise at scales 2^0 .. 2^5, a random rotation and a threshold give blob-shaped
#   masks M, and why they are multiplied by a foreground mask for objects;
# - where the appearance A comes from: a bank of texture photographs (DTD in the paper) or the
#   image itself, shuffled in strips ("self-augmentation");
# - the ten augmenters of the recipe, three per sample;
# - eq. 12 piece by piece, the role of beta, and how `dap.synthesis.AnomalySynthesizer` does all of
#   it for a whole batch at once, reproducibly from a seed.
#
# The code lives in `dap.synthesis`; this notebook only drives and looks.

# %%
import os
import sys

# How big everything is comes from one switch, the profile (dap/profiles.py): ci = seconds,
# cpu = minutes on a laptop, colab = a free Colab GPU (about an hour), full = the paper's
# sizes on a GPU (hours). Default: colab on a Colab GPU, full on another GPU, else cpu.
# To choose, uncomment the next line (or start Jupyter with DAP_PROFILE=cpu in its environment).
# os.environ["DAP_PROFILE"] = "cpu"

if "google.colab" in sys.modules:  # Colab: install dap from its repository; Colab's torch is kept
    import importlib
    import subprocess

    DAP_REPO_URL = os.environ.get("DAP_REPO_URL", "https://github.com/OWNER/dap")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    DAP_REPO_URL if DAP_REPO_URL.startswith("git+") else "git+" + DAP_REPO_URL],
                   check=True)
    importlib.invalidate_caches()

import dap
from dap import runtime

runtime.set_wait_policy()  # before torch loads: idle CPU threads sleep (see dap.runtime)
print("dap", dap.__version__, "from", os.path.dirname(dap.__file__))

# %% tags=["parameters"]
from dap.profiles import get_profile, profile

PROFILE = get_profile()          # DAP_PROFILE = ci | cpu | full | colab
S = profile(PROFILE)
SEED = 0
print(PROFILE, S)

# %%
import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from skimage import data as skdata

from dap.data import foreground_mask
from dap.synthesis import (AUGMENTER_NAMES, AUGMENTERS, KIND_NAMES, SKIMAGE_SOURCES,
                           AnomalySynthesizer, SynthesisConfig, TextureBank, blend,
                           draw_shuffle, grid_shuffle, perlin_masks, perlin_noise,
                           random_augment, rotate, shuffle_strips)
from dap.viz import show_images

SIZE = S.image_size
g = torch.Generator().manual_seed(SEED)


def bw(mask: torch.Tensor) -> torch.Tensor:
    """A {0, 1} mask mapped to [-1, 1], so `show_images` draws it black and white."""
    return mask * 2 - 1

# %% [markdown]
# ## 0. Two normal images
#
# A **texture** (scikit-image's brick photograph, the same family as dap's built-in benchmark)
# and an **object** (scikit-image's coins: bright objects on a dark background). dap images are
# `(B, 3, H, W)` tensors in [-1, 1].

# %%
def square(img: np.ndarray) -> np.ndarray:
    """The centred square of a (H, W) or (H, W, 3) array."""
    side = min(img.shape[:2])
    top, left = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2
    return img[top:top + side, left:left + side]


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) or (H, W, 3) -> (1, 3, SIZE, SIZE) in [-1, 1] (centred square, resized)."""
    t = torch.from_numpy(np.asarray(square(img), dtype=np.float32) / 255.0)
    t = t[None, None].expand(1, 3, *t.shape) if t.ndim == 2 else t.permute(2, 0, 1)[None]
    return F.interpolate(t, size=(SIZE, SIZE), mode="bilinear", antialias=True) * 2 - 1


texture = to_tensor(skdata.brick())
coins_uint8 = square(skdata.coins())
obj = to_tensor(coins_uint8)
show_images([texture[0], obj[0]], ["texture N (brick)", "object N (coins)"], size=2.6);

# %% [markdown]
# ## 1. Perlin noise at each scale
#
# Perlin ("gradient") noise puts a random unit gradient on every point of a lattice and
# interpolates smoothly between them with the fade curve 6t^5 - 15t^4 + 10t^3. The lattice has
# 2^k cells per axis, k drawn from {0, ..., 5} *independently for rows and columns*: coarse
# lattices give large blobs, fine ones small speckles, unequal ones stretched shapes.
# `perlin_noise` writes the noise as a product of small interpolation matrices, so a whole
# batch with mixed scales needs no per-pixel lookups (on a GPU one batched product; on a CPU
# one small product per sample over only the lattice lines it uses — see the docstring of
# `dap.synthesis.perlin`).

# %%
scales = torch.tensor([[1, 1], [2, 2], [4, 4], [8, 8], [16, 16], [32, 32], [2, 16], [16, 2]])
angles = torch.rand(len(scales), 33, 33, generator=g) * 2 * torch.pi
noise = perlin_noise((SIZE, SIZE), scales, angles)
print("noise range:", noise.min().item(), noise.max().item())
show_images(noise, [f"{int(r)}x{int(c)} cells" for r, c in scales], ncols=8,
            value_range=(-1, 1), cmap="RdBu", size=1.6);

# %% [markdown]
# ## 2. From noise to a mask: rotate, threshold, foreground
#
# The noise is rotated by U(-90, 90) degrees (the corners that come from outside the picture are
# 0, so they never become anomalous) and thresholded: noise > 0.5 is the anomaly (GLAD uses
# 0.3, which gives larger blobs). For an object the mask is then multiplied by the object's
# **foreground** so that defects land on the coin, not on the background. `dap.data` computes
# foregrounds with Otsu's threshold plus a little morphology; the coins are the *bright* class
# (its `"auto"` mode guesses the object from the picture's border, which coins touch here).
# The photograph is lit unevenly: its top band of background is brighter than the darkest
# coins. So before thresholding, `foreground_mask` fits a smooth (quadratic) illumination
# surface to the background and subtracts it; one global threshold would otherwise mark that
# band as "coin" and miss the dim coins.

# %%
fg = torch.from_numpy(foreground_mask(coins_uint8, "bright")).float()[None, None]
fg = F.interpolate(fg, size=(SIZE, SIZE), mode="nearest")
one = noise[3:4]                                   # the 8 x 8 lattice
turned = rotate(one, torch.tensor([35.0]))
masks = [(turned > t).float() for t in (0.5, 0.3)]
show_images([one[0], turned[0], bw(masks[0][0]), bw(masks[1][0]), bw(fg[0]),
             bw(masks[0] * fg)[0]],
            ["noise", "rotated 35 deg", "> 0.5 (DiffusionAD)", "> 0.3 (GLAD)", "foreground F",
             "M = 1[rot > 0.5] * F"], ncols=6, size=1.9);

# %% [markdown]
# `perlin_masks` does all of this for a batch, with the scales and angle drawn per sample. A
# sample whose mask comes out empty (a fine lattice, an unlucky rotation, a small foreground)
# is drawn again, only that sample; after 8 rounds it would get a small disc inside the
# foreground instead, so no "anomalous" sample is ever defect-free.

# %%
batch_masks = perlin_masks(16, (SIZE, SIZE), fg.expand(16, 1, SIZE, SIZE), g)
print("lattice (rows x cols):", batch_masks.res.tolist()[:6], "...")
print("draws needed per sample:", batch_masks.rounds.tolist())
area = batch_masks.mask.mean((1, 2, 3)) / fg.mean()
print(f"mask area as a fraction of the foreground: median {area.median():.2f}, "
      f"min {area.min():.3f}, max {area.max():.2f}")
show_images(bw(batch_masks.mask[:8]), ncols=8, size=1.3);

# %% [markdown]
# ## 3. Appearance sources A
#
# **Textures.** The paper pastes crops of the Describable Textures Dataset (DTD; once
# downloaded with `python -m dap data download dtd --root $DAP_DATA/dtd`, use
# `TextureBank.from_folder(".../dtd/images")`). Offline,
# dap uses the photographs bundled with scikit-image, except brick / grass / gravel, which are
# the *normal* classes of the built-in benchmark. We also leave out coins, our object here: an
# anomaly should not look like the normal data. The bank is loaded once and kept on the device
# as one tensor; each sample takes a random window of 50-100 % of the side.

# %%
bank = TextureBank.from_skimage([n for n in SKIMAGE_SOURCES if n != "coins"])
print(len(bank), "source images:", ", ".join(bank.names))
crops = bank.sample(8, (SIZE, SIZE), g)            # (8, 3, H, W) in [0, 1]
show_images(crops, ncols=8, value_range=(0, 1), size=1.3);

# %% [markdown]
# **Self-augmentation** (objects only, with p = 0.5): the augmented copy of the normal image
# itself, cut into 8 column strips that are shuffled, then 8 row strips that are shuffled. The
# colours and textures are the object's own, but the structure is broken. GLAD shuffles an
# 8 x 8 grid of tiles instead.

# %%
obj01 = (obj + 1) / 2
strips = shuffle_strips(obj01, draw_shuffle(1, 8, g))
tiles = grid_shuffle(obj01, draw_shuffle(1, 8, g, mode="grid"), 8)
show_images([obj01[0], strips[0], tiles[0]],
            ["object", "8 column + 8 row strips", "8 x 8 tiles (GLAD)"], value_range=(0, 1),
            size=2.4);

# %% [markdown]
# ## 4. The ten augmenters
#
# Every source passes through **3 of these 10** augmenters, chosen per sample without
# replacement. dap implements each one in torch on `(B, 3, H, W)` images in [0, 1] (the
# official code uses imgaug on uint8; the parameter ranges are imgaug's 0-255 units / 255,
# listed in `dap.synthesis.augment`). Here each is applied alone to a colourful photograph,
# with a parameter from its range:

# %%
src = (to_tensor(skdata.coffee()) + 1) / 2         # (1, 3, H, W) in [0, 1]
examples = {"gamma": (torch.tensor([[2.0, 1.0, 0.5]]),), "brightness": (torch.tensor([1.2]),
            torch.tensor([0.1])), "sharpen": (torch.tensor([2.0]),),
            "hue_saturation": (torch.tensor([50.0]), torch.tensor([50.0])),
            "solarize": (torch.tensor([0.3]),), "posterize": (torch.tensor([2]),),
            "invert": (), "autocontrast": (torch.tensor([0.1]),), "equalize": (),
            "rotate": (torch.tensor([30.0]),)}
outs = [AUGMENTERS[name].apply(src, *examples[name])[0] for name in AUGMENTER_NAMES]
show_images([src[0]] + outs, ["source"] + list(AUGMENTER_NAMES), ncols=11, value_range=(0, 1),
            size=1.35);

# %% [markdown]
# Three at random per sample, applied in the fixed order above (imgaug applied the three in
# random order). The fixed order is what lets a GPU augment a whole batch with ten calls, each
# on the sub-batch that picked that augmenter; on a CPU, where gathering sub-batches costs
# more than it saves, each sample runs its own three in place — the same result.

# %%
aug = random_augment(crops, g, num=3)
titles = [" + ".join(n[:5] for n, c in zip(AUGMENTER_NAMES, row) if c) for row in aug.chosen]
show_images(aug.image, titles, ncols=4, value_range=(0, 1), size=2.2);

# %% [markdown]
# ## 5. Eq. 12 piece by piece
#
# S = beta (M * N) + (1 - beta) (M * A) + (1 - M) * N. Inside the mask the result is a mix of
# the normal image (weight beta) and the appearance (weight 1 - beta); outside it is N exactly.
# beta ~ U[0.2, 0.8) in DiffusionAD's code, so a synthetic defect is never fully opaque and never
# invisible: the segmentation network has to find subtle anomalies as well as glaring ones.
# (Images are in [-1, 1], so the zeros of M * N and M * A show as mid-grey.)

# %%
largest = int(batch_masks.mask.sum((1, 2, 3)).argmax())   # the biggest mask drawn above
M = batch_masks.mask[largest:largest + 1]
N = obj
A_img = aug.image[:1] * 2 - 1                      # back to [-1, 1]
pieces = [bw(M)[0], (M * N)[0], (M * A_img)[0], ((1 - M) * N)[0]]
mixes = [blend(N, A_img, M, beta)[0] for beta in (0.2, 0.5, 0.8)]
show_images(pieces + mixes, ["M", "M * N", "M * A", "(1 - M) * N", "S, beta = 0.2",
                             "S, beta = 0.5", "S, beta = 0.8"], ncols=7, size=1.7);

# %% [markdown]
# ## 6. The whole recipe on a batch
#
# `AnomalySynthesizer` does sections 1-5 for a batch in one call. In the official code each
# sample stays normal with p = 0.5 (label 0, empty mask); here we use `exact_split=True`, the
# paper's half-and-half split (8 + 8 in a batch of 16), so every figure shows both kinds. `is_texture=True` takes sources from the bank only; for objects
# (`is_texture=False`) half come from self-augmentation. Everything random comes from one
# `torch.Generator`: the same seed gives the same batch, bit for bit, on the same device.

# %%
synth = AnomalySynthesizer(SynthesisConfig(exact_split=True), bank=bank)
n_show = max(6, S.num_images)
textures = torch.cat([to_tensor(skdata.brick()), to_tensor(skdata.grass())])
textures = textures.repeat(n_show // 2, 1, 1, 1)
out_tex = synth(textures, generator=torch.Generator().manual_seed(SEED), is_texture=True)


def describe(out, i):
    return f"{KIND_NAMES[int(out.kind[i])]}" + (f", b={out.beta[i]:.2f}" if out.label[i] else "")


show_images(list(out_tex.image) + list(bw(out_tex.mask)),
            [describe(out_tex, i) for i in range(len(textures))], ncols=len(textures), size=1.6);

# %%
objects = obj.repeat(n_show, 1, 1, 1)
fgs = fg.expand(n_show, 1, SIZE, SIZE)
out_obj = synth(objects, fgs, generator=torch.Generator().manual_seed(SEED + 1),
                is_texture=False, return_source=True)
show_images(list(out_obj.source) + list(out_obj.image) + list(bw(out_obj.mask)),
            [describe(out_obj, i) for i in range(n_show)], ncols=n_show, size=1.6);
again = synth(objects, fgs, generator=torch.Generator().manual_seed(SEED + 1), is_texture=False)
print("same seed, same batch:", torch.equal(again.image, out_obj.image))

# %% [markdown]
# The middle row is what the segmentation network is shown, the bottom row what it must
# predict. Check eq. 12 on the returned pieces (the source row is A; beta is `out.beta`):

# %%
beta = out_obj.beta.reshape(-1, 1, 1, 1)
rebuilt = blend(objects, out_obj.source, out_obj.mask, beta)
print("eq. 12 rebuilt exactly:", torch.equal(rebuilt, out_obj.image))
print("labels:", out_obj.label.tolist(), "  masks inside the foreground:",
      bool((out_obj.mask <= fgs).all()))

# %% [markdown]
# One call synthesises the whole batch, on a GPU too: pass images and a generator on the
# device. `python benchmarks/synthesis.py` (in a clone of the repository, not in a pip
# install) measures it against a per-sample numpy implementation of the same recipe (the way
# data loaders usually do it).

# %% [markdown]
# ## 7. Try it
#
# Redraw with another seed, threshold or beta range. (The widget needs a live kernel; in a
# static view only its first drawing appears.)

# %%
def redraw(seed=0, threshold=0.5, beta_low=0.2, beta_high=0.8, is_object=True):
    cfg = SynthesisConfig(perlin_threshold=threshold, normal_prob=0.0,
                          beta_range=(beta_low, max(beta_low, beta_high)))
    out = AnomalySynthesizer(cfg, bank=bank)(
        objects if is_object else textures, fgs if is_object else None,
        generator=torch.Generator().manual_seed(seed), is_texture=not is_object)
    show_images(list(out.image[:4]) + list(bw(out.mask[:4])), ncols=4, size=1.6)
    plt.show()


widgets.interact(redraw, seed=widgets.IntSlider(0, 0, 100), threshold=(0.1, 0.9, 0.05),
                 beta_low=(0.0, 1.0, 0.05), beta_high=(0.0, 1.0, 0.05), is_object=True);

# %% [markdown]
# ## Summary
#
# - Eq. 12, S = beta (M * N) + (1 - beta) (M * A) + (1 - M) * N, makes training pairs whose
#   defect mask M is exact: the segmentation network's target is free.
# - M is rotated, thresholded Perlin noise with 2^k cells per axis (k in 0..5, per axis), cut to
#   the object's foreground and redrawn when empty.
# - A is a texture crop (DTD in the paper; scikit-image photographs offline) or, for objects, the
#   image itself shuffled in strips; both pass through 3 of 10 augmenters.
# - beta ~ U[0.2, 0.8) keeps part of the normal image inside the defect, so anomalies range
#   from faint to strong.
# - `AnomalySynthesizer` does it batched in torch, on any device, reproducibly from one
#   `torch.Generator`.
#
# Next: `06_train_and_evaluate` trains DiffusionAD on these synthetic anomalies, and also
# validates on them (validation-split images with synthetic defects, for model selection). The
# *test* defects are different on purpose: the built-in benchmark draws them with other
# generators (scratch, crack, hole, stain, foreign patch, smear; notebook 03 studies those), so
# a detector is tested on defects unlike the ones it learnt from.
#
# ## Exercises
#
# 1. Draw 1 000 masks with `perlin_masks` and plot the histogram of their area. How does it
#    change with the threshold (0.5 vs GLAD's 0.3) and with `max_scale_exp`?
# 2. Set `SynthesisConfig(num_augmenters=0)`: what do texture-source anomalies look like
#    without augmentation? Which augmenters change the colour statistics most?
# 3. Compare `SynthesisConfig.preset("glad")` with the default on the coins. Which anomalies
#    would be harder to detect, and why?
# 4. Self-augmentation keeps the object's own colours. Why could that help a detector on
#    objects more than on textures? (Hint: a texture crop is often trivially "foreign".)
# 5. Show that for beta = 1 the synthesis returns N whatever M and A are, and for beta = 0 it
#    pastes A: check it with `blend` on random tensors.
