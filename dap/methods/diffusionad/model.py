"""The DiffusionAD module: a denoiser, a segmenter, a schedule and a synthesizer.

Paper: DiffusionAD, Sec. III. Taught in ``notebooks/06_train_and_evaluate``.

* the **reconstruction** sub-network, a DDPM noise predictor eps_theta (:class:`DenoiserUNet`),
  which turns the input into an anomaly-free x0_g by norm-guided one-step denoising
  (eqs. 6-8, :func:`dap.diffusion.norm_guided`);
* the **segmentation** sub-network (:class:`SegmentationUNet`) on concat(x, x0_g) -> mask.

Both are trained jointly on synthetic anomalies (eq. 12, :mod:`dap.synthesis`) with the losses of
:mod:`dap.methods.diffusionad.ops`. Image score: mean of the top-K (K = 50) mask pixels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dap.diffusion import NoiseSchedule, norm_guided, reconstruct
from dap.methods.base import AnomalyMethod, Prediction, Reconstruction, TrainBatch, top_k_mean
from dap.methods.diffusionad.config import DiffusionADConfig
from dap.methods.diffusionad.ops import joint_noise_loss, mask_loss
from dap.models.denoiser import DenoiserUNet
from dap.models.segmentation import SegmentationUNet
from dap.synthesis import AnomalySynthesizer


class DiffusionAD(AnomalyMethod):
    """The DiffusionAD detector.

    ``forward(batch, generator)`` returns the joint training loss (dict); ``reconstruct(images)``
    the x0 of the configured mode (norm guidance: with ``x0_s`` and ``x0_b`` in ``extras``);
    ``predict(images)`` the anomaly map, the top-K image score and the reconstruction.
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
        5. L_mask = SmoothL1(M_hat, M) + focal_weight * Focal(M_hat, M);  L = L_noise + L_mask.
        """
        c = self.config
        x = batch.images
        b, device = x.shape[0], x.device
        schedule = self.schedule_on(device)
        syn = self.synthesizer(x, foreground=batch.foreground, generator=generator,
                               is_texture=batch.is_texture)
        s_img = self.to_net(syn.image)
        T = c.diffusion.num_train_timesteps
        t_s = torch.randint(0, c.tau, (b,), generator=generator, device=device)
        t_b = torch.randint(c.tau, T, (b,), generator=generator, device=device)
        noise_s = torch.randn(x.shape, generator=generator, device=device)
        noise_b = torch.randn(x.shape, generator=generator, device=device)
        out = norm_guided(self.denoiser, schedule, s_img, t_s, t_b, w=c.w,
                          noise_s=noise_s, noise_b=noise_b, clip_sample=c.clip_sample)
        loss_noise = joint_noise_loss(out.eps_s, noise_s, out.eps_b, noise_b, syn.label == 0,
                                      reduction=c.noise_loss_reduction)
        x0_g = out.x0_g if c.mask_loss_into_denoiser else out.x0_g.detach()
        logits = self.segmenter(torch.cat([s_img, x0_g], dim=1))
        lm = mask_loss(logits, syn.mask, smooth_l1_weight=c.smooth_l1_weight,
                       focal_weight=c.focal_weight, alpha=c.focal_alpha, gamma=c.focal_gamma)
        return {"loss": loss_noise + lm.total, "loss_noise": loss_noise.detach(),
                "loss_focal": lm.focal.detach(), "loss_smooth_l1": lm.smooth_l1.detach()}

    # -- the networks' range (config.input_range) -------------------------------------------------
    def to_net(self, images: Tensor) -> Tensor:
        """[-1, 1] images as the networks see them: unchanged, or (x + 1) / 2 for ``"unit"``."""
        return (images + 1) * 0.5 if self.config.input_range == "unit" else images

    def from_net(self, x: Tensor) -> Tensor:
        """A network-range image back in [-1, 1] units (the inverse of :meth:`to_net`)."""
        return x * 2 - 1 if self.config.input_range == "unit" else x

    # -- inference -----------------------------------------------------------------------------
    @torch.no_grad()
    def reconstruct(self, images: Tensor, generator: torch.Generator | None = None
                    ) -> Reconstruction:
        """The anomaly-free reconstruction of ``images`` ``(B, 3, H, W)`` by the configured mode
        (in [-1, 1] units, whatever ``input_range`` the networks use)."""
        rec = self._reconstruct_net(self.to_net(images), generator)
        return Reconstruction(self.from_net(rec.sample),
                              {k: self.from_net(v) for k, v in rec.extras.items()})

    def _reconstruct_net(self, x: Tensor, generator: torch.Generator | None) -> Reconstruction:
        c = self.config
        schedule = self.schedule_on(x.device)
        generator = self.inference_generator(x.device, generator)
        if c.reconstruction == "norm_guided":
            out = norm_guided(self.denoiser, schedule, x, c.t_s, c.t_b, w=c.w,
                              generator=generator, clip_sample=c.clip_sample)
            return Reconstruction(out.x0_g, {"x0_s": out.x0_s, "x0_b": out.x0_b})
        if c.reconstruction in ("one_step_s", "one_step_b"):
            t = c.t_s if c.reconstruction == "one_step_s" else c.t_b
            return Reconstruction(reconstruct(self.denoiser, schedule, x, t, "one_step",
                                              generator=generator,
                                              clip_sample=c.clip_sample).sample)
        return Reconstruction(reconstruct(self.denoiser, schedule, x, c.iterative_t,
                                          c.reconstruction, num_inference_steps=c.ddim_steps,
                                          generator=generator, clip_sample=c.clip_sample).sample)

    @torch.no_grad()
    def predict(self, images: Tensor, generator: torch.Generator | None = None) -> Prediction:
        """Anomaly map (B, H, W) in [0, 1], top-K image score (B,), reconstruction (B, 3, H, W)."""
        x = self.to_net(images)
        rec = self._reconstruct_net(x, generator).sample
        mask = torch.sigmoid(self.segmenter(torch.cat([x, rec.to(x.dtype)], 1)).float())
        amap = mask[:, 0]
        return Prediction(amap, top_k_mean(amap, self.config.top_k), self.from_net(rec))


__all__ = ["DiffusionAD"]
