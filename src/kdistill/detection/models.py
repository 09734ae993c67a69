"""kdistill's detector family: FCOS (Tian et al., ICCV 2019, arXiv:1904.01355) in plain torch, sized by name.

torchvision's FCOS cannot be used (its wheels are CUDA builds that do not import against the CPU torch), so the
same architecture is written here: a conv-BN-ReLU backbone whose stages at strides 8, 16 and 32 give C3-C5, an
FPN (lateral 1x1 + nearest top-down + 3x3 output convs) giving P3-P5, and one head shared by all levels.
FCOS also has P6/P7 for large objects on ~800 px images; kdistill's images are small, so P5 is the last level.

Modules are named so feature taps find them by path (`kdistill.classic.taps.FeatureTap`): `backbone.stages.2`
is C3, `fpn.outputs.0` is P3, `head.cls_tower` the classification tower. The forward also returns the FPN
features, so a distillation loss can use them without hooks.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.registry import UnknownNameError

__all__ = ["DETECTOR_SIZES", "DetectorSize", "FCOSDetector", "FCOSOutput", "build_detector"]

STRIDES = (8, 16, 32)  # of P3, P4, P5
PRIOR_PROBABILITY = (
    0.01  # FCOS/RetinaNet: every class starts at p = 0.01, so focal loss is not swamped at step 0
)
MAX_LOG_DISTANCE = 10.0  # exp clamp: keeps an untrained head from overflowing to inf (e^10 strides is plenty)


@dataclass(frozen=True)
class DetectorSize:
    """The knobs that make a detector big or small."""

    stem_channels: int  # the stride-2 stem conv
    stage_channels: tuple[
        int, int, int, int
    ]  # backbone stages at strides 4, 8, 16, 32 (the last three: C3-C5)
    stage_depth: int  # conv-BN-ReLU blocks per stage (the first one strides by 2)
    fpn_channels: int  # width of P3-P5 and of the head
    head_convs: int  # conv-GN-ReLU blocks in each head tower (FCOS: 4)


DETECTOR_SIZES: dict[str, DetectorSize] = {
    "fcos_s": DetectorSize(16, (24, 32, 64, 96), 1, 64, 2),
    "fcos_m": DetectorSize(24, (32, 64, 96, 160), 2, 96, 3),
    "fcos_l": DetectorSize(32, (48, 96, 192, 256), 2, 128, 4),
}


@dataclass
class FCOSOutput:
    """Per-level predictions, P3 first. Box distances are in pixels of the input image."""

    cls_logits: list[Tensor]  # (B, K, H_l, W_l) class logits (sigmoid, one per class; no background class)
    box_ltrb: list[
        Tensor
    ]  # (B, 4, H_l, W_l) distances left, top, right, bottom from each point to its box, > 0
    centerness: list[Tensor]  # (B, 1, H_l, W_l) centerness logits
    features: list[Tensor]  # (B, fpn_channels, H_l, W_l) the FPN outputs P3-P5 the head saw
    strides: tuple[int, ...]  # pixels per cell of each level


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm as FCOS's head uses it (32 groups of 8 at width 256); narrow heads keep >= 4 channels a group."""
    fitting = [g for g in (32, 16, 8, 4, 2) if channels % g == 0 and channels // g >= 4]
    return nn.GroupNorm(fitting[0] if fitting else 1, channels)


class Backbone(nn.Module):
    """A plain conv-BN-ReLU CNN: stem (stride 2), then four stages that halve the size; returns C3, C4, C5."""

    def __init__(self, size: DetectorSize) -> None:
        super().__init__()
        self.stem = conv_bn_relu(3, size.stem_channels, stride=2)
        stages, width = [], size.stem_channels
        for channels in size.stage_channels:
            blocks = [conv_bn_relu(width, channels, stride=2)]
            blocks += [conv_bn_relu(channels, channels) for _ in range(size.stage_depth - 1)]
            stages.append(nn.Sequential(*blocks))
            width = channels
        self.stages = nn.ModuleList(stages)
        self.out_channels = size.stage_channels[1:]

    def forward(self, images: Tensor) -> list[Tensor]:
        x, outputs = self.stem(images), []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs[1:]  # strides 8, 16, 32


class FPN(nn.Module):
    """Feature pyramid (Lin et al. 2017): P_l = conv3x3(lateral(C_l) + upsample(P_{l+1} before its conv))."""

    def __init__(self, in_channels: tuple[int, ...], channels: int) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.outputs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        merged = [lateral(c) for lateral, c in zip(self.laterals, features, strict=True)]
        for level in range(len(merged) - 2, -1, -1):  # top-down: P5 into P4, then P4 into P3
            merged[level] = merged[level] + F.interpolate(merged[level + 1], size=merged[level].shape[-2:])
        return [conv(m) for conv, m in zip(self.outputs, merged, strict=True)]


class Scale(nn.Module):
    """One learnable scalar: FCOS's per-level s in exp(s * x), since the head's convs are shared across levels."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class FCOSHead(nn.Module):
    """Shared across levels: a classification tower -> class logits, a regression tower -> ltrb and centerness.

    Centerness sits on the regression tower (the FCOS repository's later default, also torchvision's).
    Distances are stride * exp(s_l * x): exp keeps them positive with a gradient everywhere, and the stride
    lets one shared conv predict the same range of numbers on every level (FCOS's `norm_reg_targets`).
    """

    def __init__(self, channels: int, num_classes: int, num_convs: int, num_levels: int) -> None:
        super().__init__()

        def tower() -> nn.Sequential:
            blocks = []
            for _ in range(num_convs):
                blocks += [
                    nn.Conv2d(channels, channels, 3, padding=1),
                    group_norm(channels),
                    nn.ReLU(inplace=True),
                ]
            return nn.Sequential(*blocks)

        self.cls_tower, self.box_tower = tower(), tower()
        self.cls_logits = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.box_ltrb = nn.Conv2d(channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY))

    def forward(
        self, features: list[Tensor], strides: tuple[int, ...]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        logits, ltrb, centerness = [], [], []
        for feature, scale, stride in zip(features, self.scales, strides, strict=True):
            cls, box = self.cls_tower(feature), self.box_tower(feature)
            logits.append(self.cls_logits(cls))
            ltrb.append(stride * torch.exp(scale(self.box_ltrb(box)).clamp(max=MAX_LOG_DISTANCE)))
            centerness.append(self.centerness(box))
        return logits, ltrb, centerness


class FCOSDetector(nn.Module):
    """FCOS: images (B, 3, H, W) -> `FCOSOutput` on P3-P5. Train with `fcos.fcos_loss`, decode with `postprocess`."""

    def __init__(self, size: DetectorSize, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.size, self.num_classes, self.strides = size, num_classes, STRIDES
        self.backbone = Backbone(size)
        self.fpn = FPN(self.backbone.out_channels, size.fpn_channels)
        self.head = FCOSHead(size.fpn_channels, num_classes, size.head_convs, len(STRIDES))

    def forward(self, images: Tensor) -> FCOSOutput:
        features = self.fpn(self.backbone(images))
        logits, ltrb, centerness = self.head(features, self.strides)
        return FCOSOutput(logits, ltrb, centerness, features, self.strides)


def build_detector(name: str, num_classes: int) -> FCOSDetector:
    """A detector of a named size from DETECTOR_SIZES (`fcos_s` a student, `fcos_l` its teacher)."""
    if name not in DETECTOR_SIZES:
        close = difflib.get_close_matches(name, list(DETECTOR_SIZES), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownNameError(f"unknown detector {name!r}{hint} known: {', '.join(sorted(DETECTOR_SIZES))}")
    return FCOSDetector(DETECTOR_SIZES[name], num_classes)
