"""DiffusionAD: norm-guided one-step denoising diffusion for anomaly detection.

Paper: Zhang, Wang, Zeng, Wu, Jiang, "DiffusionAD: Norm-guided One-step Denoising Diffusion for
Anomaly Detection". Taught in ``notebooks/06_train_and_evaluate``.

Two sub-networks trained jointly on synthetic anomalies (eq. 12, :mod:`dap.synthesis`):

* the **reconstruction** sub-network, a DDPM noise predictor eps_theta (:class:`DenoiserUNet`),
  which turns the input into an anomaly-free x0_g by norm-guided one-step denoising
  (eqs. 6-8, :func:`dap.diffusion.norm_guided`);
* the **segmentation** sub-network (:class:`SegmentationUNet`) on concat(x, x0_g) -> mask.

Losses (Sec. III-E): L_noise on normal samples only, L_mask = SmoothL1 + gamma * Focal, summed.
Image score: mean of the top-K (K = 50) pixels of the predicted mask.

Differences to the official code are options, each documented on :class:`DiffusionADConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from dap.config import ConfigError, DiffusionConfig, replace
from dap.diffusion import NoiseSchedule, norm_guided, reconstruct
from dap.losses import focal_loss, masked_noise_loss, smooth_l1_loss
from dap.methods.base import AnomalyMethod, Prediction, TrainBatch, top_k_mean
from dap.models.denoiser import DenoiserConfig, DenoiserUNet, denoiser_config
from dap.models.segmentation import SegmentationUNet, SegmenterConfig, segmenter_config
from dap.synthesis import AnomalySynthesizer, SynthesisConfig

Reconstruction = Literal["norm_guided", "one_step_s", "one_step_b", "ddpm", "ddim"]
RECONSTRUCTIONS: tuple[str, ...] = ("norm_guided", "one_step_s", "one_step_b", "ddpm", "ddim")


@dataclass
class DiffusionADConfig:
    """Everything that defines a DiffusionAD model (paper values as defaults).

    Attributes
    ----------
    denoiser, segmenter, diffusion, synthesis
        The sub-network, schedule and synthesis configs.
    tau : int
        Split of the training steps: t_s ~ U[0, tau), t_b ~ U[tau, T) (paper: 300).
    t_s, t_b, w : inference steps and guidance weight (paper: 200, 400, 1).
    top_k : pixels averaged into the image score (paper: 50).
    focal_weight, focal_gamma, focal_alpha, smooth_l1_weight
        L_mask = smooth_l1_weight * SmoothL1 + focal_weight * Focal(gamma, alpha)
        (official code: 1, 5, gamma 4, alpha 0.5).
    mask_loss_into_denoiser : bool
        Whether L_mask back-propagates into the denoiser through x0_g (official: True).
    clip_sample : bool
        Clamp one-step predictions to [-1, 1] (the official code clamps).
    reconstruction : str
        ``norm_guided`` (the paper), or an ablation: ``one_step_s`` / ``one_step_b`` (eq. 6 from
        t_s or t_b), ``ddpm`` (eq. 3 iterated from ``iterative_t``), ``ddim`` (``ddim_steps`` steps
        from ``iterative_t``). Training always uses norm guidance.
    """

    denoiser: DenoiserConfig = field(default_factory=lambda: denoiser_config("paper"))
    segmenter: SegmenterConfig = field(default_factory=lambda: segmenter_config("paper"))
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    tau: int = 300
    t_s: int = 200
    t_b: int = 400
    w: float = 1.0
    top_k: int = 50
    focal_weight: float = 5.0
    focal_gamma: float = 4.0
    focal_alpha: float = 0.5
    smooth_l1_weight: float = 1.0
    mask_loss_into_denoiser: bool = True
    clip_sample: bool = True
    reconstruction: Reconstruction = "norm_guided"
    iterative_t: int = 400
    ddim_steps: int = 30
    inference_seed: int = 0

    def __post_init__(self) -> None:
        T = self.diffusion.num_train_timesteps
        if not 0 < self.tau < T:
            raise ConfigError(f"DiffusionADConfig.tau must lie in (0, {T}), got {self.tau}")
        if not 0 <= self.t_s < self.t_b < T:
            raise ConfigError(f"DiffusionADConfig needs 0 <= t_s < t_b < {T}, "
                              f"got t_s={self.t_s}, t_b={self.t_b}")
        if self.segmenter.in_channels != 2 * self.denoiser.in_channels:
            raise ConfigError("the segmenter sees concat(x, x0_g): segmenter.in_channels must be "
                              f"2 * denoiser.in_channels = {2 * self.denoiser.in_channels}")


def diffusionad_config(preset: str = "paper", **overrides: Any) -> DiffusionADConfig:
    """A DiffusionAD config for ``paper`` (256 px), ``cpu`` (128 px) or ``ci`` (64 px).

    The small presets shrink the networks (and the top-K to keep the same image fraction);
    everything else keeps the paper's values.
    """
    if preset not in ("paper", "cpu", "ci"):
        raise ConfigError(f"unknown DiffusionAD preset {preset!r}; valid: ['ci', 'cpu', 'paper']")
    size = denoiser_config(preset).image_size
    base = DiffusionADConfig(
        denoiser=denoiser_config(preset),
        segmenter=segmenter_config(preset),
        top_k=max(1, round(50 * (size / 256) ** 2)) if preset != "paper" else 50,
    )
    return replace(base, **overrides) if overrides else base


class DiffusionAD(AnomalyMethod):
    """The DiffusionAD detector: a denoiser, a segmenter, a schedule and a synthesizer.

    ``forward(batch, generator)`` returns the joint training loss (dict); ``predict(images)``
    returns the anomaly map, the top-K image score and the reconstruction.
    """

    name = "diffusionad"
    config_class = DiffusionADConfig

    def __init__(self, config: DiffusionADConfig | None = None) -> None:
        super().__init__()
        self.config = config or DiffusionADConfig()
        self.denoiser = DenoiserUNet(self.config.denoiser)
        self.segmenter = SegmentationUNet(self.config.segmenter)
        self.schedule = NoiseSchedule.from_config(self.config.diffusion)
        self.synthesizer = AnomalySynthesizer(self.config.synthesis)

    # -- construction helpers ----------------------------------------------------------------
    def _schedule(self, device: torch.device) -> NoiseSchedule:
        if self.schedule.device != device:
            self.schedule.to(device)
        return self.schedule

    def param_groups(self, lr: float = 1e-4, lr_segmenter: float | None = None) -> list[dict]:
        return [
            {"params": list(self.denoiser.parameters()), "lr": lr, "name": "denoiser"},
            {"params": list(self.segmenter.parameters()),
             "lr": lr if lr_segmenter is None else lr_segmenter, "name": "segmenter"},
        ]

    # -- training ------------------------------------------------------------------------------
    def forward(self, batch: TrainBatch, generator: torch.Generator | None = None
                ) -> dict[str, Tensor]:
        """The joint loss of one batch of normal images (DiffusionAD Sec. III-E).

        1. synthesise anomalies (eq. 12): S, M, y;
        2. t_s ~ U[0, tau), t_b ~ U[tau, T) per sample; noise both scales (eq. 1);
        3. L_noise = mean over normal samples of (||eps_s - eps_theta(x_ts)||^2 +
           ||eps_b - eps_theta(x_tb)||^2) / 2 — zero, not NaN, without normal samples;
        4. x0_g by norm guidance (eqs. 7-8); M_hat = seg(concat(S, x0_g));
        5. L_mask = SmoothL1(M_hat, M) + gamma * Focal(M_hat, M);  L = L_noise + L_mask.
        """
        c = self.config
        x = batch.images
        b, device = x.shape[0], x.device
        schedule = self._schedule(device)
        syn = self.synthesizer(x, foreground=batch.foreground, generator=generator,
                               is_texture=batch.is_texture)
        T = c.diffusion.num_train_timesteps
        t_s = torch.randint(0, c.tau, (b,), generator=generator, device=device)
        t_b = torch.randint(c.tau, T, (b,), generator=generator, device=device)
        noise_s = torch.randn(x.shape, generator=generator, device=device)
        noise_b = torch.randn(x.shape, generator=generator, device=device)
        out = norm_guided(self.denoiser, schedule, syn.image, t_s, t_b, w=c.w,
                          noise_s=noise_s, noise_b=noise_b, clip_sample=c.clip_sample)
        normal = syn.label == 0
        loss_noise = 0.5 * (masked_noise_loss(out.eps_s, noise_s, normal)
                            + masked_noise_loss(out.eps_b, noise_b, normal))
        x0_g = out.x0_g if c.mask_loss_into_denoiser else out.x0_g.detach()
        logits = self.segmenter(torch.cat([syn.image, x0_g], dim=1))
        probs = torch.sigmoid(logits.float())
        loss_smooth = smooth_l1_loss(probs, syn.mask.float())
        loss_focal = focal_loss(logits.float(), syn.mask.float(), alpha=c.focal_alpha,
                                gamma=c.focal_gamma, from_logits=True)
        loss_mask = c.smooth_l1_weight * loss_smooth + c.focal_weight * loss_focal
        return {"loss": loss_noise + loss_mask, "loss_noise": loss_noise.detach(),
                "loss_focal": loss_focal.detach(), "loss_smooth_l1": loss_smooth.detach()}

    # -- inference -----------------------------------------------------------------------------
    @torch.no_grad()
    def reconstruct(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The anomaly-free reconstruction of ``images`` by the configured mode, ``(B, 3, H, W)``."""
        c = self.config
        schedule = self._schedule(images.device)
        if generator is None:
            generator = torch.Generator(images.device).manual_seed(c.inference_seed)
        if c.reconstruction == "norm_guided":
            return norm_guided(self.denoiser, schedule, images, c.t_s, c.t_b, w=c.w,
                               generator=generator, clip_sample=c.clip_sample).x0_g
        if c.reconstruction in ("one_step_s", "one_step_b"):
            t = c.t_s if c.reconstruction == "one_step_s" else c.t_b
            return reconstruct(self.denoiser, schedule, images, t, "one_step", generator=generator,
                               clip_sample=c.clip_sample).sample
        return reconstruct(self.denoiser, schedule, images, c.iterative_t, c.reconstruction,
                           num_inference_steps=c.ddim_steps, generator=generator,
                           clip_sample=c.clip_sample).sample

    @torch.no_grad()
    def predict(self, images: Tensor, generator: torch.Generator | None = None) -> Prediction:
        """Anomaly map (B, H, W) in [0, 1], top-K image score (B,), reconstruction (B, 3, H, W)."""
        rec = self.reconstruct(images, generator)
        mask = torch.sigmoid(self.segmenter(torch.cat([images, rec.to(images.dtype)], 1)).float())
        amap = mask[:, 0]
        return Prediction(amap, top_k_mean(amap, self.config.top_k), rec)
