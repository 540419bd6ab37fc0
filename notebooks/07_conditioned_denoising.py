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
# # 07 — Conditioned denoising: DDAD
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/dap/blob/main/notebooks/07_conditioned_denoising.ipynb)
#
# A reconstruction-based detector has to do two things at once: **keep what is normal** (or
# every texture detail becomes a false alarm) and **repair what is not** (or the defect is
# copied and missed). DiffusionAD's norm guidance (notebook 04) is one answer. DDAD
# (Mousakhan, Brox, Tayyub, "Anomaly Detection with Conditioned Denoising Diffusion Models") is
# another: a short DDIM trajectory from t' = 250 whose every step is pulled back towards the
# input image. It then compares input and reconstruction in the feature space of a network, not
# only pixel by pixel, and adapts that network to the reconstructions' domain. dap follows the
# official code (arimousa/DDAD) by default; section 7 lists every place where it does not.
#
# **What you will learn**
# - DDAD's conditioned guidance, eps_hat = eps - sqrt(1 - abar_t) w (y_t - x_t), and that it has
#   the *same form* as norm guidance: both are x0 + w (1 - abar_t) (target - x0), with the roles
#   of "detail" and "repair" swapped;
# - what the conditioning weight w does to a reconstruction (measured against the clean image,
#   and in a widget);
# - pixel vs feature distance maps, and how DDAD combines them — and why the official code's
#   scores depend on the test batch, and how dap fixes it;
# - domain adaptation of the feature extractor, as the official code does it;
# - a trained DDAD's row in the side-by-side table, and the official code vs dap.
#
# The code lives in `dap.diffusion.conditioned_guidance`, `dap.methods.ddad` and
# `dap.features`; this notebook drives it.

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

PROFILE = get_profile()                     # DAP_PROFILE = ci | cpu | full | colab
ZOO_MODEL = "diffusionad-builtin-brick"     # a trained denoiser to study conditioning with
CATEGORY = "brick"                          # its built-in test images
DATA = "mvtec:bottle" if PROFILE == "full" else f"builtin:{CATEGORY}"   # DDAD trained here
DDAD_MODEL = f"ddad-builtin-{CATEGORY}"     # the shipped DDAD: sections 4-6 use it if present
PRESET = profile(PROFILE).notebook_preset   # the model size trained here (cpu: the 64 px ci)
STEPS = {"ci": 40, "cpu": 50, "full": 48000, "colab": 2000}[PROFILE]   # denoiser training steps
LR = {"ci": 1e-3, "cpu": 1e-3, "full": 3e-4, "colab": 3e-4}[PROFILE]   # paper: Adam 3e-4
DA_STEPS = {"ci": 6, "cpu": 10, "full": 40, "colab": 40}[PROFILE]      # domain-adaptation steps
WS = {"ci": [0.0, 1.0, 2.0, 4.0],
      "cpu": [0.0, 1.0, 2.0, 3.0, 4.0, 6.0],
      "full": [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0],
      "colab": [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]}[PROFILE]
N_IMAGES = {"ci": 6, "cpu": 12, "full": 48, "colab": 48}[PROFILE]   # defective images, w sweep
SEED = 0
print(PROFILE, "| DDAD on", DATA, f"| {STEPS} steps | w:", WS)

# %%
import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch

from dap import zoo
from dap.analysis import load_test_tensors, median_iqr, remaining_fraction, repair_errors
from dap.data.spec import datasets, parse_data
from dap.diffusion import conditioned_guidance, norm_guided
from dap.engine.evaluate import measure_fps
from dap.engine.train import TrainData
from dap.experiments import evaluate_run, train_run
from IPython.display import Markdown

