"""``random_prune``: W_k under a random mask with the IMP mask's per-layer density (Frankle &
Carbin 2019, "The Lottery Ticket Hypothesis", Sec. 2)."""

from __future__ import annotations

from stabilitylab.study.kinds.registry import MaskInputs, Masks, RunKind, register


def random_mask(m: MaskInputs) -> Masks:
    """A random mask with the IMP mask's per-layer density (level 0: nothing pruned)."""
    from stabilitylab.prune import random_masks_like

    return random_masks_like(m.imp, m.generator) if m.level > 0 else m.imp


register(RunKind("random_prune", "W_k under a random mask of the IMP mask's per-layer density",
                 control=True, mask=random_mask, rank=1, in_every_store=True, label="random pruning",
                 color="#D55E00", line="--"))
