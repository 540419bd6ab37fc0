"""The DDAD module: a denoiser, a feature extractor (and its adapted copy), a schedule.

Paper: Mousakhan, Brox, Tayyub, "Anomaly Detection with Conditioned Denoising Diffusion Models"
(DDAD). Taught in ``notebooks/07_conditioned_denoising``.

* **Training** (Sec. 3.1): the plain DDPM noise loss on normal images (:meth:`DDAD.forward`).
* **Reconstruction** (Sec. 3.2): :func:`dap.methods.ddad.ops.conditioned_reconstruct` with the
  batch-shared, seeded noise (:meth:`DDAD.reconstruct`).
* **Map** (Sec. 3.3): :meth:`DDAD.map_terms` (feature and pixel distances) and
  :meth:`DDAD.anomaly_map` (their blurred combination); image score = max of its centre
  (``score_crop``).
* **After training**: domain adaptation (Sec. 3.4, :func:`dap.methods.ddad.adaptation.adapt`)
  and the batch-independent calibration (:meth:`DDAD.calibrate`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dap.config import from_dict
from dap.diffusion import NoiseSchedule
from dap.features import (DenoiserFeatures, WideResNetFeatures, denoiser_features,
                          feature_distance, missing_weights_message)
from dap.methods.base import (AnomalyMethod, Prediction, Reconstruction, TrainBatch,
                              ValidationSet)
from dap.methods.ddad.adaptation import adapt
from dap.methods.ddad.config import ADAM_EPS, DDADConfig
from dap.methods.ddad.ops import (as_model_images, combine_map, conditioned_reconstruct,
                                  crop_score, per_image_scale, pixel_distance)
from dap.models.denoiser import DenoiserUNet
from dap.synthesis import AnomalySynthesizer


class DDAD(AnomalyMethod):
    """The DDAD detector: a denoiser, a feature extractor (and its adapted copy), a schedule.

    ``forward(batch, generator)`` is the plain noise loss on normal images; ``predict(images)``
    returns the blurred feature + pixel map, the max of its centre as image score and the
    conditioned reconstruction. After training, :meth:`after_training` runs the domain
    adaptation (when ``domain_adaptation_steps`` > 0) and the batch-independent calibration.

    Parameters
    ----------
    config : DDADConfig
    load_weights : read ``extractor_weights`` now (False when a checkpoint will supply them).
    """

    name = "ddad"
    config_class = DDADConfig

    def __init__(self, config: DDADConfig | None = None, load_weights: bool = True) -> None:
        super().__init__()
        self.config = c = config or DDADConfig()
        self.denoiser = DenoiserUNet(c.denoiser)
        self.schedule = NoiseSchedule.from_config(c.diffusion)
        self.synthesizer = AnomalySynthesizer(c.synthesis)
        self.extractor: WideResNetFeatures | None = None
        if c.extractor != "denoiser":
            if load_weights and c.extractor_weights is None:
                raise FileNotFoundError(missing_weights_message(None, c.extractor))
            self.extractor = WideResNetFeatures(c.extractor_weights if load_weights else None,
                                                c.all_levels, c.wrn_base_width, c.extractor)
            self.extractor.requires_grad_(False).eval()
        self.adapted_extractor: nn.Module | None = None
        if c.domain_adaptation_steps > 0:
            self.adapted_extractor = self.new_extractor()
        # s = max f / max p on normal images, per extractor (NaN = not calibrated: per image)
        self.register_buffer("pixel_scale", torch.tensor(float("nan")))
        self.register_buffer("pixel_scale_adapted", torch.tensor(float("nan")))
        self.register_buffer("adapted", torch.tensor(False))

    # -- construction helpers ----------------------------------------------------------------
    @classmethod
    def from_config_dict(cls, d: dict) -> "DDAD":
        # the extractor weights come with the checkpoint's state dict: no file is read
        return cls(from_dict(DDADConfig, d), load_weights=False)

    def param_groups(self, lr: float = 1e-4, lr_segmenter: float | None = None) -> list[dict]:
        """Only the denoiser is trained by the training loop (extractors: :meth:`adapt`).

        Its group carries Adam's coupled decay and eps for this config's loss: the official
        ``weight_decay`` (0.05, for the summed loss) and 1e-8, both divided by
        :attr:`DDADConfig.loss_scale` (3 H W for the mean loss), so Adam takes the official
        steps whatever the reduction. They replace ``TrainConfig.weight_decay``.
        """
        c = self.config
        return [{"params": list(self.denoiser.parameters()), "lr": lr, "name": "denoiser",
                 # Adam(L / k, wd / k, eps / k) = Adam(L, wd, eps), k = loss_scale
                 "weight_decay": c.weight_decay / c.loss_scale, "eps": ADAM_EPS / c.loss_scale}]

    def new_extractor(self) -> nn.Module:
        """A fresh, frozen extractor of the configured kind (the adapted copy starts as one)."""
        c = self.config
        if c.extractor != "denoiser":
            ext: nn.Module = WideResNetFeatures(None, c.all_levels, c.wrn_base_width, c.extractor)
        else:
            ext = DenoiserFeatures(c.denoiser, c.feature_t, c.all_levels)
        return ext.requires_grad_(False).eval()

    @property
    def extractor_name(self) -> str:
        """Which network produced the feature maps (written into benchmark tables)."""
        c = self.config
        if c.extractor != "denoiser":
            name = f"{c.extractor}(ImageNet)" if c.extractor_weights else \
                f"{c.extractor}(random weights)"
            return name if c.wrn_base_width == 64 else f"{name}[width {c.wrn_base_width}]"
        return f"denoiser-encoder(t={c.feature_t})"

    @property
    def uses_adaptation(self) -> bool:
        """Whether :meth:`predict` scores with the adapted extractor now."""
        mode = self.config.use_adaptation
        done = self.adapted_extractor is not None and bool(self.adapted)
        if mode == "require" and not done:
            raise RuntimeError(
                "use_adaptation='require' but domain adaptation has not run on this model: build "
                "it with domain_adaptation_steps > 0 and call method.adapt(train_images) (or "
                "method.after_training(train_images), which the training run calls)")
        return mode != "off" and done

    # -- training ------------------------------------------------------------------------------
    def forward(self, batch: TrainBatch, generator: torch.Generator | None = None
                ) -> dict[str, Tensor]:
        """The DDPM noise loss on normal images (DDAD Sec. 3.1).

        t ~ U[0, T) per sample, x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps (eq. 1), and
        L = ||eps - eps_theta(x_t, t)||^2 per image, its mean over C x H x W
        (``loss_reduction="mean"``) or its sum (``"sum"``, the official code), averaged over
        the batch. :meth:`param_groups` scales Adam's decay and eps to match.
        """
        x = batch.images
        schedule = self.schedule_on(x.device)
        T = self.config.diffusion.num_train_timesteps
        t = torch.randint(0, T, (x.shape[0],), generator=generator, device=x.device)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        eps = self.denoiser(schedule.add_noise(x, noise, t), t)
        # L = mean_b sum_{c,h,w} (eps - eps_theta)^2   (or the mean over b, c, h, w)
        sq = (eps.float() - noise.float()).square()
        loss = sq.sum(dim=(1, 2, 3)).mean() if self.config.loss_reduction == "sum" else sq.mean()
        return {"loss": loss, "loss_noise": loss.detach()}

    # -- inference -----------------------------------------------------------------------------
    @torch.no_grad()
    def reconstruct(self, images: Tensor, generator: torch.Generator | None = None
                    ) -> Reconstruction:
        """The conditioned reconstruction of ``images`` ``(B, 3, H, W)``, target: themselves.

        The noise is shared by the batch and seeded by ``inference_seed`` when no ``generator``
        is given, so an image's reconstruction never depends on its batch. Another weight:
        ``with method.using(w=...)``; another target:
        :func:`dap.methods.ddad.ops.conditioned_reconstruct`.
        """
        c = self.config
        out = conditioned_reconstruct(
            self.denoiser, self.schedule_on(images.device), images, None, c.t_start,
            c.ddim_steps, c.w, c.eta, generator=self.inference_generator(images.device, generator),
            shared_noise=True, clip_sample=c.clip_sample, grid=c.grid)
        return Reconstruction(out.sample)

    def features(self, x: Tensor, adapted: bool = False,
                 levels: tuple[int, ...] | None = None) -> list[Tensor]:
        """Pyramid ``levels`` (default: the map's ``extractor_levels``) of ``x`` ``(B, 3, H, W)``
        in [-1, 1], from the frozen or the adapted extractor."""
        c = self.config
        levels = tuple(c.extractor_levels if levels is None else levels)
        if adapted or self.extractor is not None:
            ext = self.adapted_extractor if adapted else self.extractor
            if ext is None:
                raise RuntimeError("this model has no adapted extractor "
                                   "(domain_adaptation_steps = 0)")
            built = tuple(ext.levels)
            if not set(levels) <= set(built):
                raise ValueError(f"levels {levels} are not all among the extractor's {built}")
            out = ext(x)
            return [out[built.index(i)] for i in levels]
        return denoiser_features(self.denoiser, x, c.feature_t, levels)

    @torch.no_grad()
    def map_terms(self, images: Tensor, reconstruction: Tensor | Reconstruction
                  ) -> dict[str, Tensor]:
        """The two distances DDAD's map adds (Sec. 3.3), each ``(B, H, W)`` float32.

        ``"feature"``: f = sum_l up(1 - cos(F_l(x0), F_l(x))) with the extractor
        :attr:`uses_adaptation` selects (switch with ``method.using(use_adaptation=...)``);
        ``"pixel"``: p = mean_c |x0 - x|. ``reconstruction``: the ``(B, 3, H, W)`` x0 or what
        :meth:`reconstruct` returned.
        """
        rec = getattr(reconstruction, "sample", reconstruction)
        adapted = self.uses_adaptation
        size = images.shape[-2:]
        p = pixel_distance(rec, images)
        f = feature_distance(self.features(rec, adapted), self.features(images, adapted),
                             (int(size[0]), int(size[1])), self.config.feature_pool,
                             self.config.align_corners)
        return {"feature": f, "pixel": p}

    @torch.no_grad()
    def anomaly_map(self, images: Tensor, reconstruction: Tensor | Reconstruction) -> Tensor:
        """DDAD's map (Sec. 3.3), batch-independent: ``(B, H, W)`` float32, score = its max.

            map = blur_sigma(f + v * s * p)   (f, p: :meth:`map_terms`)

        where s = max f / max p is the constant :meth:`calibrate` estimated on normal training
        images, or, before calibration, the same ratio of each image's own maxima (never of
        the batch's, which made the official scores depend on the test batch).
        """
        c = self.config
        terms = self.map_terms(images, reconstruction)
        f, p = terms["feature"], terms["pixel"]
        scale = self.pixel_scale_adapted if self.uses_adaptation else self.pixel_scale
        if torch.isfinite(scale):
            s = scale.to(f.dtype).expand(f.shape[0])
        else:
            s = per_image_scale(f, p)
        return combine_map(f, p, s, c.v, c.smoothing_sigma)

    @torch.no_grad()
    def predict(self, images: Tensor, generator: torch.Generator | None = None) -> Prediction:
        """Anomaly map (B, H, W) >= 0, image score (B,) = the max of the map's central
        ``score_crop`` (:func:`dap.methods.ddad.ops.crop_score`), reconstruction (B, 3, H, W)."""
        rec = self.reconstruct(images, generator=generator).sample
        amap = self.anomaly_map(images, rec)
        return Prediction(amap, crop_score(amap, self.config.score_crop), rec)

    # -- after training: domain adaptation and calibration --------------------------------------
    def adapt(self, images: Tensor, steps: int | None = None, seed: int = 0,
              progress: bool = False) -> dict[str, float]:
        """Domain adaptation (DDAD Sec. 3.4) on normal *training* images: see
        :func:`dap.methods.ddad.adaptation.adapt`."""
        return adapt(self, images, steps, seed, progress)

    @torch.no_grad()
    def calibrate(self, train_images: Tensor, val: ValidationSet | None = None
                  ) -> dict[str, float]:
        """The scoring rule's statistic: :meth:`fit_pixel_scale` on the *training* images
        (``val`` is not used; DDAD needs normal images only)."""
        return self.fit_pixel_scale(train_images)

    @torch.no_grad()
    def fit_pixel_scale(self, images: Tensor, batch_size: int = 16) -> dict[str, float]:
        """Estimate s = max f / max p on normal images, for the frozen (and adapted) extractor.

        images : ``(N, 3, H, W)`` uint8 or float in [-1, 1] — normal *training* images; the first
        ``calibration_images`` are used. Stores ``pixel_scale`` (and ``pixel_scale_adapted``),
        which makes every later map independent of the test batch.
        """
        device = next(self.denoiser.parameters()).device
        images = images[: max(1, self.config.calibration_images)]
        variants = [False] + ([True] if self.adapted_extractor is not None and bool(self.adapted)
                              else [])
        fmax = dict.fromkeys(variants, 0.0)
        pmax = 0.0
        for i in range(0, len(images), batch_size):
            x = as_model_images(images[i:i + batch_size], device)
            rec = self.reconstruct(x).sample
            size = (int(x.shape[-2]), int(x.shape[-1]))
            pmax = max(pmax, float((rec - x).abs().mean(1).max()))
            for adapted in variants:
                f = feature_distance(self.features(rec, adapted), self.features(x, adapted), size,
                                     self.config.feature_pool, self.config.align_corners)
                fmax[adapted] = max(fmax[adapted], float(f.max()))
        out: dict[str, float] = {}
        for adapted in variants:
            # s = max f / max p over the calibration images
            scale = fmax[adapted] / max(pmax, 1e-8)
            (self.pixel_scale_adapted if adapted else self.pixel_scale).fill_(scale)
            out["pixel_scale_adapted" if adapted else "pixel_scale"] = scale
        return out

    def after_training(self, train_images: Tensor, val: ValidationSet | None = None,
                       progress: bool = False) -> dict[str, float]:
        """Domain adaptation (when ``domain_adaptation_steps`` > 0), then :meth:`calibrate`
        (the pixel scale, refitted for the adapted extractor too).

        train_images : ``(N, 3, H, W)`` uint8 or float in [-1, 1], normal *training* images;
        ``val`` is not used (DDAD needs normal images only). Returns their logs.
        """
        was_training = self.training
        self.eval()
        info: dict[str, float] = {}
        if self.config.domain_adaptation_steps > 0:
            info.update(self.adapt(train_images, seed=self.config.inference_seed,
                                   progress=progress))
        info.update(self.calibrate(train_images, val))
        self.train(was_training)
        return info


__all__ = ["DDAD"]