from dap.methods.base import gaussian_blur
from dap.methods.ddad import DIFFERENCES, conditioned_reconstruct, crop_score, ddad_timesteps
from dap.methods.official import markdown as differences_table
from dap.report import published_table, results_markdown
from dap.viz import plot_curves, show_images

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# %% [markdown]
# ## 1. One problem, two answers
#
# Any eps-predictor will do to study the guidance; we borrow the shipped DiffusionAD model's
# denoiser (trained on normal brick images). Write a = abar_t and
# x0(eps) = (x_t - sqrt(1 - a) eps) / sqrt(a) (eq. 6).
#
# **Norm guidance** (DiffusionAD eqs. 7-8) predicts x0_s from a small step (keeps detail, may
# copy the defect) and x0_b from a big one (repairs, loses detail), and moves x0_s towards x0_b:
#
#   x0_g = x0_s + w (1 - a_ts) (x0_b - x0_s).
#
# **Conditioned guidance** (DDAD) starts from a big step (repair) and, at every DDIM step t, pulls
# the model's estimate back towards the input y (detail). It noises y *with the predicted noise*,
# y_t = sqrt(a) y + sqrt(1 - a) eps, and corrects eps by the gap:
#
#   eps_hat = eps - sqrt(1 - a) w (y_t - x_t).
#
# Since x_t = sqrt(a) x0(eps) + sqrt(1 - a) eps, the gap is y_t - x_t = sqrt(a) (y - x0(eps)), so
#
#   x0(eps_hat) = x0(eps) + w (1 - a) (y - x0(eps)).
#
# The same line through two estimates, the same weight w (1 - a): norm guidance pulls the
# detailed estimate towards the repaired one; DDAD pulls the repaired estimate towards the
# detailed input. Both identities, checked with the trained denoiser (no clamping):

# %%
borrowed = zoo.load(ZOO_MODEL, device=DEVICE)
denoiser, schedule = borrowed.denoiser, borrowed.schedule.to(DEVICE)
SIZE = borrowed.image_size
test = load_test_tensors(CATEGORY, SIZE, n=N_IMAGES, kind="defect").to(DEVICE)
abar = schedule.alphas_cumprod.cpu()
y, t, w = test.images, 250, 2.0
gen = torch.Generator(DEVICE).manual_seed(SEED)
with torch.no_grad():
    x_t = schedule.add_noise(y, torch.randn(y.shape, generator=gen, device=DEVICE), t)
    eps = denoiser(x_t, torch.full((len(y),), t, device=DEVICE))
    x0 = schedule.pred_original_sample(x_t, eps, t)
    eps_hat = conditioned_guidance(schedule, x_t, eps, y, t, w)
    x0_hat = schedule.pred_original_sample(x_t, eps_hat, t)
    ng = norm_guided(denoiser, schedule, y, 200, 400, w=1.0, generator=gen)
ddad_gap = (x0_hat - (x0 + w * (1 - abar[t]) * (y - x0))).abs().max()
ng_gap = (ng.x0_g - (ng.x0_s + (1 - abar[200]) * (ng.x0_b - ng.x0_s))).abs().max()
print(f"DDAD, t = {t}, w = {w}: max |x0(eps_hat) - blend| = {ddad_gap:.1e}  "
      f"(the input's share: {w * (1 - abar[t]):.2f})")
print(f"norm guidance, t_s = 200, w = 1: max |x0_g - blend| = {ng_gap:.1e}  "
      f"(x0_b's share: {1 - abar[200]:.2f})")

# %% [markdown]
# DDAD applies the pull at each of its 10 steps. The official code noises the input to
# t' = 250 and then evaluates the network at t = 225, 200, ..., 0 (`range(0, 250, 25)`,
# reversed): the first evaluation is told 225 for a sample noised to 250, and the last step goes
# from t = 0 to x_0. That is dap's default, `ddad_timesteps(250, 10)` (`grid="official"`);
# `grid="dap"` evaluates at 250, ..., 25 instead, each sample at its own noise level. Both take
# 10 network evaluations, through the same `denoise_loop`.
#
# The share of the input, w (1 - abar_t), is large early — at w = 2 the first steps' estimates
# are mostly the input itself — and fades as t -> 0, where the model's own estimate takes over.

