"""CIFAR ResNets of He et al. (2016), as OpenLTH's ``cifar_resnet_{20,32,56}``.

conv3x3(16w) -> BN -> ReLU, then 3 stages of n = (depth - 2) / 6 basic blocks with
16w, 32w, 64w filters (stride 2 at the first block of stages 2 and 3), global
average pooling, and ``fc`` = Linear(64w, classes). Convs have no biases. A basic
block is conv3x3-BN-ReLU-conv3x3-BN, plus a shortcut that is the identity, or a
1x1 conv (stride 2) + BN where the shape changes; ReLU after the sum.
ResNet-20 at width 1 has 272,474 parameters.

Optional dropout (``cfg.dropout``) acts on the pooled features before ``fc``.

:meth:`CifarResNet.permutation_spec` declares the net's permutation symmetry for
alignment (:mod:`stabilitylab.analysis.permutation_spec`), as Ainsworth et al. (Git
Re-Basin, ICLR 2023, Appendix A) give it for ResNets: one permutation per residual
stream (a stage: the stem, every block output and the stage's 1×1 shortcut), one per
block interior.
"""

from __future__ import annotations

import torch
from torch import nn

from stabilitylab.models.common import BatchNorm2d, check_dropout, check_positive, require_rank
from stabilitylab.models.registry import model


class Block(nn.Module):
    def __init__(self, f_in: int, f_out: int, downsample: bool):
        super().__init__()
        stride = 2 if downsample else 1
        self.conv1 = nn.Conv2d(f_in, f_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = BatchNorm2d(f_out)
        self.conv2 = nn.Conv2d(f_out, f_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = BatchNorm2d(f_out)
        if downsample or f_in != f_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(f_in, f_out, 1, stride=stride, bias=False), BatchNorm2d(f_out))
        else:
            self.shortcut = nn.Sequential()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, in_channels: int, num_classes: int, width: int = 1, dropout: float = 0.0):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        widths = [16 * width, 32 * width, 64 * width]
        self.conv = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn = BatchNorm2d(widths[0])
        blocks = []
        f_in = widths[0]
        for stage, f_out in enumerate(widths):
            for i in range(n):
                blocks.append(Block(f_in, f_out, downsample=(stage > 0 and i == 0)))
                f_in = f_out
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.fc = nn.Linear(widths[-1], num_classes)

    def permutation_spec(self) -> dict:
        """Perm name → units, and tensor name → ((axis, perm, block), ...); BN running stats
        are listed in ``buffers`` (a plain dict: models do not import the analysis)."""
        sizes, axes, buffers = {}, {}, []

        def unit(prefix: str, perm: str, conv_in: str | None = None):
            axes[f"{prefix[0]}.weight"] = ((0, perm, 1),) + (((1, conv_in, 1),) if conv_in else ())
            for leaf in ("weight", "bias", "running_mean", "running_var"):
                axes[f"{prefix[1]}.{leaf}"] = ((0, perm, 1),)
            buffers.extend(f"{prefix[1]}.{leaf}" for leaf in ("running_mean", "running_var"))

        stream, stages = "P_stage0", 1
        sizes[stream] = self.conv.out_channels
        unit(("conv", "bn"), stream)
        for i, block in enumerate(self.blocks):
            inner, out = f"P_block{i}", stream
            if len(block.shortcut):
                out, stages = f"P_stage{stages}", stages + 1  # a 1x1 shortcut: a new stream
                sizes[out] = block.conv2.out_channels
                unit((f"blocks.{i}.shortcut.0", f"blocks.{i}.shortcut.1"), out, stream)
            sizes[inner] = block.conv1.out_channels
            unit((f"blocks.{i}.conv1", f"blocks.{i}.bn1"), inner, stream)
            unit((f"blocks.{i}.conv2", f"blocks.{i}.bn2"), out, inner)
            stream = out
        axes["fc.weight"] = ((1, stream, 1),)
        return {"perm_sizes": sizes, "axes": axes, "buffers": buffers}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = self.blocks(x)
        x = x.mean(dim=(-2, -1))  # global average pooling
        if self.dropout is not None:
            x = self.dropout(x)
        return self.fc(x)


def _build(depth: int, cfg, input_shape: tuple, num_classes: int, width: int) -> CifarResNet:
    require_rank(f"resnet{depth}", input_shape, 3, "image (C, H, W)")
    return CifarResNet(depth, input_shape[0], num_classes, check_positive("width", width),
                       check_dropout(cfg))


@model("resnet20")
def build_resnet20(cfg, input_shape: tuple, num_classes: int, width: int = 1) -> CifarResNet:
    """ResNet-20 for CIFAR (OpenLTH cifar_resnet_20); option ``width`` (channel multiplier)."""
    return _build(20, cfg, input_shape, num_classes, width)


@model("resnet32")
def build_resnet32(cfg, input_shape: tuple, num_classes: int, width: int = 1) -> CifarResNet:
    """ResNet-32 for CIFAR (OpenLTH cifar_resnet_32); option ``width`` (channel multiplier)."""
    return _build(32, cfg, input_shape, num_classes, width)


@model("resnet56")
def build_resnet56(cfg, input_shape: tuple, num_classes: int, width: int = 1) -> CifarResNet:
    """ResNet-56 for CIFAR (OpenLTH cifar_resnet_56); option ``width`` (channel multiplier)."""
    return _build(56, cfg, input_shape, num_classes, width)
