"""DiffusionAD's options restoring the official code: [0, 1] input range, summed noise loss,
the whole-texture synthesis preset (dap.methods.diffusionad.official)."""

import pytest
import torch

from dap.config import ConfigError
from dap.diffusion import NoiseSchedule, norm_guided
from dap.methods import build_method
from dap.methods.base import TrainBatch
from dap.methods.diffusionad import joint_noise_loss
from dap.synthesis import SynthesisConfig


def _images(b=3, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g) * 2 - 1


def test_summed_noise_loss_is_twice_the_mean_over_normal_samples():
    g = torch.Generator().manual_seed(0)
    e = [torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64) for _ in range(4)]
    normal = torch.tensor([True, False, True, True])
    # float64 reference: per-sample MSE, averaged over the normal samples, per scale
    mse = [((a - b) ** 2).mean(dim=(1, 2, 3))[normal].mean() for a, b in ((e[0], e[1]), (e[2], e[3]))]
    torch.testing.assert_close(joint_noise_loss(*e, normal, reduction="sum"), mse[0] + mse[1])
    torch.testing.assert_close(joint_noise_loss(*e, normal), (mse[0] + mse[1]) / 2)
    with pytest.raises(ValueError, match="'mean' or 'sum'"):
        joint_noise_loss(*e, normal, reduction="max")


def test_summed_option_doubles_the_noise_loss_of_the_same_step():
    losses = []
    for reduction in ("mean", "sum"):
        torch.manual_seed(0)
        m = build_method("diffusionad", "ci", noise_loss_reduction=reduction)
        losses.append(m(TrainBatch(_images()), torch.Generator().manual_seed(3)))
    torch.testing.assert_close(losses[1]["loss_noise"], 2 * losses[0]["loss_noise"])
    torch.testing.assert_close(losses[1]["loss_focal"], losses[0]["loss_focal"])


def test_unit_range_feeds_the_networks_x_plus_one_over_two():
    torch.manual_seed(0)
    m = build_method("diffusionad", "ci", input_range="unit").eval()
    x = _images()
    seen = {}
    m.segmenter.register_forward_pre_hook(lambda mod, args: seen.setdefault("seg", args[0]))
    pred = m.predict(x)
    # an independent computation in the network range: norm guidance on (x + 1) / 2
    x01 = (x + 1) / 2
    sched = NoiseSchedule.from_config(m.config.diffusion)
    gen = m.inference_generator(x.device, None)
    ref = norm_guided(m.denoiser, sched, x01, m.config.t_s, m.config.t_b, w=m.config.w,
                      generator=gen, clip_sample=True)
    torch.testing.assert_close(seen["seg"], torch.cat([x01, ref.x0_g], 1))
    torch.testing.assert_close(pred.reconstruction, 2 * ref.x0_g - 1)   # back in [-1, 1]
    rec = m.reconstruct(x)
    torch.testing.assert_close(rec.sample, pred.reconstruction)
    torch.testing.assert_close(rec.extras["x0_b"], 2 * ref.x0_b - 1)


def test_unit_range_trains_on_unit_images():
    torch.manual_seed(0)
    m = build_method("diffusionad", "ci", input_range="unit", synthesis={"normal_prob": 1.0})
    seen = {}
    m.segmenter.register_forward_pre_hook(lambda mod, args: seen.setdefault("seg", args[0]))
    x = _images()
    m(TrainBatch(x), torch.Generator().manual_seed(0))
    torch.testing.assert_close(seen["seg"][:, :3], (x + 1) / 2)   # all normal: S = x


def test_signed_range_is_the_identity():
    m = build_method("diffusionad", "ci")
    x = _images()
    assert torch.equal(m.to_net(x), x) and torch.equal(m.from_net(x), x)


def test_bad_range_is_a_clear_error():
    with pytest.raises(ConfigError, match="input_range"):
        build_method("diffusionad", "ci", input_range="0-255")


def test_official_synthesis_preset():
    cfg = SynthesisConfig.preset("diffusionad_official")
    assert cfg.crop_scale == (1.0, 1.0) and cfg.max_rounds == 50
    assert SynthesisConfig.preset("diffusionad").crop_scale == (0.5, 1.0)
