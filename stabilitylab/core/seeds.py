"""Seed derivation: every random choice of a study comes from its master seed.

``derive_seed(master, "order", 3)`` is stable across processes, platforms and
Python versions (it hashes the labels; it does not use ``hash()``).
"""

from __future__ import annotations

import hashlib


def derive_seed(master: int, *labels: object) -> int:
    """A 63-bit seed determined by the master seed and a tuple of labels."""
    text = "/".join([str(int(master))] + [str(x) for x in labels])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, device: str | object = "cpu"):
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    import torch

    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g
