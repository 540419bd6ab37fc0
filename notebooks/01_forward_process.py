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
# # 01 — The forward process: how a diffusion model destroys an image
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/dap/blob/main/notebooks/01_forward_process.ipynb)
#
# Every diffusion anomaly detector in this repository (DiffusionAD, DDAD, GLAD, DiffAD) starts
# from the same idea: add Gaussian noise to an image in many small steps until nothing is left,
# and train a network to undo one step. This notebook looks only at the first half, the
# **forward process**, which has no learned parameters at all.
#
# **What you will learn**
# - the noise schedule beta_t and the quantity that matters, abar_t = prod_{s<=t} (1 - beta_s);
# - why the linear schedule of DDPM (and of DiffusionAD: T = 1000, beta from 1e-4 to 0.02) and the
#   cosine schedule destroy information at different speeds (signal-to-noise ratio in dB);
# - the closed form q(x_t | x_0) (DiffusionAD eq. 1) that lets us jump to any t in one step;
# - how the pixel histogram of x_t drifts to a standard normal.
#
# The code lives in `dap.diffusion` (`NoiseSchedule`, `add_noise`); this notebook only drives it.

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
SETTINGS = profile(PROFILE)
print(PROFILE, SETTINGS)

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from skimage import data as skdata

from dap.diffusion import NoiseSchedule
from dap.viz import plot_curves, show_images

# %% [markdown]
# ## 1. The schedule
#
# DDPM fixes a variance schedule beta_1..beta_T. With alpha_t = 1 - beta_t, the product
# abar_t = prod_{s<=t} alpha_s says how much of the original image survives at step t.
# `NoiseSchedule` computes every table in float64 and stores it in float32 (in float32 the
# cumulative product drifts). Indices run from 0 to T - 1, as in diffusers.

# %%
linear = NoiseSchedule(1000, "linear", 1e-4, 0.02)   # the DiffusionAD / DDPM schedule
cosine = NoiseSchedule(1000, "cosine")                # Nichol & Dhariwal (Improved DDPM)
t = np.arange(linear.num_train_timesteps)

fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
plot_curves(t, {"linear": linear.betas, "cosine": cosine.betas}, "t", "beta_t", ax=axes[0],
            logy=True, title="noise added per step")
plot_curves(t, {"linear": linear.alphas_cumprod, "cosine": cosine.alphas_cumprod}, "t",
            "abar_t", ax=axes[1], title="signal kept: abar_t");

# %% [markdown]
# DiffusionAD reconstructs from t_s = 200 and t_b = 400. How much signal is left there?

# %%
for step in (200, 300, 400, 999):
    print(f"t = {step:4d}:  linear abar = {linear.alphas_cumprod[step]:.4f}   "
          f"cosine abar = {cosine.alphas_cumprod[step]:.4f}")

# %% [markdown]
# ## 2. Signal-to-noise ratio
#
# SNR(t) = abar_t / (1 - abar_t): the ratio of the signal's variance to the noise's. In decibels,
# 10 log10 SNR. The linear schedule drives the SNR down fast in the middle and wastes its last
# few hundred steps on nearly pure noise; the cosine schedule spreads the loss out.

# %%
plot_curves(t, {"linear": 10 * torch.log10(linear.snr()),
                "cosine": 10 * torch.log10(cosine.snr())},
            "t", "SNR (dB)", title="signal-to-noise ratio against t");

# %% [markdown]
# ## 3. Jumping to any t: q(x_t | x_0)  (DiffusionAD eq. 1)
#
# Because a sum of Gaussians is Gaussian, t small steps collapse into one:
#
# x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,  eps ~ N(0, I).
#
# We use a real photograph that ships with scikit-image (no download), scaled to [-1, 1].

# %%
size = SETTINGS.image_size
photo = torch.from_numpy(skdata.astronaut()).permute(2, 0, 1).float() / 127.5 - 1.0
x0 = F.interpolate(photo[None], size=(size, size), mode="bilinear", antialias=True)
gen = torch.Generator().manual_seed(0)
noise = torch.randn(x0.shape, generator=gen)

