"""Helpers shared by the model builders."""

from __future__ import annotations

import torch
from torch import nn

from stabilitylab.core.errors import ConfigError


def check_dropout(cfg) -> float:
    p = float(cfg.dropout)
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1), got {p}")
    return p


def check_positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"model.options.{name} must be an integer >= 1, got {value!r}")
    return int(value)


def require_rank(model: str, input_shape: tuple, rank: int, what: str) -> None:
    if len(input_shape) != rank:
        raise ConfigError(f"model {model} needs {what} inputs, but the dataset's examples have "
                          f"shape {tuple(input_shape)}")


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that normalises in float32 under bf16 autocast.

    Under ``vmap`` with stacked running statistics, batch_norm's batching rule needs the
    input and the (float32) running stats in one dtype, so a bf16 activation fails. The
    statistics stay float32 (exact), and the next conv casts back to bf16 by itself.
    """

    def forward(self, x):
        return super().forward(x.float())


def materialize(model: nn.Module, device) -> nn.Module:
    """``model.to_empty(device=device)`` (uninitialized storage, same sizes and strides),
    without ``empty_like`` of meta tensors: that goes through torch's Python reference
    implementations and imports ``torch.fx.experimental.symbolic_shapes`` (~0.6 s)."""
    return model._apply(lambda t: torch.empty_strided(t.size(), t.stride(), dtype=t.dtype,
                                                      device=device))


def is_prunable(module: nn.Module, param_name: str) -> bool:
    """Only conv and linear *weights* are prunable; never biases or norm parameters."""
    return param_name == "weight" and isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d))
