"""Feature extractors for feature-level anomaly maps (DDAD; GLAD compares features too).

Paper: Mousakhan, Brox, Tayyub, "Anomaly Detection with Conditioned Denoising Diffusion Models"
(DDAD), Sec. 3.3: the anomaly map compares the input and its reconstruction in the feature space
of an ImageNet-pretrained WideResNet (layers 2 and 3). The official code's config selects
``wide_resnet101_2`` (``feature_extractor``; ``wide_resnet50_2`` and ``resnet50`` are its other
choices). Taught in ``notebooks/07_conditioned_denoising``.

Two extractors, one interface (``forward(x) -> list of (B, C_l, H_l, W_l)`` maps, ``name``):

* :class:`WideResNetFeatures` — torchvision's ``wide_resnet50_2`` or ``wide_resnet101_2``
  re-declared here (torchvision is not a dap dependency and has no build for every platform).
  Its ``state_dict`` keys are torchvision's (``layer2.0.conv1.weight``,
  ``layer3.5.bn3.running_mean``, ...), so the ImageNet file a user downloads once loads with
  ``torch.load(weights_only=True)``: :func:`load_wide_resnet`.
* :class:`DenoiserFeatures` — the offline default, no download: the encoder pyramid of a trained
  diffusion denoiser (:meth:`DenoiserUNet.encode_features`) at a small step t (0 by default).

A "level" is a stage of the pyramid counted from 0: WideResNet ``layer1`` .. ``layer4`` are
levels 0 .. 3 (DDAD's map uses levels 1 and 2 = layer2 and layer3, its official domain
adaptation levels 0 to 2); a denoiser's levels are its encoder resolutions (``image_size / 2**i``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dap.models.denoiser import DenoiserConfig, DenoiserUNet

#: torchvision's ImageNet weights (IMAGENET1K_V1; the URLs the official DDAD code loads)
WRN50_2_URL = "https://download.pytorch.org/models/wide_resnet50_2-95faca4d.pth"
WRN50_2_FILE = "wide_resnet50_2-95faca4d.pth"
WRN101_2_URL = "https://download.pytorch.org/models/wide_resnet101_2-32ee1156.pth"
WRN101_2_FILE = "wide_resnet101_2-32ee1156.pth"
#: blocks per stage of each WideResNet (torchvision's layout), and its weights (URL, file)
WRN_LAYERS = {"wide_resnet50_2": (3, 4, 6, 3), "wide_resnet101_2": (3, 4, 23, 3)}
WRN_FILES = {"wide_resnet50_2": (WRN50_2_URL, WRN50_2_FILE),
             "wide_resnet101_2": (WRN101_2_URL, WRN101_2_FILE)}
#: ImageNet channel statistics the torchvision weights expect (inputs in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------
# WideResNet-50-2 and -101-2 with torchvision's parameter names
# --------------------------------------------------------------------------------------------
class Bottleneck(nn.Module):
    """ResNet-v1.5 bottleneck (stride on the 3x3 conv): 1x1 -> 3x3 -> 1x1 (x4), + shortcut.

    ``width`` is the inner width: planes * width_per_group / 64 (128 / 64 = 2 for "wide").
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, width: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return self.relu(h + identity)