steps = [0, 50, 100, 200, 400, 600, 999]
noisy = torch.cat([linear.add_noise(x0, noise, s) for s in steps])
show_images(noisy, [f"t = {s}" for s in steps], value_range=(-1, 1));

# %% [markdown]
# Note that images are shown clipped to [-1, 1]; x_t itself leaves that range as t grows.
#
# ## 4. The pixel histogram drifts to N(0, 1)
#
# At t = 0 the histogram is the photo's; at t = T - 1 it is the standard normal density.

# %%
grid = np.linspace(-4, 4, 200)
fig, ax = plt.subplots(figsize=(6, 3.5))
for s in (0, 100, 300, 600, 999):
    xt = linear.add_noise(x0, noise, s)
    ax.hist(xt.flatten().numpy(), bins=80, density=True, histtype="step", label=f"t = {s}")
ax.plot(grid, np.exp(-grid**2 / 2) / np.sqrt(2 * np.pi), "k--", label="N(0, 1)")
ax.set_xlim(-4, 4)
ax.set_xlabel("pixel value of x_t")
ax.set_ylabel("density")
ax.legend()
ax.set_title("pixel histogram of x_t");

# %% [markdown]
# A quick numerical check of the same claim: the mean and standard deviation of x_t should
# approach 0 and 1 (they equal sqrt(abar_t) mean(x_0) and, roughly, sqrt(abar_t var(x_0) + 1 - abar_t)).

# %%
for s in (0, 200, 400, 999):
    xt = linear.add_noise(x0, noise, s)
    a = float(linear.alphas_cumprod[s])
    # std(x_t) ~ sqrt(abar_t var(x_0) + 1 - abar_t)
    predicted_std = (a * float(x0.var()) + 1 - a) ** 0.5
    print(f"t = {s:4d}: mean {xt.mean():+.3f}  std {xt.std():.3f}  (predicted std {predicted_std:.3f})")

# %% [markdown]
# ## 5. Play: a slider over t
#
# Move the slider to see x_t and its histogram for any t and either schedule.

# %%
import ipywidgets as widgets


def show_step(step: int = 200, schedule: str = "linear"):
    sched = linear if schedule == "linear" else cosine
    xt = sched.add_noise(x0, noise, step)
    fig, axes = plt.subplots(1, 2, figsize=(7, 3))
    axes[0].imshow(((xt[0].permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy())
    axes[0].set_title(f"{schedule}, t = {step}, abar = {sched.alphas_cumprod[step]:.3f}")
    axes[0].axis("off")
    axes[1].hist(xt.flatten().numpy(), bins=60, density=True)
    axes[1].plot(grid, np.exp(-grid**2 / 2) / np.sqrt(2 * np.pi), "k--")
    axes[1].set_xlabel("pixel value of x_t")
    axes[1].set_ylabel("density")
    plt.show()


widgets.interact(show_step, step=widgets.IntSlider(200, 0, 999, 10),
                 schedule=widgets.Dropdown(options=["linear", "cosine"]));

# %% [markdown]
# ## Summary
#
# - The forward process has no parameters: a schedule beta_t fixes everything.
# - abar_t is the fraction of signal variance left at step t; eq. 1 samples x_t in one jump.
# - With the paper's linear schedule about 66 % of the signal survives at t = 200 and 19 % at
#   t = 400 — the two noise scales DiffusionAD reconstructs from (notebooks 03 and 04).
# - The SNR falls quickly; the cosine schedule destroys information more evenly.
#
# Next: `02_one_step_vs_iterative` trains a denoiser and asks whether one step back is as good
# as hundreds.
#
# ## Exercises
#
# 1. Derive eq. 1 from q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t I) by induction.
# 2. At which t does the linear schedule reach SNR = 1 (0 dB)? The cosine one? Find it with
#    `torch.searchsorted` or by reading the plot.
# 3. Recompute abar_t in float32 with `torch.cumprod` and compare it with
#    `NoiseSchedule().alphas_cumprod`. How large is the relative error at t = 999?
# 4. Replace the photo with a built-in texture (`skimage.data.brick()`). Does its histogram reach
#    N(0, 1) at the same t? Why should it (or not)?
