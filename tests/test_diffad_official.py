"""DiffAD against the official code (Loco-Roco/DiffAD 0c39d44): the sampler's conditions against
a hand-written float64 reference of the official DDIM loop, the DDIM grids, the paper preset's
networks, the segmenter variant and the interpolated-channels ablation on one frozen pipeline."""

import numpy as np
import pytest
import torch
from torch import nn

from dap.analysis.data import TestTensors
from dap.analysis.diffad import InterpAblation, interpolated_channels_ablation
from dap.config import ConfigError
from dap.diffusion import NoiseSchedule, ddim_timesteps
from dap.engine.train import TrainConfig, TrainData, train
from dap.methods import build_method
from dap.methods.diffad import (DENOISER, NOISY_FIXED_RANGE, diffad_config, noisy_condition,
                                sample_conditioned, sampling_timesteps)
from dap.models.autoencoder import AutoencoderKL, autoencoder_config
from dap.models.denoiser import DenoiserUNet

FAST = dict(ae_steps=2, denoiser_steps=2, segmenter_steps=2, ddim_steps=2, train_ddim_steps=2)


def _images(b=4, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g) * 2 - 1


def _tiny_data(n=6):
    return TrainData(((_images(n, seed=3) + 1) * 127.5).round().to(torch.uint8))


@pytest.fixture(scope="module")
def method():
    torch.manual_seed(0)
    m = build_method("diffad", "ci", **FAST)
    m.start_phase("segmenter")
    return m.eval()


