"""Batched, on-device data augmentation (the CIFAR recipe: flip + crop with padding 4).

No Python loop over examples and no PIL: one random draw per batch, one gather.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_flip_crop(x: torch.Tensor, generator: torch.Generator | None = None,
                     padding: int = 4) -> torch.Tensor:
    """Random horizontal flip (p=0.5) then random crop of zero-padded images, per example.

    Parameters
    ----------
    x : Tensor (M, C, H, W)
        A batch on any device. Not modified.
    generator : torch.Generator, optional
        Source of all randomness (global RNG if None). The draws are made on the
        generator's device and moved to ``x.device``, so a CPU generator drives a
        CUDA batch identically. Order of draws: M flip bits, then M row offsets,
        then M column offsets; the same generator state gives the same output.
    padding : int
        Zero padding on each side before cropping back to (H, W); offsets are
        uniform in ``[0, 2 * padding]``, as ``RandomCrop(H, padding)``.

    Returns
    -------
    Tensor (M, C, H, W), same dtype and device as ``x``.

    Note: the padding is zeros of the *normalized* data, i.e. the dataset-mean
    colour, whereas OpenLTH pads raw images with black before normalizing. Only the
    value of the border pixels differs.
    """
    if x.dim() != 4:
        raise ValueError(f"random_flip_crop expects (M, C, H, W), got shape {tuple(x.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    m, c, h, w = x.shape
    gdev = generator.device if generator is not None else torch.device("cpu")
    flip = torch.rand(m, generator=generator, device=gdev).lt(0.5).to(x.device)
    rows = torch.randint(0, 2 * padding + 1, (m,), generator=generator, device=gdev).to(x.device)
    cols = torch.randint(0, 2 * padding + 1, (m,), generator=generator, device=gdev).to(x.device)

    x = torch.where(flip.view(m, 1, 1, 1), x.flip(-1), x)
    if padding == 0:
        return x
    padded = F.pad(x, (padding, padding, padding, padding))
    r = rows.view(m, 1) + torch.arange(h, device=x.device).view(1, h)  # (M, H)
    q = cols.view(m, 1) + torch.arange(w, device=x.device).view(1, w)  # (M, W)
    batch = torch.arange(m, device=x.device).view(m, 1, 1, 1)
    chan = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, chan, r.view(m, 1, h, 1), q.view(m, 1, 1, w)]