# %%
print("official grid:", ddad_timesteps(250, 10, "official"))
print("dap grid:     ", ddad_timesteps(250, 10, "dap"))
steps = np.array(ddad_timesteps(250, 10))
fig = plot_curves(steps, {f"w = {w:g}": w * (1 - abar[steps]).numpy() for w in (1.0, 2.0, 4.0)},
                  "DDIM step t", "share of the input y", title="w (1 - abar_t) along DDAD's path")
fig.axes[0].axhline(1.0, color="gray", ls=":")
fig.axes[0].invert_xaxis()

# %% [markdown]
# ## 2. The effect of w
#
# The built-in benchmark keeps the clean image under every defect (notebook 03), so we can
# measure both sides of the trade-off against the truth, for defective test images:
#
# - **remaining fraction** of the defect in the reconstruction (1 = copied, 0 = repaired);
# - **fidelity error** outside the defect (mean |x0 - clean|; 0 = every normal detail kept).
#
# Every reconstruction below uses the same noise (`shared_noise`: one draw for the batch). This
# looks at an effect on test images; it selects nothing.

# %%
input_inside = repair_errors(y, test.cleans, test.masks)[0]
recs, remaining, fidelity = [], [], []
for w in WS:
    with torch.no_grad():
        rec = conditioned_reconstruct(denoiser, schedule, y, w=w, shared_noise=True,
                                      generator=torch.Generator(DEVICE).manual_seed(SEED)).sample
    inside, outside = repair_errors(rec, test.cleans, test.masks)
    recs.append(rec.cpu())
    remaining.append(remaining_fraction(inside, outside, input_inside))
    fidelity.append(outside)
    print(f"w = {w:4.1f}: remaining fraction {np.nanmedian(remaining[-1]):6.1%}, "
          f"fidelity error {np.nanmedian(outside):.4f} (medians)")
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for ax, (name, values) in zip(axes, [("remaining fraction of the defect", remaining),
                                     ("fidelity error outside the defect", fidelity)]):
    s = median_iqr(np.stack(values))
    plot_curves(WS, {name: s.median}, "w", name, ax=ax, spread={name: (s.q25, s.q75)}, title=name)

# %% [markdown]
# w = 0 is plain DDIM from t' = 250: the most repair and the least fidelity. As w grows the
# reconstruction keeps more of the input — its normal detail and, eventually, the defect.
#
# The two grids at w = 2, the same images and noise (measured here):

# %%
for grid in ("official", "dap"):
    with torch.no_grad():
        rec_g = conditioned_reconstruct(denoiser, schedule, y, w=2.0, shared_noise=True, grid=grid,
                                        generator=torch.Generator(DEVICE).manual_seed(SEED)).sample
    inside, outside = repair_errors(rec_g, test.cleans, test.masks)
    print(f"grid {grid:>8}: remaining fraction "
          f"{np.nanmedian(remaining_fraction(inside, outside, input_inside)):6.1%}, "
          f"fidelity error {np.nanmedian(outside):.4f} (medians)")

# %% [markdown]
# The smallest and the largest defect of the set across w:

# %%
small, large = int(np.argmin(test.area)), int(np.argmax(test.area))
tiles, titles = [], []
for i in (small, large):
    tiles += [test.images[i].cpu(), *[r[i] for r in recs]]
    titles += [f"{test.defects[i]} {test.area[i]:.1%}", *[f"w = {w:g}" for w in WS]]
show_images(torch.stack(tiles), titles, ncols=1 + len(WS), size=1.7);

# %% [markdown]
# Play with w, the start step t', eta (DDIM's stochasticity: 1 in the official code, 0 makes
# the path deterministic) and the grid. Each move runs 10 network evaluations on one image.

