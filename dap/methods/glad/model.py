"""The GLAD module: an ATP-trained denoiser, adaptive DDIM stops, SAFF and the anomaly map.

Paper: GLAD (Yao et al., ECCV 2024); the ideas and dap's differences are in the package
docstring (:mod:`dap.methods.glad`). Taught in ``notebooks/08_adaptive_diffusion``.

Anomaly map: the feature discrepancy between the input and the final reconstruction plus the
pixel distance mean_c |x - x_rec|, each divided by its mean over normal validation pixels (1
before calibration), weighted, summed and Gaussian-smoothed. Image score: the mean of the
``top_k`` largest map values (``top_k = 1`` is the maximum).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dap.config import ConfigError
from dap.diffusion import NoiseSchedule, ddim_timesteps
from dap.features import denoiser_features
from dap.methods.base import (AnomalyMethod, Prediction, Reconstruction, TrainBatch,
                              ValidationSet, gaussian_blur, top_k_mean)
from dap.methods.glad.adaptive import adaptive_denoise, leading_timesteps
from dap.methods.glad.calibration import (calibration_summary, normal_validation_images,
                                          stop_thresholds)
from dap.methods.glad.config import GLADConfig
from dap.methods.glad.ops import (atp_blend, atp_noise_target, patch_discrepancy, saff_blend,
                                  saff_mask, sigmoid_saff_mask)
from dap.models.denoiser import DenoiserUNet
from dap.synthesis import AnomalySynthesizer


class GLAD(AnomalyMethod):
    """GLAD in dap: an ATP-trained denoiser, adaptive DDIM stops and SAFF.

    ``forward(batch, generator)`` is the ATP (or plain) noise loss; ``predict(images)`` the
    anomaly map, the top-K score and the reconstruction; :meth:`reconstruct` also returns the
    stop steps, the input's x0 and the per-step scores in ``extras``. Call :meth:`calibrate`
    with validation images first (:meth:`after_training` does, on the validation set).
    """

    name = "glad"
    config_class = GLADConfig
    extractor_name = "denoiser-encoder(t=0)"

    def __init__(self, config: GLADConfig | None = None) -> None:
        super().__init__()
        self.config = config or GLADConfig()
        self.denoiser = DenoiserUNet(self.config.denoiser)
        self.schedule = NoiseSchedule.from_config(self.config.diffusion)
        self.synthesizer = AnomalySynthesizer(self.config.synthesis)
        steps = self.timesteps
        # per-step thresholds and mean patch discrepancies of normal validation images (NaN =
        # not calibrated), the timesteps they were made for, and the mean feature / pixel term
        # of normal validation pixels (the anomaly map's normalisation)
        self.register_buffer("thresholds", torch.full((len(steps),), float("nan")))
        self.register_buffer("patch_means", torch.full((len(steps),), float("nan")))
        self.register_buffer("calibrated_timesteps", torch.tensor(steps, dtype=torch.long))
        self.register_buffer("map_scale", torch.ones(2))
        self._warned = False

    @property
    def timesteps(self) -> list[int]:
        """The descending DDIM timesteps below ``t_start`` (``timestep_spacing``: ``even`` starts
        at t_start itself, ``leading`` is the official grid below it)."""
        c = self.config
        if c.timestep_spacing == "leading":
            return leading_timesteps(c.t_start, c.num_inference_steps)
        return ddim_timesteps(c.t_start, c.num_inference_steps)

    def _denoise(self, images: Tensor, discrepancy, thresholds: Tensor | None, fuse,
                 after_stop: str, generator: torch.Generator | None = None):
        """:func:`~dap.methods.glad.adaptive.adaptive_denoise` with this model's settings."""
        c = self.config
        return adaptive_denoise(self.denoiser, self.schedule_on(images.device), images,
                                self.timesteps, discrepancy, thresholds, c.min_step, fuse,
                                after_stop, generator=generator, clip_sample=c.clip_sample,
                                start_t=c.t_start, test_first_step=c.stop_at_first_step)

    # -- training (ATP) ------------------------------------------------------------------------
    def forward(self, batch: TrainBatch, generator: torch.Generator | None = None
                ) -> dict[str, Tensor]:
        """The noise loss of one batch of normal images N.

        ATP: S = synthesis(N); t ~ U[0, T); x_blend = (t/T) S + (1 - t/T) N;
        x_t = sqrt(abar_t) x_blend + sqrt(1 - abar_t) eps; target eps* whose implied x0 is N.
        Plain (``atp=False``): x_t from N and target eps (DDPM). Loss: MSE over all samples.
        """
        c = self.config
        n = batch.images
        b, device = n.shape[0], n.device
        schedule = self.schedule_on(device)
        T = c.diffusion.num_train_timesteps
        if c.atp:
            syn = self.synthesizer(n, foreground=batch.foreground, generator=generator,
                                   is_texture=batch.is_texture)
        t = torch.randint(0, T, (b,), generator=generator, device=device)
        noise = torch.randn(n.shape, generator=generator, device=device)
        if c.atp:
            x_t = schedule.add_noise(atp_blend(syn.image, n, t, T), noise, t)
            target = atp_noise_target(schedule, x_t, n, t)
        else:
            x_t, target = schedule.add_noise(n, noise, t), noise
        loss = F.mse_loss(self.denoiser(x_t, t).float(), target.float())
        out = {"loss": loss, "loss_noise": loss.detach()}
        if c.atp:
            out["anomalous_fraction"] = syn.label.float().mean()
        return out

    # -- features and discrepancy --------------------------------------------------------------
    def features(self, images: Tensor) -> Tensor:
        """Patch features ``(B, C, s, s)``: the denoiser's encoder levels at t = 0, each
        L2-normalised per patch and resampled to ``feature_size``, then concatenated."""
        c = self.config
        out = []
        for f in denoiser_features(self.denoiser, images, 0, c.feature_levels):
            f = F.normalize(f.float(), dim=1)
            if f.shape[-1] > c.feature_size:
                f = F.adaptive_avg_pool2d(f, c.feature_size)
            elif f.shape[-1] < c.feature_size:
                f = F.interpolate(f, size=c.feature_size, mode="bilinear", align_corners=False)
            out.append(f)
        return torch.cat(out, dim=1)

    def discrepancy(self, query: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
        """D = :func:`~dap.methods.glad.ops.patch_discrepancy` of the two images' features
        ``(B, s, s)`` and its top-10 mean ``(B,)``."""
        f = self.features(torch.cat([query, reference]))
        d = patch_discrepancy(f[: len(query)], f[len(query):])
        return d, top_k_mean(d, self.config.discrepancy_top_k)

    # -- inference -------------------------------------------------------------------------------
    @property
    def calibrated(self) -> bool:
        """Whether thresholds exist for every step up to and including the first t <= min_step."""
        steps = self.timesteps
        k_min = next((k for k, t in enumerate(steps) if t <= self.config.min_step), len(steps) - 1)
        return (len(self.thresholds) == len(steps)
                and self.calibrated_timesteps.tolist() == steps
                and bool(torch.isfinite(self.thresholds[: k_min + 1]).all())
                and bool(torch.isfinite(self.patch_means[: k_min + 1]).all()))

    def _thresholds(self) -> Tensor | None:
        if self.calibrated:
            return self.thresholds
        if torch.isfinite(self.thresholds).any() and \
                self.calibrated_timesteps.tolist() != self.timesteps:
            raise ConfigError("GLAD's thresholds were calibrated for timesteps "
                              f"{self.calibrated_timesteps.tolist()}, not {self.timesteps}; "
                              "call method.fit_thresholds(val_images) again")
        if not self._warned and (self.config.adaptive or self.config.saff):
            warnings.warn("GLAD is not calibrated: every sample stops at min_step and SAFF "
                          "masks are min-max normalised per image (saff_mask='calibrated'). Call "
                          "method.fit_thresholds(val_images) with validation images.", stacklevel=3)
            self._warned = True
        return None

    @torch.no_grad()
    def reconstruct(self, images: Tensor, generator: torch.Generator | None = None
                    ) -> Reconstruction:
        """The adaptive (or, with ``adaptive=False``, fixed-step) reconstruction
        (:func:`~dap.methods.glad.adaptive.adaptive_denoise`).

        ``sample`` ``(B, 3, H, W)``; ``extras``: ``stop_step`` ``(B,)`` (the DDIM timestep each
        image stopped at), ``input_x0`` ``(B, 3, H, W)`` (x0_i at the stop) and ``scores``
        ``(B, K)`` (the discrepancy score at each of :attr:`timesteps`, NaN after the stop).
        """
        c = self.config
        generator = self.inference_generator(images.device, generator)
        thr = self._thresholds()
        stop_thr = thr if c.adaptive and thr is not None else None
        sigma = c.smoothing_sigma if c.saff_blur else 0.0

        def fuse(x0_r: Tensor, x0_i: Tensor, d: Tensor, k: int, passed: Tensor) -> Tensor:
            if c.saff_mask == "sigmoid":
                # official: sigmoid(D) where the score passed; x0_i whole at a min-step stop
                m = sigmoid_saff_mask(d, images.shape[-1], sigma, c.smoothing_truncate)
                m = m * passed.reshape(-1, 1, 1, 1).to(m.dtype)
            else:
                lo, hi = (float("nan"),) * 2 if thr is None else (self.patch_means[k], thr[k])
                m = saff_mask(d, lo, hi, images.shape[-1], sigma, c.smoothing_truncate)
            return saff_blend(x0_r, x0_i, m.to(x0_r.dtype))

        out = self._denoise(images, self.discrepancy, stop_thr, fuse if c.saff else None,
                            c.after_stop, generator)
        return Reconstruction(out.reconstruction, {"stop_step": out.stop_step,
                                                   "input_x0": out.input_x0,
                                                   "scores": out.scores})

    def map_terms(self, images: Tensor, reconstruction: Tensor) -> dict[str, Tensor]:
        """The two raw anomaly-map terms ``(B, H, W)``: ``feature``, the upsampled feature
        discrepancy of the input against the reconstruction, and ``pixel``, mean_c |x - x_rec|."""
        d, _ = self.discrepancy(images, reconstruction)
        feat = F.interpolate(d[:, None], size=images.shape[-2:], mode="bilinear",
                             align_corners=False)[:, 0]
        return {"feature": feat, "pixel": (images - reconstruction).abs().mean(dim=1).float()}

    def anomaly_map(self, images: Tensor, reconstruction: Tensor) -> Tensor:
        """(w_f feature / s_f + w_p pixel / s_p), Gaussian-smoothed: ``(B, H, W)``."""
        c = self.config
        terms = self.map_terms(images, reconstruction)
        s_f, s_p = self.map_scale
        amap = c.feature_weight * terms["feature"] / s_f + c.pixel_weight * terms["pixel"] / s_p
        return gaussian_blur(amap, c.smoothing_sigma, truncate=c.smoothing_truncate)

    @torch.no_grad()
    def predict(self, images: Tensor, generator: torch.Generator | None = None) -> Prediction:
        """Anomaly map ``(B, H, W)``, top-K score ``(B,)``, reconstruction ``(B, 3, H, W)``."""
        rec = self.reconstruct(images, generator).sample
        amap = self.anomaly_map(images, rec)
        return Prediction(amap, top_k_mean(amap, self.config.top_k), rec)

    # -- calibration on the validation split ---------------------------------------------------
    @torch.no_grad()
    def calibrate(self, train_images: Tensor, val: ValidationSet | None = None
                  ) -> dict[str, Any] | None:
        """The scoring rule's statistics: :meth:`fit_thresholds` on the *validation* set ``val``
        (its images and labels; the set training selects on). The training images are not
        used. Returns the calibration summary, or None (with the usual not-calibrated warning
        later) when no validation set is given.
        """
        if val is None:
            return None
        return self.fit_thresholds(val.image, val.label)

    @torch.no_grad()
    def fit_thresholds(self, val_images: Tensor, val_labels: Tensor | None = None,
                       batch_size: int = 16) -> dict[str, Any]:
        """Set the per-step thresholds and the map normalisation from *validation* images.

        val_images : ``(N, 3, H, W)`` in [-1, 1], the validation split (normal images, possibly
            with synthetic anomalies); val_labels : ``(N,)``, 1 = synthetic anomaly (ignored
            here), or None when all are normal. Only normal images are used
            (:func:`~dap.methods.glad.calibration.normal_validation_images`):

        1. run every normal image to ``min_step`` without early stops, recording the
           discrepancy score s_k at each step k; rho_k = the median over images, mu_k = the
           mean patch discrepancy (SAFF's lower level);
        2. threshold_k = lambda rho_k, with lambda the ``threshold_quantile`` quantile of each
           image's max_k s_k / rho_k over the steps where a stop is tested (after the first,
           or from the first with ``stop_at_first_step``; before min_step): that fraction of
           normal images never stops early
           (:func:`~dap.methods.glad.calibration.stop_thresholds`);
        3. predict them with those thresholds; the mean feature and pixel terms over their
           pixels divide the two anomaly-map terms from then on.

        Returns a JSON-able summary (counts, thresholds, scales, stop steps).
        """
        normal = normal_validation_images(val_images, val_labels)
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        c = self.config
        steps = self.timesteps
        self.thresholds = torch.full((len(steps),), float("nan"), device=device)
        self.patch_means = torch.full((len(steps),), float("nan"), device=device)
        self.calibrated_timesteps = torch.tensor(steps, dtype=torch.long, device=device)
        self.map_scale = torch.ones(2, device=device)
        scores, means = [], []
        for i in range(0, len(normal), batch_size):
            step_means: list[Tensor] = []      # one call per step while every sample runs

            def discrepancy(x0_i: Tensor, x0_r: Tensor) -> tuple[Tensor, Tensor]:
                d, score = self.discrepancy(x0_i, x0_r)
                step_means.append(d.flatten(1).mean(1))
                return d, score

            # the same eps0 as predict() draws for the same batch
            out = self._denoise(normal[i:i + batch_size].to(device), discrepancy, None, None,
                                "freeze", self.inference_generator(device))
            scores.append(out.scores)
            means.append(torch.stack(step_means, dim=1))                  # (n, K_seen)
        lam, seen, thresholds = stop_thresholds(torch.cat(scores), steps, c.min_step,
                                                c.threshold_quantile,
                                                first=0 if c.stop_at_first_step else 1)
        self.thresholds[seen] = thresholds
        self.patch_means[seen] = torch.cat(means).mean(dim=0)
        feat_sum = pix_sum = 0.0
        stops = []
        for i in range(0, len(normal), batch_size):
            x = normal[i:i + batch_size].to(device)
            rec = self.reconstruct(x)
            terms = self.map_terms(x, rec.sample)
            feat_sum += float(terms["feature"].mean()) * len(x)
            pix_sum += float(terms["pixel"].mean()) * len(x)
            stops += rec.extras["stop_step"].tolist()
        n = len(normal)
        self.map_scale = torch.tensor([max(feat_sum / n, 1e-8), max(pix_sum / n, 1e-8)],
                                      device=device)
        self.train(was_training)
        return calibration_summary(n, c.threshold_quantile, lam, steps, self.thresholds,
                                   self.patch_means, self.map_scale, stops)


__all__ = ["GLAD"]
