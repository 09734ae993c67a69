"""Convolutional nets and MLPs of named sizes, for 1-D signals (C, L) and 2-D images (C, H, W).

Blocks have stable names (`block1`, `block2`, `block3`, `head`; MLPs `fc1`, `fc2`, `head`) so configs can tap
their outputs as features by module path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from kdistill.registry import Registry


@dataclass(frozen=True)
class ConvSpec:
    channels: tuple[int, ...]  # output channels of each conv block; a 2x max-pool follows block1


@dataclass(frozen=True)
class MLPSpec:
    hidden: tuple[int, ...]


ModelBuilder = Callable[[Sequence[int], int], nn.Module]
MODELS: Registry[ModelBuilder] = Registry("model")


class ConvNet(nn.Sequential):
    """conv-ReLU blocks (2x pool after the first), global average pool, linear head."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, channels: Sequence[int]) -> None:
        dims = len(input_shape) - 1
        if dims not in (1, 2):
            raise ValueError(f"ConvNet takes (C, L) or (C, H, W) inputs, got shape {tuple(input_shape)}")
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        pool = nn.MaxPool1d if dims == 1 else nn.MaxPool2d
        gap = nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1)
        layers: dict[str, nn.Module] = {}
        in_ch = input_shape[0]
        for i, out_ch in enumerate(channels, start=1):
            block: list[nn.Module] = [conv(in_ch, out_ch, 3, padding=1), nn.ReLU()]
            if i == 1:
                block.append(pool(2))
            layers[f"block{i}"] = nn.Sequential(*block)
            in_ch = out_ch
        layers["pool"] = nn.Sequential(gap, nn.Flatten())
        layers["head"] = nn.Linear(in_ch, num_classes)
        super().__init__()
        for name, module in layers.items():
            self.add_module(name, module)


class MLP(nn.Sequential):
    """Flatten, then Linear-ReLU layers `fc1`, `fc2`, ..., and a linear `head`."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.add_module("flatten", nn.Flatten())
        in_features = 1
        for d in input_shape:
            in_features *= d
        for i, width in enumerate(hidden, start=1):
            self.add_module(f"fc{i}", nn.Sequential(nn.Linear(in_features, width), nn.ReLU()))
            in_features = width
        self.add_module("head", nn.Linear(in_features, num_classes))


def _register_conv(name: str, channels: tuple[int, ...]) -> None:
    MODELS.add(
        name,
        lambda shape, classes: ConvNet(shape, classes, channels),
        f"CNN, channels {'-'.join(map(str, channels))}, global-average-pool + linear head",
    )


def _register_mlp(name: str, hidden: tuple[int, ...]) -> None:
    MODELS.add(
        name, lambda shape, classes: MLP(shape, classes, hidden), f"MLP, hidden {'-'.join(map(str, hidden))}"
    )


_register_conv("cnn_xs", (8, 16))
_register_conv("cnn_s", (16, 32))
_register_conv("cnn_m", (32, 64, 128))
_register_conv("cnn_l", (64, 128, 256))
_register_mlp("mlp_xs", (32,))
_register_mlp("mlp_s", (100, 100))
_register_mlp("mlp_m", (256, 256))


def build_model(arch: str, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    return MODELS.get(arch)(input_shape, num_classes)
