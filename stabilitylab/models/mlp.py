"""Fully connected networks: ``mlp`` (option ``hidden``, widths) and ``lenet_300_100``.

Layout: flatten -> [Linear -> ReLU] per hidden width -> Linear (``fc``, the output).
Parameter names: ``hidden.{i}.weight/bias`` and ``fc.weight/bias``.

Dropout (``cfg.dropout > 0``) is applied to the input of every linear layer except
the first, i.e. after each hidden ReLU (the same rule as every model here:
dropout before each linear layer that reads a hidden representation).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from stabilitylab.models.common import check_dropout
from stabilitylab.models.registry import model


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden: tuple[int, ...], num_classes: int, dropout: float = 0.0):
        super().__init__()
        widths = (in_features, *hidden)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)
        for layer in self.hidden:
            x = torch.relu(layer(x))
            if self.dropout is not None:
                x = self.dropout(x)
        return self.fc(x)


@model("mlp")
def build_mlp(cfg, input_shape: tuple, num_classes: int, hidden=(300, 100)) -> MLP:
    """An MLP with hidden widths ``hidden`` (option ``model.options.hidden``).

    ``hidden = []`` is softmax regression: one linear layer, whose cross-entropy loss is
    convex in its parameters.
    """
    from stabilitylab.core.errors import ConfigError

    if isinstance(hidden, (str, bytes)) or not hasattr(hidden, "__iter__"):
        raise ConfigError(f"model.options.hidden: expected a list of widths, got {hidden!r}")
    if not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden):
        raise ConfigError(f"model.options.hidden: widths must be integers >= 1, got {list(hidden)}")
    return MLP(math.prod(input_shape), tuple(int(h) for h in hidden), num_classes, check_dropout(cfg))


@model("lenet_300_100")
def build_lenet_300_100(cfg, input_shape: tuple, num_classes: int) -> MLP:
    """LeNet-300-100 (OpenLTH's mnist_lenet_300_100): an MLP with hidden (300, 100)."""
    return MLP(math.prod(input_shape), (300, 100), num_classes, check_dropout(cfg))
