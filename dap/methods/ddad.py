"""DDAD: anomaly detection with conditioned denoising diffusion models.

Paper: Mousakhan, Brox, Tayyub, "Anomaly Detection with Conditioned Denoising Diffusion Models"
(DDAD). Taught in ``notebooks/07_conditioned_denoising``.

* **Training** (Sec. 3.1): a plain DDPM noise predictor on normal images only,
  L = ||eps - eps_theta(x_t, t)||^2, t ~ U[0, T). No synthetic anomalies, no segmenter.
* **Conditioned denoising** (Sec. 3.2, :func:`conditioned_reconstruct`): noise the input to
  t' = 250, then take 10 DDIM steps whose noise estimates are pulled towards the target y (the
  input itself) by :func:`dap.diffusion.conditioned_guidance` with weight w = 2.
* **Anomaly map** (Sec. 3.3, :meth:`DDAD.anomaly_maps`): feature distance (1 - cosine, 3 x 3
  patches, two pyramid levels, upsampled and summed) plus v * s * pixel distance (channel-mean
  |x0 - x|), Gaussian blur, image score = max.
* **Domain adaptation** (Sec. 3.4, :meth:`DDAD.adapt`): fine-tune a copy of the feature
  extractor so that features of conditioned reconstructions of normal images match those of
  their targets, with a distillation term to the frozen extractor (weight lambda).

Where dap differs from the official code (each documented on :class:`DDADConfig`):

1. **Batch-independent scores.** The official s = max f / max p is taken over the *test batch*,
   so an image's score depends on what it was batched with. dap uses a constant estimated on
   normal training images (:meth:`DDAD.calibrate`) and, until calibrated, per-image maxima. The
   noise of the reconstruction is shared by all images of a batch ("common random numbers"),
   so batch 1 and batch 16 give the same scores.
2. **Offline feature extractor.** The default extractor is the trained denoiser's own encoder at
   t = 0 (no download). The paper's ImageNet WideResNet-50-2 is available when its torchvision
   weights file is at hand (``extractor="wide_resnet50_2"``, :mod:`dap.features`).
3. **Noise loss** is the mean (not the sum) of squared errors: the same minimiser, and Adam is
   insensitive to the constant factor 3HW.
4. **Trajectory.** :func:`dap.diffusion.ddim_timesteps` ``(250, 10)`` = 250, 225, ..., 25, then
   x_0: 10 network evaluations, as in the official code.

The official configuration's names map as ``test_trajectoy_steps`` -> ``t_start``, ``skip`` ->
``t_start / ddim_steps``, ``eta`` -> ``eta``, ``w`` -> ``w``, ``v`` -> ``v``, ``DLlambda`` ->
``da_lambda``, ``DA_epochs`` -> ``domain_adaptation_steps`` (counted in steps here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dap.config import ConfigError, DiffusionConfig, from_dict, replace
from dap.diffusion import NoiseSchedule, Reconstruction, conditioned_guidance, ddim_timesteps
from dap.diffusion.sampling import NoiseModel
from dap.features import DenoiserFeatures, WideResNetFeatures, denoiser_features, feature_distance
from dap.methods.base import AnomalyMethod, Prediction, TrainBatch, gaussian_blur
from dap.models.denoiser import DenoiserConfig, DenoiserUNet, denoiser_config
from dap.synthesis import AnomalySynthesizer, SynthesisConfig

Extractor = Literal["denoiser", "wide_resnet50_2"]
Adaptation = Literal["auto", "require", "off"]


# --------------------------------------------------------------------------------------------
# Conditioned denoising (DDAD Sec. 3.2)
# --------------------------------------------------------------------------------------------
def _noise(shape: torch.Size, like: Tensor, generator: torch.Generator | None,
           shared: bool) -> Tensor:
    """Standard normal noise of ``shape``; with ``shared`` one draw ``(1, ...)`` for the batch."""
    draw = (1, *shape[1:]) if shared else shape
    z = torch.randn(draw, generator=generator, device=like.device, dtype=like.dtype)
    return z.expand(shape) if shared else z


def conditioned_reconstruct(
    model: NoiseModel,
    schedule: NoiseSchedule,
    x: Tensor,
    y: Tensor | None = None,
    t_start: int = 250,
    num_inference_steps: int = 10,
    w: float = 2.0,
    eta: float = 1.0,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    shared_noise: bool = False,
    clip_sample: bool = False,
) -> Reconstruction:
    """DDAD's conditioned DDIM trajectory: x noised to t', denoised while pulled towards y.

    For each step t -> t_prev of :func:`ddim_timesteps` ``(t_start, num_inference_steps)``::

        eps     = eps_theta(x_t, t)
        eps_hat = eps - sqrt(1 - abar_t) w (y_t - x_t),  y_t = sqrt(abar_t) y + sqrt(1 - abar_t) eps
        x0_t    = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)
        x_prev  = sqrt(abar_prev) x0_t + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z

    (DDIM eq. 12 with eps_hat; sigma from ``eta``, 0 at the last step to x_0.)

    Parameters
    ----------
    model : callable ``(x_t, t) -> eps``
    schedule : NoiseSchedule
    x : Tensor ``(B, C, H, W)`` in [-1, 1], the image to reconstruct
    y : Tensor, optional, the target (default: ``x``, as at test time)
    t_start, num_inference_steps : t' and the number of DDIM steps (DDAD: 250 and 10)
    w : conditioning weight (DDAD: 2; 0 is plain DDIM)
    eta : DDIM stochasticity (the official code: 1; 0 is deterministic)
    noise : Tensor, optional, the forward noise (drawn from ``generator`` when omitted)
    shared_noise : bool
        Draw every noise tensor once, ``(1, C, H, W)``, for the whole batch: an image's
        reconstruction then does not depend on its batch (DDAD in dap uses this).
    clip_sample : clamp every x0 estimate to [-1, 1]

    Returns
    -------
    Reconstruction
        ``sample`` (B, C, H, W), the starting ``noisy`` x_t', ``num_model_evals``.
    """
    y = x if y is None else y
    b = x.shape[0]
    if noise is None:
        noise = _noise(x.shape, x, generator, shared_noise)
    # x_t' = sqrt(abar_t') x + sqrt(1 - abar_t') eps   (eq. 1)
    x_t = schedule.add_noise(x, noise.expand_as(x), t_start)
    steps = ddim_timesteps(t_start, num_inference_steps)
    sample = x_t
    for i, step in enumerate(steps):
        prev = steps[i + 1] if i + 1 < len(steps) else -1
        ts = torch.full((b,), step, dtype=torch.long, device=x.device)
        eps = model(sample, ts)
        eps_hat = conditioned_guidance(schedule, sample, eps.to(sample.dtype), y, ts, w)
        z = _noise(x.shape, x, generator, shared_noise) if eta > 0 and prev >= 0 else None
        sample = schedule.ddim_step(eps_hat, ts, prev, sample, eta=eta if z is not None else 0.0,
                                    noise=z, clip_sample=clip_sample).prev_sample
    return Reconstruction(sample, x_t, len(steps))


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------
@dataclass
class DDADConfig:
    """Everything that defines a DDAD model (paper values as defaults).

    Attributes
    ----------
    denoiser, diffusion
        The noise predictor (paper: guided-diffusion U-Net, base 64 channels, ~33 M parameters)
        and its schedule (T = 1000, linear 1e-4 -> 0.02).
    synthesis
        Only for the *validation* set of synthetic anomalies that model selection uses
        (:func:`dap.evaluate.synthetic_validation_set`); DDAD trains on normal images only.
    t_start, ddim_steps, w, eta
        Conditioned denoising: noise to t' = 250, 10 DDIM steps, weight 2, eta 1 (the official
        code's eta; the paper does not give it). eta = 0 makes the trajectory deterministic.
    clip_sample : clamp x0 estimates to [-1, 1] (the official code does not).
    extractor : ``"denoiser"`` (default: the trained denoiser's encoder, offline) or
        ``"wide_resnet50_2"`` (the paper's ImageNet backbone; needs ``extractor_weights``).
    extractor_weights : path of torchvision's ``wide_resnet50_2-95faca4d.pth`` (read once, with
        ``weights_only=True``; the weights then live in the method's checkpoints).
    extractor_levels : pyramid levels compared (1, 2) = WideResNet layer2 and layer3 (the
        paper), or the denoiser's 2nd and 3rd encoder resolutions.
    feature_t : the step the denoiser encoder is told when used as extractor (0 = clean image).
    feature_pool : side of the mean-pooled feature patches (3).
    wrn_base_width : 64 for the real WideResNet; smaller only for tests.
    v : weight of the pixel distance (1 on MVTec in the paper).
    blur_sigma : Gaussian blur of the map; None = 4 * image_size / 256 (the paper's 4 at 256 px,
        the same physical smoothing at other sizes: 1 at 64 px).
    domain_adaptation_steps : optimiser steps of :meth:`DDAD.adapt` run by
        :meth:`DDAD.after_training` (0: no domain adaptation; a copy of the extractor exists
        only when > 0).
    da_lambda, da_lr, da_batch_size : distillation weight (0.1 MVTec, 0.01 VisA), AdamW learning
        rate (1e-4) and batch of the adaptation.
    use_adaptation : ``"auto"`` scores with the adapted extractor once adaptation has run,
        ``"off"`` always with the frozen one, ``"require"`` refuses to score without it.
    calibration_images : normal images :meth:`DDAD.calibrate` estimates s = max f / max p on.
    inference_seed : seed of the reconstruction noise at prediction time.
    """

    denoiser: DenoiserConfig = field(
        default_factory=lambda: denoiser_config("paper", num_channels=64))
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    t_start: int = 250
    ddim_steps: int = 10
    w: float = 2.0
    eta: float = 1.0
    clip_sample: bool = False
    extractor: Extractor = "denoiser"
    extractor_weights: str | None = None
    extractor_levels: tuple[int, ...] = (1, 2)
    feature_t: int = 0
    feature_pool: int = 3
    wrn_base_width: int = 64
    v: float = 1.0
    blur_sigma: float | None = None
    domain_adaptation_steps: int = 0
    da_lambda: float = 0.1
    da_lr: float = 1e-4
    da_batch_size: int = 16
    use_adaptation: Adaptation = "auto"
    calibration_images: int = 64
    inference_seed: int = 0

    def __post_init__(self) -> None:
        T = self.diffusion.num_train_timesteps
        if not 0 < self.t_start < T:
            raise ConfigError(f"DDADConfig.t_start must lie in (0, {T}), got {self.t_start}")
        if self.ddim_steps < 1:
            raise ConfigError(f"DDADConfig.ddim_steps must be >= 1, got {self.ddim_steps}")
        if self.w < 0:
            raise ConfigError(f"DDADConfig.w must be >= 0, got {self.w}")
        if not 0.0 <= self.eta <= 1.0:
            raise ConfigError(f"DDADConfig.eta must lie in [0, 1], got {self.eta}")
        if not 0 <= self.feature_t < T:
            raise ConfigError(f"DDADConfig.feature_t must lie in [0, {T}), got {self.feature_t}")
        n_levels = 4 if self.extractor == "wide_resnet50_2" else len(self.denoiser.channel_mult)
        levels = self.extractor_levels
        if not levels or min(levels) < 0 or max(levels) >= n_levels or \
                len(set(levels)) != len(levels):
            raise ConfigError(f"DDADConfig.extractor_levels must be distinct levels in "
                              f"0..{n_levels - 1} for extractor {self.extractor!r}, got {levels}")
        if self.feature_pool < 1 or self.feature_pool % 2 == 0:
            raise ConfigError("DDADConfig.feature_pool must be odd and >= 1, got "
                              f"{self.feature_pool}")
        if self.wrn_base_width < 1:
            raise ConfigError("DDADConfig.wrn_base_width must be >= 1")
        if self.v < 0:
            raise ConfigError(f"DDADConfig.v must be >= 0, got {self.v}")
        if self.blur_sigma is not None and self.blur_sigma < 0:
            raise ConfigError(f"DDADConfig.blur_sigma must be >= 0 or None, got {self.blur_sigma}")
        for key in ("domain_adaptation_steps", "calibration_images"):
            if getattr(self, key) < 0:
                raise ConfigError(f"DDADConfig.{key} must be >= 0, got {getattr(self, key)}")
        if self.da_batch_size < 1 or self.da_lr <= 0 or self.da_lambda < 0:
            raise ConfigError("DDADConfig needs da_batch_size >= 1, da_lr > 0, da_lambda >= 0")

    @property
    def sigma(self) -> float:
        """The blur actually used: ``blur_sigma``, or 4 * image_size / 256."""
        if self.blur_sigma is not None:
            return self.blur_sigma
        return 4.0 * self.denoiser.image_size / 256.0


def ddad_config(preset: str = "paper", **overrides: Any) -> DDADConfig:
    """A DDAD config for ``paper`` (256 px, base 64 channels), ``cpu`` (128 px) or ``ci`` (64 px).

    The small presets take dap's small denoisers (:func:`denoiser_config`) and a smaller
    adaptation batch; everything else keeps the paper's values.
    """
    if preset not in ("paper", "cpu", "ci"):
        raise ConfigError(f"unknown DDAD preset {preset!r}; valid: ['ci', 'cpu', 'paper']")
    den = denoiser_config(preset, num_channels=64) if preset == "paper" else \
        denoiser_config(preset)
    base = DDADConfig(denoiser=den, da_batch_size={"paper": 16, "cpu": 8, "ci": 4}[preset],
                      calibration_images={"paper": 64, "cpu": 32, "ci": 16}[preset])
    return replace(base, **overrides) if overrides else base


# --------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------
class DDAD(AnomalyMethod):
    """The DDAD detector: a denoiser, a feature extractor (and its adapted copy), a schedule.

    ``forward(batch, generator)`` is the plain noise loss on normal images; ``predict(images)``
    returns the blurred feature + pixel map, its max as image score and the conditioned
    reconstruction. After training, :meth:`after_training` runs the domain adaptation (when
    ``domain_adaptation_steps`` > 0) and the batch-independent calibration.

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
        if c.extractor == "wide_resnet50_2":
            if load_weights and c.extractor_weights is None:
                from dap.features import _missing_weights_message

                raise FileNotFoundError(_missing_weights_message(None))
            self.extractor = WideResNetFeatures(c.extractor_weights if load_weights else None,
                                                c.extractor_levels, c.wrn_base_width)
            self.extractor.requires_grad_(False).eval()
        self.adapted_extractor: nn.Module | None = None
        if c.domain_adaptation_steps > 0:
            self.adapted_extractor = self._new_extractor()
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
        """Only the denoiser is trained by the training loop (extractors: :meth:`adapt`)."""
        return [{"params": list(self.denoiser.parameters()), "lr": lr, "name": "denoiser"}]

    def _new_extractor(self) -> nn.Module:
        c = self.config
        if c.extractor == "wide_resnet50_2":
            ext: nn.Module = WideResNetFeatures(None, c.extractor_levels, c.wrn_base_width)
        else:
            ext = DenoiserFeatures(c.denoiser, c.feature_t, c.extractor_levels)
        return ext.requires_grad_(False).eval()

    def _schedule(self, device: torch.device) -> NoiseSchedule:
        if self.schedule.device != device:
            self.schedule.to(device)
        return self.schedule

    @property
    def extractor_name(self) -> str:
        """Which network produced the feature maps (written into benchmark tables)."""
        c = self.config
        if c.extractor == "wide_resnet50_2":
            name = "wide_resnet50_2(ImageNet)" if c.extractor_weights else \
                "wide_resnet50_2(random weights)"
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
                "method.after_training(train_data), which dap.experiment.train_run calls)")
        return mode != "off" and done

    # -- training ------------------------------------------------------------------------------
    def forward(self, batch: TrainBatch, generator: torch.Generator | None = None
                ) -> dict[str, Tensor]:
        """The DDPM noise loss on normal images (DDAD Sec. 3.1).

        t ~ U[0, T) per sample, x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps (eq. 1),
        L = mean ||eps - eps_theta(x_t, t)||^2 (the official code sums over pixels instead).
        """
        x = batch.images
        schedule = self._schedule(x.device)
        T = self.config.diffusion.num_train_timesteps
        t = torch.randint(0, T, (x.shape[0],), generator=generator, device=x.device)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        eps = self.denoiser(schedule.add_noise(x, noise, t), t)
        loss = F.mse_loss(eps.float(), noise.float())
        return {"loss": loss, "loss_noise": loss.detach()}

    # -- inference -----------------------------------------------------------------------------
    @torch.no_grad()
    def reconstruct(self, images: Tensor, target: Tensor | None = None,
                    generator: torch.Generator | None = None, w: float | None = None
                    ) -> Tensor:
        """The conditioned reconstruction of ``images`` (target: the images themselves).

        The noise is shared by the batch and seeded by ``inference_seed`` when no ``generator``
        is given, so an image's reconstruction never depends on its batch. Returns
        ``(B, 3, H, W)``.
        """
        c = self.config
        if generator is None:
            generator = torch.Generator(images.device).manual_seed(c.inference_seed)
        return conditioned_reconstruct(
            self.denoiser, self._schedule(images.device), images, target, c.t_start,
            c.ddim_steps, c.w if w is None else w, c.eta, generator=generator, shared_noise=True,
            clip_sample=c.clip_sample).sample

    def features(self, x: Tensor, adapted: bool = False) -> list[Tensor]:
        """The compared pyramid levels of ``x`` ``(B, 3, H, W)`` in [-1, 1]: frozen or adapted."""
        c = self.config
        if adapted:
            if self.adapted_extractor is None:
                raise RuntimeError("this model has no adapted extractor "
                                   "(domain_adaptation_steps = 0)")
            return self.adapted_extractor(x)
        if self.extractor is not None:
            return self.extractor(x)
        return denoiser_features(self.denoiser, x, c.feature_t, c.extractor_levels)

    @torch.no_grad()
    def anomaly_maps(self, images: Tensor, reconstruction: Tensor, adapted: bool | None = None
                     ) -> dict[str, Tensor]:
        """DDAD's map (Sec. 3.3), batch-independent. All maps ``(B, H, W)`` float32.

        p = mean_c |x0 - x|;  f = sum_l up(1 - cos(F_l(x0), F_l(x)));
        map = blur_sigma(f + v * s * p);  score = max(map),

        where s = max f / max p is the constant :meth:`calibrate` estimated on normal training
        images, or, before calibration, the same ratio of each image's own maxima (never of
        the batch's, which made the official scores depend on the test batch).
        """
        c = self.config
        adapted = self.uses_adaptation if adapted is None else adapted
        size = images.shape[-2:]
        p = (reconstruction.float() - images.float()).abs().mean(1)
        f = feature_distance(self.features(reconstruction, adapted), self.features(images, adapted),
                             (int(size[0]), int(size[1])), c.feature_pool)
        scale = self.pixel_scale_adapted if adapted else self.pixel_scale
        if torch.isfinite(scale):
            s = scale.to(f.dtype).expand(f.shape[0])
        else:
            s = f.amax(dim=(1, 2)) / p.amax(dim=(1, 2)).clamp_min(1e-8)
        combined = f + c.v * s[:, None, None] * p
        amap = gaussian_blur(combined, c.sigma)
        return {"map": amap, "pixel": p, "feature": f, "score": amap.amax(dim=(1, 2))}

    @torch.no_grad()
    def predict(self, images: Tensor, generator: torch.Generator | None = None) -> Prediction:
        """Anomaly map (B, H, W) >= 0, max image score (B,), reconstruction (B, 3, H, W)."""
        rec = self.reconstruct(images, generator=generator)
        out = self.anomaly_maps(images, rec)
        return Prediction(out["map"], out["score"], rec)

    # -- after training: domain adaptation and calibration --------------------------------------
    @staticmethod
    def _as_images(images: Tensor, device: torch.device) -> Tensor:
        """uint8 ``[0, 255]`` or float ``[-1, 1]`` images -> float32 [-1, 1] on ``device``."""
        x = images.to(device)
        return x.float() / 127.5 - 1.0 if x.dtype == torch.uint8 else x.float()

    def adapt(self, images: Tensor, steps: int | None = None, seed: int = 0,
              progress: bool = False) -> dict[str, float]:
        """Domain adaptation (DDAD Sec. 3.4): fine-tune the extractor copy on normal images.

        The copy starts from the frozen extractor; each AdamW step takes a batch y of normal
        training images, reconstructs it conditioned on itself (no gradient) and minimises

            L = mean f_A(x0, y) + lambda * mean f(A(y), F(y)),

        where f is the map's feature distance, A the copy and F the frozen extractor: the copy
        learns to see the reconstructions' domain as the inputs', without drifting from F.
        BatchNorm statistics stay frozen. The denoiser and F are not changed.

        Parameters
        ----------
        images : ``(N, 3, H, W)`` uint8 or float in [-1, 1], *training* images (never test)
        steps : optimiser steps (default ``domain_adaptation_steps``). A model built with
            ``domain_adaptation_steps = 0`` gets its extractor copy here, and its config then
            records ``steps``.
        seed : seed of the batch order and of the reconstruction noise

        Returns
        -------
        dict: ``da_steps``, ``da_loss_first``, ``da_loss_last``.
        """
        from dap.progress import progress_bar

        c = self.config
        steps = c.domain_adaptation_steps if steps is None else int(steps)
        if steps < 1:
            raise ConfigError(f"domain adaptation needs steps >= 1, got {steps} (pass steps= or "
                              "build the model with domain_adaptation_steps > 0)")
        if self.adapted_extractor is None:
            # a model built without adaptation gets its copy now; the config records it, so
            # checkpoints written from here on rebuild the same modules
            self.config = c = replace(c, domain_adaptation_steps=steps)
            self.adapted_extractor = self._new_extractor()
        device = next(self.denoiser.parameters()).device
        ext = self.adapted_extractor
        if isinstance(ext, DenoiserFeatures):
            ext.load_from(self.denoiser)
        else:
            assert self.extractor is not None
            ext.load_state_dict(self.extractor.state_dict())
        ext.to(device).eval().requires_grad_(True)
        params = [p for p in ext.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=c.da_lr)
        gen = torch.Generator().manual_seed(seed)
        n = len(images)
        size = tuple(images.shape[-2:])
        losses = []
        order = torch.randperm(n, generator=gen)
        pos = 0
        for step in progress_bar(range(steps), enabled=progress, desc="domain adaptation"):
            if pos + c.da_batch_size > n:
                order, pos = torch.randperm(n, generator=gen), 0
            idx = order[pos:pos + c.da_batch_size]
            pos += c.da_batch_size
            y = self._as_images(images[idx], device)
            with torch.no_grad():
                g = torch.Generator(device).manual_seed(seed * 1_000_003 + step)
                rec = self.reconstruct(y, generator=g)
                frozen = self.features(y, adapted=False)
            with torch.enable_grad():
                fa_rec, fa_y = ext(rec), ext(y)
                # L = mean f(A(x0), A(y)) + lambda mean f(A(y), F(y))
                loss = feature_distance(fa_rec, fa_y, size, c.feature_pool).mean() + \
                    c.da_lambda * feature_distance(fa_y, [f.detach() for f in frozen], size,
                                                   c.feature_pool).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            losses.append(float(loss.detach()))
        ext.requires_grad_(False).eval()
        self.adapted.fill_(True)
        self.pixel_scale_adapted.fill_(float("nan"))
        return {"da_steps": float(steps), "da_loss_first": losses[0] if losses else math.nan,
                "da_loss_last": losses[-1] if losses else math.nan}

    @torch.no_grad()
    def calibrate(self, images: Tensor, batch_size: int = 16) -> dict[str, float]:
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
            x = self._as_images(images[i:i + batch_size], device)
            rec = self.reconstruct(x)
            size = (int(x.shape[-2]), int(x.shape[-1]))
            pmax = max(pmax, float((rec - x).abs().mean(1).max()))
            for adapted in variants:
                f = feature_distance(self.features(rec, adapted), self.features(x, adapted), size,
                                     self.config.feature_pool)
                fmax[adapted] = max(fmax[adapted], float(f.max()))
        out: dict[str, float] = {}
        for adapted in variants:
            # s = max f / max p over the calibration images
            scale = fmax[adapted] / max(pmax, 1e-8)
            (self.pixel_scale_adapted if adapted else self.pixel_scale).fill_(scale)
            out["pixel_scale_adapted" if adapted else "pixel_scale"] = scale
        return out

    def after_training(self, data: Any, val_set: dict | None = None,
                       progress: bool = False) -> dict[str, float]:
        """What DDAD does once the denoiser is trained (called by ``dap.experiment.train_run``).

        ``data``: a :class:`dap.train.TrainData` or an ``(N, 3, H, W)`` tensor of normal training
        images. Runs :meth:`adapt` when ``domain_adaptation_steps`` > 0, then :meth:`calibrate`.
        ``val_set`` is not used (DDAD needs normal images only). Returns their logs.
        """
        images = data.images if hasattr(data, "images") else data
        was_training = self.training
        self.eval()
        info: dict[str, float] = {}
        if self.config.domain_adaptation_steps > 0:
            info.update(self.adapt(images, seed=self.config.inference_seed, progress=progress))
        info.update(self.calibrate(images))
        self.train(was_training)
        return info


# --------------------------------------------------------------------------------------------
# Rows of the side-by-side table (python -m dap benchmark)
# --------------------------------------------------------------------------------------------
#: Domain-adaptation steps of the benchmark's "ddad+DA" row (a few dozen, as a few epochs of
#: the paper's batch 32 on a ~250-image category).
BENCHMARK_DA_STEPS = 40

#: One trained model, two rows: the frozen extractor, then the adapted one. The model is built
#: with domain adaptation (run after training by ``train_run``); the "ddad" row switches it off.
BENCHMARK_VARIANTS: dict[str, dict[str, Any]] = {
    "ddad": {"overrides": {"domain_adaptation_steps": BENCHMARK_DA_STEPS},
             "eval_overrides": {"use_adaptation": "off"}},
    "ddad+DA": {"same_model_as": "ddad", "eval_overrides": {"use_adaptation": "require"}},
}


__all__ = ["DDAD", "DDADConfig", "ddad_config", "conditioned_reconstruct", "gaussian_blur",
           "BENCHMARK_VARIANTS", "BENCHMARK_DA_STEPS"]
