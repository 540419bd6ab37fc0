"""The fast path as the engine uses it: ``amp="auto"`` resolution, the plain switch
(``plain=True``, ``DAP_PLAIN``, ``python -m dap --plain``), training and evaluation on both paths
agreeing within bf16 tolerance, and the optimiser-step thread hooks."""

from __future__ import annotations

import argparse
import os

import pytest
import torch
from torch import nn

from dap import runtime
from dap.config import ConfigError
from dap.engine.evaluate import evaluate
from dap.engine.train import TrainConfig, TrainData, resolve_amp, train
from dap.methods.base import AnomalyMethod, Prediction
from dap.models.denoiser import GroupNorm32


class ConvMethod(AnomalyMethod):
    """A small conv net with a GroupNorm: enough for autocast, channels_last and the norm."""

    name = "conv"

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), GroupNorm32(4, 8), nn.SiLU(),
                                 nn.Conv2d(8, 3, 3, padding=1))

    def config_dict(self):
        return {}

    def forward(self, batch, generator=None):
        x = batch.images
        noise = torch.randn(x.shape, generator=generator, device=x.device)
        return {"loss": (self.net(x + 0.1 * noise).float() - x).square().mean()}

    def predict(self, images):
        m = (self.net(images).float() - images).abs().mean(1)
        return Prediction(m, m.flatten(1).amax(1), images)


def _data(n=8, size=16):
    g = torch.Generator().manual_seed(0)
    return TrainData(torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8))


def _cfg(**kw):
    return TrainConfig(**{"steps": 4, "batch_size": 4, "lr": 1e-3, "val_every": 0,
                          "select_metric": "last", "log_every": 1, **kw})


@pytest.fixture
def no_plain_env(monkeypatch):
    monkeypatch.delenv(runtime.PLAIN_ENV, raising=False)


# --------------------------------------------------------------------------------------------
# amp="auto" and the plain switch
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_exactly_where_the_cpu_has_native_bf16(monkeypatch, no_plain_env, native):
    monkeypatch.setattr(runtime.precision, "cpu_supports_bf16", lambda: native)
    want = torch.bfloat16 if native else None
    assert resolve_amp("auto", torch.device("cpu")) is want
    assert runtime.setup(ConvMethod(), "cpu", "auto") is want
    assert runtime.setup(ConvMethod(), "cpu", "off") is None
    assert runtime.setup(ConvMethod(), "cpu", "bf16") is torch.bfloat16  # asked for: given
    assert runtime.setup(ConvMethod(), "cpu", "auto", plain=True) is None


@pytest.mark.parametrize("capability,want", [((8, 0), torch.bfloat16), ((7, 5), torch.float16)])
def test_auto_on_a_gpu_is_bf16_or_fp16_with_the_scaler(monkeypatch, capability, want):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    assert resolve_amp("auto", torch.device("cuda")) is want


def test_setup_applies_the_fast_options_and_plain_leaves_the_model_alone(no_plain_env):
    fast, plain = ConvMethod(), ConvMethod()
    runtime.setup(fast, "cpu", "auto")
    runtime.setup(plain, "cpu", "auto", plain=True)
    w_fast, w_plain = fast.net[0].weight, plain.net[0].weight
    assert w_fast.is_contiguous(memory_format=torch.channels_last)
    assert w_plain.is_contiguous() and not w_plain.is_contiguous(memory_format=torch.channels_last)
    assert plain.net[1].upcast is True and "forward" not in plain.net[0].__dict__
    assert torch.equal(w_fast, w_plain)  # same values: only the layout differs


def test_plain_with_mixed_precision_or_compile_is_a_clear_error(no_plain_env):
    with pytest.raises(ConfigError, match="plain path"):
        runtime.setup(ConvMethod(), "cpu", "bf16", plain=True)
    with pytest.raises(ConfigError, match="eager"):
        runtime.setup(ConvMethod(), "cpu", "auto", plain=True, compile=True)
    with pytest.raises(ConfigError, match="plain=True"):
        TrainConfig(plain=True, amp="bf16")
    with pytest.raises(ConfigError, match="plain=True"):
        TrainConfig(plain=True, compile=True)


@pytest.mark.parametrize("value,want", [("1", True), ("true", True), ("0", False), ("", False)])
def test_dap_plain_environment(monkeypatch, value, want):
    monkeypatch.setenv(runtime.PLAIN_ENV, value)
    assert runtime.plain_requested() is want
    assert runtime.resolve_plain(None) is want
    assert runtime.resolve_plain(not want) is (not want)  # an explicit choice wins


def test_dap_plain_nonsense_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(runtime.PLAIN_ENV, "maybe")
    with pytest.raises(ConfigError, match="DAP_PLAIN"):
        runtime.plain_requested()


# --------------------------------------------------------------------------------------------
# Training on both paths
# --------------------------------------------------------------------------------------------
def _losses(cfg):
    torch.manual_seed(0)
    method = ConvMethod()
    res = train(method, _data(), cfg, progress=False, device="cpu")
    return method, [h["loss"] for h in res.history]


