"""A small KL autoencoder: images <-> latents, the first stage of latent diffusion.

DiffAD (X. Zhang et al., "Unsupervised Surface Anomaly Detection with Diffusion Probabilistic
Model", ICCV 2023) runs its diffusion model in the latent space of a KL-regularised autoencoder,
the first stage of Latent Diffusion (Rombach et al., "High-Resolution Image Synthesis with Latent
Diffusion Models", CVPR 2022, Sec. 3.1 and App. G). Taught in ``notebooks/09_latent_diffusion``.

The network (``paper`` preset: 256 x 256 -> 32 x 32 x 4, down-sampling factor f = 8, as LDM's
``kl-f8``)::

    encoder: conv3x3 -> per level: num_res_blocks ResBlocks (+ a stride-2 conv, not after the
             last level) -> ResBlock, attention, ResBlock -> GN, SiLU, conv3x3 -> 2 * z channels
             = (mean, log-variance) of the diagonal Gaussian q(z | x)
    decoder: conv3x3 -> ResBlock, attention, ResBlock -> per level (deep -> shallow):
             num_res_blocks + 1 ResBlocks (+ nearest x2 and conv3x3) -> GN, SiLU, conv3x3 -> RGB

``f = 2 ** (len(channel_mult) - 1)``. At 64 x 64 (profile ``ci``) f = 8 would leave an 8 x 8
latent, one latent pixel per 8 x 8 patch: too coarse to localise small defects, so the small
presets use f = 4 (64 -> 16 x 16 x 4, 128 -> 32 x 32 x 4, the paper's latent grid).

Loss (LDM's ``LPIPSWithDiscriminator`` without the discriminator and, by default, without LPIPS):
LDM sums over pixels, ``sum |x - x_hat| + kl_weight * KL`` with kl_weight = 1e-6; dap divides both
terms by the number of image elements, so the reconstruction term is a mean and ``kl_weight``
keeps LDM's meaning (see :func:`autoencoder_loss`). The official LDM first stage adds a 1x1
``quant_conv`` after the encoder and a ``post_quant_conv`` before the decoder; they are linear maps
that the neighbouring convolutions can absorb, and are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from dap.config import ConfigError, replace
from dap.models.denoiser import AttentionBlock, normalization

#: log-variance clamp of LDM's ``DiagonalGaussianDistribution``
LOGVAR_RANGE = (-30.0, 20.0)


@dataclass
class AutoencoderConfig:
    """Hyper-parameters of :class:`AutoencoderKL`.

    Attributes
    ----------
    image_size : int
        Side of the square input images; must be divisible by the down-sampling factor.
    in_channels : int
        3 for RGB.
    latent_channels : int
        Channels of z (LDM: 4).
    num_channels : int
        Width of the first level; level i has ``num_channels * channel_mult[i]`` channels.
    channel_mult : tuple of int
        One multiplier per level; ``len(channel_mult) - 1`` down-samplings, factor
        ``f = 2 ** (len(channel_mult) - 1)`` (LDM kl-f8: 1, 2, 4, 4).
    num_res_blocks : int
        ResBlocks per encoder level (the decoder has one more).
    mid_attention : bool
        Self-attention between the two middle ResBlocks (LDM: yes).
    num_groups : int
        GroupNorm groups (``gcd(num_groups, channels)`` per norm, as the denoiser).
    """

    image_size: int = 256
    in_channels: int = 3
    latent_channels: int = 4
    num_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    mid_attention: bool = True
    num_groups: int = 32

    def __post_init__(self) -> None:
        for key in ("image_size", "in_channels", "latent_channels", "num_channels",
                    "num_res_blocks", "num_groups"):
            if getattr(self, key) < 1:
                raise ConfigError(f"AutoencoderConfig.{key} must be >= 1, got {getattr(self, key)}")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ConfigError("AutoencoderConfig.channel_mult must be non-empty positive integers, "
                              f"got {self.channel_mult}")
        if self.image_size % self.downsample_factor:
            raise ConfigError(
                f"AutoencoderConfig.image_size={self.image_size} must be divisible by the "
                f"down-sampling factor 2^(len(channel_mult)-1) = {self.downsample_factor}")

    @property
    def downsample_factor(self) -> int:
        """f = 2 ** (number of down-samplings)."""
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def latent_size(self) -> int:
        """Side of the latent grid: ``image_size // f``."""
        return self.image_size // self.downsample_factor

    @property
    def level_channels(self) -> tuple[int, ...]:
        return tuple(self.num_channels * m for m in self.channel_mult)


