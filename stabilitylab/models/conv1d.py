"""``conv1d``: the small 1-D conv net for MNIST-1D (about 5k parameters at 25 channels).

conv1 (k5, s2, p2) -> ReLU -> conv2 (k3, s2, p1) -> ReLU -> conv3 (k3, s2, p1) -> ReLU
-> flatten -> [dropout] -> fc. Length 40 -> 20 -> 10 -> 5, so fc is
Linear(channels * 5, classes); 25 channels give 5,210 parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from stabilitylab.models.common import check_dropout, check_positive, require_rank


def _out_len(length: int, kernel: int, stride: int, padding: int) -> int:
    return (length + 2 * padding - kernel) // stride + 1


class Conv1dNet(nn.Module):
    def __init__(self, in_channels: int, length: int, channels: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv1d(in_channels, channels, 5, stride=2, padding=2)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        out = _out_len(_out_len(_out_len(length, 5, 2, 2), 3, 2, 1), 3, 2, 1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.fc = nn.Linear(channels * out, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        x = x.reshape(x.shape[0], -1)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.fc(x)


def build_conv1d(cfg, input_shape: tuple, num_classes: int) -> Conv1dNet:
    require_rank("conv1d", input_shape, 2, "1-D (C, L)")
    return Conv1dNet(input_shape[0], input_shape[1], check_positive("channels", cfg.channels),
                     num_classes, check_dropout(cfg))
