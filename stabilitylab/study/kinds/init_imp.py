"""``init_imp``: the different-init copies of :mod:`.init` pruned by IMP on their own runs:
each copy is its own lottery ticket (own W_0, data order and masks), as in OpenLTH's
replicates (Frankle & Carbin 2019, "The Lottery Ticket Hypothesis", Sec. 2, run once per
copy). Its pairs are different-init pairs."""

from __future__ import annotations

from stabilitylab.study.kinds.init import independent_init
from stabilitylab.study.kinds.registry import MaskInputs, Masks, RunKind, register


def own_imp_mask(m: MaskInputs) -> Masks:
    """This copy's own IMP masks: level L prunes the copy's own level L-1 final weights
    (Frankle & Carbin 2019, Sec. 2, run once per copy), so no two copies share a mask."""
    return m.own


register(RunKind("init_imp", "copies from independently seeded W_0, each its own data order, "
                 "pruned by IMP on its own earlier levels (different-init pairs)",
                 control=False, noise=True, mask=own_imp_mask, start=independent_init,
                 own_masks=True, rank=13, label="different-init pairs (own IMP masks)",
                 pair_noise="init", starts_at_rewind=False))
