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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/dap-project/dap/blob/main/notebooks/09_latent_diffusion.ipynb)
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
# - why a clean condition invites direct copying — measured with DiffAD's copy PSNR on real test
#   defects, beside the PSNR against the clean image under the defect;
# - the noisy condition embedding c_noisy = sqrt(abar_t) c + sqrt(1 - abar_t) eps, and what the
#   public code does differently from the printed equation;
# - interpolated channels, z_inter = lambda c + (1 - lambda) z_r, and the 9-channel segmenter;
# - how the three parts train one after the other in dap's single training loop;
# - DiffAD's row in the side-by-side table.
#
# The code lives in `dap.models.autoencoder`, `dap.methods.diffad` and `dap.copy_metrics`;
# this notebook drives it.

# %%
import sys

if "google.colab" in sys.modules:  # Colab: install dap from the repository
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "git+https://github.com/dap-project/dap"], check=True)

# %% tags=["parameters"]
from dap.profiles import get_profile, profile

PROFILE = get_profile()                         # DAP_PROFILE = ci | cpu | full
DATA = "mvtec:bottle" if PROFILE == "full" else "builtin:brick"
AE_STEPS = {"ci": 200, "cpu": 2000, "full": 20000}[PROFILE]      # autoencoder phase
COPY_STEPS = {"ci": 150, "cpu": 2000, "full": 20000}[PROFILE]    # denoiser steps per variant
SEG_STEPS = {"ci": 30, "cpu": 2000, "full": 20000}[PROFILE]      # segmenter phase
BATCH = {"ci": 8, "cpu": 16, "full": 16}[PROFILE]
LR = 5e-4
N_IMAGES = {"ci": 12, "cpu": 40, "full": 64}[PROFILE]   # defective test images for the copy PSNR
ZOO_MODEL = "diffad-builtin-brick"              # evaluated too when the zoo ships it
print(PROFILE, "| DiffAD on", DATA)

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

from dap import zoo
from dap.analysis import load_test_tensors
from dap.config import replace
from dap.copy_metrics import copy_measures
from dap.data.spec import datasets, parse_data
from dap.engine.evaluate import measure_fps
from dap.engine.train import TrainConfig, TrainData, train
from dap.experiments import evaluate_run
from dap.methods import build_method
from dap.methods.diffad import DiffAD, interpolate_latents, noisy_condition
from dap.models.common import count_parameters
from dap.report import example_figure, results_markdown
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
preset = profile(PROFILE).preset
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

# %%
size = method.image_size
spec = parse_data(DATA, size)
train_ds, _, _ = datasets(spec, size)
data = TrainData.from_dataset(train_ds)
tcfg = TrainConfig(steps=AE_STEPS, batch_size=BATCH, lr=LR, val_every=0, select_metric="last")
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
# is the ceiling for every later reconstruction, and its `copy_psnr` (inside the defects) says
# how much of a defect survives E and D. A thin scratch often does not: the decoder has only
# ever produced normal texture.

# %% [markdown]
# ## 3. Why a clean condition invites direct copying
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
# Three denoisers, trained for the same number of steps from the *same* autoencoder:
#
# | variant | condition in training | at test |
# |---|---|---|
# | clean condition | c = E(x), the target itself | c |
# | noisy condition | c = E(x) noised to the denoiser's t (printed equation) | c noised to step t |
# | DiffAD (public code) | c = E(S), S synthetic anomalous, noised to an independent t' | c |
#
# The public code's condition is not the target: it is the latent of a DRAEM-style synthetic
# defect image (notebook 05; half of them left normal), and the target stays the clean latent.
# Every reconstruction is a DDIM trajectory from pure noise. We measure, on real test defects
# that look nothing like the training synthesis: the **copy PSNR** (reconstruction vs input,
# inside the defect: lower = less copied), the context PSNR (outside: higher = detail kept) and
# the repair PSNR (vs the clean image under the defect, which the built-in benchmark keeps).

