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
# # 08 — Adaptive diffusion: per-sample steps, anomaly-aware training and SAFF (GLAD)
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/dap/blob/main/notebooks/08_adaptive_diffusion.ipynb)
#
# Notebook 03 measured that the noise step that repairs a defect depends on the defect: small
# ones are gone from t_s = 200, large or semantic ones need t_b = 400, and every extra step of
# noise costs normal detail. DiffusionAD answers with two fixed scales for every image
# (notebook 04). **GLAD** (Yao et al., "Global and Local Adaptive Diffusion Models for
# Unsupervised Anomaly Detection", ECCV 2024) answers per sample and per region:
#
# - **global adaptivity**: each image stops denoising at its own step, decided on the fly;
# - **ATP** (anomaly-aware training): the denoiser is also trained on synthetic anomalies, with
#   a noise target whose implied clean image is the *normal* one;
# - **SAFF** (spatial-adaptive feature fusion): at the stop, normal regions keep the input's
#   own detail and only anomalous regions take the reconstruction.
#
# **What dap's GLAD is.** dap's GLAD is a pixel-space denoiser trained from scratch that
# compares images through its own encoder's features, where the paper fine-tunes Stable
# Diffusion v1-4 in its latent space and compares DINO features. Neither set of weights is
# available offline; the three ideas above do not depend on them, and `dap.methods.glad` teaches
# them on dap's denoiser. Section 8 lists every difference from the official code.
#
# **What you will learn**
# - ATP's noise target, derived step by step, and what the sign bug of the public code does;
# - how a per-sample stop is decided, and why its thresholds come from the *validation* split;
# - the distribution of stop steps for normal and for defective images;
# - what SAFF buys: normal-region fidelity, measured against the clean image under each defect;
# - how GLAD behaves on a stronger denoiser (DiffusionAD's shipped one), and where dap's GLAD
#   differs from the official code (schedule, DDIM grid, stop, map).
#
# Profiles: under `ci` the notebook uses a shipped GLAD model when the zoo has one, else it
# borrows the denoiser of the shipped DiffusionAD model (trained *without* ATP), so ATP is
# derived and checked but not trained here. Under `cpu`, `colab` and `full` it trains GLAD first
# (`cpu`: a few dozen steps of the 64 px model, minutes; `colab` / `full`: a GPU).

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

PROFILE = get_profile()                            # DAP_PROFILE = ci | cpu | full | colab
CATEGORY = "brick"                                 # a built-in category
GLAD_MODEL = f"glad-builtin-{CATEGORY}"            # a shipped GLAD model, used if present
DENOISER_FROM = f"diffusionad-builtin-{CATEGORY}"  # else (ci), and in section 7: its denoiser
TRAIN = PROFILE != "ci"                            # train GLAD here (cpu: minutes, full: GPU)
TRAIN_STEPS = profile(PROFILE).notebook_train_steps  # the profile table: dap/profiles.py
PRESET = profile(PROFILE).notebook_preset          # the model size trained (cpu: the 64 px ci)
SEED = 0
print(PROFILE, "| train here:", TRAIN)

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown

import dap.methods.official
import dap.report

from dap import zoo
from dap.analysis import load_test_tensors, run_adaptive
from dap.analysis.adaptive import glad_with_denoiser_of, stop_step_histogram
from dap.diffusion import NoiseSchedule, ddim_timesteps
from dap.data.spec import datasets, parse_data
from dap.engine.select import synthetic_validation_set
from dap.experiments import train_run
from dap.methods import build_method
from dap.methods.base import TrainBatch
from dap.methods.glad import (DIFFERENCES, atp_blend, atp_noise_target, flipped_atp_noise_target,
                              leading_timesteps, official_map_settings)
from dap.metrics import MetricAccumulator
from dap.synthesis import AnomalySynthesizer, SynthesisConfig
from dap.viz import plot_curves, show_images

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_ = torch.manual_seed(SEED)