AUTOENCODER_PRESETS: dict[str, AutoencoderConfig] = {
    # LDM's kl-f8 first stage: 256 x 256 x 3 -> 32 x 32 x 4 (about 84 M parameters).
    "paper": AutoencoderConfig(),
    # ci: 64 x 64 -> 16 x 16 x 4 (f = 4), 0.68 M parameters; narrow at full resolution (where
    # the FLOPs are): a batch of 8 trains in about 0.25 s on one CPU thread.
    "ci": AutoencoderConfig(image_size=64, num_channels=16, channel_mult=(1, 2, 4),
                            num_res_blocks=1, num_groups=8),
    # cpu: 128 x 128 -> 32 x 32 x 4 (f = 4): the paper's latent grid at half the resolution.
    "cpu": AutoencoderConfig(image_size=128, num_channels=32, channel_mult=(1, 2, 4),
                             num_res_blocks=1, num_groups=8),
}


def autoencoder_config(preset: str = "paper", **overrides: Any) -> AutoencoderConfig:
    """A validated copy of preset ``preset`` (``paper``, ``ci``, ``cpu``) with ``overrides``."""
    if preset not in AUTOENCODER_PRESETS:
        raise ConfigError(f"unknown autoencoder preset {preset!r}; "
                          f"valid: {sorted(AUTOENCODER_PRESETS)}")
    return replace(AUTOENCODER_PRESETS[preset], **overrides)


# --------------------------------------------------------------------------------------------
# The posterior q(z | x) and its KL to N(0, I)
# --------------------------------------------------------------------------------------------
def kl_divergence(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per sample, summed over (C, H, W): shape ``(B,)``.

    Closed form for diagonal Gaussians (Kingma & Welling, "Auto-Encoding Variational Bayes",
    App. B)::

        KL = 0.5 * sum(mean^2 + exp(logvar) - 1 - logvar)
    """
    dtype = torch.promote_types(mean.dtype, torch.float32)
    mean, logvar = mean.to(dtype), logvar.to(dtype)
    # KL = 0.5 sum(mu^2 + sigma^2 - 1 - log sigma^2)
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).flatten(1).sum(dim=1)


class DiagonalGaussian(NamedTuple):
    """q(z | x) = N(mean, exp(logvar)), each ``(B, latent_channels, h, w)``."""

    mean: Tensor
    logvar: Tensor

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """z = mean + exp(logvar / 2) * eps (the reparameterisation trick)."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device,
                          dtype=self.mean.dtype)
        return self.mean + (0.5 * self.logvar).exp() * eps

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """KL to N(0, I) per sample, ``(B,)`` (see :func:`kl_divergence`)."""
        return kl_divergence(self.mean, self.logvar)


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------
class AEResBlock(nn.Module):
    """h = conv(SiLU(GN(conv(SiLU(GN(x)))))); out = skip(x) + h (no time embedding)."""

    def __init__(self, cin: int, cout: int, num_groups: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            normalization(cin, num_groups), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
            normalization(cout, num_groups), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1),
        )
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.block(x)