class WideResNet(nn.Module):
    """torchvision's ResNet layout (stem, ``layer1``..``layer4``, ``fc``) with Bottleneck blocks.

    Parameters
    ----------
    base_width : int
        Stem width and planes of ``layer1`` (64 in torchvision; the planes double per stage).
        Smaller values give the same key names with small tensors (tests).
    width_per_group : int
        128 for WideResNet-50-2 (the bottleneck inner width is ``planes * 128 / 64``).
    layers : blocks per stage, (3, 4, 6, 3) for the 50-layer network, (3, 4, 23, 3) for 101.
    num_stages : int
        Keep only ``layer1``..``layer{num_stages}``; the classifier (``avgpool``, ``fc``) exists
        only with all 4 stages. A truncated network still has torchvision's names.
    num_classes : 1000 (ImageNet).
    """

    def __init__(self, base_width: int = 64, width_per_group: int = 128,
                 layers: Sequence[int] = (3, 4, 6, 3), num_stages: int = 4,
                 num_classes: int = 1000) -> None:
        super().__init__()
        if not 1 <= num_stages <= 4:
            raise ValueError(f"num_stages must lie in 1..4, got {num_stages}")
        self.num_stages = num_stages
        self.inplanes = base_width
        self.conv1 = nn.Conv2d(3, base_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        for i in range(num_stages):
            planes = base_width * 2**i
            stage = self._make_layer(planes, planes * width_per_group // 64, layers[i],
                                     stride=1 if i == 0 else 2)
            setattr(self, f"layer{i + 1}", stage)
        self.fc: nn.Module | None = None
        if num_stages == 4:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(base_width * 8 * Bottleneck.expansion, num_classes)

    def _make_layer(self, planes: int, width: int, blocks: int, stride: int) -> nn.Sequential:
        out = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, out, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(out))
        seq = [Bottleneck(self.inplanes, planes, width, stride, downsample)]
        self.inplanes = out
        seq += [Bottleneck(out, planes, width) for _ in range(1, blocks)]
        return nn.Sequential(*seq)

    def stages(self, x: Tensor, upto: int) -> list[Tensor]:
        """The outputs of ``layer1`` .. ``layer{upto}`` for an ImageNet-normalised ``x``."""
        h = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = []
        for i in range(upto):
            h = getattr(self, f"layer{i + 1}")(h)
            feats.append(h)
        return feats

    def forward(self, x: Tensor) -> Tensor:
        """ImageNet logits ``(B, num_classes)`` (only for the full network)."""
        if self.fc is None:
            raise RuntimeError("a truncated WideResNet has no classifier; use stages()")
        h = self.stages(x, 4)[-1]
        return self.fc(torch.flatten(self.avgpool(h), 1))


def wide_resnet(arch: str, base_width: int = 64, num_stages: int = 4) -> WideResNet:
    """``wide_resnet50_2`` (68.9 M parameters at ``base_width=64``) or ``wide_resnet101_2``
    (126.9 M; the official DDAD config's extractor) with torchvision's names, random init.
    ``base_width`` < 64 shrinks every tensor but keeps every name (tests)."""
    if arch not in WRN_LAYERS:
        raise ValueError(f"unknown WideResNet {arch!r}; choose one of {sorted(WRN_LAYERS)}")
    return WideResNet(base_width, 2 * base_width, WRN_LAYERS[arch], num_stages)


def wide_resnet50_2(base_width: int = 64, num_stages: int = 4) -> WideResNet:
    """:func:`wide_resnet` ``("wide_resnet50_2")``."""
    return wide_resnet("wide_resnet50_2", base_width, num_stages)


def wide_resnet101_2(base_width: int = 64, num_stages: int = 4) -> WideResNet:
    """:func:`wide_resnet` ``("wide_resnet101_2")``."""
    return wide_resnet("wide_resnet101_2", base_width, num_stages)


def missing_weights_message(path: str | os.PathLike | None, arch: str = "wide_resnet50_2") -> str:
    """The error text for absent WideResNet weights: where to get them, how to pass them."""
    url, file = WRN_FILES[arch]
    where = f"not found at {str(path)!r}" if path else "not given"
    return (
        f"ImageNet weights for {arch} {where}. dap does not download them (no torchvision "
        f"needed). On a machine with internet, download {url} (or run `python -c \"import "
        f"torchvision; torchvision.models.{arch}(weights='IMAGENET1K_V1')\"`, which leaves it "
        f"in ~/.cache/torch/hub/checkpoints/{file}) and pass its path: ddad_config(..., "
        f"extractor='{arch}', extractor_weights=PATH). Or keep the offline default "
        "extractor='denoiser'."
    )


