"""The perturbation noise kinds ``perturb`` and ``data_order+perturb``: copies that differ by
a perturbation of W_k, not (only) by data order; Summers & Dinneen 2021, "Nondeterminism
and Instability in Neural Network Optimization" (ICML)."""

from __future__ import annotations

from stabilitylab.study.kinds.registry import (
    RunKind,
    Start,
    StartInputs,
    from_rewind,
    imp_mask,
    register,
)


def first_order(replica: int) -> int:
    """Every replica trains under replica 0's data order u_0."""
    return 0


def perturbed_rewind(s: StartInputs) -> Start:
    """:func:`from_rewind`, with W_k moved by a perturbation seeded for this replica
    (``study.perturbation``: a relative Gaussian of size ``study.epsilon``, one bit flip, or
    the init-scale modes of Kwok et al. 2025; :mod:`stabilitylab.study.perturb_start`).
    Pruned weights are not touched. Replica 0 stays at W_k under ``study.perturb_reference``."""
    from stabilitylab.study.perturb_start import is_reference, perturbed_params

    start = from_rewind(s)
    if is_reference(s):
        return start
    params = perturbed_params(s, start.params, start.buffers)
    return Start(params, start.buffers, start.opt_state, start.opt_step)


register(RunKind("perturb", "the IMP mask from a perturbed W_k, all copies under data order u_0",
                 control=False, noise=True, mask=imp_mask, start=perturbed_rewind,
                 data_order=first_order, rank=10, pair_label="perturbed pairs"))
register(RunKind("data_order+perturb", "the IMP mask from a perturbed W_k, each copy its own "
                 "data order", control=False, noise=True, mask=imp_mask,
                 start=perturbed_rewind, rank=11, pair_label="data-order + perturbed pairs"))
