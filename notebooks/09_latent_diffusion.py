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
# # 09 — Latent diffusion for anomaly detection: DiffAD
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/dap/blob/main/notebooks/09_latent_diffusion.ipynb)
#
# DiffusionAD (notebooks 01-06) denoises in pixel space. DiffAD (X. Zhang et al., "Unsupervised
# Surface Anomaly Detection with Diffusion Probabilistic Model", ICCV 2023) moves the diffusion
# model into the latent space of an autoencoder, as Latent Diffusion does, and reconstructs by
# sampling from pure noise *conditioned on the input image*. A conditioned reconstruction has an
# obvious failure mode: the network learns to copy its condition, defects included. DiffAD's two
# answers are a **noisy condition embedding** and **interpolated channels** for the segmenter.
#
# **What you will learn**
# - a KL autoencoder: what the latent space of a texture looks like, and what it costs
#   (its reconstruction error bounds every later reconstruction);
# - why conditioning a denoiser on its own target invites direct copying — measured with
#   DiffAD's copy PSNR on real test defects, beside the PSNR against the clean (pre-defect)
#   image under the defect — and why the copy PSNR
#   has two readings, 10 log10(1 / mask fraction) dB apart, only one of them on the paper's scale;
# - the noisy condition embedding c_noisy = sqrt(abar_t) c + sqrt(1 - abar_t) eps, what the
#   official code does differently from the printed equation, and its commented-out alternative
#   (the condition noised once to a t_c in [400, 500) at sampling);
# - interpolated channels, z_inter = lambda c + (1 - lambda) z_r, the 9-channel segmenter, and an
#   ablation that isolates them: one frozen autoencoder and denoiser, only the segmenter retrained
#   with 9 or 6 input channels, over several seeds;
# - how the three parts train one after the other in dap's single training loop;
# - where dap differs from the official code, one record per difference.
#
# The code lives in `dap.models.autoencoder`, `dap.methods.diffad` and `dap.copy_metrics`;
# this notebook drives it.

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

PROFILE = get_profile()                         # DAP_PROFILE = ci | cpu | full | colab
DATA = "mvtec:bottle" if PROFILE == "full" else "builtin:brick"
DIFFAD_MODEL = "diffad-builtin-brick"          # the shipped DiffAD model, used if present
PRESET = profile(PROFILE).notebook_preset                         # cpu: the 64 px ci preset
AE_STEPS = {"ci": 120, "cpu": 160, "full": 20000, "colab": 2000}[PROFILE]  # autoencoder phase
COPY_STEPS = {"ci": 80, "cpu": 120, "full": 20000, "colab": 1000}[PROFILE]  # per variant
SEG_STEPS = {"ci": 10, "cpu": 15, "full": 2000, "colab": 300}[PROFILE]     # per ablation arm
SEEDS = (0, 1) if PROFILE == "ci" else (0, 1, 2)                  # ablation seeds
BATCH = {"ci": 8, "cpu": 8, "full": 16, "colab": 8}[PROFILE]
LR = 5e-4
N_IMAGES = {"ci": 12, "cpu": 16, "full": 64, "colab": 32}[PROFILE]  # defects for the copy PSNR
print(PROFILE, "| DiffAD on", DATA)

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown

import dap.report
from dap import zoo
from dap.analysis import load_test_tensors
from dap.analysis.diffad import interpolated_channels_ablation
from dap.config import replace
from dap.copy_metrics import PAPER_COPY_PSNR, copy_measures, copy_psnr, mask_gain_db
from dap.data.spec import datasets, parse_data
from dap.engine.train import TrainConfig, TrainData, train
from dap.methods import build_method
from dap.methods.diffad import DIFFERENCES, DiffAD, interpolate_latents, noisy_condition
from dap.methods.official import markdown
from dap.models.common import count_parameters
from dap.viz import show_images, to_numpy_image

torch.manual_seed(0)