# --------------------------------------------------------------------------------------------
# The sampler's conditions against the official loop
# --------------------------------------------------------------------------------------------
class Oracle(nn.Module):
    """A tiny eps-network on concat(z_t, c'): eps = 0.6 z_t - 0.4 (t / 1000) c' + 0.05, with a
    record of every condition it saw."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, t):
        z, c = x[:, :4], x[:, 4:]
        self.seen.append((c.clone(), t.clone()))
        return 0.6 * z - 0.4 * (t.to(x.dtype) / 1000)[:, None, None, None] * c + 0.05


def official_ddim_reference(f, abar, z_T, cond, timesteps, final_abar):
    """The official sampling loop, written out in float64 (LDM's DDIMSampler, eta = 0): for each
    t of the grid, descending, with the one conditioning tensor ``cond``::

        e     = f(concat(z, cond), t)
        x0    = (z - sqrt(1 - a_t) e) / sqrt(a_t)
        z     = sqrt(a_prev) x0 + sqrt(1 - a_prev) e      (a_prev: the next grid point's abar,
                                                           ``final_abar`` after the last)
    """
    z = z_T.clone()
    for k, t in enumerate(timesteps):
        a_t = abar[t]
        a_prev = abar[timesteps[k + 1]] if k + 1 < len(timesteps) else final_abar
        e = f(torch.cat([z, cond], 1), torch.full((z.shape[0],), t))
        x0 = (z - (1 - a_t).sqrt() * e) / a_t.sqrt()
        z = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * e
    return z


@pytest.mark.parametrize("grid", ["ldm", "dap"])
@pytest.mark.parametrize("fixed_t", [None, 437])
def test_noisy_fixed_is_the_official_alternative_loop(grid, fixed_t):
    schedule = NoiseSchedule(1000, "linear", 1e-4, 0.02)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    c = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    steps = sampling_timesteps(1000, 10, grid)
    net = Oracle()
    out = sample_conditioned(net, schedule, c, steps, mode="noisy_fixed", condition_t=fixed_t,
                             generator=torch.Generator().manual_seed(3))
    # replay the draws: z_T, then t_c (when drawn), then eps' — one of each for the whole batch
    g = torch.Generator().manual_seed(3)
    z_T = torch.randn(1, 4, 5, 5, generator=g).double().expand_as(c)
    t_c = int(torch.randint(*NOISY_FIXED_RANGE, (1,), generator=g)) if fixed_t is None else fixed_t
    eps = torch.randn(1, 4, 5, 5, generator=g).double().expand_as(c)
    assert 400 <= t_c < 500
    # c_noisy = sqrt(abar_tc) c + sqrt(1 - abar_tc) eps', made once
    c_noisy = abar[t_c].sqrt() * c + (1 - abar[t_c]).sqrt() * eps
    # every step saw that one condition
    assert len(net.seen) == 10 and [int(t[0]) for _, t in net.seen] == steps
    for seen, _ in net.seen:
        torch.testing.assert_close(seen, c_noisy, atol=1e-6, rtol=1e-6)
    ref = official_ddim_reference(Oracle(), abar, z_T, c_noisy, steps,
                                  final_abar=torch.tensor(1.0, dtype=torch.float64))
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # the official sampler's last step lands on abar_0, not on z_0: a documented difference
    official = official_ddim_reference(Oracle(), abar, z_T, c_noisy, steps, final_abar=abar[0])
    assert (official - ref).abs().max() > 1e-3


def test_clean_and_per_step_conditions_against_the_reference():
    schedule = NoiseSchedule(1000, "linear", 1e-4, 0.02)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    c = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    steps = sampling_timesteps(1000, 4, "dap")
    one = torch.tensor(1.0, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    z_T = torch.randn(1, 4, 3, 3, generator=g).double().expand_as(c)
    eps = torch.randn(1, 4, 3, 3, generator=g).double().expand_as(c)
    clean = sample_conditioned(Oracle(), schedule, c, steps, mode="clean",
                               generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(clean, official_ddim_reference(Oracle(), abar, z_T, c, steps, one),
                               atol=1e-5, rtol=1e-5)
    net = Oracle()
    sample_conditioned(net, schedule, c, steps, mode="noisy_per_step",
                       generator=torch.Generator().manual_seed(5))
    for (seen, t), step in zip(net.seen, steps):
        # dap's own: c re-noised to each step's t with the one eps'
        torch.testing.assert_close(seen, abar[step].sqrt() * c + (1 - abar[step]).sqrt() * eps,
                                   atol=1e-6, rtol=1e-6)
    with pytest.raises(ConfigError, match="sample_condition"):
        sample_conditioned(Oracle(), schedule, c, steps, mode="noisy")


def test_noisy_fixed_in_the_model_is_batch_independent_and_seeded(method):
    x = _images(4)
    with method.using(sample_condition="noisy_fixed"):
        full = method.reconstruct(x).sample
        part = method.reconstruct(x[2:]).sample
        again = method.reconstruct(x).sample
    torch.testing.assert_close(full[2:], part, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(full, again, atol=0, rtol=0)
    # what the denoiser sees: one noisy condition for every step, at a t_c in [400, 500), or
    # at the configured t_c
    c = method.encode(x)
    seen = []
    orig = method.denoiser.forward
    method.denoiser.forward = lambda z, t: (seen.append(z[:, 4:].clone()), orig(z, t))[1]
    try:
        for t_c in (None, 0, 450):
            seen.clear()
            with method.using(sample_condition="noisy_fixed", sample_condition_t=t_c):
                method.sample_latents(c)
            assert len(seen) == 2 and torch.equal(seen[0], seen[1])
            g = torch.Generator().manual_seed(method.config.inference_seed)
            torch.randn(1, 4, 16, 16, generator=g)                          # z_T
            t = int(torch.randint(400, 500, (1,), generator=g)) if t_c is None else t_c
            eps = torch.randn(1, 4, 16, 16, generator=g)
            torch.testing.assert_close(seen[0], noisy_condition(method.schedule, c, eps, t))
    finally:
        del method.denoiser.forward


# --------------------------------------------------------------------------------------------
# DDIM grids
# --------------------------------------------------------------------------------------------
def test_sampling_timesteps_grids():
    assert sampling_timesteps(1000, 10, "dap") == ddim_timesteps(999, 10)
    assert sampling_timesteps(1000, 10, "dap")[:2] == [999, 899]
    # LDM's uniform grid: 1 + k * (T // S)
    assert sampling_timesteps(1000, 10, "ldm") == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    fifty = sampling_timesteps(1000, 50, "ldm")
    assert len(fifty) == 50 and fifty[0] == 981 and fifty[-1] == 1
    assert sampling_timesteps(1000, 3, "ldm") == [667, 334, 1]
    for bad in (0, 1000):
        with pytest.raises(ConfigError, match="ldm"):
            sampling_timesteps(1000, bad, "ldm")
    with pytest.raises(ConfigError, match="unknown DDIM grid"):
        sampling_timesteps(1000, 10, "trailing")


def test_ldm_grid_in_the_model(method):
    c = method.encode(_images(1))
    net_calls = []
    orig = method.denoiser.forward
    method.denoiser.forward = lambda x, t: (net_calls.append(int(t[0])), orig(x, t))[1]
    try:
        with method.using(ddim_grid="ldm"):
            method.sample_latents(c)
    finally:
        del method.denoiser.forward
    assert net_calls == [501, 1]


# --------------------------------------------------------------------------------------------
# The paper preset's networks are the official ones
# --------------------------------------------------------------------------------------------
def test_paper_denoiser_is_the_official_unet():
    cfg = DENOISER["paper"]
    assert (cfg.num_channels, cfg.channel_mult, cfg.num_res_blocks) == (256, (1, 2, 4), 2)
    # official attention_resolutions 4, 2, 1 are down-sampling rates of a 32 px latent
    assert cfg.attention_resolutions == (32, 16, 8) and cfg.num_head_channels == 32
    assert diffad_config("paper").denoiser == cfg
    with torch.device("meta"):
        net = DenoiserUNet(cfg)
    shapes = {n: tuple(p.shape) for n, p in net.named_parameters()}
    # the parameter count of the official UNetModel built from configs/mvtec.yaml's
    # unet_config (instantiated at commit 0c39d44 on the meta device): 257,742,340
    assert sum(p.numel() for p in net.parameters()) == 257_742_340
    assert len(shapes) == 306                       # the official model's parameter tensors too
    convs = [s for s in shapes.values() if len(s) == 4 and s[2:] == (3, 3)]
    assert convs[0] == (256, 8, 3, 3) and convs[-1] == (4, 256, 3, 3)   # concat(z_t, c) -> eps
    assert all(s[0] in (256, 512, 1024) for s in convs[:-1])


def test_paper_autoencoder_is_the_official_one_without_its_1x1_convolutions():
    with torch.device("meta"):
        ae = AutoencoderKL(autoencoder_config("paper"))
    # the official AutoencoderKL of configs/kl.yaml has 83,653,863 parameters, 92 of them in
    # quant_conv (8 x 8 + 8) and post_quant_conv (4 x 4 + 4), which dap does not have
    assert sum(p.numel() for p in ae.parameters()) == 83_653_863 - (8 * 8 + 8) - (4 * 4 + 4)


# --------------------------------------------------------------------------------------------
# The interpolated-channels ablation
# --------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------
def test_segmenter_variant_shares_the_pipeline_and_trains_only_its_segmenter(method):
    torch.manual_seed(0)
    six = method.segmenter_variant(interpolated_channels=False)
    assert six.config.interpolated_channels is False and six.config.segmenter.in_channels == 6
    assert six.phase == "segmenter" and method.config.segmenter.in_channels == 9
    for name in ("autoencoder", "denoiser"):
        a, b = getattr(method, name).state_dict(), getattr(six, name).state_dict()
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)
            assert a[k].data_ptr() != b[k].data_ptr()        # a copy, not the same storage
    torch.testing.assert_close(six.latent_scale, method.latent_scale)
    assert six.segmenter is not method.segmenter
    # the same reconstruction, the 6-channel segmenter input
    x = _images(2)
    parts = method.reconstruct(x)
    torch.testing.assert_close(six.reconstruct(x).sample, parts.sample, atol=0, rtol=0)
    assert six._segmenter_input(x, parts).shape == (2, 6, 64, 64)
    # a fresh segmenter from the global generator: seeded, reproducible
    torch.manual_seed(0)
    again = method.segmenter_variant(interpolated_channels=False)
    for p, q in zip(six.segmenter.parameters(), again.segmenter.parameters()):
        torch.testing.assert_close(p, q, atol=0, rtol=0)
    # one training step changes the variant's segmenter only, and never the source model
    before = {k: v.clone() for k, v in method.state_dict().items()}
    frozen = {k: v.clone() for k, v in six.state_dict().items() if not k.startswith("segmenter")}
    train(six, _tiny_data(), TrainConfig(steps=1, batch_size=2, lr=1e-2, val_every=0,
                                         select_metric="last"), progress=False)
    for k, v in method.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=0, rtol=0)
    for k, v in six.state_dict().items():
        if k in frozen and k != "phase_step":
            torch.testing.assert_close(v, frozen[k], atol=0, rtol=0)
    assert any(not torch.equal(p, q) for p, q in zip(six.segmenter.parameters(),
                                                     again.segmenter.parameters()))


def test_segmenter_variant_refuses_other_networks(method):
    with pytest.raises(ConfigError, match="segmenter only"):
        method.segmenter_variant(noisy_condition=False)
    with pytest.raises(ConfigError, match="in_channels must be 6"):
        method.segmenter_variant(interpolated_channels=False, segmenter={"in_channels": 9})


def test_predict_is_predict_from_its_reconstruction(method):
    x = _images(3)
    a = method.predict(x)
    b = method.predict_from(x, method.reconstruct(x))
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, atol=0, rtol=0)


def _test_tensors(n=6, size=64):
    images = _images(n, size, seed=9)
    masks = torch.zeros(n, 1, size, size)
    masks[n // 2:, :, 10:30, 20:40] = 1
    labels = (torch.arange(n) >= n // 2).long()
    return TestTensors(images, masks, images.clone(), labels, ["x"] * n,
                       masks.mean((1, 2, 3)).double().numpy(), np.ones(n, bool))


def test_interpolated_channels_ablation_runs_paired_arms(method):
    test = _test_tensors()
    res = interpolated_channels_ablation(method, _tiny_data(), test, seeds=(0, 1), steps=1,
                                         batch_size=2)
    assert [(r["seed"], r["in_channels"]) for r in res.rows] == [(0, 9), (0, 6), (1, 9), (1, 6)]
    for r in res.rows:
        assert 0.0 <= r["image_auroc"] <= 1.0 and 0.0 <= r["pixel_ap"] <= 1.0
    diff = res.paired_differences()
    assert diff["image_auroc"].shape == (2,)
    ap = [r["pixel_ap"] for r in res.rows]
    np.testing.assert_allclose(diff["pixel_ap"], [ap[0] - ap[1], ap[2] - ap[3]])
    md = res.markdown()
    assert md.count("\n") == 5 and "difference 9 - 6" in md
    assert int(method.phase_step) == 4          # the source model is untouched
    with pytest.raises(ValueError, match="normal and defective"):
        interpolated_channels_ablation(method, _tiny_data(), test.subset(list(range(3, 6))),
                                       seeds=(0,), steps=1)
    assert isinstance(InterpAblation().rows, list)
