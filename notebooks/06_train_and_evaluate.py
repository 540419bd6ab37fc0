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
# # 06 — Train and evaluate DiffusionAD
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/dap/blob/main/notebooks/06_train_and_evaluate.ipynb)
#
# The pieces of the previous notebooks meet here: the denoiser (notebooks 01-04), norm guidance
# (04), anomaly synthesis (05), a segmentation network, the joint loss, and the four metrics of
# the anomaly-detection literature.
#
# **What you will learn**
# - the joint training step: L_noise on normal samples only + SmoothL1 + 5 x Focal on the mask;
# - why a batch without normal samples must give a zero noise loss, not NaN (the official bug);
# - model selection on a *validation* split of normal images plus synthetic anomalies — never on
#   the test split;
# - image AUROC (top-50 mean of the mask), pixel AUROC, AUPRO (FPR <= 0.3), pixel AP, and FPS.
#
# Profiles: under `ci` / `cpu` the notebook trains a small model for a few steps on the built-in
# benchmark, then evaluates a *shipped* model (`dap.zoo`). Under `full` (a GPU) it trains the
# paper's configuration on a real category — download it first with
# `python -m dap data download mvtec --root $DAP_DATA/mvtec`.

# %%
import os
import sys

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

PROFILE = get_profile()                       # DAP_PROFILE = ci | cpu | full
DATA = "mvtec:bottle" if PROFILE == "full" else "builtin:brick"
STEPS = profile(PROFILE).notebook_train_steps  # the profile table: dap/profiles.py
ZOO_MODEL = "diffusionad-builtin-brick"       # the shipped model evaluated under ci / cpu

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

from dap import zoo
from dap.report import PAPER_RESULTS, example_figure, results_markdown
from dap.experiments import evaluate_run, train_run
from dap.methods import build_method
from dap.methods.base import TrainBatch
from dap.models.common import count_parameters

# %% [markdown]
# ## 1. The model
#
# Two sub-networks. The denoiser is a guided-diffusion U-Net (the `paper` preset has 131.7 M
# parameters at 256 x 256); the segmenter is DRAEM's discriminative U-Net on concat(x, x0_g)
# (28.4 M). The small presets keep the architecture and shrink the widths.

# %%
preset = profile(PROFILE).preset
method = build_method("diffusionad", preset)
print(f"preset {preset}: image {method.config.denoiser.image_size} px, "
      f"denoiser {count_parameters(method.denoiser) / 1e6:.2f} M, "
      f"segmenter {count_parameters(method.segmenter) / 1e6:.2f} M parameters")
print(f"t_s ~ U[0, {method.config.tau}), t_b ~ U[{method.config.tau}, 1000); inference "
      f"t_s = {method.config.t_s}, t_b = {method.config.t_b}, w = {method.config.w}")

# %% [markdown]
# ## 2. One training step, by hand
#
# `method(batch, generator)` is the training loss (a method's forward pass *is* its loss, so
# DistributedDataParallel can wrap any method). One batch of normal images goes in; half of it
# becomes anomalous through eq. 12; the noise loss only looks at the normal half.

# %%
size = method.config.denoiser.image_size
images = torch.rand(8, 3, size, size) * 2 - 1            # stand-in images, just for shapes
losses = method(TrainBatch(images), torch.Generator().manual_seed(0))
print({k: round(float(v.detach()), 4) for k, v in losses.items()})

all_anomalous = build_method("diffusionad", preset, synthesis={"normal_prob": 0.0})
print("no normal sample -> L_noise =",
      float(all_anomalous(TrainBatch(images), torch.Generator().manual_seed(0))["loss_noise"]))

# %% [markdown]
# ## 3. A real training run
#
# `train_run` loads the category, builds the validation set (validation-split normal images +
# synthetic anomalies, made once with a fixed seed), trains with the shared loop of `dap.engine.train`
# (seeded, resumable, mixed precision on GPUs) and keeps the checkpoint with the best validation
# score. Under `ci` this is a few dozen steps: enough to see the loss fall, not to detect anything.

# %%
trained, result, provenance = train_run(
    "diffusionad", DATA, profile=PROFILE, out_dir=f"runs/nb06-{PROFILE}",
    train_overrides={"steps": STEPS, "val_every": max(STEPS // 2, 1)}, resume=False)
loss = np.array([h["loss"] for h in result.history])
window = max(1, len(loss) // 10)
smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(loss, alpha=0.3, label="loss")
ax.plot(np.arange(window - 1, len(loss)), smooth, label=f"running mean ({window})")
ax.set_xlabel("step")
ax.legend()
print(f"{result.seconds:.0f} s; first {window} steps {loss[:window].mean():.3f} -> last "
      f"{window} steps {loss[-window:].mean():.3f}")
print("validation:", result.validations[-1])

# %% [markdown]
# ## 4. Evaluation
#
# Under `full` we evaluate the model just trained; under `ci` / `cpu` a shipped model, trained on
# the built-in benchmark by the command in its provenance file. The method never sees a mask; the
# metrics never know which method made the map.

# %%
if PROFILE == "full":
    model, source = trained, "trained above"
else:
    model, info = zoo.load(ZOO_MODEL), zoo.info(ZOO_MODEL)
    source = f"shipped model {ZOO_MODEL}: `{info['command']}`"
row, res = evaluate_run(model, DATA if PROFILE == "full" else zoo.info(ZOO_MODEL)["data"])
paper = PAPER_RESULTS["diffusionad"].get(DATA.split(":")[0]) if PROFILE == "full" else None
print(source)
print(results_markdown([row], paper=paper))

# %%
example_figure(res.examples, title=f"DiffusionAD on {row['category']}");

# %% [markdown]
# Score distributions: a good detector separates the two histograms.

# %%
fig, ax = plt.subplots(figsize=(6, 3))
for lab, name in ((0, "normal"), (1, "defective")):
    ax.hist(res.scores[res.labels == lab], bins=20, alpha=0.6, label=name)
ax.set_xlabel("image score (top-K mean of the mask)")
ax.legend();

# %% [markdown]
# ## Summary
#
# - DiffusionAD trains two networks jointly: a noise predictor (only on normal samples) and a
#   segmenter that compares the input with its norm-guided one-step reconstruction.
# - `dap.engine.train` is one loop for every method: deterministic per step, exactly resumable,
#   validation-selected — the test split is only used for the final numbers.
# - The four metrics come from one sort of all pixels (`dap.metrics`); FPS is measured at
#   batch 1 and batched.
# - `python -m dap demo` evaluates all shipped models; `python -m dap ablation` reproduces the
#   paper's Table VII on the built-in benchmark.
#
# ## Exercises
#
# 1. Train with `mask_loss_into_denoiser=False` (`build_method(..., mask_loss_into_denoiser=False)`
#    or `--set mask_loss_into_denoiser=false`). Does the reconstruction get better or worse?
# 2. Change `top_k` and re-evaluate. Why does the paper average the top 50 pixels instead of the max?
# 3. Run `python -m dap ablation` and compare one-step at t_s, at t_b and norm-guided. Which one
#    wins on large defects (look at `meta.json` for the defect sizes)?
# 4. Evaluate the brick model on `builtin:gravel`. What happens, and why?
