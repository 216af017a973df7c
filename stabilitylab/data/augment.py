"""Batched, on-device data augmentation (the CIFAR recipe: flip + crop with padding 4).

No Python loop over examples and no PIL: one random draw per batch, one gather.

:func:`random_flip_crop` draws from a ``torch.Generator``. The training engine uses
:func:`random_flip_crop_replicas`, which augments the batches of all R replicas in one
call: its draws come from a counter-based integer hash of (replica key, step, example,
draw), so each replica's augmentation depends only on its own seed and step, never on
which other replicas share the group, the call happens without any generator or
host round trip (it traces into the compiled step), and CPU and CUDA give the same draws.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stabilitylab.core.seeds import derive_seed


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
    m = x.shape[0]
    gdev = generator.device if generator is not None else torch.device("cpu")
    flip = torch.rand(m, generator=generator, device=gdev).lt(0.5).to(x.device)
    rows = torch.randint(0, 2 * padding + 1, (m,), generator=generator, device=gdev).to(x.device)
    cols = torch.randint(0, 2 * padding + 1, (m,), generator=generator, device=gdev).to(x.device)

    return _flip_crop(x, flip, rows, cols, padding)


def _flip_crop(x, flip, rows, cols, padding):
    m, c, h, w = x.shape
    x = torch.where(flip.view(m, 1, 1, 1), x.flip(-1), x)
    if padding == 0:
        return x
    padded = F.pad(x, (padding, padding, padding, padding))
    r = rows.view(m, 1) + torch.arange(h, device=x.device).view(1, h)  # (M, H)
    q = cols.view(m, 1) + torch.arange(w, device=x.device).view(1, w)  # (M, W)
    batch = torch.arange(m, device=x.device).view(m, 1, 1, 1)
    chan = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, chan, r.view(m, 1, h, 1), q.view(m, 1, 1, w)]


_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x * c) mod 2**32`` for int64 ``x`` in [0, 2**32): split so no product overflows."""
    return (x * (c & 0xFFFF) + ((x * (c >> 16)) & 0xFFFF) * 65536) & _M32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixing function (the "lowbias32" xorshift-multiply hash of
    C. Wellons, 2018) on int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def replica_keys(seeds, device=None) -> torch.Tensor:
    """(R, 2) int64 augmentation keys: the low and high 32 bits of each replica's
    ``derive_seed(data_seed, "augment")``."""
    rows = [(s & _M32, (s >> 32) & _M32) for s in (derive_seed(int(d), "augment") for d in seeds)]
    return torch.tensor(rows, dtype=torch.long, device=device)


def random_flip_crop_replicas(x: torch.Tensor, keys: torch.Tensor, steps: torch.Tensor,
                              padding: int = 4) -> torch.Tensor:
    """Flip + crop (as :func:`random_flip_crop`) of every replica's batch in one call.

    Parameters
    ----------
    x : Tensor (R, B, C, H, W)
    keys : (R, 2) int64 from :func:`replica_keys`
    steps : (R,) int64, the training step of each replica
    padding : int

    Example j of replica r at step t draws ``u_d = hash32(h ^ d)`` for d = 1, 2, 3 with
    ``h = hash32(hash32(k0 ^ hash32(k1 ^ hash32(t))) ^ hash32(j))``: the flip bit is
    ``u_1 & 1``, the row and column offsets ``u_2, u_3 mod (2 padding + 1)``.
    """
    if x.dim() != 5:
        raise ValueError(f"random_flip_crop_replicas expects (R, B, C, H, W), got {tuple(x.shape)}")
    r, b = x.shape[:2]
    keys = keys.to(x.device)
    t = hash32(steps.to(device=x.device, dtype=torch.long) & _M32)
    per_step = hash32(keys[:, 0] ^ hash32(keys[:, 1] ^ t))  # (R,)
    example = hash32(torch.arange(b, device=x.device, dtype=torch.long))  # (B,)
    h = hash32(per_step[:, None] ^ example[None, :]).reshape(-1)  # (R*B,)
    span = 2 * padding + 1
    flip = (hash32(h ^ 1) & 1).bool()
    rows = hash32(h ^ 2) % span
    cols = hash32(h ^ 3) % span
    out = _flip_crop(x.reshape(r * b, *x.shape[2:]), flip, rows, cols, padding)
    return out.view(x.shape)