# %% [markdown]
# ## 1. One noise scale does not fit all samples
#
# A reconstruction detector noises the input to some t and denoises it. Too little noise and a
# large defect survives (it is copied into the "reconstruction" and never flagged); too much and
# the normal texture is replaced by a plausible but different one (false alarms everywhere).
# Notebook 03 showed that the right t moves with the defect, so any *fixed* t is a compromise.
#
# GLAD starts every image at the same large step (dap: t_start = 400, DiffusionAD's t_b) and
# runs DDIM down; each image stops as soon as the repair is visible, or at a minimum step
# (dap: min_step = 200, DiffusionAD's t_s). The stop needs a trained denoiser and a measure of
# "the repair is visible" (section 3).
#
# ### The official schedule and grid, and what dap keeps
#
# The official code does not use DDPM's linear betas. It runs Stable Diffusion's
# **`scaled_linear`** schedule (sqrt(beta_t) evenly spaced from sqrt(0.00085) to sqrt(0.012),
# T = 1000), starts at **750** on MVTec with **25 DDIM steps in diffusers' "leading" spacing**
# (721, 691, ..., 1: the input is noised to 750, the first step is evaluated at 721), stops at
# the first step whose score exceeds the threshold — **the first step included** — or below a
# **min step of 350** (200 on VisA), and **continues DDIM to t = 1** after the stop.
#
# dap keeps its linear schedule (its denoiser lives in pixel space and shares the schedule with
# DiffusionAD, whose denoiser section 7 borrows), its even grid from t_start = 400 (on it the
# input is noised to the first step, where the input's x0 and the trajectory's are equal, so
# the first step is not tested) and freezes the fused x0 as the reconstruction. The official
# settings are options: `timestep_spacing="leading"`, `stop_at_first_step=True`,
# `after_stop="continue"`. The same t is not the same noise level on the two schedules: below,
# abar_t of both, and the linear step with the noise level of each official step.

# %%
sd_betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
abar_sd = torch.cumprod(1 - sd_betas, dim=0)                 # scaled_linear (Stable Diffusion)
abar_lin = NoiseSchedule().alphas_cumprod.double()           # dap: linear 1e-4 -> 0.02
plot_curves(np.arange(1000), {"linear (dap)": abar_lin.numpy(),
                              "scaled_linear (official)": abar_sd.numpy()},
            xlabel="t", ylabel="abar_t");
for t_off in (750, 721, 350, 200):
    t_lin = int((abar_lin - abar_sd[t_off]).abs().argmin())
    print(f"official t = {t_off}: abar = {abar_sd[t_off]:.3f} = dap's abar at t = {t_lin}")
print("dap grid     :", ddim_timesteps(400, 10))
print("official grid:", leading_timesteps(750, 25))

# %% [markdown]
# First, how GLAD trains its denoiser.
#
# ## 2. ATP: the noise target, derived
#
# A plain denoiser only ever saw normal images; asked to denoise a defect it may faithfully
# restore the defect. ATP trains on synthetic anomalies S made from normal images N (Perlin
# masks at threshold 0.3, opacity beta ~ U[0, 0.8), notebook 05), and asks the network to
# predict the noise *as if the clean image were N*:
#
# 1. blend with alpha = t / T: x_blend = alpha S + (1 - alpha) N (faint anomalies at small t);
# 2. forward process (eq. 1): x_t = sqrt(abar_t) x_blend + sqrt(1 - abar_t) eps;
# 3. a noise prediction e gives the one-step estimate (eq. 6)
#    x0_hat = (x_t - sqrt(1 - abar_t) e) / sqrt(abar_t);
# 4. require x0_hat = N and solve for e: **eps\* = (x_t - sqrt(abar_t) N) / sqrt(1 - abar_t)**;
# 5. substitute x_t: eps\* = eps + sqrt(abar_t / (1 - abar_t)) alpha (S - N) — the noise plus
#    the anomaly, scaled so that removing the noise also removes the anomaly.
#
# The official code flipped the sign of that correction between commits (at commit 7fef283 it
# is flipped; section 8). With
# eps_bug = eps - sqrt(abar_t / (1 - abar_t)) alpha (S - N), step 3 gives
# x0_hat = x_blend + alpha (S - N) = **2 x_blend - N**: the network would learn to *double* the
# anomaly. We check both numerically, in float64, on a real training image.

