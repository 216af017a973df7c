"""The channels-last memory layout of a replica-stacked image batch (speed only)."""

from __future__ import annotations

import torch


def channels_last_stacked(x: torch.Tensor) -> torch.Tensor:
    """The same values with a layout that makes vmapped ``conv2d`` run channels-last.

    Under ``vmap`` with per-replica weights, PyTorch runs a conv2d over a stacked
    (R, B, C, H, W) input as one grouped convolution over the (B, R*C, H, W) view
    (groups = R). ``x.contiguous(memory_format=torch.channels_last)`` is meaningless
    for a 5-D tensor (it would be channels_last_3d over the wrong dims), so instead we
    store x physically as (B, H, W, R, C): the grouped conv's input view is then
    exactly NHWC, and cuDNN keeps its output NHWC, which BN/ReLU/add under vmap
    preserve (checked in tests/train/test_cuda_paths.py). A shared (B, C, H, W) input
    (evaluation) gets the ordinary channels_last format. Other ranks are returned as is.
    Values, shapes and therefore results are unchanged; only the speed can differ.
    """
    if x.dim() == 5:
        return x.permute(1, 3, 4, 0, 2).contiguous().permute(3, 0, 4, 1, 2)
    if x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x