def test_training_fast_path_matches_plain(no_plain_env):
    plain_m, plain = _losses(_cfg(plain=True))
    f32_m, f32 = _losses(_cfg(amp="off"))          # fast options in float32: rounding only
    assert f32 == pytest.approx(plain, rel=1e-5, abs=1e-6)
    for a, b in zip(plain_m.state_dict().values(), f32_m.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    bf_m, bf = _losses(_cfg(amp="bf16"))           # bf16 autocast: within bf16 tolerance
    assert bf == pytest.approx(plain, rel=0.03, abs=1e-3)
    assert plain_m.net[0].weight.is_contiguous()
    assert bf_m.net[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_dap_plain_makes_training_plain(monkeypatch):
    monkeypatch.setenv(runtime.PLAIN_ENV, "1")
    method, losses = _losses(_cfg())
    assert method.net[0].weight.is_contiguous() and method.net[1].upcast is True
    monkeypatch.delenv(runtime.PLAIN_ENV)
    _, explicit = _losses(_cfg(plain=True))
    assert losses == explicit                       # the same run, bit for bit


def test_fast_resume_reproduces_the_losses(tmp_path, no_plain_env):
    """Exact resume holds on the fast path too (bf16 kernels are deterministic here)."""
    torch.manual_seed(0)
    full = train(ConvMethod(), _data(), _cfg(steps=6), tmp_path / "a", progress=False)
    train(ConvMethod(), _data(), _cfg(steps=6), tmp_path / "b", stop_after=3, progress=False)
    rest = train(ConvMethod(), _data(), _cfg(steps=6), tmp_path / "b", progress=False)
    assert [h["loss"] for h in rest.history] == [h["loss"] for h in full.history]


def test_step_threads_hooks_run_the_step_on_one_thread_and_restore():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        p = nn.Parameter(torch.zeros(10))
        opt = torch.optim.Adam([p], lr=0.1)
        assert runtime.limit_step_threads(opt) == 1  # one small tensor: 1 thread
        seen = []
        opt.register_step_pre_hook(lambda o, a, k: seen.append(torch.get_num_threads()))
        p.grad = torch.ones(10)
        opt.step()
        assert seen == [1] and torch.get_num_threads() == 2
        big = torch.optim.Adam([nn.Parameter(torch.zeros(1 << 17))])
        assert runtime.limit_step_threads(big) is None  # large tensors keep every thread
    finally:
        torch.set_num_threads(old)


# --------------------------------------------------------------------------------------------
# Evaluation on both paths, the command line's switch
# --------------------------------------------------------------------------------------------
def _dataset(n=6, size=16):
    g = torch.Generator().manual_seed(1)
    return [{"image": torch.rand(3, size, size, generator=g) * 2 - 1,
             "mask": (torch.rand(1, size, size, generator=g) > 0.8).float(),
             "label": i % 2, "defect": "good" if i % 2 == 0 else "x"} for i in range(n)]


def test_evaluation_paths_agree_and_plain_is_the_old_float32(no_plain_env):
    ds = _dataset()
    plain = evaluate(ConvMethod(), ds, batch_size=3, progress=False, plain=True)
    with torch.no_grad():  # what evaluate() computed before the fast path existed
        ref = ConvMethod().eval().predict(torch.stack([d["image"] for d in ds]))
    assert torch.equal(torch.as_tensor(plain.scores), ref.score)
    fast = evaluate(ConvMethod(), ds, batch_size=3, progress=False, amp="bf16")
    torch.testing.assert_close(torch.as_tensor(fast.scores), ref.score, rtol=0.02, atol=0.02)
    for k, v in plain.metrics.items():
        assert fast.metrics[k] == pytest.approx(v, abs=0.05), k


def test_cli_plain_sets_dap_plain_for_the_command_only(monkeypatch, no_plain_env):
    import dap.cli as cli

    seen = {}

    def fake_demo(args):
        seen["plain"] = runtime.plain_requested()
        seen["threads"] = torch.get_num_threads()
        return 0

    monkeypatch.setattr(cli, "run_demo", fake_demo)
    old = torch.get_num_threads()
    try:
        assert cli.main(["--plain", "--threads", "1", "demo"]) == 0
        assert seen == {"plain": True, "threads": 1}
        assert runtime.PLAIN_ENV not in os.environ       # restored after the command
        assert cli.main(["demo"]) == 0 and seen["plain"] is False
    finally:
        torch.set_num_threads(old)


def test_cli_setup_leaves_data_commands_alone(monkeypatch, no_plain_env):
    import dap.cli as cli

    called = []
    monkeypatch.setattr(runtime, "configure_threads", lambda *a, **k: called.append(a))
    cli._setup_cpu(argparse.Namespace(plain=False, threads=None, command="data"))
    assert not called
    cli._setup_cpu(argparse.Namespace(plain=False, threads=3, command="train"))
    assert called == [(3,)]