def load_wide_resnet(path: str | os.PathLike, model: WideResNet, arch: str = "wide_resnet50_2"
                     ) -> WideResNet:
    """Load torchvision's ``arch`` state dict (``wide_resnet50_2`` / ``wide_resnet101_2``) from
    ``path`` into ``model``.

    The file is read with ``torch.load(weights_only=True)`` (no code is unpickled). A truncated
    ``model`` takes the stages it has; the file must still be a complete torchvision ``arch``
    state dict of the model's width (every key, every shape), so a ResNet-50, the other
    WideResNet or another checkpoint is refused with a message that names the first differences.

    Raises
    ------
    FileNotFoundError
        The file does not exist (the message says where to get it).
    ValueError
        The file is not a readable weights-only state dict, or not ``arch``'s.
    """
    url, file = WRN_FILES[arch]
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(missing_weights_message(path, arch))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure gets the same advice
        raise ValueError(
            f"{path} could not be read with torch.load(weights_only=True) ({exc}). It should be "
            "a plain state dict such as torchvision's file; if you saved a whole model, re-save "
            "it with torch.save(model.state_dict(), path)."
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    base = model.conv1.out_channels
    with torch.device("meta"):
        reference = wide_resnet(arch, base).state_dict()
    # BatchNorm's num_batches_tracked is absent from older torchvision files; BN fills it in.
    wanted = {k: v.shape for k, v in reference.items() if not k.endswith("num_batches_tracked")}
    got = {k: v.shape for k, v in state.items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(wanted) - set(got))
    unexpected = sorted(set(got) - set(wanted))
    shapes = [f"{k}: file {tuple(got[k])} vs {arch} {tuple(wanted[k])}"
              for k in sorted(set(wanted) & set(got)) if tuple(got[k]) != tuple(wanted[k])]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:2]})")
        raise ValueError(
            f"{path} is not torchvision's {arch} state dict: {'; '.join(parts)}. Expected "
            f"{file} from {url} (a resnet50 file has half-width bottlenecks, the other "
            "WideResNet another number of blocks in layer3; both are refused)."
        )
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return model


def load_wide_resnet50_2(path: str | os.PathLike, model: WideResNet) -> WideResNet:
    """:func:`load_wide_resnet` for ``wide_resnet50_2``."""
    return load_wide_resnet(path, model, "wide_resnet50_2")


