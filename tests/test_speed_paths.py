"""The two paths of benchmarks/speed.py compute the same thing: the fast path (bf16 autocast,
channels_last, fused attention, native bf16 GroupNorm, conv weight gradients on one thread,
fused AdamW, inference_mode) agrees with the plain float32 path within bf16 tolerance."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dap import runtime, zoo
from dap.methods.base import TrainBatch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import speed  # noqa: E402  benchmarks/speed.py

pytestmark = pytest.mark.skipif(runtime.autocast_dtype("cpu", "auto") is None,
                                reason="no native bf16 on this CPU: the fast path is float32")


@pytest.fixture(scope="module")
def shipped():
    """A trained model (the shipped brick model, 64 px) and real texture crops."""
    return zoo.load("diffusionad-builtin-brick"), speed.inputs(64, 4)


def test_predict_maps_agree(shipped, two_threads):
    method, x = shipped
    plain, fast = speed.plain_path(method, 64), speed.fast_path(method, 64)
    p0, p1 = plain.predict(x), fast.predict(x)
    assert p1.anomaly_map.shape == p0.anomaly_map.shape == (4, 64, 64)
    # maps are probabilities in [0, 1]: bf16 moves them by well under 0.05
    assert float((p1.anomaly_map.float() - p0.anomaly_map).abs().max()) < 0.05
    assert float((p1.anomaly_map.float() - p0.anomaly_map).abs().mean()) < 5e-3
    torch.testing.assert_close(p1.score.float(), p0.score, rtol=0, atol=0.02)
    assert float((p1.reconstruction.float() - p0.reconstruction).abs().max()) < 0.1
    # the ranking of the images by score (what image AUROC sees) is unchanged
    assert torch.equal(p1.score.float().argsort(), p0.score.argsort())


def _loss_and_grads(path, x):
    path.method.train()
    # same generator: the same synthetic batch, t and noise on both paths
    with runtime.autocast("cpu", path.dtype):
        losses = path.method(TrainBatch(path.input(x)), torch.Generator().manual_seed(3))
    losses["loss"].backward()
    grads = [torch.cat([p.grad.flatten() for p in net.parameters()])
             for net in (path.method.denoiser, path.method.segmenter)]
    return {k: float(v.detach()) for k, v in losses.items()}, grads


def _cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def test_training_loss_and_gradients_agree(shipped, two_threads):
    method, x = shipped
    l0, g0 = _loss_and_grads(speed.make_path("plain-dap-synthesis", method, 64), x)
    l1, g1 = _loss_and_grads(speed.fast_path(method, 64), x)
    for key in ("loss", "loss_noise", "loss_focal", "loss_smooth_l1"):
        assert abs(l1[key] - l0[key]) <= 0.02 * abs(l0[key]) + 1e-4, key
    # bf16 rounding of a trained model's small gradients (bf16 autocast alone: ~0.985)
    assert _cos(g0[0], g1[0]) > 0.97
    assert _cos(g0[1], g1[1]) > 0.999


def test_fast_options_without_bf16_keep_fp32_gradients(shipped, two_threads):
    """Everything but the dtype: gradients equal the plain path's up to float32 rounding."""
    method, x = shipped
    l0, g0 = _loss_and_grads(speed.make_path("plain-dap-synthesis", method, 64), x)
    opts = dict(channels_last=True, attention="fused", native_bf16_norm=True,
                conv_weight_grad_threads=1)
    l1, g1 = _loss_and_grads(speed.make_path("fp32 options", method, 64, **opts), x)
    assert abs(l1["loss"] - l0["loss"]) < 1e-5
    assert min(_cos(g0[0], g1[0]), _cos(g0[1], g1[1])) > 0.9999


def test_one_training_step_each(shipped, two_threads):
    method, x = shipped
    for path in (speed.plain_path(method, 64), speed.fast_path(method, 64)):
        before = [p.detach().clone() for p in path.method.parameters()]
        loss = path.train_step(x)
        assert np.isfinite(loss)
        assert any(not torch.equal(a, b) for a, b in zip(before, path.method.parameters()))
    # the paths are deep copies: the shipped model itself is untouched
    assert not method.denoiser.gradient_checkpointing
    assert "forward" not in method.denoiser.input_blocks[0][0].__dict__


def test_numpy_reference_synthesizer_output():
    synth = speed.NumpyReferenceSynthesizer(64, seed=0)
    x = speed.inputs(64, 8)
    out = synth(x)
    assert out.image.shape == x.shape and out.mask.shape == (8, 1, 64, 64)
    assert set(out.label.tolist()) <= {0.0, 1.0}
    normal = out.label == 0
    assert torch.equal(out.image[normal], x[normal])
    assert float(out.mask[normal].abs().sum()) == 0
    assert float(out.image.min()) >= -1 - 1e-5 and float(out.image.max()) <= 1 + 1e-5
