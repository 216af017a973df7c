"""``init``: different-init pairs (Entezari et al. 2022, "The Role of Permutation Invariance
in Linear Mode Connectivity of Neural Networks", ICLR): dense copies from independently
seeded W_0 under their own data orders, sharing nothing but the architecture; the baseline
the data-order copies are measured against. Never "data-order instability"."""

from __future__ import annotations

from stabilitylab.study.kinds.registry import (
    MaskInputs,
    Masks,
    RunKind,
    Start,
    StartInputs,
    register,
)


def dense_mask(m: MaskInputs) -> Masks:
    """Nothing pruned, at every level."""
    import torch  # the registry itself (names, controls) loads without torch

    return {n: torch.ones_like(t, dtype=torch.bool) for n, t in m.imp.items()}


def independent_init(s: StartInputs) -> Start:
    """A W_0 of this copy's own, seeded for (``init``, replica) alone: copy r starts from the
    same W_0^(r) at every level and rewind point, and no two copies (nor the IMP copies)
    share it; a fresh optimizer."""
    params, buffers = s.ctx.model_weights(s.ctx.seeds.kind("init", 0, 0, s.replica))
    return Start(params, buffers, None, 0)


register(RunKind("init", "dense copies from independently seeded W_0, each its own data order "
                 "(different-init pairs)", control=False, noise=True, mask=dense_mask,
                 start=independent_init, rank=12, label="different-init pairs",
                 pair_label="different-init pairs", starts_at_rewind=False))
