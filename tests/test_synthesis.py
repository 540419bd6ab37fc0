"""Checks of dap.synthesis: eq. 12, the masks, every augmenter, seeding, devices."""

import math

import numpy as np
import pytest
import torch

from dap.config import ConfigError, from_dict
from dap.synthesis import (
    AUGMENTER_NAMES,
    AnomalySynthesizer,
    SynthesisConfig,
    TextureBank,
    draw_shuffle,
    grid_shuffle,
    perlin_masks,
    perlin_noise,
    random_augment,
    shuffle_strips,
)
from dap.synthesis import augment as A
from dap.synthesis.perlin import draw_scales, fade

SIZE = 64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def bank():
    return TextureBank.from_skimage(("astronaut", "coffee", "camera"))


@pytest.fixture(scope="module")
def images():
    """Smooth, varied normal images (B, 3, H, W) in [-1, 1]."""
    g = gen(123)
    x = torch.rand(8, 3, 8, 8, generator=g)
    x = torch.nn.functional.interpolate(x, size=(SIZE, SIZE), mode="bilinear",
                                        align_corners=False)
    return x * 2 - 1


def disc_foreground(b, size=SIZE, radius=0.3):
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    d = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2).float().sqrt()
    return (d < radius * size).float().expand(b, 1, size, size).clone()


# ----------------------------------------------------------------------------------------------
# Perlin noise and masks
# ----------------------------------------------------------------------------------------------
def naive_perlin(h, w, rh, rw, angles):
    """Perlin noise pixel by pixel, straight from the definition."""
    out = np.zeros((h, w))
    for x in range(h):
        for y in range(w):
            u, v = x * rh / h, y * rw / w
            i, j = int(math.floor(u)), int(math.floor(v))
            fr, fc = u - i, v - j
            total = 0.0
            for a in (0, 1):
                for b in (0, 1):
                    wa = float(fade(torch.tensor(fr))) if a else 1 - float(fade(torch.tensor(fr)))
                    wb = float(fade(torch.tensor(fc))) if b else 1 - float(fade(torch.tensor(fc)))
                    th = float(angles[i + a, j + b])
                    total += wa * wb * (math.cos(th) * (fr - a) + math.sin(th) * (fc - b))
            out[x, y] = math.sqrt(2) * total
    return out


def test_perlin_matches_definition_for_mixed_scales():
    res = torch.tensor([[2, 4], [8, 1], [1, 32]])
    angles = torch.rand(3, 33, 33, generator=gen()) * 2 * math.pi
    noise = perlin_noise((24, 20), res, angles)
    assert noise.shape == (3, 1, 24, 20)
    for s in range(3):
        ref = naive_perlin(24, 20, int(res[s, 0]), int(res[s, 1]), angles[s])
        np.testing.assert_allclose(noise[s, 0].numpy(), ref, atol=1e-5)


def test_perlin_zero_on_lattice_points_and_bounded():
    res = torch.tensor([[4, 8]])
    noise = perlin_noise((64, 64), res, torch.rand(1, 9, 9, generator=gen()) * 6.28)[0, 0]
    assert noise[::16, ::8].abs().max() < 1e-6
    assert noise.abs().max() <= 1.0 + 1e-6


def test_perlin_scale_range():
    res = draw_scales(4000, gen(), "cpu")
    exps = torch.log2(res.float()).round().long()
    assert set(exps.unique().tolist()) == set(range(6))  # 2^0 .. 2^5
    assert (2 ** exps == res).all()
    assert (res[:, 0] != res[:, 1]).float().mean() > 0.5  # drawn per axis independently
    narrow = draw_scales(500, gen(), "cpu", min_scale_exp=2, max_scale_exp=3)
    assert set(narrow.unique().tolist()) == {4, 8}


def test_masks_binary_nonempty_inside_foreground():
    fg = disc_foreground(32)
    out = perlin_masks(32, (SIZE, SIZE), fg, gen())
    m = out.mask
    assert m.shape == (32, 1, SIZE, SIZE)
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert (m <= fg).all()
    assert (m.sum((1, 2, 3)) > 0).all()
    assert (out.angle.abs() <= 90).all()


