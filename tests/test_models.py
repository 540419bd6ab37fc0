"""The denoiser and segmentation U-Nets: sizes, shapes, initialisation, configs, precision."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dap.config import ConfigError, from_dict, to_dict
from dap.models import (
    DENOISER_PRESETS,
    SEGMENTER_PRESETS,
    DenoiserConfig,
    DenoiserUNet,
    SegmentationUNet,
    SegmenterConfig,
    attention_rates_from_sizes,
    attention_sizes_from_rates,
    count_parameters,
    denoiser_config,
    segmenter_config,
    timestep_embedding,
)


def _randomise(model: nn.Module, scale: float = 0.05) -> nn.Module:
    """Perturb every parameter so zero-initialised layers stop hiding the computation."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


# --------------------------------------------------------------------------------------------
# Parameter counts (meta device: no memory, milliseconds)
# --------------------------------------------------------------------------------------------
def test_paper_denoiser_parameter_count_matches_official():
    with torch.device("meta"):
        model = DenoiserUNet(denoiser_config("paper"))
    n = count_parameters(model)
    assert abs(n - 131.7e6) / 131.7e6 < 0.01, n


def test_paper_segmenter_parameter_count_matches_official():
    with torch.device("meta"):
        model = SegmentationUNet(segmenter_config("paper"))
    n = count_parameters(model)
    assert abs(n - 28.4e6) / 28.4e6 < 0.01, n
    assert segmenter_config("paper").decoder_widths == (512, 256, 128, 64, 64)


def test_paper_shapes_on_meta_device():
    with torch.device("meta"):
        den = DenoiserUNet(denoiser_config("paper"))
        seg = SegmentationUNet(segmenter_config("paper"))
        x = torch.empty(2, 3, 256, 256)
        eps = den(x, torch.zeros(2, dtype=torch.long))
        feats = den.encode_features(x, torch.zeros(2, dtype=torch.long))
        logits = seg(torch.cat([x, eps], dim=1))
    assert eps.shape == (2, 3, 256, 256)
    assert logits.shape == (2, 1, 256, 256)
    assert [tuple(f.shape[1:]) for f in feats] == [
        (128, 256, 256), (128, 128, 128), (256, 64, 64), (256, 32, 32), (512, 16, 16), (512, 8, 8)
    ]


def test_paper_groupnorm_is_official_groupnorm32():
    with torch.device("meta"):
        model = DenoiserUNet(denoiser_config("paper"))
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_groups == 32 for m in norms)


# --------------------------------------------------------------------------------------------
# Small presets actually run
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["ci", "cpu"])
def test_small_presets_forward_shapes(preset):
    cfg = denoiser_config(preset)
    den = DenoiserUNet(cfg)
    seg = SegmentationUNet(segmenter_config(preset))
    x = torch.randn(1, 3, cfg.image_size, cfg.image_size)
    t = torch.tensor([900])
    with torch.no_grad():
        eps = den(x, t)
        logits = seg(torch.cat([x, eps], dim=1))
        mask = seg.predict_mask(torch.cat([x, eps], dim=1))
    assert eps.shape == x.shape
    assert logits.shape == (1, 1, cfg.image_size, cfg.image_size)
    assert torch.allclose(mask, torch.sigmoid(logits))
    assert 0.0 <= float(mask.min()) and float(mask.max()) <= 1.0


def test_fresh_denoiser_outputs_exactly_zero():
    den = DenoiserUNet(denoiser_config("ci"))
    out = den(torch.randn(2, 3, 32, 32), torch.tensor([0, 999]))
    assert torch.equal(out, torch.zeros_like(out))


def test_denoiser_depends_on_time_and_accepts_float_and_scalar_timesteps():
    den = _randomise(DenoiserUNet(denoiser_config("ci"))).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a = den(x, torch.tensor([10, 10]))
        b = den(x, torch.tensor([10.0, 10.0]))
        c = den(x, 10)
        d = den(x, torch.tensor([500, 500]))
    assert torch.allclose(a, b) and torch.allclose(a, c)
    assert not torch.allclose(a, d)


