"""dap.runtime (threads, precision, memory format, compile, checkpointing) and the speed/memory
options of the networks. No timings here: speed claims come from benchmarks/speed.py."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from dap import runtime
from dap.config import ConfigError
from dap.models import DenoiserUNet, SegmentationUNet, denoiser_config, segmenter_config
from dap.models.denoiser import AttentionBlock, GroupNorm32


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-zero weights everywhere (a fresh U-Net has zero-initialised output convs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


# --------------------------------------------------------------------------------------------
# autocast dtype resolution
# --------------------------------------------------------------------------------------------
BF16, FP16 = torch.bfloat16, torch.float16


@pytest.mark.parametrize("device, amp, cpu_bf16, cuda_bf16, expected", [
    ("cpu", "off", True, None, None),
    ("cpu", "auto", True, None, BF16),
    ("cpu", "auto", False, None, None),
    ("cpu", "bf16", False, None, BF16),
    ("cpu", True, True, None, BF16),
    ("cpu", False, True, None, None),
    ("cpu", None, True, None, None),
    ("cpu", torch.float32, True, None, None),
    ("cpu", torch.bfloat16, False, None, BF16),
    ("cuda", "auto", None, True, BF16),     # A100 / H100: native bf16
    ("cuda", "auto", None, False, FP16),    # T4 (compute capability 7.5)
    ("cuda", "bf16", None, False, BF16),
    ("cuda", "fp16", None, True, FP16),
    ("cuda", "off", None, True, None),
    ("mps", "auto", None, None, None),
    ("mps", "fp16", None, None, FP16),
])
def test_autocast_dtype_table(monkeypatch, device, amp, cpu_bf16, cuda_bf16, expected):
    monkeypatch.setattr(runtime.precision, "cpu_supports_bf16", lambda: cpu_bf16)
    monkeypatch.setattr(runtime.precision, "cuda_supports_bf16", lambda device=None: cuda_bf16)
    assert runtime.autocast_dtype(device, amp) == expected


def test_autocast_dtype_rejects_bad_settings():
    with pytest.raises(ConfigError, match="fp16"):
        runtime.autocast_dtype("cpu", "fp16")
    with pytest.raises(ConfigError, match="amp must be one of"):
        runtime.autocast_dtype("cpu", "half")


@pytest.mark.parametrize("capability, expected", [((7, 5), False), ((8, 0), True),
                                                  ((9, 0), True), ((6, 1), False)])
def test_cuda_bf16_by_compute_capability(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    assert runtime.cuda_supports_bf16() is expected


def test_cuda_bf16_false_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.cuda_supports_bf16() is False


def test_cpu_bf16_detection(monkeypatch):
    runtime.cpu_supports_bf16.cache_clear()
    try:
        monkeypatch.delenv("DAP_CPU_BF16", raising=False)
        monkeypatch.setattr(runtime.precision, "_capability_says_bf16", lambda: False)
        monkeypatch.setattr(runtime.precision, "_cpu_flags", lambda: {"avx2", "avx512f"})
        assert runtime.cpu_supports_bf16() is False           # no bf16 flag: not native
        runtime.cpu_supports_bf16.cache_clear()
        monkeypatch.setattr(runtime.precision, "_cpu_flags", lambda: {"avx512f", "amx_bf16"})
        monkeypatch.setattr(runtime.precision, "_bf16_smoke_check", lambda: False)
        assert runtime.cpu_supports_bf16() is False           # flag, but the check fails
        runtime.cpu_supports_bf16.cache_clear()
        monkeypatch.setattr(runtime.precision, "_bf16_smoke_check", lambda: True)
        assert runtime.cpu_supports_bf16() is True
        runtime.cpu_supports_bf16.cache_clear()
        monkeypatch.setenv("DAP_CPU_BF16", "0")
        assert runtime.cpu_supports_bf16() is False           # the override wins
    finally:
        runtime.cpu_supports_bf16.cache_clear()


def test_bf16_smoke_check_runs_here():
    # bf16 kernels exist on every CPU build of torch (emulated where not native)
    assert runtime.precision._bf16_smoke_check() is True


def test_cpu_bf16_matches_the_flags():
    runtime.cpu_supports_bf16.cache_clear()
    flags = runtime.precision._cpu_flags() & runtime.BF16_CPU_FLAGS or runtime.precision._capability_says_bf16()
    if os.environ.get("DAP_CPU_BF16") in ("0", "1"):
        pytest.skip("DAP_CPU_BF16 overrides the detection")
    assert runtime.cpu_supports_bf16() is bool(flags)


def test_autocast_context():
    with runtime.autocast("cpu", None):
        assert not torch.is_autocast_enabled("cpu")
    with runtime.autocast("cpu", torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        y = nn.functional.linear(torch.randn(2, 4), torch.randn(3, 4))
    assert y.dtype == torch.bfloat16
    with runtime.inference("cpu", torch.bfloat16):
        assert torch.is_inference_mode_enabled() and torch.is_autocast_enabled("cpu")


# --------------------------------------------------------------------------------------------
# threads and the OpenMP wait policy
# --------------------------------------------------------------------------------------------
def test_physical_cores_is_sane():
    n = runtime.physical_cores()
    assert 1 <= n <= (os.cpu_count() or 1)


def test_configure_threads(monkeypatch):
    old = torch.get_num_threads()
    try:
        info = runtime.configure_threads(1)
        assert info["num_threads"] == 1 == torch.get_num_threads()
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert runtime.configure_threads()["num_threads"] == 2    # the user's choice
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert runtime.configure_threads()["num_threads"] == runtime.physical_cores()
        monkeypatch.setattr(runtime.threads, "busy_cores", lambda: 64)
        assert runtime.configure_threads(busy_aware=True)["num_threads"] == 1   # at least one
        monkeypatch.setattr(runtime.threads, "busy_cores", lambda: 0)
        assert runtime.configure_threads(busy_aware=True)["num_threads"] == \
            runtime.physical_cores()
        with pytest.raises(ConfigError):
            runtime.configure_threads(0)
        # a late inter-op setting is reported, not raised
        assert isinstance(runtime.configure_threads(1, interop=1)["notes"], list)
    finally:
        torch.set_num_threads(old)


def test_num_threads_context_restores():
    old = torch.get_num_threads()
    with runtime.num_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == old


SNIPPET = """
import os, sys, warnings
warnings.simplefilter("error")
from dap import runtime
{before}
try:
    ok = runtime.set_wait_policy()