def test_masks_fall_back_to_a_disc_inside_a_tiny_foreground():
    fg = torch.zeros(3, 1, SIZE, SIZE)
    fg[:, :, 40:42, 10:12] = 1
    fg[2] = 0  # an empty foreground counts as everywhere
    out = perlin_masks(3, (SIZE, SIZE), fg, gen(), threshold=0.99, max_rounds=2)
    assert (out.rounds == 3).all()  # all fell back
    assert (out.mask.sum((1, 2, 3)) > 0).all()
    assert (out.mask[:2] <= fg[:2]).all()


def test_threshold_controls_mask_area():
    a5 = perlin_masks(64, (SIZE, SIZE), None, gen(), threshold=0.5).mask.mean()
    a3 = perlin_masks(64, (SIZE, SIZE), None, gen(), threshold=0.3).mask.mean()
    assert a3 > a5  # GLAD's 0.3 gives larger anomalies


# ----------------------------------------------------------------------------------------------
# Augmenters: closed forms and properties (images in [0, 1])
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def x01():
    return torch.rand(4, 3, 32, 32, generator=gen(7))


def test_invert_twice_is_identity(x01):
    assert torch.equal(A.invert(A.invert(x01)), 1 - (1 - x01))
    torch.testing.assert_close(A.invert(A.invert(x01)), x01)


def test_solarize(x01):
    t = torch.tensor([0.2, 0.3, 0.4, 0.5])
    out = A.solarize(x01, t)
    below = x01 < t.reshape(-1, 1, 1, 1)
    assert torch.equal(out[below], x01[below])
    torch.testing.assert_close(out[~below], 1 - x01[~below])
    off = A.solarize(x01, t, apply=torch.tensor([False, True, False, True]))
    assert torch.equal(off[0], x01[0]) and torch.equal(off[2], x01[2])


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8])
def test_posterize_levels(x01, bits):
    out = A.posterize(x01, torch.full((4,), bits))
    assert out.unique().numel() <= 2 ** bits
    assert (out <= x01 + 0.5 / 255 + 1e-6).all()  # bits are dropped, never added


def test_equalize_flattens_histogram():
    x = (torch.randn(2, 3, 64, 64, generator=gen(3)) * 0.1 + 0.3).clamp(0, 1)  # peaked
    out = A.equalize(x)
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        cdf = (out <= q).float().mean((2, 3))
        assert (cdf - q).abs().max() < 0.03
    const = torch.full((1, 3, 8, 8), 0.4)
    torch.testing.assert_close(A.equalize(const), torch.round(const * 255) / 255)


def test_gamma_closed_form(x01):
    gamma = torch.tensor([[0.5, 1.0, 2.0]] * 4)
    torch.testing.assert_close(A.gamma_contrast(x01, gamma), x01 ** gamma[..., None, None])


def test_brightness_closed_form_on_grey_images(x01):
    grey = x01[:, :1].expand(4, 3, 32, 32)
    mul, add = torch.tensor([0.8, 1.0, 1.2, 1.1]), torch.tensor([-30, 0, 30, 10]) / 255
    out = A.multiply_add_brightness(grey, mul, add)
    ref = (grey * mul.reshape(-1, 1, 1, 1) + add.reshape(-1, 1, 1, 1)).clamp(0, 1)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    # colour images: the luma follows the same closed form (before clipping)
    mid = x01 * 0.5 + 0.25
    out = A.multiply_add_brightness(mid, torch.full((4,), 1.1), torch.full((4,), 0.02))
    torch.testing.assert_close(A.luma(out), A.luma(mid) * 1.1 + 0.02, atol=1e-5, rtol=0)


def test_rotate_by_zero_is_identity_and_by_90_turns(x01):
    torch.testing.assert_close(A.rotate(x01, torch.zeros(4)), x01, atol=1e-5, rtol=0)
    sq = x01[:, :, :32, :32]
    turned = A.rotate(sq, torch.full((4,), 90.0))
    torch.testing.assert_close(turned, torch.rot90(sq, 1, dims=(2, 3)), atol=1e-4, rtol=0)