def test_denoiser_rejects_bad_inputs():
    den = DenoiserUNet(denoiser_config("ci"))
    with pytest.raises(ValueError, match="divisible by 4"):
        den(torch.randn(1, 3, 62, 62), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        den(torch.randn(1, 1, 64, 64), torch.tensor([1]))
    with pytest.raises(ValueError, match="timesteps"):
        den(torch.randn(2, 3, 64, 64), torch.tensor([1, 2, 3]))


@pytest.mark.parametrize("overrides", [
    {"resblock_updown": False},
    {"use_scale_shift_norm": True},
    {"num_head_channels": 16},
    {"dropout": 0.1},
])
def test_denoiser_variants_run(overrides):
    den = DenoiserUNet(denoiser_config("ci", **overrides))
    x = torch.randn(1, 3, 32, 32)
    assert den(x, torch.tensor([5])).shape == x.shape


def test_encode_features_shapes():
    cfg = denoiser_config("ci")
    den = DenoiserUNet(cfg)
    x = torch.randn(2, 3, 64, 64)
    feats = den.encode_features(x, torch.tensor([1, 2]), include_middle=True)
    expected = [(2, c, s, s) for c, s in zip(cfg.level_channels, cfg.feature_sizes)]
    assert [tuple(f.shape) for f in feats] == expected + [expected[-1]]


def test_gradient_checkpointing_gives_the_same_gradients():
    plain = _randomise(DenoiserUNet(denoiser_config("ci")))
    ckpt = DenoiserUNet(denoiser_config("ci", use_checkpoint=True))
    ckpt.load_state_dict(plain.state_dict())
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([7, 300])
    plain(x, t).square().mean().backward()
    ckpt(x, t).square().mean().backward()
    for p, q in zip(plain.parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)


def test_channels_last_and_bf16_autocast_match_fp32():
    den = _randomise(DenoiserUNet(denoiser_config("ci"))).eval()
    seg = _randomise(SegmentationUNet(segmenter_config("ci"))).eval()
    # 64 x 64 keeps the attention at 16 x 16 in the path
    x, t = torch.randn(1, 3, 64, 64), torch.tensor([700])
    with torch.no_grad():
        ref = den(x, t)
        ref_seg = seg(torch.cat([x, ref], 1))
        den_cl = den.to(memory_format=torch.channels_last)
        seg_cl = seg.to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        out_cl = den_cl(x_cl, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_bf = den_cl(x_cl, t)
            seg_bf = seg_cl(torch.cat([x_cl, out_bf], 1))
    torch.testing.assert_close(out_cl, ref, rtol=1e-4, atol=1e-4)
    assert out_bf.dtype == torch.bfloat16
    scale = ref.abs().max()
    assert float((out_bf.float() - ref).abs().max() / scale) < 0.1
    assert float((seg_bf.float() - ref_seg).abs().max() / ref_seg.abs().max()) < 0.1


# --------------------------------------------------------------------------------------------
# Time embedding
# --------------------------------------------------------------------------------------------
def test_timestep_embedding_matches_float64_closed_form():
    dim = 32
    t = torch.tensor([0, 1, 17, 250, 999])
    got = timestep_embedding(t, dim)
    half = dim // 2
    expected = torch.empty(len(t), dim, dtype=torch.float64)
    for row, tv in enumerate(t.tolist()):
        for i in range(half):
            f = 10000.0 ** (-i / half)
            expected[row, i] = math.sin(tv * f)
            expected[row, half + i] = math.cos(tv * f)
    assert got.dtype == torch.float32 and got.shape == (5, dim)
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=2e-4)
    assert timestep_embedding(t, 7).shape == (5, 7)  # odd width: zero padded


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------
def test_attention_resolution_conversion_round_trip():
    assert attention_rates_from_sizes(256, (32, 16, 8)) == (8, 16, 32)
    assert attention_sizes_from_rates(256, (8, 16, 32)) == (32, 16, 8)
    for size in (64, 128, 256):
        sizes = tuple(size // 2**k for k in range(1, 4))
        assert attention_sizes_from_rates(size, attention_rates_from_sizes(size, sizes)) == sizes
    # the converted value is a valid config
    cfg = denoiser_config("ci", attention_resolutions=attention_sizes_from_rates(64, [4]))
    assert cfg.attention_resolutions == (16,)


@pytest.mark.parametrize("overrides, message", [
    ({"image_size": 62}, "divisible by"),
    ({"attention_resolutions": (4,)}, "attention_sizes_from_rates"),
    ({"attention_resolutions": (12,)}, "not feature-map sizes"),
    ({"num_heads": 3}, "num_heads=3"),
    ({"num_head_channels": 7}, "num_head_channels=7"),
    ({"num_head_channels": 0}, "num_head_channels"),
    ({"dropout": 1.5}, "dropout"),
    ({"channel_mult": ()}, "channel_mult"),
    ({"num_channels": 0}, "num_channels"),
    ({"num_channel": 32}, "unknown key"),
    ({"num_res_blocks": 1.5}, "expected an integer"),
])
def test_bad_denoiser_configs_raise(overrides, message):
    with pytest.raises(ConfigError, match=message):
        denoiser_config("ci", **overrides)


def test_bad_segmenter_configs_raise():
    with pytest.raises(ConfigError, match="decoder_mult"):
        segmenter_config("ci", decoder_mult=(1, 1))
    with pytest.raises(ConfigError, match="encoder_mult"):
        segmenter_config("ci", encoder_mult=(1,))
    with pytest.raises(ConfigError, match="unknown"):
        segmenter_config("nope")
    with pytest.raises(ConfigError, match="unknown"):
        denoiser_config("nope")
    seg = SegmentationUNet(segmenter_config("ci"))
    with pytest.raises(ValueError, match="divisible by 8"):
        seg(torch.randn(1, 6, 60, 60))


def test_configs_round_trip_through_dicts():
    for cls, cfg in [(DenoiserConfig, denoiser_config("cpu")),
                     (SegmenterConfig, segmenter_config("cpu", decoder_mult=(8, 4, 2, 1)))]:
        assert from_dict(cls, to_dict(cfg)) == cfg


def test_presets_are_not_mutated_by_overrides():
    denoiser_config("paper", num_channels=64)
    assert DENOISER_PRESETS["paper"].num_channels == 128
    assert denoiser_config("paper") is not DENOISER_PRESETS["paper"]


def test_segmenter_explicit_decoder_widths_change_the_network():
    default = SegmentationUNet(segmenter_config("ci"))
    wider = SegmentationUNet(segmenter_config("ci", decoder_mult=(8, 4, 2)))
    assert count_parameters(wider) > count_parameters(default)
    assert wider(torch.randn(1, 6, 32, 32)).shape == (1, 1, 32, 32)