except RuntimeWarning:
    ok = "warned"
print(ok, os.environ.get("OMP_WAIT_POLICY"), "torch" in sys.modules)
"""


@pytest.mark.parametrize("before, preset, expected", [
    ("", None, "True PASSIVE False"),                 # in time: set, torch not loaded
    ("import torch", None, "warned PASSIVE True"),    # too late: set for children, warned
    ("import torch", "ACTIVE", "True ACTIVE True"),   # the user's value is kept
])
def test_set_wait_policy(before, preset, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    out = subprocess.run([sys.executable, "-c", SNIPPET.format(before=before)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected


def test_importing_dap_runtime_does_not_import_torch():
    code = "import sys; import dap.runtime; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "False", out.stderr


# --------------------------------------------------------------------------------------------
# channels_last, attention backends, GroupNorm, speed_up
# --------------------------------------------------------------------------------------------
def test_to_channels_last_keeps_state_dict():
    seg = _randomise(SegmentationUNet(segmenter_config("ci")))
    before = {k: v.clone() for k, v in seg.state_dict().items()}
    runtime.to_channels_last(seg)
    after = seg.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert seg.encoder[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    x = runtime.channels_last_input(torch.randn(1, 6, 64, 64))
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert runtime.channels_last_input(torch.randn(2, 3)).shape == (2, 3)


@pytest.mark.parametrize("backend,channels_last", [("fused", False), ("fused", True),
                                                    ("einsum", False)])
def test_attention_backends_agree_in_fp32(backend, channels_last):
    """Every backend, and the fused one's token-major path (a channels_last input: the 1x1
    convolutions as linear layers), against the default sdpa path: outputs and gradients."""
    torch.manual_seed(0)
    ref = _randomise(AttentionBlock(64, 4, -1, 8))
    other = _randomise(AttentionBlock(64, 4, -1, 8))
    other.backend = backend
    x = torch.randn(2, 64, 8, 8, requires_grad=True)
    x2 = x.detach().clone()
    if channels_last:
        x2 = x2.contiguous(memory_format=torch.channels_last)
    x2.requires_grad_(True)
    y, y2 = ref(x), other(x2)
    torch.testing.assert_close(y2, y, rtol=1e-5, atol=1e-5)
    assert y2.is_contiguous(memory_format=torch.channels_last) == channels_last
    y.square().sum().backward()
    y2.square().sum().backward()
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-4, atol=1e-5)
    for p, q in zip(ref.parameters(), other.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-4)


def test_attention_backend_validation():
    den = DenoiserUNet(denoiser_config("ci"))
    blocks = [m for m in den.modules() if isinstance(m, AttentionBlock)]
    assert runtime.set_attention_backend(den, "einsum") == len(blocks) == 4  # enc, mid, 2 dec
    assert all(b.backend == "einsum" for b in blocks)
    with pytest.raises(ConfigError):
        runtime.set_attention_backend(den, "flash3")


def test_group_norm_in_input_dtype_matches_float64():
    """The CUDA bf16 GroupNorm (affine cast to bf16), run here on the CPU, against a float64
    reference of GroupNorm (Wu & He 2018, eq. 1-2); gradients reach the float32 affine."""
    from dap.models.denoiser import group_norm_in_input_dtype

    gn = _randomise(GroupNorm32(8, 32))
    x = torch.randn(4, 32, 16, 16)
    xd = x.double().reshape(4, 8, -1)
    ref = ((xd - xd.mean(-1, keepdim=True)) / torch.sqrt(xd.var(-1, unbiased=False,
                                                                   keepdim=True) + gn.eps))
    ref = ref.reshape(4, 32, 16, 16) * gn.weight.double()[:, None, None] + \
        gn.bias.double()[:, None, None]
    y = group_norm_in_input_dtype(gn, x.bfloat16())
    assert y.dtype == torch.bfloat16
    assert _rel(y.double(), ref) < 1e-2
    assert _rel(group_norm_in_input_dtype(gn, x).double(), ref) < 1e-6  # float32: exact path
    y.float().sum().backward()
    assert gn.weight.grad is not None and gn.weight.grad.dtype == torch.float32


def test_speed_up_chooses_layout_by_device():
    """channels_last where it pays (the CPU); uses_channels_last reports what was chosen."""
    seg = SegmentationUNet(segmenter_config("ci"))
    assert not runtime.uses_channels_last(seg)
    runtime.speed_up(seg, conv_weight_grad_threads=None)  # on the CPU: channels_last
    assert runtime.channels_last_pays("cpu") and runtime.uses_channels_last(seg)
    assert not runtime.channels_last_pays("cuda")
    seg2 = SegmentationUNet(segmenter_config("ci"))
    runtime.speed_up(seg2, channels_last=False, conv_weight_grad_threads=None)
    assert not runtime.uses_channels_last(seg2)
    # a first weight whose layouts coincide (1 x 1 kernel, one input channel) decides nothing
    net = runtime.to_channels_last(nn.Sequential(nn.Conv2d(1, 4, 1), nn.Conv2d(4, 4, 3)))
    assert runtime.uses_channels_last(net)
    # set up again where channels_last does not pay: the layout follows
    runtime.speed_up(seg, channels_last=False, conv_weight_grad_threads=None)
    assert not runtime.uses_channels_last(seg)


def test_native_bf16_groupnorm():
    gn = _randomise(GroupNorm32(8, 32))
    x = torch.randn(4, 32, 16, 16)
    ref = gn(x)
    runtime.set_native_bf16_norm(gn, True)
    assert torch.equal(gn(x), ref)                     # float32 inputs: untouched
    with torch.no_grad():
        y = gn(x.bfloat16())
    assert y.dtype == torch.bfloat16
    assert _rel(y, ref) < 2e-2
    # channels_last while recording gradients, 4 channels per group: the NCHW route
    xc = x.bfloat16().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    y2 = gn(xc)
    assert y2.dtype == torch.bfloat16 and _rel(y2.detach(), ref) < 2e-2
    assert y2.is_contiguous(memory_format=torch.channels_last)
    y2.float().sum().backward()
    assert xc.grad is not None and xc.grad.is_contiguous(memory_format=torch.channels_last)


def _group_norm_float64(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor,
                        eps: float) -> torch.Tensor:
    """GroupNorm (Wu & He 2018, eqs. 1-2) written out in float64: per sample and group,
    (x - mean) / sqrt(var + eps) with the biased variance, then the per-channel affine."""
    b, c, h, w = x.shape
    xg = x.double().reshape(b, groups, -1)
    xhat = (xg - xg.mean(-1, keepdim=True)) / torch.sqrt(xg.var(-1, unbiased=False,
                                                                 keepdim=True) + eps)
    return xhat.reshape(b, c, h, w) * weight.double()[:, None, None] + bias.double()[:, None, None]


@pytest.mark.parametrize("channels", [16, 48])
def test_nchw_group_norm_matches_float64(channels):
    """NCHWGroupNorm (the CPU route for channels_last bf16 with few channels per group):
    output and all three gradients against autograd through a float64 GroupNorm."""
    from dap.models.denoiser import NCHWGroupNorm

    torch.manual_seed(0)
    x = (torch.randn(3, channels, 12, 10) * 2 + 0.5).bfloat16()
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    w = (torch.rand(channels) + 0.5).requires_grad_(True)
    b = torch.randn(channels).requires_grad_(True)
    up = torch.randn(x.shape).bfloat16().double()  # the upstream gradient arrives in bf16
    y = NCHWGroupNorm.apply(x, w, b, 8, 1e-5)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    (y.double() * up).sum().backward()
    x64 = x.detach().double().requires_grad_(True)
    w64, b64 = w.detach().double().requires_grad_(True), b.detach().double().requires_grad_(True)
    ref = _group_norm_float64(x64, 8, w64, b64, 1e-5)
    (ref * up).sum().backward()
    assert _rel(y.double(), ref.detach()) < 1e-2            # bf16 output rounding
    assert _rel(x.grad.double(), x64.grad) < 1e-2           # bf16 input gradient
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    assert w.grad.dtype == torch.float32 and _rel(w.grad.double(), w64.grad) < 1e-3
    assert _rel(b.grad.double(), b64.grad) < 1e-4


def test_cpu_bf16_norm_route():
    """The measured choice of kernel (dap.models.denoiser.cpu_bf16_norm_route)."""
    from dap.models.denoiser import cpu_bf16_norm_route

    def cl(c, s):
        return torch.empty(2, c, s, s, dtype=torch.bfloat16).contiguous(
            memory_format=torch.channels_last)

    assert cpu_bf16_norm_route(torch.empty(2, 16, 8, 8, dtype=torch.bfloat16), 8, True) == "native"
    assert cpu_bf16_norm_route(cl(16, 64), 8, grad=True) == "nchw"      # 2 per group
    assert cpu_bf16_norm_route(cl(64, 16), 8, grad=True) == "float32"   # 8 per group
    assert cpu_bf16_norm_route(cl(64, 16), 8, grad=False) == "float32"  # < 1024 pixels
    assert cpu_bf16_norm_route(cl(64, 32), 8, grad=False) == "native"
    assert cpu_bf16_norm_route(cl(128, 16), 8, grad=False) == "native"  # 16 per group
    assert cpu_bf16_norm_route(cl(192, 16), 8, grad=False) == "float32"  # 24 per group


def test_segmenter_predicts_in_float32_under_autocast():
    """SegmentationUNet.float32_inference: under bf16 autocast without gradients the logits
    are float32 and equal the float32 network's; while training it follows autocast."""
    torch.manual_seed(0)
    seg = _randomise(SegmentationUNet(segmenter_config("ci"))).eval()
    x = torch.randn(2, 6, 64, 64)
    with torch.no_grad():
        ref = seg(x)
        with torch.autocast("cpu", torch.bfloat16):
            got = seg(x)
    assert got.dtype == torch.float32 and torch.equal(got, ref)
    with torch.autocast("cpu", torch.bfloat16):
        assert seg(x).dtype == torch.bfloat16           # gradients recorded: bf16 as trained
    seg.float32_inference = False
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        assert seg(x).dtype == torch.bfloat16


