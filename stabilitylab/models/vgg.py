"""CIFAR VGGs with BatchNorm, as OpenLTH's ``cifar_vgg_{11,13,16,19}``.

Each conv is conv3x3 (with bias, padding 1) -> BN -> ReLU; ``M`` is a 2x2 max pool.
After the last conv block the map (2x2 for 32x32 inputs) is average-pooled to one
vector of 512w channels and ``fc`` = Linear(512w, classes) is the only linear
layer. Channel counts are multiplied by the option ``width``. VGG-16 at width 1 has
14,728,266 parameters.

Optional dropout (``cfg.dropout``) acts on the pooled features before ``fc``.
"""

from __future__ import annotations

import torch
from torch import nn

from stabilitylab.models.common import BatchNorm2d, check_dropout, check_positive, require_rank
from stabilitylab.models.registry import model

PLANS: dict[int, list] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512],
}


class ConvBN(nn.Module):
    def __init__(self, f_in: int, f_out: int):
        super().__init__()
        self.conv = nn.Conv2d(f_in, f_out, 3, padding=1)
        self.bn = BatchNorm2d(f_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


class CifarVGG(nn.Module):
    def __init__(self, depth: int, in_channels: int, num_classes: int, width: int = 1, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        f_in = in_channels
        for spec in PLANS[depth]:
            if spec == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers.append(ConvBN(f_in, spec * width))
                f_in = spec * width
        self.layers = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.fc = nn.Linear(f_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(x)
        x = x.mean(dim=(-2, -1))  # = OpenLTH's AvgPool2d(2) on the final 2x2 map of CIFAR inputs
        if self.dropout is not None:
            x = self.dropout(x)
        return self.fc(x)


def _build(depth: int, cfg, input_shape: tuple, num_classes: int, width: int) -> CifarVGG:
    require_rank(f"vgg{depth}", input_shape, 3, "image (C, H, W)")
    return CifarVGG(depth, input_shape[0], num_classes, check_positive("width", width),
                    check_dropout(cfg))


@model("vgg11")
def build_vgg11(cfg, input_shape: tuple, num_classes: int, width: int = 1) -> CifarVGG:
    """VGG-11 with BatchNorm for CIFAR (OpenLTH cifar_vgg_11); option ``width`` (channel multiplier)."""
    return _build(11, cfg, input_shape, num_classes, width)


@model("vgg13")
def build_vgg13(cfg, input_shape: tuple, num_classes: int, width: int = 1) -> CifarVGG:
    """VGG-13 with BatchNorm for CIFAR (OpenLTH cifar_vgg_13); option ``width`` (channel multiplier)."""
    return _build(13, cfg, input_shape, num_classes, width)


@model("vgg16")
def build_vgg16(cfg, input_shape: tuple, num_classes: int, width: int = 1) -> CifarVGG:
    """VGG-16 with BatchNorm for CIFAR (OpenLTH cifar_vgg_16); option ``width`` (channel multiplier)."""
    return _build(16, cfg, input_shape, num_classes, width)


@model("vgg19")
def build_vgg19(cfg, input_shape: tuple, num_classes: int, width: int = 1) -> CifarVGG:
    """VGG-19 with BatchNorm for CIFAR (OpenLTH cifar_vgg_19); option ``width`` (channel multiplier)."""
    return _build(19, cfg, input_shape, num_classes, width)
