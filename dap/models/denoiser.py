"""The noise predictor eps_theta(x_t, t): a guided-diffusion-family U-Net.

DiffusionAD's reconstruction sub-network (Zhang et al., DiffusionAD, Sec. III) is a
DDPM noise predictor with the U-Net of Dhariwal & Nichol, "Diffusion Models Beat GANs on Image
Synthesis" (guided-diffusion). Taught in ``notebooks/02_one_step_vs_iterative`` (what the network
predicts) and ``notebooks/06_train_and_evaluate`` (training it).

The network, top to bottom (``paper`` preset, 256 x 256, 131.7 M parameters)::

    t --sinusoidal(128)--> Linear 128->512, SiLU, Linear 512->512 = emb
    x (B,3,256,256) --conv3x3--> 128 ch
    encoder: per level i, num_res_blocks ResBlocks to num_channels * channel_mult[i]
             (+ attention at the chosen feature-map sizes), then a down-sampling ResBlock
    middle:  ResBlock, attention, ResBlock                      (8 x 8, 512 ch)
    decoder: per level, num_res_blocks + 1 ResBlocks on concat(h, skip) (+ attention),
             then an up-sampling ResBlock
    out:     GroupNorm, SiLU, zero-initialised conv3x3 -> (B,3,256,256) = eps_theta(x_t, t)

Config keys are guided-diffusion's (``num_channels``, ``channel_mult``, ``num_res_blocks``,
``attention_resolutions``, ``num_heads``, ``num_head_channels``, ``resblock_updown``,
``use_scale_shift_norm``). The official DiffusionAD code's names map as ``base_channels`` ->
``num_channels``, ``channel_mults`` -> ``channel_mult``, ``n_heads`` -> ``num_heads``,
``n_head_channels`` -> ``num_head_channels``, ``biggan_updown`` -> ``resblock_updown``.

``attention_resolutions`` has ONE meaning in dap: feature-map sizes (32, 16, 8 at 256 x 256).
guided-diffusion's ``UNetModel`` takes down-sampling rates instead (ds = image_size // size);
convert with :func:`attention_sizes_from_rates` and :func:`attention_rates_from_sizes`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from dap.config import ConfigError, replace
from dap.models.common import cat_channels, is_channels_last, zero_module


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
@dataclass
class DenoiserConfig:
    """Hyper-parameters of :class:`DenoiserUNet` (guided-diffusion's keys).

    Attributes
    ----------
    image_size : int
        Side of the square training images; fixes which feature-map sizes exist.
    in_channels, out_channels : int
        3 and 3 for RGB noise prediction.
    num_channels : int
        Base width; level i has ``num_channels * channel_mult[i]`` channels.
    channel_mult : tuple of int
        One multiplier per resolution level; ``len(channel_mult) - 1`` down-samplings.
    num_res_blocks : int
        ResBlocks per level in the encoder (the decoder has one more per level).
    attention_resolutions : tuple of int
        FEATURE-MAP SIZES (not down-sampling rates) at which self-attention follows each ResBlock.
        The middle block always has attention.
    num_heads : int
        Attention heads, used when ``num_head_channels == -1``.
    num_head_channels : int
        Channels per head; -1 means "use ``num_heads`` heads" (the official setting).
    dropout : float
        Dropout inside each ResBlock (official: 0).
    resblock_updown : bool
        Down/up-sample with ResBlocks (BigGAN style, official) instead of strided / nearest convs.
    use_scale_shift_norm : bool
        FiLM the time embedding as ``norm(h) * (1 + scale) + shift`` (guided-diffusion) instead of
        adding it before the second norm (official DiffusionAD: False).
    time_embed_mult : int
        The time-embedding MLP width is ``time_embed_mult * num_channels`` (4: 128 -> 512).
    num_groups : int
        GroupNorm groups: each norm over c channels uses ``gcd(num_groups, c)`` groups, which
        always divides c; 32 reproduces the official GroupNorm(32, c) at every paper width.
    use_checkpoint : bool
        Gradient checkpointing of every block: keep only block inputs and recompute the rest in
        the backward pass (about one extra forward pass of compute), so the ``paper`` preset
        fits batch 16 into less GPU memory. Same gradients (tested). Being part of the config,
        it is saved with a model; :meth:`DenoiserUNet.enable_gradient_checkpointing` switches the
        same thing on at run time without changing the config.
    """

    image_size: int = 256
    in_channels: int = 3
    out_channels: int = 3
    num_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (32, 16, 8)
    num_heads: int = 4
    num_head_channels: int = -1
    dropout: float = 0.0
    resblock_updown: bool = True
    use_scale_shift_norm: bool = False
    time_embed_mult: int = 4
    num_groups: int = 32
    use_checkpoint: bool = False

    def __post_init__(self) -> None:
        for key in ("image_size", "in_channels", "out_channels", "num_channels", "num_res_blocks",
                    "num_heads", "time_embed_mult", "num_groups"):
            if getattr(self, key) < 1:
                raise ConfigError(f"DenoiserConfig.{key} must be >= 1, got {getattr(self, key)}")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ConfigError(f"DenoiserConfig.channel_mult must be non-empty positive integers, "
                              f"got {self.channel_mult}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"DenoiserConfig.dropout must lie in [0, 1), got {self.dropout}")
        factor = 2 ** (len(self.channel_mult) - 1)
        if self.image_size % factor:
            raise ConfigError(
                f"DenoiserConfig.image_size={self.image_size} must be divisible by "
                f"2^(len(channel_mult)-1) = {factor} ({len(self.channel_mult)} levels)"
            )
        sizes = self.feature_sizes
        bad = [r for r in self.attention_resolutions if r not in sizes]
        if bad:
            hint = ""
            if all(0 < r <= self.image_size and self.image_size // r in sizes for r in bad):
                hint = (" They look like guided-diffusion down-sampling rates; convert them with "
                        f"attention_sizes_from_rates({self.image_size}, {tuple(bad)}).")
            raise ConfigError(
                f"DenoiserConfig.attention_resolutions {tuple(bad)} are not feature-map sizes of "
                f"this network; with image_size={self.image_size} and "
                f"{len(self.channel_mult)} levels the sizes are {sizes}.{hint}"
            )
        if self.num_head_channels != -1 and self.num_head_channels < 1:
            raise ConfigError("DenoiserConfig.num_head_channels must be -1 (use num_heads) or "
                              f">= 1, got {self.num_head_channels}")
        for ch in self.attention_channels:
            div = self.num_heads if self.num_head_channels == -1 else self.num_head_channels
            if ch % div:
                what = "num_heads" if self.num_head_channels == -1 else "num_head_channels"
                raise ConfigError(f"DenoiserConfig: an attention block has {ch} channels, not "
                                  f"divisible by {what}={div}")

    @property
    def feature_sizes(self) -> tuple[int, ...]:
        """Feature-map side of each level: ``image_size // 2**i`` (256, 128, ..., 8 for paper)."""
        return tuple(self.image_size // 2**i for i in range(len(self.channel_mult)))

    @property
    def level_channels(self) -> tuple[int, ...]:
        """Channels of each level: ``num_channels * channel_mult[i]``."""
        return tuple(self.num_channels * m for m in self.channel_mult)

    @property
    def attention_channels(self) -> tuple[int, ...]:
        """Channel counts of all attention blocks' inputs (levels with attention, then middle)."""
        chans = [c for c, s in zip(self.level_channels, self.feature_sizes)
                 if s in self.attention_resolutions]
        return (*chans, self.level_channels[-1])

    @property
    def time_embed_dim(self) -> int:
        """Width of the time embedding after the MLP (512 for the paper preset)."""
        return self.time_embed_mult * self.num_channels


def attention_sizes_from_rates(image_size: int,
                               rates: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """guided-diffusion down-sampling rates -> dap feature-map sizes: ``size = image_size // ds``.

    >>> attention_sizes_from_rates(256, (8, 16, 32))
    (32, 16, 8)
    """
    return tuple(image_size // int(ds) for ds in rates)


def attention_rates_from_sizes(image_size: int,
                               sizes: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """dap feature-map sizes -> guided-diffusion down-sampling rates: ``ds = image_size // size``.

    >>> attention_rates_from_sizes(256, (32, 16, 8))
    (8, 16, 32)
    """
    return tuple(image_size // int(s) for s in sizes)


DENOISER_PRESETS: dict[str, DenoiserConfig] = {
    # The official DiffusionAD network at 256 x 256 (args1.json + the 256 default channel_mult).
    "paper": DenoiserConfig(),
    # Profile ci: 64 x 64, 0.76 M parameters; forward + backward at batch 8 ~0.15 s on 2 CPU
    # cores, so a DiffusionAD step (two denoiser passes + segmenter) stays well under 1 s.
    "ci": DenoiserConfig(image_size=64, num_channels=16, channel_mult=(1, 2, 4), num_res_blocks=1,
                         attention_resolutions=(16,), num_heads=4, num_groups=8),
    # Profile cpu: 128 x 128, 3.5 M parameters; narrow at full resolution (where the FLOPs
    # are), wide and attentive at 16 x 16 and 8 x 8 (where they are cheap).
    "cpu": DenoiserConfig(image_size=128, num_channels=16, channel_mult=(1, 2, 4, 4, 8),
                          num_res_blocks=1, attention_resolutions=(16, 8), num_heads=4,
                          num_groups=8),
}


def denoiser_config(preset: str = "paper", **overrides: Any) -> DenoiserConfig:
    """A validated copy of preset ``preset`` (``paper``, ``ci``, ``cpu``) with ``overrides``.

    >>> denoiser_config("ci", dropout=0.1).num_channels
    16
    """
    if preset not in DENOISER_PRESETS:
        raise ConfigError(f"unknown denoiser preset {preset!r}; valid: {sorted(DENOISER_PRESETS)}")
    return replace(DENOISER_PRESETS[preset], **overrides)


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------
def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, float32 ``(B, dim)``.

    Transformer / DDPM positional encoding in the order of the official DiffusionAD code::

        f_i = max_period ** (-i / half),  i = 0 .. half-1,  half = dim // 2
        emb = [sin(t f_0), ..., sin(t f_{half-1}), cos(t f_0), ..., cos(t f_{half-1})]

    (guided-diffusion puts the cosines first; the order only permutes the next Linear's inputs.)
    An odd ``dim`` is padded with one zero column.
    """
    half = dim // 2
    # f_i = exp(-ln(max_period) * i / half)
    freqs = torch.exp(-math.log(max_period)
                      * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back (guided-diffusion's ``GroupNorm32``).

    Keeps the statistics accurate under bf16/fp16 autocast; the output has the input's dtype.

    ``upcast`` (default True) is a speed option, never saved in a checkpoint: with
    ``upcast=False`` a bfloat16 input is normalised by a native bf16 kernel, which skips two
    full-size casts per norm (a float32 input is unaffected). The kernel is the fastest one
    measured for the input's layout and shape (:func:`cpu_bf16_norm_route`):

    * on the CPU, PyTorch's mixed-precision kernel (statistics accumulated in float32 inside
      it, affine parameters kept in float32, output bfloat16), run on the tensor as it is, or
      on an NCHW copy of a channels_last tensor (:class:`NCHWGroupNorm`), or skipped for the
      float32 path, whichever the route says;
    * elsewhere (CUDA), PyTorch's bf16 kernel with the affine parameters cast to bf16 (its
      mean and variance accumulate in float32 too). On an H200 (``paper`` preset, batch 16)
      it made the bf16 training step 1.13x faster and cut its peak memory from 62 to 48 GB
      (``benchmarks/gpu.py --configs bf16 bf16+upcastgn``).

    :func:`dap.runtime.speed_up` turns it on on CUDA and on CPUs with native bf16.
    """

    upcast: bool = True

    def forward(self, x: Tensor) -> Tensor:
        if not self.upcast and x.dtype == torch.bfloat16:
            if x.device.type != "cpu":
                return group_norm_in_input_dtype(self, x)
            route = cpu_bf16_norm_route(x, self.num_groups, torch.is_grad_enabled())
            if route == "nchw":
                return NCHWGroupNorm.apply(x, self.weight, self.bias, self.num_groups, self.eps)
            if route == "native":
                # the mixed-type kernel accepts a bf16 input with fp32 weight and bias
                with torch.autocast(x.device.type, enabled=False):
                    return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return super().forward(x.float()).to(x.dtype)


def cpu_bf16_norm_route(x: Tensor, num_groups: int, grad: bool) -> str:
    """Which kernel normalises a bf16 activation ``x`` fastest on the CPU (PyTorch 2.x).

    Returns ``"native"`` (the mixed-precision kernel on ``x`` as it is), ``"nchw"``
    (:class:`NCHWGroupNorm`: the same kernel on an NCHW copy) or ``"float32"`` (cast up, the
    float32 kernel, cast down). An NCHW tensor always goes ``native``. For a channels_last
    tensor PyTorch's kernels vectorise along the channels of one group, so few channels per
    group run nearly scalar. Measured here on one thread (AMX CPU, the ``ci`` and ``cpu``
    presets' norms at batch 16; ``benchmarks/cpu_kernels.py`` prints the table):

    * recording gradients, with < 8 channels per group: ``nchw``, whose forward + backward
      with its four layout copies took 0.35-0.55x the float32 path's time (e.g. 16 channels
      at 64 x 64: 2.7 ms against 7.4 ms); with >= 8 the float32 path is faster (1.1-1.7x);
    * without gradients, with fewer than 1024 pixels and a number of channels per group that
      is not a multiple of 16 (one vector of float32): ``float32`` (PyTorch's channels_last
      kernel takes a per-group loop below 1024 pixels, vectorised along those channels: 64
      channels at 16 x 16 took 0.86 ms native against 0.24 ms through float32, 192 channels
      1.10 against 0.71 ms, while 128 took 0.21 native against 0.53); otherwise ``native``.

    Under ``torch.compile`` (which fuses the casts itself) the route is always ``float32``.
    """
    if x.ndim != 4 or x.is_contiguous():
        return "native"
    if torch.compiler.is_compiling():
        return "float32"
    per_group = x.shape[1] // num_groups
    if grad:
        return "nchw" if per_group < 8 else "float32"
    return "float32" if x.shape[2] * x.shape[3] < 1024 and per_group % 16 else "native"


class NCHWGroupNorm(torch.autograd.Function):
    """GroupNorm (Wu & He 2018, eq. 1-2) of a channels_last bf16 tensor by PyTorch's NCHW
    mixed-precision kernel: the input is copied to NCHW, normalised (float32 statistics,
    float32 affine, bf16 output) and the output copied back to channels_last; the backward
    does the same with the incoming gradient. Same kernels as ``F.group_norm`` on an NCHW
    input, so the same numbers; only faster where :func:`cpu_bf16_norm_route` says so."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, groups: int,
                eps: float) -> Tensor:
        n, c, h, w = x.shape
        xn = x.contiguous()
        with torch.autocast("cpu", enabled=False):
            y, mean, rstd = torch.native_group_norm(xn, weight, bias, n, c, h * w, groups, eps)
        ctx.save_for_backward(xn, weight, mean, rstd)
        ctx.groups = groups
        return y.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple:
        xn, weight, mean, rstd = ctx.saved_tensors
        n, c, h, w = xn.shape
        dx, dw, db = torch.ops.aten.native_group_norm_backward(
            grad.contiguous(), xn, mean, rstd, weight, n, c, h * w, ctx.groups,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]])
        if dx is not None:
            dx = dx.contiguous(memory_format=torch.channels_last)
        return dx, dw, db, None, None


def group_norm_in_input_dtype(norm: nn.GroupNorm, x: Tensor) -> Tensor:
    """GroupNorm (Wu & He 2018, eq. 1-2: per sample and group, (x - mean) / sqrt(var + eps),
    then the per-channel affine) in ``x``'s dtype, with ``norm``'s affine parameters cast to
    it: the kernel :class:`GroupNorm32` uses for bf16 activations on CUDA. Gradients reach the
    float32 parameters through the cast."""
    with torch.autocast(x.device.type, enabled=False):
        return F.group_norm(x, norm.num_groups, norm.weight.to(x.dtype), norm.bias.to(x.dtype),
                            norm.eps)


def normalization(channels: int, num_groups: int) -> GroupNorm32:
    """GroupNorm over ``channels`` with ``gcd(num_groups, channels)`` groups."""
    return GroupNorm32(math.gcd(num_groups, channels), channels)


class Downsample(nn.Module):
    """Halve H and W: a stride-2 conv3x3 (``use_conv``) or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.op: nn.Module = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        else:
            if out_channels != channels:
                raise ValueError("average pooling cannot change the channel count")
            self.op = nn.AvgPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double H and W by nearest-neighbour interpolation, then an optional conv3x3."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        if not use_conv and out_channels != channels:
            raise ValueError("nearest upsampling without a conv cannot change the channel count")
        self.conv = nn.Conv2d(channels, out_channels, 3, padding=1) if use_conv else None

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class ResBlock(nn.Module):
    """Residual block conditioned on the time embedding (guided-diffusion ``ResBlock``).

    h = conv3x3(SiLU(GN(x)))                       (resampled between SiLU and conv if up/down)
    h = h + Linear(SiLU(emb))                      (or FiLM inside the 2nd norm: scale-shift)
    h = zero_conv3x3(Dropout(SiLU(GN(h))))
    out = skip(x) + h                              (skip: identity, or 1x1 conv if widths differ)
    """

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int,
                 num_groups: int, use_scale_shift_norm: bool = False, up: bool = False,
                 down: bool = False) -> None:
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_norm = normalization(channels, num_groups)
        self.in_conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.updown = up or down
        if up:
            self.h_upd: nn.Module = Upsample(channels, use_conv=False)
            self.x_upd: nn.Module = Upsample(channels, use_conv=False)
        elif down:
            self.h_upd = Downsample(channels, use_conv=False)
            self.x_upd = Downsample(channels, use_conv=False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels),
        )
        self.out_norm = normalization(out_channels, num_groups)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection: nn.Module = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = F.silu(self.in_norm(x))
        # BigGAN-style resampling: both branches are resampled before the first conv
        h, x = self.h_upd(h), self.x_upd(x)
        h = self.in_conv(h)
        emb_out = self.emb_layers(emb)[:, :, None, None].to(h.dtype)
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            # h = GN(h) * (1 + scale) + shift
            h = self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(add_per_channel(h, emb_out))
        h = self.out_conv(self.dropout(F.silu(h)))
        return self.skip_connection(x) + h


def add_per_channel(h: Tensor, bias: Tensor) -> Tensor:
    """``h + bias`` for a feature map ``h`` ``(B, C, H, W)`` and ``bias`` ``(B, C, 1, 1)``
    (the time embedding that :class:`ResBlock` adds), the same numbers.

    In channels_last memory PyTorch broadcasts ``bias`` one pixel of C channels at a time, and
    with at most one vector of channels (32 bf16, 16 float32) that loop runs nearly scalar: 16
    channels at 64 x 64, batch 16, took 1.5 ms for a 0.1 ms worth of memory traffic. Here such
    a map is added row by row instead: ``h`` viewed as ``(B, H, W*C)`` plus ``bias`` tiled W
    times, one long contiguous run per row (0.3 ms; 32 channels at 128 x 128: 2.7 ms against
    3.2). Other inputs take ``h + bias`` (64 channels at 128 x 128 were slower row by row).
    """
    b, c, hgt, wid = h.shape
    vector = 64 // h.element_size()  # elements in one 512-bit vector
    if c > vector or wid == 1 or not is_channels_last(h):
        return h + bias
    rows = h.permute(0, 2, 3, 1).reshape(b, hgt, wid * c)  # a view: channels_last is (B, H, W, C)
    out = rows + bias.reshape(b, 1, c).repeat(1, 1, wid)
    return out.reshape(b, hgt, wid, c).permute(0, 3, 1, 2)


#: Implementations of softmax(q k^T / sqrt(d)) v that :class:`AttentionBlock` can use.
ATTENTION_BACKENDS: tuple[str, ...] = ("sdpa", "fused", "einsum")


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all H*W positions, residual, zero-initialised projection.

    qkv = Conv1d(C, 3C, 1)(GN(x)); heads use the legacy guided-diffusion layout (each head's
    [q, k, v] contiguous); softmax(q k^T / sqrt(d)) v.

    ``backend`` (a speed option, not part of the config or the checkpoint) picks how the
    attention is computed; all three give the same result up to float rounding:

    * ``"sdpa"`` (default): ``F.scaled_dot_product_attention`` on strided q, k, v views. On
      the CPU these views send it to the unfused "math" kernel.
    * ``"fused"``: the same call on contiguous q, k, v, which lets PyTorch pick its fused
      (flash) kernel on the CPU and on CUDA: no (N, N) matrix is stored. On 2 CPU cores at
      16 x 16 (batch 16, 4 heads of 16 channels) the attention alone was ~7x faster forward
      and ~2.5x faster forward + backward than "sdpa"; its share of a whole step is row
      "+ fused attention kernel" of ``benchmarks/speed.py --ablate``. Under CPU autocast with
      gradients it runs in float32 (the bf16 flash backward was slower than the fp32 one).
      On a channels_last input it also runs the 1x1 projections as linear layers over the
      tokens, with no layout copy (:meth:`_token_major`).
    * ``"einsum"``: guided-diffusion's ``QKVAttentionLegacy`` (the official code): two
      einsums with the 1/sqrt(sqrt(d)) scale on each side, softmax in float32.
    """

    def __init__(self, channels: int, num_heads: int, num_head_channels: int,
                 num_groups: int) -> None:
        super().__init__()
        self.num_heads = num_heads if num_head_channels == -1 else channels // num_head_channels
        self.norm = normalization(channels, num_groups)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))
        self.backend = "sdpa"

    def forward(self, x: Tensor) -> Tensor:
        b, c, hgt, wid = x.shape
        n, heads = hgt * wid, self.num_heads
        if self.backend == "fused" and is_channels_last(x):
            return self._token_major(x)
        qkv = self.qkv(self.norm(x).reshape(b, c, n))               # (B, 3C, N)
        if self.backend == "einsum":
            a = _einsum_attention(qkv.reshape(b * heads, 3 * (c // heads), n))
            return x + self.proj_out(a.reshape(b, c, n)).reshape(b, c, hgt, wid)
        qkv = qkv.reshape(b, heads, 3 * (c // heads), n).transpose(-1, -2)
        q, k, v = qkv.chunk(3, dim=-1)                              # (B, heads, N, d) each
        if self.backend == "fused":
            a = _fused_attention(q, k, v)
        else:
            # a = softmax(q k^T / sqrt(d)) v
            a = F.scaled_dot_product_attention(q, k, v)
        a = a.transpose(-1, -2).reshape(b, c, n)
        return x + self.proj_out(a).reshape(b, c, hgt, wid)

    def _token_major(self, x: Tensor) -> Tensor:
        """The ``"fused"`` backend for a channels_last ``x``, whose memory is already
        (B, H*W, C): the 1x1 convolutions ``qkv`` and ``proj_out`` run as ``F.linear`` over
        the tokens (the same weights, squeezed; the same products), so no layout copy is made
        and the output is channels_last like ``x``. On one CPU thread (``ci`` preset, batch
        16, 16 x 16) the two projections as strided conv1d took ~1.3 ms per block forward, as
        linear layers ~0.5 ms."""
        b, c, hgt, wid = x.shape
        n, heads = hgt * wid, self.num_heads
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(b, n, c)   # a view: (B, N, C)
        qkv = F.linear(tokens, self.qkv.weight[..., 0], self.qkv.bias)  # (B, N, 3C)
        # legacy head layout: channel h * 3d + [0, d, 2d] starts head h's q, k, v
        qkv = qkv.reshape(b, n, heads, 3 * (c // heads)).transpose(1, 2)
        a = _fused_attention(*qkv.chunk(3, dim=-1))                 # (B, heads, N, d)
        a = a.transpose(1, 2).reshape(b, n, c)                      # channel = head * d + j
        out = F.linear(a, self.proj_out.weight[..., 0], self.proj_out.bias)
        return x + out.reshape(b, hgt, wid, c).permute(0, 3, 1, 2)


def _fused_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d)) v by PyTorch's fused (flash) kernel on contiguous copies of
    ``q, k, v`` ``(B, heads, N, d)``; in float32 on the CPU while recording gradients (the
    bf16 flash backward was slower than the float32 one), the result in ``q``'s dtype."""
    out_dtype = dtype = q.dtype
    if q.device.type == "cpu" and torch.is_grad_enabled() and dtype != torch.float32:
        dtype = torch.float32
    q, k, v = (t.to(dtype).contiguous() for t in (q, k, v))
    with torch.autocast(q.device.type, enabled=False):
        return F.scaled_dot_product_attention(q, k, v).to(out_dtype)


def _einsum_attention(qkv: Tensor) -> Tensor:
    """guided-diffusion's legacy attention on ``(B*heads, 3d, N)`` -> ``(B*heads, d, N)``."""
    d = qkv.shape[1] // 3
    q, k, v = qkv.chunk(3, dim=1)
    scale = 1 / math.sqrt(math.sqrt(d))
    # w = softmax((q / d^(1/4))^T (k / d^(1/4))) over the key positions
    w = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    w = torch.softmax(w.float(), dim=-1).to(w.dtype)
    return torch.einsum("bts,bcs->bct", w, v)


class EmbedSequential(nn.Sequential):
    """A sequence of layers; :class:`ResBlock` children also receive the time embedding."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


# --------------------------------------------------------------------------------------------
# The U-Net
# --------------------------------------------------------------------------------------------
class DenoiserUNet(nn.Module):
    """eps_theta(x_t, t): the guided-diffusion U-Net that DiffusionAD trains as its denoiser.

    Parameters
    ----------
    config : DenoiserConfig
        See :func:`denoiser_config` for the ``paper``, ``ci`` and ``cpu`` presets.

    Notes
    -----
    A fresh network predicts exactly 0 (zero-initialised output conv), and every ResBlock and
    attention block starts as the identity on its residual branch. Works under bf16 autocast and
    with ``channels_last`` inputs; GroupNorm statistics are always computed in float32.

    Speed and memory options (none changes the parameters, the state_dict keys or, when off,
    a single bit of the float32 outputs; :mod:`dap.runtime` applies them in one place):

    * :meth:`enable_gradient_checkpointing` (diffusers' name; or ``config.use_checkpoint``):
      keep only each block's input and recompute the block in the backward pass
      (``torch.utils.checkpoint``, ``use_reentrant=False``): about one extra forward pass of
      compute for a fraction of the activation memory. Same outputs and gradients (tested).
    * channels_last weights and inputs, bf16/fp16 autocast, ``torch.compile``:
      :func:`dap.runtime.speed_up` and :func:`dap.runtime.autocast`.
    * the attention implementation (:class:`AttentionBlock` ``backend``) and native bf16
      GroupNorm (:class:`GroupNorm32` ``upcast``): :func:`dap.runtime.speed_up`.
    """

    #: recompute every block in the backward pass (see :meth:`enable_gradient_checkpointing`)
    gradient_checkpointing: bool = False

    def __init__(self, config: DenoiserConfig) -> None:
        super().__init__()
        self.config = cfg = config
        emb_dim = cfg.time_embed_dim
        groups = cfg.num_groups

        def res(cin: int, cout: int, **kw: bool) -> ResBlock:
            return ResBlock(cin, emb_dim, cfg.dropout, cout, groups, cfg.use_scale_shift_norm, **kw)

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, cfg.num_heads, cfg.num_head_channels, groups)

        # emb = Linear(SiLU(Linear(sinusoid(t))))
        self.time_embed = nn.Sequential(
            nn.Linear(cfg.num_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )

        # Encoder. skip_chans records the width of every block output the decoder concatenates.
        ch = cfg.level_channels[0]
        self.input_blocks = nn.ModuleList(
            [EmbedSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))]
        )
        skip_chans = [ch]
        self._level_ends: list[int] = []   # index of each level's last block before resampling
        n_levels = len(cfg.channel_mult)
        for level, (out_ch, size) in enumerate(zip(cfg.level_channels, cfg.feature_sizes)):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, out_ch)]
                ch = out_ch
                if size in cfg.attention_resolutions:
                    layers.append(attn(ch))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_chans.append(ch)
            self._level_ends.append(len(self.input_blocks) - 1)
            if level != n_levels - 1:
                down = res(ch, ch, down=True) if cfg.resblock_updown else Downsample(ch, True)
                self.input_blocks.append(EmbedSequential(down))
                skip_chans.append(ch)

        # Middle: ResBlock, attention, ResBlock at the smallest size.
        self.middle_block = EmbedSequential(res(ch, ch), attn(ch), res(ch, ch))

        # Decoder: num_res_blocks + 1 blocks per level, each on concat(h, skip).
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(n_levels)):
            out_ch, size = cfg.level_channels[level], cfg.feature_sizes[level]
            for j in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), out_ch)]
                ch = out_ch
                if size in cfg.attention_resolutions:
                    layers.append(attn(ch))
                if level and j == cfg.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if cfg.resblock_updown
                                  else Upsample(ch, True))
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(
            normalization(ch, groups), nn.SiLU(),
            zero_module(nn.Conv2d(ch, cfg.out_channels, 3, padding=1)),
        )

    # ----------------------------------------------------------------------------------------
    def _check_inputs(self, x: Tensor, timesteps: Tensor | float | int) -> Tensor:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"expected x of shape (B, {cfg.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        factor = 2 ** (len(cfg.channel_mult) - 1)
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(f"H and W must be divisible by {factor}, got {tuple(x.shape[-2:])}")
        t = torch.as_tensor(timesteps, device=x.device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(x.shape[0])
        if t.numel() != x.shape[0]:
            raise ValueError(f"got {t.numel()} timesteps for a batch of {x.shape[0]}")
        return t

    def enable_gradient_checkpointing(self) -> "DenoiserUNet":
        """Recompute each block in the backward pass instead of storing its activations.

        Only the inputs of the encoder, middle and decoder blocks and of the output head are
        kept (the skips are kept anyway); each block runs a second time during ``backward``.
        Costs about one extra forward pass; the ``paper`` preset's activations shrink ~5-10x
        (``benchmarks/gpu.py --cpu-memory``). Outputs and gradients are unchanged (tested to
        1e-6). Active only while gradients are enabled; not stored in checkpoints.
        """
        self.gradient_checkpointing = True
        return self

    def disable_gradient_checkpointing(self) -> "DenoiserUNet":
        """Store activations again (the default); see :meth:`enable_gradient_checkpointing`."""
        self.gradient_checkpointing = False
        return self

    def _checkpointing(self) -> bool:
        return (self.gradient_checkpointing or self.config.use_checkpoint) \
            and torch.is_grad_enabled()

    def _run(self, block: EmbedSequential, h: Tensor, emb: Tensor) -> Tensor:
        if self._checkpointing():
            return checkpoint(block, h, emb, use_reentrant=False)
        return block(h, emb)

    def _embed(self, t: Tensor) -> Tensor:
        emb = timestep_embedding(t, self.config.num_channels)
        return self.time_embed(emb.to(self.time_embed[0].weight.dtype))

    def forward(self, x: Tensor, timesteps: Tensor | float | int) -> Tensor:
        """Predict the noise in ``x`` (DDPM eq. 11 / DiffusionAD eq. 6's eps_theta).

        Parameters
        ----------
        x : Tensor, ``(B, in_channels, H, W)``
            Noisy images x_t; H, W divisible by ``2 ** (len(channel_mult) - 1)``.
        timesteps : Tensor ``(B,)`` long or float (or a scalar, broadcast)
            Diffusion steps t in [0, T-1].

        Returns
        -------
        Tensor, ``(B, out_channels, H, W)``: eps_theta(x_t, t), x's dtype outside autocast.
        """
        emb = self._embed(self._check_inputs(x, timesteps))
        skips = []
        h = x
        for block in self.input_blocks:
            h = self._run(block, h, emb)
            skips.append(h)
        h = self._run(self.middle_block, h, emb)
        for block in self.output_blocks:
            h = self._run(block, cat_channels([h, skips.pop()]), emb)
        if self._checkpointing():
            return checkpoint(self.out, h, use_reentrant=False)
        return self.out(h)

    def encode_features(self, x: Tensor, timesteps: Tensor | float | int,
                        include_middle: bool = False) -> list[Tensor]:
        """The encoder pyramid: the output of each level before its down-sampling.

        Used as an offline feature extractor (DDAD's and GLAD's feature distances).

        Returns
        -------
        list of Tensor
            ``len(channel_mult)`` maps, level i of shape
            ``(B, num_channels * channel_mult[i], H / 2**i, W / 2**i)``; with ``include_middle``
            the middle block's output (same shape as the last level) is appended.
        """
        emb = self._embed(self._check_inputs(x, timesteps))
        feats, h = [], x
        ends = set(self._level_ends)
        for i, block in enumerate(self.input_blocks):
            h = self._run(block, h, emb)
            if i in ends:
                feats.append(h)
        if include_middle:
            feats.append(self._run(self.middle_block, h, emb))
        return feats


__all__ = [
    "DenoiserConfig",
    "DENOISER_PRESETS",
    "denoiser_config",
    "attention_sizes_from_rates",
    "attention_rates_from_sizes",
    "timestep_embedding",
    "ResBlock",
    "AttentionBlock",
    "ATTENTION_BACKENDS",
    "GroupNorm32",
    "DenoiserUNet",
]