def test_cat_channels_gives_channels_last_gradients():
    """The skip concatenation: torch.cat's numbers, dense channels_last gradients."""
    from dap.models.common import cat_channels

    torch.manual_seed(0)
    a, b = (torch.randn(2, c, 5, 4).contiguous(memory_format=torch.channels_last)
            .requires_grad_(True) for c in (3, 5))
    out = cat_channels([a, b])
    assert torch.equal(out, torch.cat([a, b], 1))
    g = torch.randn_like(out)
    out.backward(g)
    assert torch.equal(a.grad, g[:, :3]) and torch.equal(b.grad, g[:, 3:])
    assert a.grad.is_contiguous(memory_format=torch.channels_last)
    assert b.grad.is_contiguous(memory_format=torch.channels_last)


def test_add_per_channel_is_the_broadcast_add():
    """ResBlock's time-embedding add: the row-wise route gives h + bias exactly, with the same
    gradient for h and, up to bf16 summation order, for the bias."""
    from dap.models.denoiser import add_per_channel

    torch.manual_seed(0)
    for dtype, c in ((torch.bfloat16, 16), (torch.bfloat16, 32), (torch.float32, 8),
                     (torch.bfloat16, 64)):
        h = torch.randn(3, c, 6, 5, dtype=dtype).contiguous(memory_format=torch.channels_last)
        h.requires_grad_(True)
        bias = torch.randn(3, c, 1, 1, dtype=dtype, requires_grad=True)
        out = add_per_channel(h, bias)
        ref = h + bias
        assert torch.equal(out, ref) and out.is_contiguous(memory_format=torch.channels_last)
        g = torch.randn_like(ref)
        got = torch.autograd.grad(out, (h, bias), g)
        want = torch.autograd.grad(ref, (h, bias), g)
        assert torch.equal(got[0], want[0])
        exact = (g.double().sum((2, 3), keepdim=True))
        assert _rel(got[1].double(), exact) < 1e-2