def test_autocontrast_spans_full_range(x01):
    dull = x01 * 0.4 + 0.3
    out = A.autocontrast(dull, torch.zeros(4))
    assert torch.equal(out.amin((2, 3)), torch.zeros(4, 3))
    assert torch.equal(out.amax((2, 3)), torch.ones(4, 3))
    clipped = A.autocontrast(dull, torch.full((4,), 0.1))
    assert ((clipped == 0).float().mean((2, 3)) >= 0.09).all()


def test_sharpen_identity_and_constant(x01):
    torch.testing.assert_close(A.sharpen(x01, torch.ones(4)), x01)
    const = torch.full((2, 3, 9, 9), 0.3)
    torch.testing.assert_close(A.sharpen(const, torch.tensor([0.0, 2.0])), const)


def test_hsv_matches_matplotlib_and_hue_shift(x01):
    from matplotlib.colors import rgb_to_hsv

    ours = A.rgb_to_hsv(x01).permute(0, 2, 3, 1).numpy()
    ref = rgb_to_hsv(x01.permute(0, 2, 3, 1).numpy())
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    torch.testing.assert_close(A.hsv_to_rgb(A.rgb_to_hsv(x01)), x01, atol=1e-5, rtol=0)
    zero = torch.zeros(4)
    torch.testing.assert_close(A.hue_saturation(x01, zero, zero), x01, atol=1e-5, rtol=0)
    full_turn = A.hue_saturation(x01, torch.full((4,), 255.0), zero)
    torch.testing.assert_close(full_turn, x01, atol=1e-4, rtol=0)
    grey = x01[:, :1].expand(4, 3, 32, 32)
    torch.testing.assert_close(A.hue_saturation(grey, torch.full((4,), 50.0), zero), grey,
                               atol=1e-6, rtol=0)


def test_random_augment_picks_three_of_ten(x01):
    out = random_augment(x01.repeat(8, 1, 1, 1), gen(), num=3)
    assert out.chosen.shape == (32, len(AUGMENTER_NAMES))
    assert (out.chosen.sum(1) == 3).all()
    assert out.image.min() >= 0 and out.image.max() <= 1
    again = random_augment(x01.repeat(8, 1, 1, 1), gen(), num=3)
    assert torch.equal(out.image, again.image)


def test_apply_augment_matches_the_augmenters_one_by_one(x01):
    """The CPU path (each sample alone, in place) = every chosen augmenter applied in order."""
    x = x01.repeat(3, 1, 1, 1)
    params = A.draw_augment_params(len(x), gen(11))
    out = A.apply_augment(x, params)
    assert torch.equal(x, x01.repeat(3, 1, 1, 1))  # the input is left alone
    for i in range(len(x)):
        ref = x[i:i + 1]
        for j, name in enumerate(params.names):
            if params.chosen[i, j]:
                ref = A.AUGMENTERS[name].apply(ref, *(t[i:i + 1] for t in params.params[j]))
        torch.testing.assert_close(out[i:i + 1], ref, atol=1e-6, rtol=0)


def test_inplace_augmenters_match_the_pure_ones(x01):
    params = A.draw_augment_params(len(x01), gen(12))
    for j, name in enumerate(params.names):
        aug = A.AUGMENTERS[name]
        if aug.inplace:
            ref = aug.apply(x01, *params.params[j])
            got = aug.apply(x01.clone(), *params.params[j], inplace=True)
            assert torch.equal(got, ref), name


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------
def test_strip_and_grid_shuffles_are_permutations():
    x = torch.arange(2 * 3 * 20 * 36, dtype=torch.float32).reshape(2, 3, 20, 36)
    y = shuffle_strips(x, draw_shuffle(2, 8, gen()))  # 20 and 36 are not multiples of 8
    assert torch.equal(y.flatten(1).sort(1).values, x.flatten(1).sort(1).values)
    assert not torch.equal(x, y)
    # a column strip stays a block of consecutive columns
    assert ((y[:, :, :, 1:] - y[:, :, :, :-1]) == 1).float().mean() > 0.7
    x = x[:, :, :16, :32]
    z = grid_shuffle(x, draw_shuffle(2, 8, gen(), mode="grid"), 8)
    assert torch.equal(z.flatten(1).sort(1).values, x.flatten(1).sort(1).values)