# %%
@torch.no_grad()
def condition_one(image: int = large, w: float = 2.0, t_start: int = 250, eta: float = 1.0,
                  grid: str = "official"):
    x = test.images[image:image + 1]
    rec = conditioned_reconstruct(denoiser, schedule, x, t_start=t_start, w=w, eta=eta, grid=grid,
                                  generator=torch.Generator(DEVICE).manual_seed(SEED)).sample
    diff = (rec - x).abs().mean(1, keepdim=True).expand(-1, 3, -1, -1)
    show_images(torch.cat([x, rec, diff * 2 - 1, test.masks[image:image + 1].expand(-1, 3, -1, -1)
                           * 2 - 1]).cpu(), ["input", f"x0, w = {w:g}", "|x0 - x|", "defect"],
                size=2.3, suptitle=f"t' = {t_start}, eta = {eta:g}")
    plt.show()


widgets.interact(condition_one, image=widgets.IntSlider(large, 0, len(test) - 1),
                 w=widgets.FloatSlider(2.0, min=0.0, max=10.0, step=0.5),
                 t_start=widgets.IntSlider(250, 50, 600, 25),
                 eta=widgets.FloatSlider(1.0, min=0.0, max=1.0, step=0.5),
                 grid=widgets.Dropdown(options=["official", "dap"], value="official"));

# %% [markdown]
# ## 3. Training DDAD
#
# DDAD's denoiser is a plain DDPM noise predictor trained on *normal* images only:
# t ~ U[0, 1000), L = ||eps - eps_theta(x_t, t)||^2. No synthetic anomalies, no segmentation
# network (the synthesizer only makes the validation set that model selection uses). The
# training loop is the shared one of `dap.engine.train`. Under `ci` this is a short run: enough
# to see the loss fall, not to detect much.
#
# The official code *sums* the squared errors over the 3 x H x W pixels and trains with Adam and
# a coupled weight decay of 0.05. dap takes the mean (`loss_reduction="mean"`), which divides
# the gradient by 3 H W; the same decay would then be 3 H W times stronger relative to it. Adam
# ignores the scale of the loss except through the decay and its eps, so dap divides both by
# 3 H W (`DDADConfig.loss_scale`) and takes the official steps (tested in
# `tests/test_ddad_official.py`). The denoiser's optimiser group:

# %%
model, result, provenance = train_run(
    "ddad", DATA, profile=PROFILE, preset=PRESET, out_dir=f"runs/nb07-{PROFILE}", resume=False,
    train_overrides={"steps": STEPS, "lr": LR, "val_every": STEPS})