# %% [markdown]
# ## 1. Three networks, three phases
#
# A DiffAD model holds an autoencoder (E, D), a latent denoiser and a segmenter. The paper
# trains them one after the other; so does dap, inside the one training loop every method
# shares: `method(batch, generator)` returns the loss of the *current phase*, decided by a step
# counter stored with the weights (so a checkpoint resumes in the right phase).
#
# At 256 px the paper's autoencoder down-samples 8 times (32 x 32 x 4 latents). At 64 px that
# would leave 8 x 8 latents, one per 8 x 8 patch, too coarse for small defects, so the small
# presets down-sample 4 times (64 px -> 16 x 16 x 4).

# %%
preset = PRESET
method = build_method("diffad", preset, ae_steps=AE_STEPS)
cfg = method.config
print(f"image {cfg.autoencoder.image_size} px -> latent {cfg.autoencoder.latent_size} x "
      f"{cfg.autoencoder.latent_size} x {cfg.autoencoder.latent_channels} "
      f"(f = {cfg.autoencoder.downsample_factor})")
for name in ("autoencoder", "denoiser", "segmenter"):
    print(f"{name:>11}: {count_parameters(getattr(method, name)) / 1e6:.2f} M parameters")
print("phase of steps 0, AE_STEPS, AE_STEPS + denoiser_steps:",
      [method.phase_of(k) for k in (0, AE_STEPS, AE_STEPS + cfg.denoiser_steps)])

# %% [markdown]
# ## 2. The autoencoder and its latent space
#
# Phase 1 trains E and D on normal images with LDM's loss: mean |x - D(z)| plus a very small KL
# term (z ~ q(z | x) = N(mu, sigma^2); the KL to N(0, I) keeps the latent space smooth without
# forcing it to be Gaussian). No perceptual loss: it needs pretrained weights we do not ship.
#
# When the checkout has a **shipped DiffAD model** for this category (`dap/checkpoints/`, all
# three phases of the `ci` schedule, trained by `tools/train_zoo.py` in a clone of the
# repository), its autoencoder is used and the denoisers below start from a fresh denoiser at
# phase 2; otherwise the autoencoder trains here for `AE_STEPS` steps.

# %%
size = method.image_size
spec = parse_data(DATA, size)
train_ds, _, _ = datasets(spec, size)
data = TrainData.from_dataset(train_ds)
tcfg = TrainConfig(steps=AE_STEPS, batch_size=BATCH, lr=LR, val_every=0, select_metric="last")
shipped = zoo.load(DIFFAD_MODEL) if DATA == "builtin:brick" and DIFFAD_MODEL in zoo.available() \
    else None
if shipped is not None:
    method.autoencoder.load_state_dict(shipped.autoencoder.state_dict())
    method.latent_scale.copy_(shipped.latent_scale)
    method.start_phase("denoiser")
    print(f"autoencoder of the shipped {DIFFAD_MODEL} ({shipped.config.ae_steps} steps); "
          f"next phase: {method.phase}")
else:
    result = train(method, data, tcfg, progress=PROFILE != "ci")
    rec = [h["loss_rec"] for h in result.history]
    print(f"{result.seconds:.0f} s; L1 {np.mean(rec[:10]):.3f} -> {np.mean(rec[-10:]):.3f}; "
          f"next phase: {method.phase}")

# %% [markdown]
# Reconstructions of *test* images and the four latent channels. The latent is a small image:
# it keeps the layout of the texture (the bricks are visible in every channel), which is what
# lets a U-Net denoise it like an image.

# %%
test = load_test_tensors(spec.category, size, n=N_IMAGES, kind="defect",
                         root=None if spec.dataset == "builtin" else spec.root)
x = test.images
method.eval()
with torch.no_grad():
    z = method.autoencoder.encode(x).mean
    x_ae = method.autoencoder.decode(z).clamp(-1, 1)