def _middle(ch: int, cfg: AutoencoderConfig) -> nn.Sequential:
    layers: list[nn.Module] = [AEResBlock(ch, ch, cfg.num_groups)]
    if cfg.mid_attention:
        layers.append(AttentionBlock(ch, 1, -1, cfg.num_groups))
    layers.append(AEResBlock(ch, ch, cfg.num_groups))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """x ``(B, 3, H, W)`` -> (mean, logvar) ``(B, 2 * latent_channels, H / f, W / f)``."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        chans = cfg.level_channels
        layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, chans[0], 3, padding=1)]
        ch = chans[0]
        for level, out_ch in enumerate(chans):
            for _ in range(cfg.num_res_blocks):
                layers.append(AEResBlock(ch, out_ch, cfg.num_groups))
                ch = out_ch
            if level != len(chans) - 1:
                layers.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        layers += [_middle(ch, cfg), normalization(ch, cfg.num_groups), nn.SiLU(),
                   nn.Conv2d(ch, 2 * cfg.latent_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """z ``(B, latent_channels, h, w)`` -> x_hat ``(B, 3, h * f, w * f)`` (unbounded)."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        chans = cfg.level_channels
        ch = chans[-1]
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, ch, 3, padding=1),
                                   _middle(ch, cfg)]
        for level in reversed(range(len(chans))):
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(AEResBlock(ch, chans[level], cfg.num_groups))
                ch = chans[level]
            if level:
                layers += [nn.Upsample(scale_factor=2.0, mode="nearest"),
                           nn.Conv2d(ch, ch, 3, padding=1)]
        layers += [normalization(ch, cfg.num_groups), nn.SiLU(),
                   nn.Conv2d(ch, cfg.in_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class AutoencoderKL(nn.Module):
    """The KL autoencoder: :meth:`encode` -> :class:`DiagonalGaussian`, :meth:`decode` -> image.

    Parameters
    ----------
    config : AutoencoderConfig
        See :func:`autoencoder_config` (``paper``: f = 8; ``ci``, ``cpu``: f = 4).
    """

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """q(z | x) for images ``(B, 3, H, W)`` in [-1, 1]; H, W divisible by f."""
        cfg = self.config
        f = cfg.downsample_factor
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"expected x of shape (B, {cfg.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        if x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(f"H and W must be divisible by f = {f}, got {tuple(x.shape[-2:])}")
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar.clamp(*LOGVAR_RANGE))

    def decode(self, z: Tensor) -> Tensor:
        """x_hat ``(B, 3, h f, w f)`` from latents ``(B, latent_channels, h, w)`` (not clamped)."""
        if z.ndim != 4 or z.shape[1] != self.config.latent_channels:
            raise ValueError(f"expected z of shape (B, {self.config.latent_channels}, h, w), "
                             f"got {tuple(z.shape)}")
        return self.decoder(z)

    def forward(self, x: Tensor, generator: torch.Generator | None = None,
                sample_posterior: bool = True) -> tuple[Tensor, DiagonalGaussian]:
        """(x_hat, q(z | x)): decode a posterior sample (training) or its mean."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior


class AutoencoderLoss(NamedTuple):
    """The first-stage loss and its parts (scalar tensors)."""

    total: Tensor
    reconstruction: Tensor
    kl: Tensor
    perceptual: Tensor


def autoencoder_loss(x: Tensor, x_hat: Tensor, posterior: DiagonalGaussian,
                     kl_weight: float = 1e-6, reconstruction: Literal["l1", "l2"] = "l1",
                     perceptual: Tensor | None = None, perceptual_weight: float = 0.0
                     ) -> AutoencoderLoss:
    """L = rec + kl_weight * mean_b(KL_b) / (C H W) + perceptual_weight * perceptual.

    LDM's first-stage loss is ``sum_pixels |x - x_hat| + kl_weight * KL`` per sample (plus LPIPS and
    a patch discriminator); dividing it by the number of image elements C H W gives this form with
    the same ``kl_weight`` (LDM: 1e-6). ``rec`` is the mean L1 (LDM) or mean squared error.

    Parameters
    ----------
    x, x_hat : Tensor ``(B, 3, H, W)``, the images in [-1, 1] and their reconstructions.
    posterior : DiagonalGaussian, q(z | x).
    perceptual : Tensor, optional, a scalar perceptual distance (LPIPS) between x and x_hat,
        computed by the caller; required when ``perceptual_weight > 0``.
    """
    diff = x_hat.float() - x.float()
    # rec = mean |x - x_hat|  (or mean (x - x_hat)^2)
    rec = diff.abs().mean() if reconstruction == "l1" else diff.square().mean()
    kl = posterior.kl().mean()
    per_element = x[0].numel()
    total = rec + kl_weight * kl / per_element
    if perceptual_weight > 0:
        if perceptual is None:
            raise ValueError("perceptual_weight > 0 needs a perceptual distance")
        total = total + perceptual_weight * perceptual
    zero = torch.zeros((), device=x.device)
    return AutoencoderLoss(total, rec, kl, perceptual if perceptual is not None else zero)


__all__ = [
    "AutoencoderConfig",
    "AUTOENCODER_PRESETS",
    "autoencoder_config",
    "AutoencoderKL",
    "DiagonalGaussian",
    "kl_divergence",
    "autoencoder_loss",
    "AutoencoderLoss",
    "LOGVAR_RANGE",
]