model.to(DEVICE)
loss = np.array([h["loss"] for h in result.history])
window = max(1, len(loss) // 10)
print(f"{result.seconds:.0f} s; loss {loss[:window].mean():.3f} -> {loss[-window:].mean():.3f}; "
      f"extractor: {model.extractor_name}; selected on {provenance['selected']}")
plot_curves(np.arange(len(loss)), {"noise loss": loss}, "step", "loss", logy=True);
group = model.param_groups(LR)[0]
print(f"loss_reduction={model.config.loss_reduction!r}: 3 H W = {model.config.loss_scale:.0f}, "
      f"decay {model.config.weight_decay} / 3HW = {group['weight_decay']:.3g}, "
      f"Adam eps {group['eps']:.3g}")

# %% [markdown]
# A few dozen steps show the loss falling, not a detector. From here on the notebook uses the
# **shipped DDAD model** of this category when the checkout has one (`dap/checkpoints/`, trained
# with `tools/train_zoo.py`: its provenance file holds the command), and the model above
# otherwise (and under `full`, which trains on MVTec AD).

# %%
trained = model
if DATA == f"builtin:{CATEGORY}" and DDAD_MODEL in zoo.available():
    model = zoo.load(DDAD_MODEL, device=DEVICE)
    shipped = zoo.info(DDAD_MODEL)
    SOURCE = (f"the shipped model {DDAD_MODEL} ({shipped['train_config']['steps']} steps at "
              f"batch {shipped['train_config']['batch_size']}, {shipped['seconds'] / 60:.0f} min "
              f"on a CPU, then {model.config.domain_adaptation_steps} adaptation steps)")
else:
    SOURCE = f"the model trained above ({STEPS} steps)"
print("Sections 4-6 use", SOURCE)

# %% [markdown]
# ## 4. Pixel and feature distances
#
# DDAD reconstructs by conditioned denoising (w = 2, t' = 250, 10 DDIM steps) and compares:
#
# - **pixel distance** p = mean over channels of |x0 - x|: sharp, but every small misalignment of
#   a texture counts;
# - **feature distance** f = sum over two pyramid levels of upsampled (1 - cos) between the
#   features of x0 and x (3 x 3 patches): tolerant to small shifts, coarse.
#
# The map is blur(f + v s p) with s = max f / max p, Gaussian sigma 4 at 256 px (1 at 64 px);
# the image score is the max of its central 224/256 (the official code centre-crops its 256 px
# maps to 224 px; `score_crop`). `model.map_terms(x, rec)` gives f and p,
# `model.anomaly_map(x, rec)` the map. The official code's extractor is an ImageNet
# WideResNet-101-2 (its config's `feature_extractor`; layers 2 and 3); dap's offline default is
# the trained denoiser's own encoder at t = 0 (`extractor_name`). With torchvision's weights file
# at hand, pass `extractor="wide_resnet101_2", extractor_weights=PATH` (or `"wide_resnet50_2"`)
# to `build_method` / `train_run(overrides=...)`.
#
# Two normal and two defective test images; each map panel is scaled to its own maximum.

# %%
test_root = None if DATA.startswith("builtin") else parse_data(DATA, model.image_size).root
model_test = load_test_tensors(DATA.split(":")[1], model.image_size, n=4, kind="all",
                               root=test_root).to(DEVICE)
x = model_test.images
rec = model.reconstruct(x).sample
maps = model.map_terms(x, rec)            # {"feature": f, "pixel": p}, each (B, H, W)
amap = model.anomaly_map(x, rec)          # blur(f + v s p)


def as_image(m):   # (B, H, W) -> (B, 3, H, W) in [-1, 1], each map scaled to its own max
    m = m / m.amax(dim=(1, 2), keepdim=True).clamp_min(1e-8)
    return m[:, None].expand(-1, 3, -1, -1) * 2 - 1


tiles = torch.stack([x, rec, as_image(maps["pixel"]), as_image(maps["feature"]),
                     as_image(amap), model_test.masks.expand(-1, 3, -1, -1) * 2 - 1],
                    1).flatten(0, 1)
show_images(tiles.cpu(), ["input", "reconstruction", "pixel p", "feature f", "map", "defect"] * 4,
            ncols=6, size=1.7);

# %% [markdown]
# The crop leaves out a band of 1/16 of the side on each edge. How much of the test defects lies
# in it, measured on this category's test set:

# %%
crop_check = load_test_tensors(DATA.split(":")[1], model.image_size, n=1000, kind="defect",
                               root=test_root)
masks = crop_check.masks.reshape(len(crop_check), *crop_check.masks.shape[-2:]).float()
inside_crop = crop_score(masks, model.config.score_crop) > 0
side = int(round(masks.shape[-1] * model.config.score_crop))
off = int(round((masks.shape[-1] - side) / 2))
share = masks[:, off:off + side, off:off + side].sum((1, 2)) / masks.sum((1, 2)).clamp_min(1)
print(f"{len(masks)} defective test images: {int((~inside_crop).sum())} lie entirely in the "
      f"border band; on average {float(share.mean()):.1%} of a defect's area is inside the crop")

# %% [markdown]
# **The batch flaw.** The official code takes max f and max p over the whole *test batch*: an
# image's score then depends on which images it was batched with. dap uses a constant s
# estimated on normal *training* images (`fit_pixel_scale`, run after training; until then each
# image's own maxima), and shares the reconstruction noise across the batch, so an image scores
# the same alone or in any batch. The official rule, applied to the maps we just computed:

# %%
def batch_max_scores(out, v=1.0):   # the official code's normalisation, over the batch
    s = out["feature"].max() / out["pixel"].max()
    amap = gaussian_blur(out["feature"] + v * s * out["pixel"], model.config.smoothing_sigma)
    return crop_score(amap, model.config.score_crop)


alone = [float(batch_max_scores(model.map_terms(x[i:i + 1], rec[i:i + 1])))
         for i in range(len(x))]
batched = batch_max_scores(maps).tolist()
dap_alone = [float(model.predict(x[i:i + 1]).score) for i in range(len(x))]
dap_batch = crop_score(amap, model.config.score_crop)
for i in range(len(x)):
    print(f"image {i} ({model_test.defects[i]:>8}): official alone {alone[i]:.4f}, in the "
          f"batch {batched[i]:.4f} | dap alone {dap_alone[i]:.4f}, in the batch "
          f"{float(dap_batch[i]):.4f}")

# %% [markdown]
# ## 5. Domain adaptation
#
# The extractor sees reconstructions, which differ from photographs in small systematic ways
# (smoother, slightly shifted colours): a domain gap that shows up as feature distance on
# *normal* images. DDAD fine-tunes a copy A of the extractor F on normal training images
# (AdamW, lr 1e-4). dap follows the official recipe: each batch is split in two, the second half
# is reconstructed *towards the first half* with the stronger weight w_DA = 3, so x0 and its
# target y are different normal images, and
#
#   L = sum_l  d(A_l(x0), A_l(y)) + lambda d(A_l(y), F_l(y)) + lambda d(A_l(x0), F_l(x0)),
#
# lambda = 0.1 (MVTec), over the levels 0-2 (WideResNet layer1-3), with d = 1 - cos of each
# image's whole flattened feature map, and A's BatchNorm in train mode. The two distillation
# terms keep A close to the frozen F. The denoiser and F stay as they are;
# `use_adaptation="off"` scores with F again. Each part has an option (`da_pairing`, `da_w`,
# `da_distill_reconstruction`, `da_levels`, `da_distance`, `da_batchnorm`; section 7).

#
# A shipped model was adapted right after its training. The adaptation is run here on the
# model trained in section 3 (the shipped one is left as it is), to show its losses:

# %%
train_ds = datasets(parse_data(DATA, model.image_size), model.image_size)[0]
train_images = TrainData.from_dataset(train_ds).images            # uint8, normal only
info = trained.adapt(train_images, steps=DA_STEPS, seed=SEED)
info.update(trained.fit_pixel_scale(train_images))
print({k: round(v, 4) for k, v in info.items()})
print("adapted:", "model of section 3" + (" (also used below)" if model is trained else
                                          f"; below: {SOURCE}"))

# %% [markdown]
# Mean feature distance on normal and defective test images, frozen vs adapted extractor (the
# same reconstructions): adaptation should lower it on normal images more than on defects.

# %%
mixed = load_test_tensors(DATA.split(":")[1], model.image_size, n=N_IMAGES, kind="all",
                          root=test_root).to(DEVICE)
rec_mixed = model.reconstruct(mixed.images).sample
for adapted in (False, True):
    with model.using(use_adaptation="require" if adapted else "off"):
        f = model.map_terms(mixed.images, rec_mixed)["feature"].mean(dim=(1, 2))
    print(f"{'adapted' if adapted else 'frozen':>7}: normal {f[mixed.labels == 0].mean():.4f}, "
          f"defective {f[mixed.labels == 1].mean():.4f}")

# %% [markdown]
# ## 6. The table row
#
# The test split, the same metrics as every method (notebook 06): image AUROC on the image score,
# pixel AUROC, AUPRO (FPR <= 0.3), pixel AP, and batch-1 FPS. One trained model, two rows:
# the frozen extractor and the adapted one. `python -m dap benchmark --methods ddad` makes the
# same two rows for the built-in categories. The paper reports 99.8 image AUROC on MVTec AD and
# 98.9 on VisA with the 256 px model and WideResNet features — not comparable with a small model
# on the built-in benchmark.

# %%
rows = []
for label, mode in (("ddad", "off"), ("ddad+DA", "require")):
    with model.using(use_adaptation=mode):
        row, res = evaluate_run(model, DATA, fps=False, label=label)
        fps_kw = {"batch_size": 4, "warmup": 1, "iters": 2} if PROFILE == "ci" else {}
        row.update(measure_fps(model, model.image_size, **fps_kw))
        rows.append({**row, "extractor": model.extractor_name})
print(results_markdown(rows))

# %%
print("rows above:", SOURCE)

# %% [markdown]
# The rows above are one category. The measured rows of every method, DDAD's two among them,
# come from the README's side-by-side benchmark, `python -m dap benchmark --out runs/benchmark`
# (the shipped models of the three built-in categories, 64 px; every row not shipped is
# trained there with the same recipe), whose `table.json` is kept as `results/benchmark.json`
# and rendered here with its provenance. Without an ImageNet extractor
# and without a segmentation network trained on synthetic anomalies, DDAD's map is a raw
# distance between input and reconstruction: read its rows beside DiffusionAD's, not beside the
# paper's.

# %%
Markdown(published_table("benchmark"))

# %% [markdown]
# ## 7. The official code vs dap
#
# Every place where dap's DDAD differs from the official code (arimousa/DDAD), or matches it
# after a check, with the option that restores the official setting. The same records are in
# `help(dap.methods.ddad)`; they live in `dap/methods/ddad/official.py`.

# %%
Markdown(differences_table(DIFFERENCES))

# %% [markdown]
# ## Summary
#
# - DDAD reconstructs with a 10-step DDIM trajectory from t' = 250 (evaluated at 225, ..., 0, as
#   the official code does) whose noise estimates are pulled towards the input:
#   eps_hat = eps - sqrt(1 - abar_t) w (y_t - x_t).
# - Conditioned guidance and norm guidance share one form, x0 + w (1 - abar_t)(target - x0):
#   norm guidance pulls detail towards repair, DDAD pulls repair towards the input's detail.
#   w sets the balance: more w, more fidelity and more of the defect copied.
# - DDAD's map adds a feature distance (tolerant to small shifts) to the pixel distance; the
#   official normalisation over the test batch makes scores batch-dependent — dap calibrates it
#   on training images and shares the noise, so every image scores the same in any batch.
# - Domain adaptation fine-tunes a copy of the extractor so reconstructions of normal images
#   look normal to it, anchored to the frozen extractor by distillation; dap follows the official
#   recipe (pairs of different images, w_DA = 3, three terms, layers 1-3, BatchNorm in train mode).
# - The summed loss with decay 0.05 and the mean loss with decay 0.05 / (3 H W) give the same Adam
#   steps; the decay must follow the loss scale.
#
# Next: the other related methods (GLAD, DiffAD) and the side-by-side table.
#
# ## Exercises
#
# 1. Show that with w (1 - abar_t) = 1 one conditioned step returns the input exactly. At which
#    t does that happen for w = 2? What happens to a defect for w larger than 1 / (1 - abar_t')?
# 2. Set `eta=0` (`build_method("ddad", ..., eta=0.0)`) and compare reconstructions and scores.
#    Which one is closer to the clean image on the built-in benchmark?
# 3. Replace the extractor levels (`extractor_levels=(0, 1)`) and compare the maps: what do the
#    high-resolution levels see that the coarse ones miss?
# 4. Evaluate with `v=0` (features only) and with a large `v` (pixels dominate). Which defects
#    does each find?
# 5. With the WideResNet weights file, train with `extractor="wide_resnet101_2"` (the official
#    one) and compare against the denoiser's own encoder. Does domain adaptation help one more
#    than the other?
# 6. Train two models with `grid="official"` and `grid="dap"` and compare their rows. Why might a
#    first step that is told t = 225 for a sample noised to t = 250 still work?
# 7. Adapt with the earlier dap recipe (`da_pairing="self", da_w=2.0, da_levels=(1, 2),
#    da_distance="map", da_distill_reconstruction=False, da_batchnorm="eval"`) and compare the
#    adapted rows.