# %%
variants = {
    "clean condition": dict(condition_source="input", noisy_condition=False),
    "noisy condition": dict(condition_source="input", condition_timestep="same",
                            sample_condition="noisy"),
    "DiffAD (public code)": {},
}
models, rows = {}, {"autoencoder D(E(x))": ae}
for label, overrides in variants.items():
    m = DiffAD(replace(cfg, **overrides))
    m.load_state_dict(method.state_dict())           # the same autoencoder, in phase 2
    r = train(m, data, replace(tcfg, steps=COPY_STEPS), progress=PROFILE != "ci")
    models[label] = m.eval()
    with torch.no_grad():
        rows[label] = copy_measures(m.reconstruct(x).sample, x, test.masks, test.cleans)
    print(f"{label}: {r.seconds:.0f} s")
print(f"{'':>22} {'copy PSNR':>10} {'context':>8} {'repair':>7}   (dB)")
for label, r in rows.items():
    print(f"{label:>22} {r['copy_psnr']:10.2f} {r['context_psnr']:8.2f} "
          f"{r.get('repair_psnr', float('nan')):7.2f}")

# %% [markdown]
# Read the three columns together. The clean-condition model has the highest copy PSNR of the
# three denoisers, near the autoencoder's own: it is learning to copy. Noising the condition
# lowers the copy PSNR — but the context PSNR drops with it: a noisier condition carries less of
# *everything*, and at test time the last DDIM steps see an almost clean condition again. The
# public code's recipe attacks the cause instead: its condition differs from its target where a
# (synthetic) defect is, so the network learns to *repair* from the condition rather than to
# copy it (look at the repair PSNR), and the noise is an extra regulariser. These are a few
# dozen steps; the benchmark rows `diffad` and `diffad clean-cond` (`python -m dap benchmark
# --methods diffad`) compare the two full trainings as detectors. The paper reports a copy PSNR of 36.73 dB for DiffAD against 38.49 dB for
# DRAEM on MVTec AD at 256 px; the absolute values here are lower because every image is a
# textured 64 px crop and the models are tiny — compare rows, not papers.

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
diffad = models["DiffAD (public code)"]
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
# ## 5. The segmenter, and the table row
#
# Phase 3 freezes E, D and the denoiser, synthesises anomalies on normal images (eq. 12,
# notebook 05), reconstructs them (DDIM, fewer steps than at test to save time) and trains the
# segmenter on concat(x_r, x_inter, x) with the focal loss. The image score is the maximum of
# the anomaly map average-pooled over a 21 x 21 window at 256 px — 5 x 5 at 64 px.
#
# Under `ci` the segmenter trains for a few dozen steps: enough to run the code path, not to
# detect anything. `python -m dap benchmark --methods diffad --profile ci` trains the full
# `ci` schedule (400 autoencoder + 800 denoiser + 300 segmenter steps) per category, with the
# ablations; a shipped model, when the zoo has one, is evaluated below too.

# %%
diffad.start_phase("segmenter")
r = train(diffad, data, replace(tcfg, steps=SEG_STEPS), progress=PROFILE != "ci")
print(f"segmenter: {r.seconds:.0f} s, focal {np.mean([h['loss'] for h in r.history[-10:]]):.4f}")
table = []
candidates = [("diffad (trained here)", diffad.eval())]
if ZOO_MODEL in zoo.available() and PROFILE != "full":
    candidates.append((f"diffad ({ZOO_MODEL})", zoo.load(ZOO_MODEL)))
for label, model in candidates:
    row, res = evaluate_run(model, DATA, fps=False, progress=PROFILE != "ci", label=label)
    row.update(measure_fps(model, size, batch_size=4, warmup=1, iters=2))
    table.append(row)
print(results_markdown(table))
print("paper (MVTec AD, 256 px): image AUROC 98.7, pixel AUROC 98.3, pixel AP 74.6")

# %%
example_figure(res.examples, title=f"{table[-1]['method']} on {table[-1]['category']}");