def _pair(preset: str = "ci"):
    den = _randomise(DenoiserUNet(denoiser_config(preset))).eval()
    seg = _randomise(SegmentationUNet(segmenter_config(preset))).eval()
    return den, seg


def test_speed_up_keeps_keys_and_fp32_outputs():
    import copy

    den, seg = _pair()
    fast_den, fast_seg = copy.deepcopy(den), copy.deepcopy(seg)
    for m in (fast_den, fast_seg):
        runtime.speed_up(m)
    assert list(fast_den.state_dict()) == list(den.state_dict())
    assert list(fast_seg.state_dict()) == list(seg.state_dict())
    x, t = torch.randn(2, 3, 64, 64), torch.tensor([10, 700])
    with torch.no_grad():
        ref = den(x, t)
        got = fast_den(runtime.channels_last_input(x), t)
        ref_seg = seg(torch.cat([x, ref], 1))
        got_seg = fast_seg(runtime.channels_last_input(torch.cat([x, ref], 1)))
    # without autocast the fast path is float32: equal up to kernel rounding
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_seg, ref_seg, rtol=1e-4, atol=1e-4)


def test_channels_last_and_bf16_match_fp32_within_bf16_tolerance():
    import copy

    den, seg = _pair()
    fast_den, fast_seg = copy.deepcopy(den), copy.deepcopy(seg)
    runtime.speed_up(fast_den)
    runtime.speed_up(fast_seg)
    x, t = torch.randn(2, 3, 64, 64), torch.tensor([10, 700])
    with torch.no_grad():
        ref = den(x, t)
        ref_seg = seg(torch.cat([x, ref], 1))
    with runtime.inference("cpu", torch.bfloat16):
        got = fast_den(runtime.channels_last_input(x), t)
        got_seg = fast_seg(runtime.channels_last_input(torch.cat([x, ref], 1)))
    assert got.dtype == torch.bfloat16
    assert _rel(got, ref) < 0.05
    assert _rel(got_seg, ref_seg) < 0.05