class WideResNetFeatures(nn.Module):
    """DDAD's extractor: an ImageNet WideResNet (-50-2 or -101-2), layers 2 and 3 by default.

    Input ``(B, 3, H, W)`` in [-1, 1] -> mapped to [0, 1], ImageNet-normalised -> the outputs of
    the requested levels (level 1 = ``layer2``, stride 8, 512 channels; level 2 = ``layer3``,
    stride 16, 1024 channels at ``base_width`` 64). The network is truncated after the deepest
    level used (layer4 and the classifier are not kept). BatchNorm uses the stored statistics
    in ``eval()`` (scoring); DDAD's official domain adaptation runs the copy in ``train()``.

    Parameters
    ----------
    weights : path or None
        torchvision's file for ``arch``; None leaves random weights (``name`` says so).
    levels : pyramid levels to return (0..3).
    base_width : 64 for the real network; smaller only for tests.
    arch : ``"wide_resnet50_2"`` or ``"wide_resnet101_2"`` (the official DDAD config's).
    """

    def __init__(self, weights: str | os.PathLike | None = None,
                 levels: Sequence[int] = (1, 2), base_width: int = 64,
                 arch: str = "wide_resnet50_2") -> None:
        super().__init__()
        self.levels = tuple(int(i) for i in levels)
        if not self.levels or min(self.levels) < 0 or max(self.levels) > 3:
            raise ValueError(f"WideResNet levels must lie in 0..3, got {self.levels}")
        self.backbone = wide_resnet(arch, base_width, num_stages=max(self.levels) + 1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.pretrained = weights is not None
        if weights is not None:
            load_wide_resnet(weights, self.backbone, arch)
        self.name = f"{arch}(ImageNet)" if self.pretrained else f"{arch}(random weights)"
        if base_width != 64:
            self.name += f"[width {base_width}]"

    def forward(self, x: Tensor) -> list[Tensor]:
        # [-1, 1] -> [0, 1] -> ImageNet normalisation
        x = ((x + 1) / 2 - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        feats = self.backbone.stages(x, max(self.levels) + 1)
        return [feats[i] for i in self.levels]


# --------------------------------------------------------------------------------------------
# The offline default: a diffusion denoiser's encoder
# --------------------------------------------------------------------------------------------
def denoiser_features(unet: DenoiserUNet, x: Tensor, t: int, levels: Sequence[int]) -> list[Tensor]:
    """The encoder maps of ``unet`` at step ``t`` for the clean image ``x`` (no noise added).

    x : ``(B, 3, H, W)`` in [-1, 1] -> level i of shape ``(B, C_i, H / 2**i, W / 2**i)``.
    """
    feats = unet.encode_features(x, torch.full((x.shape[0],), int(t), device=x.device))
    return [feats[i] for i in levels]


class DenoiserFeatures(nn.Module):
    """An extractor that owns a copy of a denoiser's *encoder* (the decoder is dropped).

    DDAD's domain adaptation fine-tunes such a copy; the frozen original is the method's own
    denoiser, read through :func:`denoiser_features` without a copy.

    Parameters
    ----------
    config : the denoiser's config (the copy has the same encoder)
    t : the diffusion step the encoder is told (0: the clean image)
    levels : encoder levels to return (0 .. len(channel_mult) - 1)
    """

    def __init__(self, config: DenoiserConfig, t: int = 0, levels: Sequence[int] = (1, 2)) -> None:
        super().__init__()
        self.t, self.levels = int(t), tuple(int(i) for i in levels)
        if not self.levels or min(self.levels) < 0 or max(self.levels) >= len(config.channel_mult):
            raise ValueError(f"denoiser levels must lie in 0..{len(config.channel_mult) - 1}, "
                             f"got {self.levels}")
        self.unet = DenoiserUNet(config)
        # only the encoder is used: drop the middle and decoder blocks (half the parameters)
        self.unet.middle_block = nn.Identity()  # type: ignore[assignment]
        self.unet.output_blocks = nn.ModuleList()
        self.unet.out = nn.Identity()  # type: ignore[assignment]
        self.name = f"denoiser-encoder(t={self.t})"

    def load_from(self, unet: DenoiserUNet) -> "DenoiserFeatures":
        """Copy the encoder weights of a full denoiser into this extractor."""
        own = self.unet.state_dict()
        missing = set(own) - set(unet.state_dict())
        if missing:
            raise ValueError(f"the denoiser lacks encoder weights {sorted(missing)[:3]}")
        self.unet.load_state_dict({k: v for k, v in unet.state_dict().items() if k in own})
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        return denoiser_features(self.unet, x, self.t, self.levels)


# --------------------------------------------------------------------------------------------
# Feature distance
# --------------------------------------------------------------------------------------------
def feature_distance(feats_a: Sequence[Tensor], feats_b: Sequence[Tensor],
                     size: tuple[int, int], pool: int = 3, align_corners: bool = False) -> Tensor:
    """DDAD's feature map: sum over levels of upsampled (1 - cosine) between two pyramids.

    Each level is first averaged over ``pool x pool`` neighbourhoods (stride 1, DDAD's patch
    aggregation; 1 disables it), then compared position by position over channels:

        f(x, y) = sum_l  up( 1 - cos( F_l(a)[:, :, i, j], F_l(b)[:, :, i, j] ) )

    feats_a, feats_b : lists of ``(B, C_l, H_l, W_l)``; returns ``(B, H, W)`` float32, each level
    contributing values in [0, 2]. ``up`` is bilinear; ``align_corners=True`` is the official
    DDAD code's. Averaging with or without the zero padding at the border gives the same map
    (a patch's mean is rescaled, and the cosine ignores scale).
    """
    out = None
    for fa, fb in zip(feats_a, feats_b):
        fa, fb = fa.float(), fb.float()
        if pool > 1:
            fa = F.avg_pool2d(fa, pool, stride=1, padding=pool // 2, count_include_pad=False)
            fb = F.avg_pool2d(fb, pool, stride=1, padding=pool // 2, count_include_pad=False)
        # d_l = 1 - cos(F_l(a), F_l(b)) over channels
        d = 1.0 - F.cosine_similarity(fa, fb, dim=1, eps=1e-8)
        d = F.interpolate(d[:, None], size=size, mode="bilinear",
                          align_corners=align_corners)[:, 0]
        out = d if out is None else out + d
    if out is None:
        raise ValueError("feature_distance needs at least one level")
    return out


__all__ = [
    "WRN50_2_URL", "WRN50_2_FILE", "WRN101_2_URL", "WRN101_2_FILE", "WRN_LAYERS", "WRN_FILES",
    "IMAGENET_MEAN", "IMAGENET_STD", "Bottleneck", "WideResNet", "wide_resnet50_2",
    "wide_resnet101_2", "wide_resnet", "load_wide_resnet", "load_wide_resnet50_2",
    "missing_weights_message", "WideResNetFeatures", "denoiser_features", "DenoiserFeatures",
    "feature_distance",
]