# %%
size = profile(PROFILE).image_size
spec = parse_data(f"builtin:{CATEGORY}", size)
train_ds, val_ds, _ = datasets(spec, size)
normal = torch.stack([train_ds[i]["image"] for i in range(4)])
synth = AnomalySynthesizer(SynthesisConfig.preset("glad", normal_prob=0.0))
anomalous = synth(normal, generator=torch.Generator().manual_seed(SEED)).image

schedule = NoiseSchedule()                        # dap's: T = 1000, linear betas
t = torch.tensor([50, 200, 400, 800])
N, S = normal.double(), anomalous.double()
eps = torch.randn(N.shape, generator=torch.Generator().manual_seed(SEED), dtype=torch.float64)
blend = atp_blend(S, N, t, schedule.num_train_timesteps)
x_t = schedule.add_noise(blend, eps, t)
x0_good = schedule.pred_original_sample(x_t, atp_noise_target(schedule, x_t, N, t), t)
eps_bug = flipped_atp_noise_target(schedule, eps, blend, N, t)
x0_bug = schedule.pred_original_sample(x_t, eps_bug, t)
for i, ti in enumerate(t.tolist()):
    good = (x0_good[i] - N[i]).abs().max()
    bug = (x0_bug[i] - (2 * blend[i] - N[i])).abs().max()
    print(f"t = {ti:3d}: max |x0(eps*) - N| = {good:.1e}   max |x0(eps_bug) - (2 x_blend - N)| "
          f"= {bug:.1e}   max |x0(eps_bug) - N| = {(x0_bug[i] - N[i]).abs().max():.2f}")

# %%
rows = [N, S, blend, x0_good, x0_bug]
names = ["normal N", "anomaly S", "blend (t/T)", "x0 of eps*", "x0 of eps_bug"]
tiles = torch.stack([r[i].float() for i in range(len(t)) for r in rows]).clamp(-1, 1)
show_images(tiles, [f"{n}, t={ti}" for ti in t.tolist() for n in names], ncols=5, size=1.7);

# %% [markdown]
# Why the blend? The correction's coefficient is sqrt(abar_t / (1 - abar_t)) alpha. Without the
# blend (alpha = 1) it grows like t^(-1/2) as t -> 0: at small t the network would be asked to
# remove a full-strength anomaly from an almost noise-free image, a huge and unlearnable target.
# With alpha = t / T it shrinks to 0 instead.

# %%
ts = np.arange(1, schedule.num_train_timesteps)
abar = schedule.alphas_cumprod.double().numpy()[ts]
coef = np.sqrt(abar / (1 - abar))
plot_curves(ts, {"alpha = t / T (ATP)": coef * ts / schedule.num_train_timesteps,
                 "alpha = 1 (no blend)": coef}, xlabel="t",
            ylabel="coefficient of (S - N) in eps*", logy=True);

# %% [markdown]
# One ATP training step is `method(batch, generator)` (the loss every dap method returns); the
# training loop (`dap.engine.train`, notebook 06) is the same as for DiffusionAD.

# %%
method = build_method("glad", PRESET).to(DEVICE)
losses = method(TrainBatch(normal.to(DEVICE)), torch.Generator(DEVICE).manual_seed(SEED))
print({k: round(v.item(), 4) for k, v in losses.items()})

# %% [markdown]
# ## 3. The model and its calibration on the validation split
#
# The stop compares, at every DDIM step t, the trajectory's prediction x0_r with the *input's
# own* prediction x0_i: the input noised with the same eps0 to step t, denoised with the same
# network output. Both carry the same denoising blur, so what differs is the repair. The
# discrepancy D is a nearest-neighbour patch distance of the denoiser's encoder features (for
# each patch of x0_i, 1 - the best cosine similarity among the patches of x0_r), and its score
# is the mean of the 10 largest patches. A sample stops at the first step whose score passes
# that step's threshold, or at min_step.
#
# The thresholds are chosen on the **validation split** — normal images plus synthetic
# anomalies, exactly the set `train_run` selects checkpoints on — never on the test split
# (the official code types one threshold per class into its evaluation script, which reads no
# validation split). `method.fit_thresholds` uses only the normal images: at
# each step the median score rho_k, and one factor lambda such that 95 % of normal validation
# images never stop early (threshold_k = lambda rho_k), and the mean patch discrepancy mu_k,
# which with the threshold sets SAFF's mask (section 5).
# On dap's even grid the first step's threshold is never used (there x0_i = x0_r exactly), and
# steps after min_step are never reached (None).

