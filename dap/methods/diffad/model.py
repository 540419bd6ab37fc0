"""The DiffAD module: autoencoder, latent denoiser, segmenter, schedule and synthesizer.

Paper: DiffAD (Zhang et al., ICCV 2023); the method and its options are described in
:mod:`dap.methods.diffad`, how dap differs from the official code in
:mod:`dap.methods.diffad.official`. Taught in
``notebooks/09_latent_diffusion``.

Training in the shared loop (:func:`dap.engine.train.train`) — the phase design
-------------------------------------------------------------------------------
DiffAD trains its parts one after the other (the autoencoder, then the diffusion model with the
autoencoder frozen, then the segmentation network on reconstructions of the frozen pipeline).
``forward(batch, generator)`` follows the same order and picks the phase from a step counter
kept as a *buffer* (``phase_step``, in the state dict), so a checkpoint resumes in the right
phase and an interrupted run reproduces an uninterrupted one:

==========================================  ==============================================
``phase_step`` in                           trains
==========================================  ==============================================
``[0, ae_steps)``                           autoencoder: L1 + kl_weight * KL (LDM)
``[ae_steps, ae_steps + denoiser_steps)``   latent denoiser: ||eps - f||^2 (or ||z_0 - f||^2)
``[ae_steps + denoiser_steps, ...)``        segmenter: focal loss (runs until training ends)
==========================================  ==============================================

Sequential phases rather than joint training with stop-gradients: each phase then costs only its
own part (the segmenter phase needs the DDIM reconstruction, the costly step, which is useless
while the denoiser is untrained), and the frozen parts are exactly what inference sees. The
counter advances once per ``forward`` in training mode. At the first denoiser step the latents
are normalised to unit variance (LDM's ``scale_by_std``; the ``latent_scale`` buffer). The
training loop's ``steps`` must exceed ``ae_steps + denoiser_steps`` (:attr:`DiffAD.train_steps`
gives the preset's total); validation before the segmenter phase is meaningless, so the
benchmark rows keep the last checkpoint (``select_metric="last"``).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Callable

import torch
from torch import Tensor, nn

from dap.config import ConfigError, replace
from dap.diffusion import NoiseSchedule
from dap.losses import focal_loss, smooth_l1_loss
from dap.methods.base import AnomalyMethod, Prediction, Reconstruction, TrainBatch
from dap.methods.diffad.config import DiffADConfig, SampleCondition
from dap.methods.diffad.ops import (interpolate_latents, noisy_condition, pooled_max_score,
                                    sampling_timesteps)
from dap.methods.diffad.sampler import sample_conditioned
from dap.models.autoencoder import AutoencoderKL, autoencoder_loss
from dap.models.denoiser import DenoiserUNet
from dap.models.segmentation import SegmentationUNet
from dap.synthesis import AnomalySynthesizer

PHASES: tuple[str, ...] = ("autoencoder", "denoiser", "segmenter")
#: the settings :meth:`DiffAD.segmenter_variant` may change (they concern the segmenter only)
SEGMENTER_SETTINGS: tuple[str, ...] = (
    "interpolated_channels", "interpolation_lambda", "segmenter", "segmenter_steps",
    "train_ddim_steps", "focal_weight", "focal_gamma", "focal_alpha", "smooth_l1_weight",
    "score_pool")


class DiffAD(AnomalyMethod):
    """The DiffAD detector: autoencoder, latent denoiser, segmenter, schedule, synthesizer.

    ``forward(batch, generator)`` is the loss of the current training phase (dict with ``loss``
    and ``phase``); ``reconstruct(images)`` returns x_r with the latents and x_inter in
    ``extras``; ``predict(images)`` returns the anomaly map, the pooled-max image score and the
    reconstruction x_r.
    """

    name = "diffad"
    config_class = DiffADConfig

    def __init__(self, config: DiffADConfig | None = None) -> None:
        super().__init__()
        self.config = config or DiffADConfig()
        self.autoencoder = AutoencoderKL(self.config.autoencoder)
        self.denoiser = DenoiserUNet(self.config.denoiser)
        self.segmenter = SegmentationUNet(self.config.segmenter)
        self.schedule = NoiseSchedule.from_config(self.config.diffusion)
        self.synthesizer = AnomalySynthesizer(self.config.synthesis)
        # training steps taken (decides the phase; saved with the weights, so resume works)
        self.register_buffer("phase_step", torch.zeros((), dtype=torch.long))
        # latents are multiplied by this before diffusion (1 / std, fitted once)
        self.register_buffer("latent_scale", torch.ones(()))
        self._perceptual: list[Callable[[Tensor, Tensor], Tensor]] = []

    # -- construction helpers ----------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return int(self.config.autoencoder.image_size)

    @property
    def train_steps(self) -> int:
        """ae_steps + denoiser_steps + segmenter_steps: the ``TrainConfig.steps`` to use."""
        c = self.config
        return c.ae_steps + c.denoiser_steps + c.segmenter_steps

    def param_groups(self, lr: float = 1e-4, lr_segmenter: float | None = None) -> list[dict]:
        return [
            {"params": list(self.autoencoder.parameters()), "lr": lr, "name": "autoencoder"},
            {"params": list(self.denoiser.parameters()), "lr": lr, "name": "denoiser"},
            {"params": list(self.segmenter.parameters()),
             "lr": lr if lr_segmenter is None else lr_segmenter, "name": "segmenter"},
        ]

    def set_perceptual(self, fn: Callable[[Tensor, Tensor], Tensor] | None) -> None:
        """Register a perceptual distance ``fn(x, x_hat) -> scalar`` (e.g. LPIPS) for the
        autoencoder loss, used when ``perceptual_weight > 0``. Not saved with the weights."""
        self._perceptual = [] if fn is None else [fn]

    # -- phases -------------------------------------------------------------------------------
    def phase_of(self, step: int) -> str:
        """The phase that training step ``step`` belongs to."""
        c = self.config
        if step < c.ae_steps:
            return "autoencoder"
        if step < c.ae_steps + c.denoiser_steps:
            return "denoiser"
        return "segmenter"

    @property
    def phase(self) -> str:
        """The phase of the next training step."""
        return self.phase_of(int(self.phase_step))

    def start_phase(self, phase: str) -> None:
        """Jump to the first step of ``phase`` (e.g. to reuse an autoencoder trained elsewhere)."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; phases: {PHASES}")
        c = self.config
        first = {"autoencoder": 0, "denoiser": c.ae_steps,
                 "segmenter": c.ae_steps + c.denoiser_steps}[phase]
        self.phase_step.fill_(first)

    def segmenter_variant(self, **changes: Any) -> "DiffAD":
        """A copy of this model with a *fresh* segmenter built from ``changes``, at the first
        step of the segmenter phase; the autoencoder, denoiser and latent scale are this model's.

        The no-interp ablation without confounding: ``trained.segmenter_variant(
        interpolated_channels=False)`` (a 6-channel segmenter on concat(x_r, x)) and
        ``trained.segmenter_variant()`` (a fresh 9-channel one) train only the segmenter phase on
        reconstructions of the *same* frozen autoencoder and denoiser
        (:func:`dap.analysis.diffad.interpolated_channels_ablation`). ``changes`` may name only
        :data:`SEGMENTER_SETTINGS`; ``interpolated_channels`` sets ``segmenter.in_channels`` to 9
        or 6 unless ``segmenter`` is given. The new segmenter's initial weights come from torch's
        global generator: seed it first for a reproducible variant.
        """
        other = sorted(set(changes) - set(SEGMENTER_SETTINGS))
        if other:
            raise ConfigError(f"DiffAD.segmenter_variant changes the segmenter only; {other} "
                              f"would need other networks (allowed: {list(SEGMENTER_SETTINGS)})")
        if "interpolated_channels" in changes and "segmenter" not in changes:
            changes["segmenter"] = {"in_channels": 9 if changes["interpolated_channels"] else 6}
        config = replace(self.config, **changes)
        segmenter = SegmentationUNet(config.segmenter)
        old, self.segmenter = self.segmenter, nn.Identity()     # not copied: replaced below
        try:
            new = copy.deepcopy(self)
        finally:
            self.segmenter = old
        new.config = config
        new.segmenter = segmenter.to(self.latent_scale.device)
        new.start_phase("segmenter")
        return new

    # -- latents ------------------------------------------------------------------------------
    def encode(self, images: Tensor) -> Tensor:
        """c = scale * mean of q(z | x): the (scaled) latent of ``images`` ``(B, 3, H, W)``."""
        return self.autoencoder.encode(images).mode() * self.latent_scale

    def decode(self, latents: Tensor) -> Tensor:
        """D(z / scale) clamped to [-1, 1]: ``(B, 3, H, W)``."""
        return self.autoencoder.decode(latents / self.latent_scale).clamp(-1.0, 1.0)

    def _fit_latent_scale(self, images: Tensor) -> None:
        """scale = 1 / std(z) on one batch (LDM's scale_by_std), averaged over DDP ranks."""
        with torch.no_grad():
            z = self.autoencoder.encode(images).mode().float()
            std = z.std().reshape(1)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(std)
                std /= torch.distributed.get_world_size()
            self.latent_scale.fill_(float(1.0 / std.clamp(min=1e-8)))

    # -- training -----------------------------------------------------------------------------
    def forward(self, batch: TrainBatch, generator: torch.Generator | None = None
                ) -> dict[str, Tensor]:
        """The loss of one batch of normal images in the current phase (see the module docs).

        * autoencoder: L = mean |x - D(z)| + kl_weight * KL / (3 H W), z ~ q(z | x);
        * denoiser: z0 = E(x) (scaled), t ~ U[0, T), z_t by eq. 1; c = E(S) of a synthetic
          anomalous S (or z0 itself), noised to t_c (:func:`noisy_condition`) or clean;
          L = ||eps - eps_theta(concat(z_t, c), t)||^2;
        * segmenter: S, M from :mod:`dap.synthesis`; x_r, x_inter from the frozen pipeline;
          L = focal(seg(concat(x_r, x_inter, S)), M).

        The phase counter advances by one per call in training mode.
        """
        step = int(self.phase_step)
        phase = self.phase_of(step)
        if phase == "autoencoder":
            out = self._autoencoder_loss(batch.images, generator)
        elif phase == "denoiser":
            if self.config.scale_latents and step == self.config.ae_steps:
                self._fit_latent_scale(batch.images)
            out = self._denoiser_loss(batch, generator)
        else:
            out = self._segmenter_loss(batch, generator)
        out["phase"] = torch.tensor(float(PHASES.index(phase)))
        if self.training:
            self.phase_step += 1
        return out

    def _autoencoder_loss(self, x: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
        c = self.config
        x_hat, posterior = self.autoencoder(x, generator=generator, sample_posterior=True)
        perceptual = None
        if c.perceptual_weight > 0:
            if not self._perceptual:
                raise RuntimeError("perceptual_weight > 0 but no perceptual distance is set; "
                                   "call method.set_perceptual(lpips_fn) first")
            perceptual = self._perceptual[0](x, x_hat)
        loss = autoencoder_loss(x, x_hat, posterior, c.kl_weight, c.ae_reconstruction,
                                perceptual, c.perceptual_weight)
        return {"loss": loss.total, "loss_rec": loss.reconstruction.detach(),
                "loss_kl": loss.kl.detach()}

    def _denoiser_loss(self, batch: TrainBatch, generator: torch.Generator | None
                       ) -> dict[str, Tensor]:
        c = self.config
        x = batch.images
        schedule = self.schedule_on(x.device)
        T = c.diffusion.num_train_timesteps
        with torch.no_grad():
            z0 = self.encode(x)
            if c.condition_source == "synthetic":
                syn = self.synthesizer(x, foreground=batch.foreground, generator=generator,
                                       is_texture=batch.is_texture)
                cond = self.encode(syn.image)
            else:
                cond = z0
        b = z0.shape[0]
        t = torch.randint(0, T, (b,), generator=generator, device=x.device)
        noise = torch.randn(z0.shape, generator=generator, device=x.device)
        z_t = schedule.add_noise(z0, noise, t)
        if c.noisy_condition:
            t_c = t if c.condition_timestep == "same" else \
                torch.randint(0, T, (b,), generator=generator, device=x.device)
            cond_noise = torch.randn(z0.shape, generator=generator, device=x.device)
            cond = noisy_condition(schedule, cond, cond_noise, t_c)
        out = self.denoiser(torch.cat([z_t, cond], dim=1), t).float()
        target = noise if c.prediction_type == "epsilon" else z0
        loss = (out - target).square().mean()
        return {"loss": loss, "loss_noise": loss.detach()}

    def _segmenter_loss(self, batch: TrainBatch, generator: torch.Generator | None
                        ) -> dict[str, Tensor]:
        c = self.config
        syn = self.synthesizer(batch.images, foreground=batch.foreground, generator=generator,
                               is_texture=batch.is_texture)
        with torch.no_grad():
            parts = self.reconstruct_parts(syn.image, generator=generator, shared_noise=False,
                                           num_steps=c.train_ddim_steps or c.ddim_steps)
        logits = self.segmenter(self._segmenter_input(syn.image, parts)).float()
        mask = syn.mask.float()
        loss_focal = focal_loss(logits, mask, alpha=c.focal_alpha, gamma=c.focal_gamma,
                                from_logits=True)
        loss = c.focal_weight * loss_focal
        out = {"loss_focal": loss_focal.detach()}
        if c.smooth_l1_weight > 0:
            loss_sl1 = smooth_l1_loss(logits, mask, from_logits=True)
            loss = loss + c.smooth_l1_weight * loss_sl1
            out["loss_smooth_l1"] = loss_sl1.detach()
        return {"loss": loss, **out}

    # -- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def sample_latents(self, condition: Tensor, generator: torch.Generator | None = None,
                       num_steps: int | None = None, shared_noise: bool = True,
                       sample_condition: SampleCondition | None = None) -> Tensor:
        """z_r: DDIM from z_T ~ N(0, I) to z_0, conditioned on ``condition`` ``(B, 4, h, w)``,
        on the config's grid, eta and condition (``sample_condition`` overrides the latter).

        The condition modes (``clean``, ``noisy_fixed``, ``noisy_per_step``) and
        ``shared_noise`` are described in :func:`~dap.methods.diffad.sampler.sample_conditioned`.
        """
        c = self.config
        steps = sampling_timesteps(c.diffusion.num_train_timesteps, num_steps or c.ddim_steps,
                                   c.ddim_grid)
        return sample_conditioned(
            self.denoiser, self.schedule_on(condition.device), condition, steps,
            mode=sample_condition or c.sample_condition, condition_t=c.sample_condition_t,
            generator=self.inference_generator(condition.device, generator),
            shared_noise=shared_noise, eta=c.ddim_eta, prediction_type=c.prediction_type)

    @torch.no_grad()
    def reconstruct_parts(self, images: Tensor, generator: torch.Generator | None = None,
                          num_steps: int | None = None, shared_noise: bool = True
                          ) -> Reconstruction:
        """DiffAD's reconstruction of ``images`` ``(B, 3, H, W)`` and every intermediate.

        ``sample`` is x_r = D(z_r) in [-1, 1]; ``extras`` holds ``condition`` c, ``latent`` z_r,
        ``interpolated_latent`` z_inter (scaled latents, ``(B, 4, h, w)``) and ``interpolated``
        x_inter = D(z_inter) (an image in [-1, 1]). ``num_steps`` and ``shared_noise`` as in
        :meth:`sample_latents` (the segmenter phase trains on fewer steps, one noise per image).
        """
        cond = self.encode(images)
        z_r = self.sample_latents(cond, generator, num_steps, shared_noise)
        z_i = interpolate_latents(cond, z_r, self.config.interpolation_lambda)
        return Reconstruction(self.decode(z_r), {
            "condition": cond, "latent": z_r, "interpolated_latent": z_i,
            "interpolated": self.decode(z_i)})

    @torch.no_grad()
    def reconstruct(self, images: Tensor, generator: torch.Generator | None = None
                    ) -> Reconstruction:
        """x_r with the inference settings (``ddim_steps``, one noise shared by the batch) and
        the intermediates of :meth:`reconstruct_parts`."""
        return self.reconstruct_parts(images, generator)

    def _segmenter_input(self, images: Tensor, parts: Reconstruction) -> Tensor:
        """concat(x_r, x_inter, x) (9 channels) or concat(x_r, x) without interpolated channels."""
        chans = [parts.sample]
        if self.config.interpolated_channels:
            chans.append(parts.extras["interpolated"])
        chans.append(images)
        return torch.cat([ch.to(images.dtype) for ch in chans], dim=1)

    @torch.no_grad()
    def predict(self, images: Tensor, generator: torch.Generator | None = None) -> Prediction:
        """Anomaly map (B, H, W) in [0, 1], pooled-max image score (B,), reconstruction x_r."""
        if int(self.phase_step) < self.config.ae_steps + self.config.denoiser_steps:
            warnings.warn(f"DiffAD: the segmenter has not been trained yet (phase {self.phase!r}, "
                          f"step {int(self.phase_step)}); its anomaly maps are meaningless",
                          stacklevel=2)
        return self.predict_from(images, self.reconstruct(images, generator))

    @torch.no_grad()
    def predict_from(self, images: Tensor, parts: Reconstruction) -> Prediction:
        """The segmenter's prediction from a reconstruction already made by :meth:`reconstruct`
        (of this model, or of one with the same autoencoder and denoiser): anomaly map
        ``(B, H, W)`` in [0, 1], pooled-max score ``(B,)``, x_r. Segmenters that share one
        reconstruction pipeline (:meth:`segmenter_variant`) are compared on the same x_r."""
        logits = self.segmenter(self._segmenter_input(images, parts))
        amap = torch.sigmoid(logits.float())[:, 0]
        return Prediction(amap, pooled_max_score(amap, self.config.score_pool), parts.sample)


__all__ = ["DiffAD", "PHASES", "SEGMENTER_SETTINGS"]