# --------------------------------------------------------------------------------------------
# conv weight gradients on fewer threads
# --------------------------------------------------------------------------------------------
def test_conv_weight_grad_threads_same_gradients(two_threads):
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.SiLU(), nn.Conv2d(16, 8, 1))
    conv1d = nn.Conv1d(8, 24, 1)
    other, other1d = (nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.SiLU(),
                                    nn.Conv2d(16, 8, 1)), nn.Conv1d(8, 24, 1))
    other.load_state_dict(ref.state_dict())
    other1d.load_state_dict(conv1d.state_dict())
    assert runtime.set_conv_weight_grad_threads(other, 1) == 2
    assert runtime.set_conv_weight_grad_threads(other1d, 1) == 1
    assert list(other.state_dict()) == list(ref.state_dict())
    x = torch.randn(4, 8, 16, 16)
    for dtype in (torch.bfloat16, None):   # bf16: the custom backward; fp32: untouched
        xs = [x.clone().requires_grad_(True) for _ in range(2)]
        outs = []
        for m, m1d, xi in ((ref, conv1d, xs[0]), (other, other1d, xs[1])):
            m.zero_grad()
            m1d.zero_grad()
            with runtime.autocast("cpu", dtype):
                y = m(xi)
                z = m1d(xi.flatten(2))
            (y.float().square().mean() + z.float().square().mean()).backward()
            outs.append((y.detach(), [p.grad.clone() for p in m.parameters()] +
                         [p.grad.clone() for p in m1d.parameters()], xi.grad.clone()))
            assert torch.get_num_threads() == 2
        (y0, g0, xg0), (y1, g1, xg1) = outs
        if dtype is None:
            assert torch.equal(y1, y0) and torch.equal(xg1, xg0)
            assert all(torch.equal(a, b) for a, b in zip(g0, g1))
        else:
            assert y1.dtype == torch.bfloat16
            torch.testing.assert_close(y1, y0, rtol=0, atol=0)
            torch.testing.assert_close(xg1, xg0, rtol=1e-2, atol=1e-3)
            for a, b in zip(g0, g1):
                torch.testing.assert_close(b, a, rtol=2e-2, atol=1e-3)
    assert runtime.set_conv_weight_grad_threads(other, None) == 2
    assert "forward" not in other[0].__dict__