# %%
BORROWED = False
if GLAD_MODEL in zoo.available():
    method, source = zoo.load(GLAD_MODEL, device=DEVICE), f"shipped model {GLAD_MODEL}"
elif TRAIN:
    method, _, prov = train_run("glad", f"builtin:{CATEGORY}", profile=PROFILE, preset=PRESET,
                                out_dir=f"runs/nb08-{PROFILE}",
                                train_overrides={"steps": TRAIN_STEPS})
    source = f"trained here, {TRAIN_STEPS} steps, selected on {prov['selected']}"
else:
    method, BORROWED = glad_with_denoiser_of(DENOISER_FROM, DEVICE), True
    source = f"denoiser of {DENOISER_FROM} (trained without ATP)"
method = method.to(DEVICE).eval()
val_images = torch.stack([val_ds[i]["image"] for i in range(len(val_ds))])
vset = synthetic_validation_set(method.synthesizer, val_images)
info = method.fit_thresholds(vset.image, vset.label)
print(source)
print(f"calibrated on {info['normal_images']} normal validation images; lambda = "
      f"{info['lambda']:.2f}")
print("t:        ", info["timesteps"])
print("threshold:", info["thresholds"])

# %% [markdown]
# ## 4. Where each test image stops
#
# Now the test split, for the first time: every image (normal and defective) goes through the
# adaptive DDIM loop once.

# %%
test = load_test_tensors(CATEGORY, method.image_size, kind="all")
res = run_adaptive(method, test.images)
normal_img, defect_img = test.labels == 0, test.labels == 1
steps = [s for s in info["timesteps"] if s >= method.config.min_step]
stop_step_histogram(res["stop_step"], test.labels, steps);

# %% [markdown]
# By design, images run to min_step unless their discrepancy passes the threshold while the
# trajectory still repairs them, which should happen to defective images more often than to
# normal ones; how well it does depends on the denoiser (section 7). Below, each image's score
# divided by the step's threshold (1 = the stop line), normal images in blue, defective in red.

# %%
thr = method.thresholds.cpu()
fig, ax = plt.subplots(figsize=(6, 3))
for i in range(len(test)):
    ratio = (res["scores"][i] / thr).numpy()
    ax.plot(info["timesteps"], ratio, color="tab:red" if test.labels[i] else "tab:blue",
            alpha=0.35, lw=1)
ax.axhline(1.0, color="k", ls="--", lw=1)
ax.set_xlim(info["timesteps"][0], method.config.min_step)
ax.set_xlabel("t")
ax.set_ylabel("score / threshold")
ax.set_yscale("log");

# %% [markdown]
# ## 5. SAFF: keep the input where it is normal
#
# At its stop, a sample's x0 becomes m x0_r + (1 - m) x0_i, where the mask m is D upsampled,
# blurred and ramped between two levels calibrated for that step on the normal validation
# images: 0 at their mean patch discrepancy, 1 at the stop threshold. Without SAFF the
# reconstruction is x0_r, the trajectory's own prediction, everywhere. The built-in benchmark
# keeps the clean image under every defect, so we can measure both errors of notebook 03
# against the truth: **outside** the defect mask (normal-region fidelity, lower is better) and
# **inside** it (residual defect).

# %%
with method.using(saff=False):
    res_plain = run_adaptive(method, test.images)


def region_errors(rec):
    err = (rec - test.cleans).abs().mean(dim=1)                  # (N, H, W)
    m = test.masks[:, 0]
    out = (err * (1 - m)).flatten(1).sum(1) / (1 - m).flatten(1).sum(1)
    inside = (err * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)
    return out[defect_img], inside[defect_img]


for name, r in (("SAFF", res), ("no SAFF", res_plain)):
    out, inside = region_errors(r["reconstruction"])
    print(f"{name:>8}: error vs clean outside the defect {out.median():.3f}, "
          f"inside {inside.median():.3f} (medians over {defect_img.sum().item()} defects)")