def test_crop_resize_is_grid_sample():
    """The separable crop = grid_sample with the affine [[sx, 0, cx], [0, sy, cy]], zero fill
    included (windows that reach past the picture)."""
    from dap.synthesis import crop_resize

    x = torch.rand(5, 3, 30, 44, generator=gen(3))
    scale = torch.rand(5, 2, generator=gen(4)) * 0.9 + 0.1
    center = (torch.rand(5, 2, generator=gen(5)) * 2 - 1) * 1.2
    theta = torch.zeros(5, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = scale[:, 1], center[:, 1]
    theta[:, 1, 1], theta[:, 1, 2] = scale[:, 0], center[:, 0]
    grid = torch.nn.functional.affine_grid(theta, (5, 3, 17, 23), align_corners=False)
    ref = torch.nn.functional.grid_sample(x, grid, align_corners=False)
    torch.testing.assert_close(crop_resize(x, scale, center, (17, 23)), ref, atol=1e-5, rtol=0)


def test_strip_shuffle_moves_whole_strips():
    x = torch.arange(2 * 3 * 20 * 36, dtype=torch.float32).reshape(2, 3, 20, 36)
    params = draw_shuffle(2, 8, gen(8))
    y = shuffle_strips(x, params)
    edges = lambda n: torch.linspace(0, n, 9).round().long().tolist()  # noqa: E731
    ce, re = edges(36), edges(20)
    for i in range(2):
        cols = torch.cat([torch.arange(ce[k], ce[k + 1]) for k in params.cols[i].tolist()])
        rows = torch.cat([torch.arange(re[k], re[k + 1]) for k in params.rows[i].tolist()])
        assert torch.equal(y[i], x[i][:, rows][:, :, cols])


def test_texture_bank_from_folder(tmp_path):
    from PIL import Image

    for cls in ("banded", "dotted"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            arr = (np.random.default_rng(i).random((40, 50, 3)) * 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp_path / cls / f"{cls}_{i}.jpg")
    bank = TextureBank.from_folder(str(tmp_path), max_images=4)
    assert len(bank) == 4 and {n.split("/")[0] for n in bank.names} == {"banded", "dotted"}
    crops = bank.sample(5, (24, 32), gen())
    assert crops.shape == (5, 3, 24, 32) and crops.min() >= 0 and crops.max() <= 1
    with pytest.raises(FileNotFoundError):
        TextureBank.from_folder(str(tmp_path / "banded" / "nothing"))


# ----------------------------------------------------------------------------------------------
# The synthesizer: eq. 12, labels, seeding
# ----------------------------------------------------------------------------------------------
def test_eq12_holds_exactly(images, bank):
    synth = AnomalySynthesizer(bank=bank)
    fg = disc_foreground(len(images))
    out = synth(images, fg, generator=gen(), is_texture=False, return_source=True)
    n, m, a = images, out.mask, out.source
    beta = out.beta.reshape(-1, 1, 1, 1)
    # S = beta (M * N) + (1 - beta) (M * A) + (1 - M) * N
    assert torch.equal(out.image, beta * (m * n) + (1 - beta) * (m * a) + (1 - m) * n)
    normal = out.label == 0
    assert normal.any() and (~normal).any()
    assert torch.equal(out.image[normal], images[normal])
    assert (out.mask[normal] == 0).all() and (out.beta[normal] == 1).all()
    anomalous = ~normal
    assert (out.mask[anomalous].sum((1, 2, 3)) > 0).all()
    assert (out.mask <= fg).all()
    assert ((out.beta[anomalous] >= 0.2) & (out.beta[anomalous] < 0.8)).all()
    assert set(out.mask.unique().tolist()) <= {0.0, 1.0}
    assert out.image.min() >= -1 and out.image.max() <= 1


def test_same_seed_same_batch_other_seed_other_batch(images, bank):
    synth = AnomalySynthesizer(bank=bank)
    a = synth(images, generator=gen(5), is_texture=False, return_source=True)
    b = synth(images, generator=gen(5), is_texture=False, return_source=True)
    c = synth(images, generator=gen(6), is_texture=False, return_source=True)
    for field in ("image", "mask", "label", "source", "beta", "kind", "augmenters"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert not torch.equal(a.image, c.image)


def test_outputs_are_ordinary_tensors(images, bank):
    """The work runs in inference mode, the outputs do not: they can feed a training step."""
    out = AnomalySynthesizer(bank=bank)(images, generator=gen(2), is_texture=False,
                                        return_source=True)
    for field in ("image", "mask", "label", "source", "beta", "kind", "augmenters"):
        assert not getattr(out, field).is_inference(), field
    w = torch.ones(1, 3, 1, 1, requires_grad=True)
    logits = torch.nn.functional.conv2d(out.image, w).mean((1, 2, 3))
    torch.nn.functional.binary_cross_entropy_with_logits(logits, out.label).backward()
    assert w.grad is not None


def test_chunking_never_changes_the_batch(images, bank):
    fg = disc_foreground(len(images))
    outs = [AnomalySynthesizer({"chunk_size": c, "normal_prob": 0.0}, bank=bank)(
        images, fg, generator=gen(9), is_texture=False) for c in (1, 3, None)]
    for o in outs[1:]:
        assert torch.equal(o.image, outs[0].image) and torch.equal(o.mask, outs[0].mask)


def test_sources_textures_vs_objects(bank):
    x = torch.zeros(64, 3, 32, 32)
    synth = AnomalySynthesizer({"normal_prob": 0.0}, bank=bank)
    tex = synth(x, generator=gen(), is_texture=True)
    assert set(tex.kind.tolist()) == {1}  # texture categories: the bank only
    obj = synth(x, generator=gen(), is_texture=False)
    assert set(obj.kind.tolist()) == {1, 2}  # objects: bank or self-augmentation
    assert 0.3 < (obj.kind == 2).float().mean() < 0.7
    assert (tex.label == 1).all() and (tex.augmenters.sum(1) == 3).all()


def test_normal_probability_and_exact_split(bank):
    x = torch.zeros(10, 3, 16, 16)
    exact = AnomalySynthesizer({"exact_split": True}, bank=bank)
    for seed in range(3):
        assert exact(x, generator=gen(seed)).label.sum() == 5
    none = AnomalySynthesizer({"normal_prob": 1.0}, bank=bank)(x, generator=gen())
    assert (none.label == 0).all() and torch.equal(none.image, x)
    coin = AnomalySynthesizer({}, bank=bank)(torch.zeros(400, 3, 8, 8), generator=gen())
    assert 0.4 < coin.label.mean() < 0.6


def test_config_is_strict():
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(SynthesisConfig, {"perlin_treshold": 0.3})
    with pytest.raises(ConfigError):
        from_dict(SynthesisConfig, {"beta_range": (0.9, 0.2)})
    with pytest.raises(ConfigError):
        SynthesisConfig(augmenters=("gamma", "blur"))
    glad = SynthesisConfig.preset("glad")
    assert glad.perlin_threshold == 0.3 and glad.beta_range == (0.0, 0.8)
    assert glad.shuffle == "grid"
    out = AnomalySynthesizer(glad)(torch.zeros(4, 3, 32, 32), generator=gen(),
                                   is_texture=False)
    assert out.image.shape == (4, 3, 32, 32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_agrees_with_cpu(images, bank):
    synth = AnomalySynthesizer(bank=bank)
    fg = disc_foreground(len(images))
    cpu = synth(images, fg, generator=gen(4), is_texture=False, return_source=True)
    # the same CPU generator drives the CUDA run: the same draws, computed on the GPU
    gpu = synth(images.cuda(), fg.cuda(), generator=gen(4), is_texture=False,
                return_source=True)
    assert torch.equal(gpu.label.cpu(), cpu.label) and torch.equal(gpu.kind.cpu(), cpu.kind)
    assert (gpu.mask.cpu() != cpu.mask).float().mean() < 1e-3  # threshold ties only
    same = (gpu.mask.cpu() == cpu.mask).expand_as(cpu.image)
    diff = (gpu.image.cpu() - cpu.image).abs()[same]
    assert diff.float().quantile(0.99) < 1e-3
    # and a generator on the GPU works too
    cuda_gen = torch.Generator(device="cuda").manual_seed(0)
    out = synth(images.cuda(), fg.cuda(), generator=cuda_gen, is_texture=False)
    assert out.image.is_cuda and (out.mask.sum((1, 2, 3))[out.label == 1] > 0).all()