# %% [markdown]
# The measured rows come from the full `ci` schedule, not from the short run above:
#
# ```
# python -m dap benchmark --methods diffad --profile ci --out runs/benchmark-diffad \
#     --variants diffad "diffad noisy-sample"
# python -m dap benchmark --methods diffad --profile ci --out runs/benchmark-diffad-ablation \
#     --variants "diffad clean-cond" "diffad no-interp"
# python tools/copy_table.py runs/benchmark-diffad runs/benchmark-diffad-ablation
# ```
#
# (64 px, 400 autoencoder + 800 denoiser + 300 segmenter steps of batch 8 per category, last
# step; one run on a shared 2-core CPU; mean of brick, grass and gravel; percent and dB):
#
# | variant | I-AUROC | P-AUROC | AUPRO | P-AP | FPS | copy PSNR | context PSNR |
# |---|---|---|---|---|---|---|---|
# | DiffAD (noisy condition in training, clean at sampling, interpolated channels) | 81.9 | 88.5 | 73.3 | 49.9 | 10.1 | 17.75 | 23.16 |
# | same model, noisy condition at sampling | 72.6 | 84.5 | 68.9 | 45.8 | 6.5 | 15.88 | 19.33 |
# | trained with the clean condition | 80.7 | 91.9 | 75.9 | 57.7 | 11.6 | 18.86 | 26.55 |
# | without interpolated channels | 89.0 | 89.1 | 82.1 | 54.9 | 11.3 | 17.82 | 23.54 |
# | DiffusionAD (shipped) | 91.9 | 86.8 | 82.8 | 57.6 | 18.9 | 16.69 | 20.92 |
#
# What agrees with the paper: the noisy condition embedding lowers the copy PSNR (18.86 ->
# 17.75 dB; the paper's DiffAD vs DRAEM gap is 1.8 dB at 256 px). What does not, at this scale:
# neither idea improves detection here — the clean-condition model keeps more normal detail
# (context PSNR 26.6 dB) and scores better on the pixel metrics, and the segmenter without the
# interpolated view is better on image AUROC and AUPRO. With 60 test images per category and one
# training run each, differences of a few points are within the noise.

# %% [markdown]
# ## Summary
#
# - DiffAD runs the diffusion model on 4-channel latents of a per-category KL autoencoder; the
#   autoencoder's own error is a ceiling on every reconstruction, and it already removes thin
#   defects it has never learnt to draw.
# - A denoiser conditioned on the clean latent of its own target learns to copy it, defects and
#   all: the copy PSNR (reconstruction vs input inside the defects) shows it in a few dozen steps.
# - Noising the condition (c_noisy = sqrt(abar_t) c + sqrt(1 - abar_t) eps) makes copying
#   impossible, at a price in fidelity; the public code conditions on synthetic anomalies with a
#   noise level drawn apart from t, so the network learns to repair, and samples with the clean
#   condition. dap exposes both readings (`condition_source`, `condition_timestep`,
#   `sample_condition`).
# - The segmenter sees input, reconstruction and an interpolated reconstruction (9 channels);
#   the image score is the max of an average-pooled map.
# - One `forward` trains all three parts in phases kept in a buffer, so the shared loop, its
#   checkpoints and exact resume work unchanged.
#
# ## Exercises
#
# 1. Sample the public-code model with `sample_condition="noisy"` (pass it to
#    `diffad.sample_latents`). Copy, context and repair PSNR: which change, and why?
# 2. Train the "clean condition" variant with `condition_source="synthetic"` (still
#    `noisy_condition=False`). Does it still copy the *test* defects, which look nothing like the
#    synthetic ones?
# 3. Change `interpolation_lambda` to 0.25 and 0.75 and retrain the segmenter only
#    (`start_phase("segmenter")`). Compare pixel AP.
# 4. Give the `ci` autoencoder 8x down-sampling (`autoencoder={"channel_mult": [1, 2, 4, 4], ...}`
#    and a denoiser for 8 x 8 latents). What happens to the context PSNR and to small defects?
# 5. Train the denoiser with `prediction_type="epsilon"` (DiffAD's and LDM's choice) for the same
#    number of steps and sample from pure noise. Why does it ignore its condition for so long?