# --------------------------------------------------------------------------------------------
# torch.compile with a clean fallback
# --------------------------------------------------------------------------------------------
def test_maybe_compile_disabled_is_identity():
    m = nn.Linear(3, 2)
    assert runtime.maybe_compile(m, enabled=False) is m
    assert "forward" not in m.__dict__


def test_maybe_compile_without_compiler_falls_back(monkeypatch):
    monkeypatch.setattr(runtime.compilation, "compile_unavailable_reason", lambda device="cpu": "no C++ compiler")
    m = nn.Linear(3, 2)
    messages: list[str] = []
    out = runtime.maybe_compile(m, warn=messages.append)
    assert out is m and "forward" not in m.__dict__
    assert len(messages) == 1 and "no C++ compiler" in messages[0]
    assert not runtime.is_compiled(m)


def test_maybe_compile_falls_back_when_compile_raises(monkeypatch):
    def broken_compile(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("inductor exploded\nlong traceback")
        return run

    monkeypatch.setattr(runtime.compilation, "compile_unavailable_reason", lambda device="cpu": None)
    monkeypatch.setattr(torch, "compile", broken_compile)
    m = nn.Linear(3, 2)
    keys = list(m.state_dict())
    messages: list[str] = []
    runtime.maybe_compile(m, warn=messages.append)
    assert runtime.is_compiled(m)
    x = torch.randn(4, 3)
    expected = nn.functional.linear(x, m.weight, m.bias)
    torch.testing.assert_close(m(x), expected)          # eager result, one warning
    torch.testing.assert_close(m(x), expected)
    assert len(messages) == 1 and "inductor exploded" in messages[0]
    assert "\n" not in messages[0]
    assert not runtime.is_compiled(m)
    assert list(m.state_dict()) == keys


def test_maybe_compile_construction_error(monkeypatch):
    def no_compile(fn, **kw):
        raise RuntimeError("Python 3.99 is not supported")

    monkeypatch.setattr(runtime.compilation, "compile_unavailable_reason", lambda device="cpu": None)
    monkeypatch.setattr(torch, "compile", no_compile)
    m = nn.Linear(3, 2)
    messages: list[str] = []
    assert runtime.maybe_compile(m, warn=messages.append) is m
    assert "forward" not in m.__dict__ and "not supported" in messages[0]


def test_maybe_compile_user_errors_propagate(monkeypatch):
    monkeypatch.setattr(runtime.compilation, "compile_unavailable_reason", lambda device="cpu": None)
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)   # "compiled" = eager
    m = runtime.maybe_compile(nn.Linear(3, 2), warn=lambda s: None)
    with pytest.raises(RuntimeError):
        m(torch.randn(4, 5))                 # wrong shape: the caller's error
    assert runtime.is_compiled(m)            # and compile stays on


