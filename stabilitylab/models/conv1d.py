"""``conv1d``: the small 1-D conv net for MNIST-1D (about 5k parameters at 25 channels).

conv1 (k5, s2, p2) -> ReLU -> conv2 (k3, s2, p1) -> ReLU -> conv3 (k3, s2, p1) -> ReLU
-> flatten -> [dropout] -> fc. Length 40 -> 20 -> 10 -> 5, so fc is
Linear(channels * 5, classes); 25 channels give 5,210 parameters.

Activations between the convs are kept length-major, (B, L, C), and each conv is
one concatenation of shifted views plus one matmul (:class:`MatmulConv1d`). It computes exactly what
``nn.Conv1d`` computes, but under ``vmap`` with per-replica weights PyTorch turns a
real convolution into a grouped one, and oneDNN's grouped kernels are slow for
channels this small on CPU; the matmul becomes one batched GEMM. Measured
on 2 CPU cores, 18 replicas, batch 100: 33 ms/step (nn.Conv1d) vs 16 ms/step.
The flatten before ``fc`` is channel-major, as with ``nn.Conv1d``. The compiled evaluation
forward of ``analyze`` is traced within :func:`channels_first_products`: there each conv's
output is a (B, L, C) view of channels-first memory.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch
import torch.nn.functional as F
from torch import nn

#: Whether :class:`MatmulConv1d` evaluates (no autograd) with the weights on the left
#: (:func:`channels_first_products`).
_CHANNELS_FIRST = contextvars.ContextVar("stabilitylab_channels_first", default=False)


@contextlib.contextmanager
def channels_first_products():
    """Within the block, :class:`MatmulConv1d` without autograd computes the transpose of
    its product, with the weights on the left: (C_out, k·C) · (k·C, B·L_out), the windows
    gathered channels first. It returns a (B, L_out, C_out) view of that (C_out, B, L_out)
    output. The multiplications are the same; where the BLAS sums each output alike (MKL
    on the default net's convs: the same bits), so are the values. The compiled evaluation
    forward is traced this way: its GEMMs took 1.3-1.7x less time in that layout, and
    inductor fuses the gathers (run eagerly, the gathers cost more than that saves)."""
    token = _CHANNELS_FIRST.set(True)
    try:
        yield
    finally:
        _CHANNELS_FIRST.reset(token)


class MatmulConv1d(nn.Conv1d):
    """``nn.Conv1d`` (same parameters, same function) on length-major input (B, L, C).

    Returns (B, L_out, C_out). Only zero padding, dilation 1 and groups 1.
    """

    channel_axis = -1  # of the output (read by stabilitylab.analysis.repair)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, C) -> (B, L_out, O)
        (k,), (s,), (p,) = self.kernel_size, self.stride, self.padding
        batch, length, channels = x.shape
        out_len = (length + 2 * p - k) // s + 1
        weight = self.weight.permute(0, 2, 1).reshape(self.out_channels, k * channels)
        if not torch.is_grad_enabled() and _CHANNELS_FIRST.get():  # channels_first_products
            cols = _im2col_unfold(x, k, s, p, out_len)  # (B, L_out, k, C)
            out = weight @ cols.permute(2, 3, 0, 1).reshape(k * channels, batch * out_len)
            if self.bias is not None:
                out = out + self.bias[:, None]
            return out.t().view(batch, out_len, self.out_channels)
        cols = (_im2col_cat if torch.is_grad_enabled() else _im2col_unfold)(x, k, s, p, out_len)
        cols = cols.reshape(batch * out_len, k * channels)
        out = cols @ weight.t() if self.bias is None else torch.addmm(self.bias, cols, weight.t())
        return out.view(batch, out_len, self.out_channels)


def _im2col_unfold(x: torch.Tensor, k: int, s: int, p: int, out_len: int) -> torch.Tensor:
    """(B, L_out, k, C) windows of the zero-padded length-major input, as one unfold view
    (copied once by the caller's reshape), position-major within a window like the weight.

    The evaluation path (no autograd): the same values as :func:`_im2col_cat`, so the same
    bits out of the GEMM, in 15-25% less time per stacked forward of the default net (30
    networks x 100 examples, one thread, Zen 3), where the copies and fills around the
    GEMMs are most of the time. Not used under autograd: vmap has no batching rule for
    unfold's backward and falls back to a loop over replicas.
    """
    right = (out_len - 1) * s + k - x.shape[1] - p
    xp = F.pad(x, (0, 0, p, max(right, 0)))
    return xp.unfold(1, k, s)[:, :out_len].transpose(-1, -2)


def _im2col_cat(x: torch.Tensor, k: int, s: int, p: int, out_len: int) -> torch.Tensor:
    """(B, L_out, k * C) windows, without a gather: the padded input viewed as rows of s
    positions, so the window of output t is rows t..t+k//s plus the first k%s positions of
    the next row (the training path: shifted slices and a cat, whose backward vmap batches)."""
    batch, length, channels = x.shape
    rows = out_len - 1 + -(-k // s)
    right = rows * s - length - p
    xp = F.pad(x, (0, 0, p, max(right, 0)))[:, : rows * s]
    grid = xp.reshape(batch, rows, s * channels)
    parts = [grid[:, q:q + out_len] for q in range(k // s)]
    if k % s:
        parts.append(grid[:, k // s:k // s + out_len, : (k % s) * channels])
    return torch.cat(parts, dim=-1)


from stabilitylab.core.errors import ConfigError
from stabilitylab.models.common import check_dropout, check_positive, require_rank
from stabilitylab.models.registry import model


def _out_len(length: int, kernel: int, stride: int, padding: int) -> int:
    return (length + 2 * padding - kernel) // stride + 1


NORMS = ("none", "layer")


class Conv1dNet(nn.Module):
    """Three stride-2 convs with ReLU, then ``fc``; with ``norm="layer"`` each conv is
    followed by a LayerNorm over its channels at every position (before the ReLU)."""

    def __init__(self, in_channels: int, length: int, channels: int, num_classes: int,
                 dropout: float = 0.0, norm: str = "none"):
        super().__init__()
        layer_norm = norm == "layer"
        # registration order conv, norm, conv, norm: REPAIR takes a conv that a norm of its
        # width follows (in this order) as normalised, and repairs the norm's output
        self.conv1 = MatmulConv1d(in_channels, channels, 5, stride=2, padding=2)
        self.norm1 = nn.LayerNorm(channels) if layer_norm else None
        self.conv2 = MatmulConv1d(channels, channels, 3, stride=2, padding=1)
        self.norm2 = nn.LayerNorm(channels) if layer_norm else None
        self.conv3 = MatmulConv1d(channels, channels, 3, stride=2, padding=1)
        self.norm3 = nn.LayerNorm(channels) if layer_norm else None
        out = _out_len(_out_len(_out_len(length, 5, 2, 2), 3, 2, 1), 3, 2, 1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.fc = nn.Linear(channels * out, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x.transpose(1, 2))  # (B, C, L) -> length-major (B, L, C)
        if self.norm1 is not None:
            x = self.norm1(x)  # the channels are the last axis: LayerNorm over them
        x = self.conv2(torch.relu(x))
        if self.norm2 is not None:
            x = self.norm2(x)
        x = self.conv3(torch.relu(x))
        if self.norm3 is not None:
            x = self.norm3(x)
        x = torch.relu(x)
        x = x.transpose(1, 2).reshape(x.shape[0], -1)  # channel-major flatten, as nn.Conv1d
        if self.dropout is not None:
            x = self.dropout(x)
        return self.fc(x)


@model("conv1d")
def build_conv1d(cfg, input_shape: tuple, num_classes: int, channels: int = 25,
                 norm: str = "none") -> Conv1dNet:
    """The 1-D conv net; options ``channels`` (of each conv layer) and ``norm`` ("none", or
    "layer": a LayerNorm over the channels after each conv)."""
    require_rank("conv1d", input_shape, 2, "1-D (C, L)")
    if norm not in NORMS:
        raise ConfigError(f"model.options.norm: choose from {', '.join(NORMS)}, got {norm!r}")
    return Conv1dNet(input_shape[0], input_shape[1], check_positive("channels", channels),
                     num_classes, check_dropout(cfg), norm)
