"""``reinit``: the IMP mask on a fresh initialization (Frankle & Carbin 2019, "The Lottery
Ticket Hypothesis", Sec. 2)."""

from __future__ import annotations

from stabilitylab.study.kinds.registry import RunKind, Start, StartInputs, imp_mask, register


def fresh_init(s: StartInputs) -> Start:
    """A new initialization (seed ``Seeds.reinit``, the same for every run) and a fresh
    optimizer."""
    params, buffers = s.ctx.model_weights(s.ctx.seeds.reinit)
    return Start(params, buffers, None, 0)


register(RunKind("reinit", "the IMP mask on a fresh initialization", control=True,
                 mask=imp_mask, start=fresh_init, rank=2, in_every_store=True, label="random reinit",
                 color="#009E73", line=":", starts_at_rewind=False))