# %%
largest = np.argsort(-test.area)[:3]                 # the three largest defects
tiles, titles = [], []
for i in largest.tolist():
    amap = res["anomaly_map"][i]
    amap = (amap - amap.min()) / (amap.max() - amap.min() + 1e-8) * 2 - 1
    tiles += [test.images[i], res_plain["reconstruction"][i], res["reconstruction"][i],
              amap.expand(3, -1, -1), test.masks[i].expand(3, -1, -1) * 2 - 1]
    titles += [f"{test.defects[i]}, stop {res['stop_step'][i].item()}", "no SAFF", "SAFF",
               "anomaly map", "ground truth"]
show_images(torch.stack(tiles).clamp(-1, 1), titles, ncols=5, size=1.7);

# %% [markdown]
# ## 6. The three ideas on the test split
#
# The anomaly map is the feature discrepancy between the input and the final reconstruction plus
# the pixel distance mean_c |x - x_rec|, each divided by its mean on normal validation pixels,
# then smoothed; the image score is the mean of the top-K pixels. Same model, three inference
# modes: GLAD (adaptive stop + SAFF), no SAFF, and a fixed step (every image stops at min_step,
# with SAFF).

# %%
with method.using(adaptive=False):
    res_fixed = run_adaptive(method, test.images)


def metrics(r, t=test):
    acc = MetricAccumulator()
    acc.update(maps=r["anomaly_map"], masks=t.masks[:, 0], scores=r["score"], labels=t.labels)
    m = acc.compute()
    return " / ".join(f"{100 * m[k]:.1f}" for k in ("image_auroc", "pixel_auroc", "aupro",
                                                       "pixel_ap"))


print("I-AUROC / P-AUROC / AUPRO / P-AP on", len(test), "test images of", CATEGORY)
for name, r in (("GLAD", res), ("no SAFF", res_plain), ("fixed step", res_fixed)):
    print(f"{name:>11}: {metrics(r)}")

# %% [markdown]
# These are one category's 60 test images, with the model the notebook loaded above (the
# shipped GLAD model when the checkout has one). The side-by-side table of every variant on all
# three categories comes from GLAD's rows in the README's benchmark
# (`dap.experiments.variants("glad")`), written by
#
# ```
# python -m dap benchmark --methods diffusionad draem ddad glad diffad --out runs/benchmark \
#     --variants diffusionad draem ddad ddad+DA glad "glad fixed-step" "glad no-SAFF" diffad \
#     "diffad noisy-fixed"
# ```
#
# GLAD's row loads the shipped models (64 px `ci` denoiser trained with ATP, the zoo budget),
# selected and *calibrated* on the validation split; fixed step and no SAFF reuse them. The
# table is rendered from its results file; nothing is shown where no file backs it. Per
# category, differences of a point or two are within the noise of 60 test images.

# %%
Markdown(dap.report.published_table("benchmark"))

# %% [markdown]
# ## 7. Another denoiser: GLAD on DiffusionAD's shipped model
#
# GLAD's stop can only be as good as the repair it watches. DiffusionAD's shipped denoiser for
# the same category has the same size and training budget as the shipped GLAD model, but was
# trained without ATP (plain noise prediction on normal images, jointly with a segmentation
# network). Loaded into a GLAD model of matching config and calibrated on the **validation
# split only**, does GLAD's machinery still behave as designed — do defective images stop
# earlier in the run (at larger t) than normal ones, and do the scores separate them? Set
# beside section 6, it says how much of GLAD's result comes from ATP's training and how much
# from its inference. Computed here, on the spot (when no GLAD model is shipped, this is the
# model of sections 3-6).

# %%
if BORROWED:
    strong, strong_test, strong_res = method, test, res
else:
    strong = glad_with_denoiser_of(DENOISER_FROM, DEVICE)
    _, val64, _ = datasets(parse_data(f"builtin:{CATEGORY}", strong.image_size), strong.image_size)
    v64 = synthetic_validation_set(strong.synthesizer,
                                   torch.stack([val64[i]["image"] for i in range(len(val64))]))
    strong.fit_thresholds(v64.image, v64.label)
    strong_test = load_test_tensors(CATEGORY, strong.image_size, kind="all")
    strong_res = run_adaptive(strong, strong_test.images)