def test_compile_unavailable_reason_without_compiler(monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "C++ compiler" in runtime.compile_unavailable_reason("cpu")


@pytest.mark.slow
def test_maybe_compile_really_compiles_a_small_module():
    if runtime.compile_unavailable_reason("cpu"):
        pytest.skip("no compiler")
    m = nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 2))
    x = torch.randn(3, 4)
    expected = m(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runtime.maybe_compile(m)
        got = m(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert runtime.is_compiled(m)           # compiled and not fallen back


@pytest.mark.slow
def test_segmenter_compiles_with_gradient_checkpointing():
    """Under torch.compile the segmenter's checkpoint drops the BatchNorm-freezing context that
    dynamo cannot trace; it compiles (no fallback), matches eager without checkpointing, and
    updates the running statistics once."""
    if runtime.compile_unavailable_reason("cpu"):
        pytest.skip("no compiler")
    import copy

    torch.manual_seed(0)
    ref = SegmentationUNet(segmenter_config("ci")).train()
    net = copy.deepcopy(ref).enable_gradient_checkpointing()
    messages: list[str] = []
    runtime.maybe_compile(net, warn=messages.append)
    x = torch.randn(2, 6, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y = net(x)
        y.square().mean().backward()
    assert runtime.is_compiled(net) and not messages, messages
    y0 = ref(x)
    y0.square().mean().backward()
    torch.testing.assert_close(y, y0, rtol=1e-4, atol=1e-4)
    for a, b in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-5)
    bufs = dict(net.named_buffers())
    for name, b in ref.named_buffers():
        torch.testing.assert_close(bufs[name], b, rtol=1e-5, atol=1e-6)  # updated once


# --------------------------------------------------------------------------------------------
# gradient checkpointing
# --------------------------------------------------------------------------------------------
def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def test_denoiser_checkpointing_same_outputs_and_gradients():
    plain = _randomise(DenoiserUNet(denoiser_config("ci")))
    ckpt = DenoiserUNet(denoiser_config("ci"))
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.enable_gradient_checkpointing() is ckpt and ckpt.gradient_checkpointing
    x, t = torch.randn(2, 3, 64, 64), torch.tensor([7, 300])
    y0, y1 = plain(x, t), ckpt(x, t)
    torch.testing.assert_close(y1, y0, rtol=0, atol=1e-6)
    y0.square().mean().backward()
    y1.square().mean().backward()
    for a, b in zip(_grads(plain), _grads(ckpt)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    ckpt.disable_gradient_checkpointing()
    assert not ckpt.gradient_checkpointing
    assert list(ckpt.state_dict()) == list(plain.state_dict())


def test_segmenter_checkpointing_same_outputs_gradients_and_bn_stats():
    plain = _randomise(SegmentationUNet(segmenter_config("ci"))).train()
    ckpt = SegmentationUNet(segmenter_config("ci")).train()
    ckpt.load_state_dict(plain.state_dict())
    ckpt.enable_gradient_checkpointing()
    x = torch.randn(3, 6, 64, 64)
    y0, y1 = plain(x), ckpt(x)
    torch.testing.assert_close(y1, y0, rtol=0, atol=1e-6)
    y0.square().mean().backward()
    y1.square().mean().backward()
    for a, b in zip(_grads(plain), _grads(ckpt)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    # running statistics updated exactly once, as without checkpointing
    for (k, a), b in zip(plain.state_dict().items(), ckpt.state_dict().values()):
        assert torch.equal(a, b), k
    assert runtime.enable_gradient_checkpointing(ckpt, False) == 1
    assert not ckpt.gradient_checkpointing


def test_checkpointing_inactive_without_grad():
    den = DenoiserUNet(denoiser_config("ci")).enable_gradient_checkpointing()
    with torch.no_grad():
        assert not den._checkpointing()
    assert den._checkpointing()


def test_checkpointing_under_bf16_autocast_matches():
    plain = _randomise(DenoiserUNet(denoiser_config("ci")))
    ckpt = DenoiserUNet(denoiser_config("ci"))
    ckpt.load_state_dict(plain.state_dict())
    ckpt.enable_gradient_checkpointing()
    x, t = torch.randn(2, 3, 64, 64), torch.tensor([7, 300])
    for m in (plain, ckpt):
        with runtime.autocast("cpu", torch.bfloat16):
            y = m(x, t)
        y.float().square().mean().backward()
    for a, b in zip(_grads(plain), _grads(ckpt)):
        torch.testing.assert_close(b, a, rtol=1e-2, atol=1e-4)


def test_checkpointing_helper_on_a_method():
    from dap.methods import build_method

    method = build_method("diffusionad", "ci")
    assert runtime.enable_gradient_checkpointing(method) == 2
    assert method.denoiser.gradient_checkpointing and method.segmenter.gradient_checkpointing
    assert len(runtime.networks(method)) == 2


def test_optimizer_kwargs_give_the_same_update():
    torch.manual_seed(0)
    p0 = nn.Parameter(torch.randn(10, 10))
    p1 = nn.Parameter(p0.detach().clone())
    kw = runtime.optimizer_kwargs("cpu")
    assert kw in ({"fused": True}, {"foreach": True})
    assert runtime.optimizer_kwargs("cpu", fused=False) == {"foreach": True}
    o0 = torch.optim.AdamW([p0], lr=1e-2)
    o1 = torch.optim.AdamW([p1], lr=1e-2, **kw)
    for _ in range(3):
        g = torch.randn(10, 10)
        p0.grad, p1.grad = g.clone(), g.clone()
        o0.step()
        o1.step()
    torch.testing.assert_close(p1, p0, rtol=1e-6, atol=1e-6)


def test_optimizer_threads():
    from dap.methods import build_method

    assert runtime.optimizer_threads(build_method("diffusionad", "ci").parameters()) == 1
    with torch.device("meta"):
        paper = [DenoiserUNet(denoiser_config("paper")), SegmentationUNet(segmenter_config())]
    assert runtime.optimizer_threads([p for m in paper for p in m.parameters()]) is None
    assert runtime.optimizer_threads([]) is None
