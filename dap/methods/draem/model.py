"""The DRAEM module: a reconstructive auto-encoder, a discriminative segmenter, a synthesizer.

Paper: Zavrtanik, Kristan, Skocaj, "DRAEM - A discriminatively trained reconstruction embedding
for surface anomaly detection", ICCV 2021, Sec. 3. Taught beside DiffusionAD in
``notebooks/06_train_and_evaluate`` as the non-diffusion baseline.

* the **reconstructive** sub-network (:class:`~dap.models.reconstructive.ReconstructiveAE`, an
  encoder-decoder without skips) restores the anomaly-free image I_r from the corrupted I_a;
* the **discriminative** sub-network (:class:`~dap.models.segmentation.SegmentationUNet`, the
  one DiffusionAD uses) maps concat(I_r, I_a) to the anomaly mask M_o.

Both are trained jointly (the focal loss flows back into the auto-encoder too) on the synthetic
anomalies of :mod:`dap.synthesis`. Inside, images live in DRAEM's range [0, 1]; every public
input and output is in dap's [-1, 1]. Image score: the maximum of the 21 x 21 box-filtered mask.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dap.methods.base import AnomalyMethod, Prediction, Reconstruction, TrainBatch
from dap.methods.draem.config import DRAEMConfig
from dap.methods.draem.ops import draem_loss, image_score, official_init
from dap.models.reconstructive import ReconstructiveAE
from dap.models.segmentation import SegmentationUNet
from dap.synthesis import AnomalySynthesizer


def to_unit(x: Tensor) -> Tensor:
    """dap's [-1, 1] -> DRAEM's [0, 1]: (x + 1) / 2."""
    return (x + 1.0) * 0.5


def from_unit(x: Tensor) -> Tensor:
    """DRAEM's [0, 1] -> dap's [-1, 1]: 2 x - 1."""
    return x * 2.0 - 1.0


class DRAEM(AnomalyMethod):
    """The DRAEM detector.

    ``forward(batch, generator)`` returns the joint training loss (dict); ``reconstruct(images)``
    the auto-encoder's anomaly-free image (clamped to [-1, 1]); ``predict(images)`` the
    segmenter's mask, the box-filter-max image score and the reconstruction. Nothing is random
    at inference.
    """

    name = "draem"
    config_class = DRAEMConfig

    def __init__(self, config: DRAEMConfig | None = None) -> None:
        super().__init__()
        self.config = config or DRAEMConfig()
        self.reconstructive = ReconstructiveAE(self.config.reconstructive)
        self.segmenter = SegmentationUNet(self.config.segmenter)
        self.synthesizer = AnomalySynthesizer(self.config.synthesis)
        if self.config.init == "official":
            official_init(self.reconstructive)
            official_init(self.segmenter)

    @property
    def image_size(self) -> int:
        return int(self.config.reconstructive.image_size)

    def param_groups(self, lr: float = 1e-4, lr_segmenter: float | None = None) -> list[dict]:
        return [
            {"params": list(self.reconstructive.parameters()), "lr": lr,
             "name": "reconstructive"},
            {"params": list(self.segmenter.parameters()),
             "lr": lr if lr_segmenter is None else lr_segmenter, "name": "segmenter"},
        ]

    def _segment(self, rec01: Tensor, x01: Tensor) -> Tensor:
        """Logits ``(B, 1, H, W)`` of the segmenter on concat(I_r, I_a) (the official order)."""
        return self.segmenter(torch.cat([rec01.to(x01.dtype), x01], dim=1))

    # -- training ------------------------------------------------------------------------------
    def forward(self, batch: TrainBatch, generator: torch.Generator | None = None
                ) -> dict[str, Tensor]:
        """The joint loss of one batch of normal images (DRAEM Sec. 3, eq. 3).

        1. synthesise anomalies (:mod:`dap.synthesis`): I_a, M_a (half of the samples stay
           normal, I_a = I);
        2. I_r = reconstructive(I_a), M_o = segmenter(concat(I_r, I_a)), in [0, 1];
        3. L = l2(I_r, I) + lambda L_SSIM(I_r, I) + Focal(M_o, M_a).
        """
        c = self.config
        syn = self.synthesizer(batch.images, foreground=batch.foreground, generator=generator,
                               is_texture=batch.is_texture)
        target, corrupted = to_unit(batch.images), to_unit(syn.image)
        rec = self.reconstructive(corrupted)
        logits = self._segment(rec, corrupted)
        loss = draem_loss(rec, target, logits, syn.mask, ssim_weight=c.ssim_weight,
                          seg_weight=c.seg_weight, gamma=c.focal_gamma, window=c.ssim_window,
                          sigma=c.ssim_sigma)
        return {"loss": loss.total, "loss_l2": loss.l2.detach(), "loss_ssim": loss.ssim.detach(),
                "loss_focal": loss.focal.detach()}

    # -- inference -----------------------------------------------------------------------------
    def _reconstruct_unit(self, images: Tensor) -> Tensor:
        """I_r in [0, 1] units (not clamped) for ``images`` in [-1, 1]."""
        if images.ndim != 4 or images.shape[1] != self.config.reconstructive.in_channels:
            raise ValueError(f"expected images of shape (B, 3, H, W) in [-1, 1], got "
                             f"{tuple(images.shape)}")
        return self.reconstructive(to_unit(images))

    @torch.no_grad()
    def reconstruct(self, images: Tensor, generator: torch.Generator | None = None
                    ) -> Reconstruction:
        """The anomaly-free reconstruction ``(B, 3, H, W)`` in [-1, 1] (deterministic;
        ``generator`` is unused)."""
        return Reconstruction(from_unit(self._reconstruct_unit(images)).clamp(-1.0, 1.0))

    @torch.no_grad()
    def predict(self, images: Tensor, generator: torch.Generator | None = None) -> Prediction:
        """Anomaly map ``(B, H, W)`` in [0, 1] (the segmenter's mask), image score ``(B,)`` (the
        max of the box-filtered mask), reconstruction ``(B, 3, H, W)`` in [-1, 1].

        The segmenter sees the unclamped reconstruction, as in training (and the official code).
        """
        rec = self._reconstruct_unit(images)
        mask = torch.sigmoid(self._segment(rec, to_unit(images)).float())[:, 0]
        return Prediction(mask, image_score(mask, self.config.score_window),
                          from_unit(rec).clamp(-1.0, 1.0))


__all__ = ["DRAEM", "to_unit", "from_unit"]