lab = strong_test.labels
strong_steps = [s for s in strong.timesteps if s >= strong.config.min_step]
stop_step_histogram(strong_res["stop_step"], lab, strong_steps);
st = strong_res["stop_step"].float()
print(f"mean stop step: normal {st[lab == 0].mean():.0f}, defective {st[lab == 1].mean():.0f}; "
      f"stopped before min_step: normal {(st[lab == 0] > strong.config.min_step).float().mean():.0%}"
      f", defective {(st[lab == 1] > strong.config.min_step).float().mean():.0%}")
print("defective images stop earlier in the run on average:",
      bool(st[lab == 1].mean() > st[lab == 0].mean()))
print("I-AUROC / P-AUROC / AUPRO / P-AP:", metrics(strong_res, strong_test))

# %% [markdown]
# The same model with the official MVTec anomaly map and SAFF mask
# (`glad_config(..., map_preset="official")`: no pixel term, sigma 6 and truncate 4 and the top
# 250 at 512 px scaled to this image, the SAFF mask sigmoid(D) unblurred). The thresholds and
# the feature normalisation stay those of the validation split; only the map and the fusion
# change.

# %%
with strong.using(**official_map_settings(strong.image_size)):
    official_res = run_adaptive(strong, strong_test.images)
for name, r in (("dap map", strong_res), ("official map", official_res)):
    print(f"{name:>13}: {metrics(r, strong_test)}")

# %% [markdown]
# ## 8. Official code vs dap
#
# Every difference from the official code (hyao1/GLAD at commit 7fef283), one row each, from
# `dap.methods.glad.official.DIFFERENCES` — the same records as `help(dap.methods.glad)`.

# %%
Markdown(dap.methods.official.markdown(DIFFERENCES))

# %% [markdown]
# ## Summary
#
# - ATP regresses the noise eps\* = (x_t - sqrt(abar_t) N) / sqrt(1 - abar_t) on blends of
#   synthetic anomalies and normal images; its implied x0 is the normal image, to float64
#   precision. The flipped sign of the public code implies 2 x_blend - N instead.
# - Global adaptivity stops each image's DDIM run when its x0 prediction departs from the
#   input's own x0 prediction by more than normal validation images ever do; defective images
#   tend to stop earlier, normal ones run to min_step.
# - SAFF fuses the two predictions by a mask from that discrepancy, so normal regions keep the
#   input's detail: lower error against the clean image outside the defect.
# - Every threshold comes from the validation split; the test split is only evaluated.
# - dap's GLAD is a pixel-space denoiser trained from scratch with its own encoder's features;
#   the official code fine-tunes Stable Diffusion (scaled_linear betas, a leading DDIM grid from
#   750) and compares DINO features. The grid, the first-step stop test, the continued DDIM
#   and the official map are options; section 8 lists every difference.
#
# ## Exercises
#
# 1. Run inside `with method.using(after_stop="continue"):` (the official code: the fused x0 is
#    denoised on to t = 0) and compare the fidelity outside the defects and the metrics.
#    Then the official grid: `with strong.using(timestep_spacing="leading",
#    stop_at_first_step=True):` — recalibrate first (the timesteps change); how many images
#    stop at the first step?
# 2. Recalibrate inside `with method.using(threshold_quantile=0.8):` (and `0.99`). How does the
#    stop-step histogram change, and which way do image and pixel AUROC move?
# 3. Choose `min_step` on the validation split: for min_step in 120, 160, 200, 240, recalibrate
#    and score the synthetic validation set (`dap.engine.select.validate_on(method, vset)`); then
#    evaluate only the winner on the test split.
# 4. Train two small models, `build_method("glad", "ci")` and `build_method("glad", "ci",
#    atp=False)`, with `train_run` on the same data and steps. Which one repairs large defects
#    better (inside error against the clean image)?
# 5. Replace the discrepancy's direction (query = the reconstruction, reference = the input's x0)
#    in the call of `patch_discrepancy` in `GLAD.discrepancy` (`dap/methods/glad/model.py`).
#    Why does that direction miss defects?
