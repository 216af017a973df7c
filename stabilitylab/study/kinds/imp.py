"""``imp``: iterative magnitude pruning with rewinding to W_k (Frankle et al. 2020, "Linear
Mode Connectivity and the Lottery Ticket Hypothesis", Sec. 4), trained at every level."""

from stabilitylab.study.kinds.registry import RunKind, imp_mask, register

register(RunKind("imp", "iterative magnitude pruning, rewound to W_k", control=False,
                 mask=imp_mask, rank=0, in_every_store=True, label="IMP", color="#0072B2", line="-"))