ae = copy_measures(x_ae, x, test.masks, test.cleans)
fig, axes = plt.subplots(3, 6, figsize=(11, 5.6))
for row, i in enumerate((0, len(x) // 2, len(x) - 1)):
    panels = [(x[i], "input"), (x_ae[i], "D(E(x))")] + [(z[i, k], f"latent {k}") for k in range(4)]
    for ax, (img, title) in zip(axes[row], panels):
        if img.ndim == 3:
            ax.imshow(to_numpy_image(img))
        else:
            ax.imshow(img, cmap="coolwarm")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
print({k: round(v, 2) for k, v in ae.items()})

# %% [markdown]
# The autoencoder alone is already a reconstruction model: `context_psnr` (outside the defects)
# is the ceiling for every later reconstruction, and its copy PSNR (inside the defects) says
# how much of a defect survives E and D. A thin scratch often does not: the decoder has only
# ever produced normal texture.
#
# **Two readings of the copy PSNR.** The paper gives no formula for its copy PSNR. Read as the
# error over the defect's pixels (`copy_psnr_region`), or as the error of the *masked* images
# x_r * m and x * m over the whole image (`copy_psnr_masked_image`), the same reconstruction gets
# two numbers: the masked images agree everywhere outside the mask, so the whole-image MSE is the
# region's MSE times the mask fraction f, and
#
# PSNR_masked_image = PSNR_region + 10 log10(1 / f),
#
# about 15 dB at a 3 % mask. `mask_gain_db` above is that term, averaged over these images.
# dap reports both under these two names. The paper's values (MVTec AD, 256 px) are only on
# the scale of the masked-image reading; they are printed on their own line below, never in a
# column of dap's numbers. The relation, checked on these images:

# %%
region = copy_psnr(x_ae, x, test.masks, reduction="none")
whole = copy_psnr(x_ae, x, test.masks, reduction="none", region="masked_image")
print("max |masked_image - (region + 10 log10(1/f))| over the images:",
      f"{float((whole - region - mask_gain_db(test.masks)).abs().max()):.1e} dB")
area = 100 * test.masks.flatten(1).mean(1)
print(f"defect area of these images: {area.min():.1f} % to {area.max():.1f} %")

# %% [markdown]
# ## 3. Why conditioning on the target invites direct copying
#
# Words first, because "clean" could mean two things here. In this notebook a **clean image**
# is always the defect-free image under a test defect (the benchmark keeps it). A condition is
# called **un-noised** or **noised** (by the forward process), never clean; and the variant
# whose condition is the target's own latent is **target as condition**.
#
# The latent denoiser sees concat(z_t, c): the noisy latent and the condition c, the latent of
# the image to reconstruct. Train it on normal images with c = E(x) — the target itself — and
# the task has a trivial solution: output c. It is learnt in a few dozen steps, and at test time
# it copies the defect as faithfully as the normal texture.
#
# DiffAD's **noisy condition embedding** noises the condition with the forward process,
# c_noisy = sqrt(abar_t) c + sqrt(1 - abar_t) eps' (an independent eps'), so copying it is no
# longer the answer:

# %%
s = method.schedule
c = method.encode(x[:1]).detach()
eps = torch.randn(c.shape, generator=torch.Generator().manual_seed(0))
ts = [0, 100, 300, 600, 999]
show_images([method.decode(noisy_condition(s, c, eps, t)).detach()[0] for t in ts],
            [f"D(c_noisy), t = {t}" for t in ts], size=1.9);

# %% [markdown]
# Three denoisers, trained for the same number of steps from the *same* autoencoder, and one of
# them sampled two ways:
#
# | variant | condition in training | at test |
# |---|---|---|
# | target as condition | c = E(x), the target itself, un-noised | c, un-noised |
# | noisy condition (dap's own reading) | c = E(x) noised to the denoiser's t (the printed equation) | c noised to each DDIM step's t (`noisy_per_step`) |
# | DiffAD (official recipe) | c = E(S), S synthetic anomalous, noised to an independent t' | c, un-noised (`sample_condition="clean"` in the config) |
# | same model, noisy sampling (official alternative) | — | c noised *once* to a t_c in [400, 500), kept for every step (`noisy_fixed`) |
#
# The official condition is not the target: it is the latent of a DRAEM-style synthetic defect
# image (notebook 05; half of them left normal), and the target stays the latent of the normal
# image. The official scripts sample with the un-noised c; their commented-out alternative
# noises c once at
# t_c in [400, 500) — as their README suggests for severe deformations. dap's `noisy_per_step`,
# which re-noises c to every step's t from t = 999 down, is not in the official code.
#
# Every reconstruction is a DDIM trajectory from pure noise. We measure, on real test defects
# that look nothing like the training synthesis: the copy PSNR in both readings (lower = less
# copied), the context PSNR (outside: higher = detail kept) and the repair PSNR (vs the clean
# image under the defect, which the built-in benchmark keeps).

# %%
variants = {
    "target as condition": (dict(condition_source="input", noisy_condition=False), "clean"),
    "noisy condition (per step)": (dict(condition_source="input", condition_timestep="same"),
                                   "noisy_per_step"),
    "DiffAD (official recipe)": ({}, "clean"),
}
models, rows = {}, {"autoencoder D(E(x))": ae}
for label, (overrides, sampling) in variants.items():
    m = DiffAD(replace(cfg, **overrides, sample_condition=sampling))
    m.load_state_dict(method.state_dict())           # the same autoencoder, in phase 2
    r = train(m, data, replace(tcfg, steps=COPY_STEPS), progress=PROFILE != "ci")
    models[label] = m.eval()
    with torch.no_grad():
        rows[label] = copy_measures(m.reconstruct(x).sample, x, test.masks, test.cleans)
    print(f"{label}: {r.seconds:.0f} s")
diffad = models["DiffAD (official recipe)"]
with torch.no_grad(), diffad.using(sample_condition="noisy_fixed"):
    rows["DiffAD, noisy_fixed sampling"] = copy_measures(diffad.reconstruct(x).sample, x,
                                                          test.masks, test.cleans)
if shipped is not None:   # the whole ci schedule, for scale: many more denoiser steps
    with torch.no_grad():
        rows[f"shipped DiffAD ({shipped.config.denoiser_steps} steps)"] = copy_measures(
            shipped.reconstruct(x).sample, x, test.masks, test.cleans)
print(f"{'':>29} {'copy PSNR':>9} {'copy PSNR':>12} {'context':>8} {'repair':>7}   (dB)")
print(f"{'':>29} {'(region)':>9} {'(masked img)':>12}")
for label, r in rows.items():
    print(f"{label:>29} {r['copy_psnr_region']:9.2f} {r['copy_psnr_masked_image']:12.2f} "
          f"{r['context_psnr']:8.2f} {r.get('repair_psnr', float('nan')):7.2f}")
print("mean 10 log10(1 / mask fraction) of these images: "
      f"{rows['target as condition']['mask_gain_db']:.2f} dB")
print("lowest copy PSNR:", min(rows, key=lambda k: rows[k]["copy_psnr_region"]),
      "| highest context PSNR:", max(rows, key=lambda k: rows[k]["context_psnr"]))
print("paper, MVTec AD at 256 px, formula not stated (the masked-image scale):",
      ", ".join(f"{k} {v} dB" for k, v in PAPER_COPY_PSNR.items()))

# %% [markdown]
# Read the columns together. A denoiser that copies its condition has a copy PSNR near the
# autoencoder's own; noising the condition should lower it — but watch the context PSNR too: a
# noisier condition carries less of *everything*, and with `noisy_per_step` the last DDIM steps
# see an almost un-noised condition again, while `noisy_fixed` keeps the same, fairly noisy
# condition (t_c in [400, 500)) to the end. The official recipe attacks the cause instead: its
# condition differs from its target where a (synthetic) defect is, so the network learns to
# *repair* from the condition rather than to copy it (look at the repair PSNR). These are a few
# dozen steps on 64 px crops; the benchmark rows compare full trainings as detectors. Whatever
# the values, compare *rows*, never a dap value with the paper's: only the masked-image column
# is on the paper's scale, and the paper's images, sizes and models are not these.

# %%
show = list(range(0, len(x), max(1, len(x) // 5)))[:5]
with torch.no_grad():
    recs = [models[k].reconstruct(x[show]).sample for k in variants]
grid = torch.cat([x[show], *recs, test.cleans[show]])
show_images(grid, ncols=len(show), size=1.7,
            suptitle="input | " + " | ".join(variants) + " | clean image");

# %% [markdown]
# ## 4. Interpolated channels
#
# The segmenter of DiffAD does not only compare the input x with its reconstruction x_r = D(z_r).
# It also sees x_inter = D(lambda c + (1 - lambda) z_r), lambda = 0.5: an image half-way between
# the two *in latent space*. Where x and x_r agree, x_inter agrees with both; where the
# reconstruction repaired a defect, x_inter shows a faded defect. A third view makes the
# segmenter less sensitive to reconstruction errors that are not defects (a slightly shifted
# brick edge fades differently from a scratch).

# %%
if shipped is not None:   # sections 4-5 use the fully trained model when there is one
    diffad = shipped.eval()
print("sections 4-5 use", f"the shipped {DIFFAD_MODEL}" if shipped is not None
      else "the official-recipe model of section 3")
i = show[-1]
with torch.no_grad():
    parts = diffad.reconstruct(x[i:i + 1])       # x_r in .sample, latents and x_inter in .extras
    lams = [1.0, 0.75, 0.5, 0.25, 0.0]
    sweep = [diffad.decode(interpolate_latents(parts.extras["condition"], parts.extras["latent"],
                                               lam))[0] for lam in lams]
show_images(sweep, [f"lambda = {lam}" for lam in lams], size=1.9,
            suptitle="D(lambda c + (1 - lambda) z_r): from the input to its reconstruction");
err = [(x[i] - r[0]).abs().mean(0) for r in (parts.sample, parts.extras["interpolated"])]
show_images([*err, test.masks[i, 0]], ["|x - x_r|", "|x - x_inter|", "ground truth"],
            value_range=(0, 1), size=1.9);

# %% [markdown]
# ## 5. The segmenter, and what the interpolated channels are worth
#
# Phase 3 freezes E, D and the denoiser, synthesises anomalies on normal images (eq. 12,
# notebook 05), reconstructs them (DDIM, fewer steps than at test to save time) and trains the
# segmenter on concat(x_r, x_inter, x) with the focal loss. The image score is the maximum of
# the anomaly map average-pooled over a 21 x 21 window at 256 px — 5 x 5 at 64 px.
#
# To ask what x_inter adds, retraining the whole model without it would change the autoencoder
# and the denoiser too (other seeds, other reconstructions), and their change would be mixed
# into the answer. So we keep *one* trained autoencoder and denoiser — the shipped model's (or,
# without one, the official-recipe model above) — and train only fresh segmenters on its reconstructions, with 9 channels
# (x_r, x_inter, x) or 6 (x_r, x), for several seeds (`DiffAD.segmenter_variant`). With the
# same seed both arms see the same batches, synthetic anomalies and reconstructions, so each
# seed is a paired comparison; both arms are scored on the same test reconstructions (normal
# and defective test images, so the image AUROC is defined).
#
# Under `ci` / `cpu` each segmenter trains for 10-15 steps: enough to run the ablation, and to see
# how much the seeds alone move the metrics, not to settle the question.

# %%
test_all = load_test_tensors(spec.category, size, kind="all",
                             root=None if spec.dataset == "builtin" else spec.root)
ablation = interpolated_channels_ablation(diffad, data, test_all, seeds=SEEDS, steps=SEG_STEPS,
                                          batch_size=BATCH, lr=LR, progress=PROFILE != "ci")
Markdown(ablation.markdown())

# %% [markdown]
# Mean ± standard deviation over the seeds (percent); the last row is the paired difference
# 9 - 6 channels, seed by seed. A difference smaller than its spread is not a finding. The maps
# of the first seed on the same defective images:

# %%
defective = test_all.labels == 1
inputs = (test_all.images[defective][:4] + 1) / 2                  # shown in [0, 1] like maps
show_images([*inputs, *[m for v in ablation.examples.values() for m in v],
             *test_all.masks[defective][:4, 0]], ncols=4, size=1.7, value_range=(0, 1),
            suptitle="input | " + " | ".join(ablation.examples) + " | ground truth");

# %% [markdown]
# The README's benchmark table (its command is there; every category, DiffAD's rows on the
# shipped models of the full `ci` schedule of 400 autoencoder + 800 denoiser + 300 segmenter
# steps) is rendered from its results file — no number here is typed by hand:

# %%
Markdown(dap.report.published_table("benchmark"))

# %% [markdown]
# and the copy PSNR of the benchmark's models, with the paper's values on their own line
# (`tools/` is in a clone of the repository, not in a pip install):
#
# ```
# python tools/copy_table.py runs/benchmark --out runs/copy-psnr
# ```
#
# ## 6. The official code and dap
#
# Where dap's DiffAD differs from the official code (Loco-Roco/DiffAD), and the option that
# restores the official setting where there is one. The same records are in
# `help(dap.methods.diffad)`.

# %%
Markdown(markdown(DIFFERENCES))

# %% [markdown]
# ## Summary
#
# - DiffAD runs the diffusion model on 4-channel latents of a per-category KL autoencoder; the
#   autoencoder's own error is a ceiling on every reconstruction, and it already removes thin
#   defects it has never learnt to draw.
# - A denoiser conditioned on the un-noised latent of its own target can learn to copy it, defects
#   and all; the copy PSNR (reconstruction vs input on the defects) measures it. Its two readings
#   differ by 10 log10(1 / mask fraction); only the masked-image one is on the paper's scale, and
#   a dap value is never shown under the paper's name.
# - Noising the condition (c_noisy = sqrt(abar_t) c + sqrt(1 - abar_t) eps) makes copying
#   impossible, at a price in fidelity; the official code conditions on synthetic anomalies with
#   a noise level drawn apart from t, so the network learns to repair, and samples with the
#   un-noised condition (or, commented out, with the condition noised once at t_c in [400, 500):
#   `sample_condition="noisy_fixed"`). dap exposes each reading (`condition_source`,
#   `condition_timestep`, `sample_condition`).
# - The segmenter sees input, reconstruction and an interpolated reconstruction (9 channels);
#   the image score is the max of an average-pooled map. The interpolated channels are ablated
#   on one frozen reconstruction pipeline, over seeds, so nothing but the segmenter's input
#   changes.
# - One `forward` trains all three parts in phases kept in a buffer, so the shared loop, its
#   checkpoints and exact resume work unchanged.
#
# ## Exercises
#
# 1. Sample the official-recipe model with `sample_condition="noisy_fixed"` and a fixed
#    `sample_condition_t` of 100, 450 and 800 (`with diffad.using(...)`). Copy, context and
#    repair PSNR: which change, and why? Compare with `noisy_per_step`.
# 2. Train the "target as condition" variant with `condition_source="synthetic"` (still
#    `noisy_condition=False`). Does it still copy the *test* defects, which look nothing like the
#    synthetic ones?
# 3. Change `interpolation_lambda` to 0.25 and 0.75 and retrain the segmenter only
#    (`diffad.segmenter_variant(interpolation_lambda=0.25)`, then `train`). Compare pixel AP,
#    over two seeds.
# 4. Give the `ci` autoencoder 8x down-sampling (`autoencoder={"channel_mult": [1, 2, 4, 4], ...}`
#    and a denoiser for 8 x 8 latents). What happens to the context PSNR and to small defects?
# 5. Train the denoiser with `prediction_type="epsilon"` (DiffAD's and LDM's choice) for the same
#    number of steps and sample from pure noise. Why does it ignore its condition for so long?
