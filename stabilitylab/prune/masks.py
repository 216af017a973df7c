"""Magnitude pruning masks for IMP, and random masks with the same per-layer counts.

Masks are dicts ``name -> bool tensor`` over the *prunable* tensors only (conv and
linear weights); everything else is dense. Each level removes ``fraction`` of the
weights that are still alive (Frankle & Carbin 2019, "The Lottery Ticket
Hypothesis", Alg. 1 with rate p), so after n levels density = (1 - fraction)^n up
to rounding: the number pruned at a level is ``round(fraction * alive)`` (Python's
round, half to even). OpenLTH's ``sparse_global`` strategy prunes one weight more,
``ceil(fraction * alive) + 1`` (it keeps the weights strictly above the magnitude at
index ceil(fraction * alive) of the sorted alive weights);
:func:`stabilitylab.interop.openlth.openlth_global_masks` reproduces that rule.

Ties are broken deterministically (by index, through a stable sort), and the
global strategy selects exactly what ``torch.nn.utils.prune.global_unstructured``
with ``L1Unstructured`` selects on the same weights.
"""

from __future__ import annotations

import torch


def density(masks: dict[str, torch.Tensor]) -> float:
    """Kept fraction over all tensors of ``masks``."""
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    return kept / total if total else 1.0


def _prune_count(alive: int, fraction: float) -> int:
    return round(fraction * alive)


def global_magnitude_masks(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                           fraction: float) -> dict[str, torch.Tensor]:
    """Remove the ``fraction`` of alive weights with the smallest |w|, pooled over tensors."""
    names = list(weights)
    scores = torch.cat([
        torch.where(masks[n].bool(), weights[n].abs(), torch.full_like(weights[n], -1.0)).flatten()
        for n in names
    ])
    alive = torch.cat([masks[n].bool().flatten() for n in names])
    count = _prune_count(int(alive.sum()), fraction)
    # Already-pruned entries score -1 and sort strictly first (an alive weight that is exactly
    # 0 scores 0, so it can never displace a pruned one and revive it; torch's
    # global_unstructured likewise prunes only among the alive); we prune `count` alive ones
    # on top of them.
    already = int((~alive).sum())
    order = torch.argsort(scores, stable=True)
    keep = torch.ones_like(alive)
    keep[order[: already + count]] = False
    out, offset = {}, 0
    for n in names:
        size = weights[n].numel()
        out[n] = keep[offset:offset + size].view_as(weights[n]).clone()
        offset += size
    return out


def layerwise_magnitude_masks(weights, masks, fraction):
    """Remove ``fraction`` of each tensor's alive weights with the smallest |w|."""
    return {n: global_magnitude_masks({n: weights[n]}, {n: masks[n]}, fraction)[n] for n in weights}


def prune(weights, masks, fraction: float, strategy: str = "global"):
    """One IMP level: new masks from trained ``weights`` and current ``masks``."""
    if strategy == "global":
        return global_magnitude_masks(weights, masks, fraction)
    if strategy == "layerwise":
        return layerwise_magnitude_masks(weights, masks, fraction)
    raise ValueError(f"unknown pruning strategy {strategy!r}")


def first_idle_level(sizes: list[int], fraction: float, strategy: str, levels) -> int | None:
    """The first of ``levels`` whose IMP mask equals the previous level's because the pruning
    rule removes nothing more (``round(fraction * alive) == 0`` for the pool, or for every
    tensor with ``layerwise``), or None. Only counts are needed: which weights go does not
    change how many."""
    alive = list(sizes) if strategy == "layerwise" else [sum(sizes)]
    previous = None
    for level in sorted(levels):
        if previous is not None:
            pruned = [_prune_count(a, fraction) for a in alive]
            if not any(pruned):
                return level
            alive = [a - p for a, p in zip(alive, pruned)]
        previous = level
    return None


def random_masks_like(masks: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random masks with exactly the same number kept in each tensor (the random-pruning control,
    Frankle et al. 2019 arXiv 1903.01611 §3: "randomly pruned with the same layerwise sparsity")."""
    out = {}
    for n, m in masks.items():
        kept = int(m.sum())
        order = torch.randperm(m.numel(), generator=generator)
        flat = torch.zeros(m.numel(), dtype=torch.bool)
        flat[order[:kept]] = True
        out[n] = flat.view_as(m)
    return out
