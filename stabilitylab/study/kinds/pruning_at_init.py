"""The pruning-at-init controls: masks scored once at W_0 (or W_k), at the IMP level's
density, trained from W_k like ``random_prune`` (:mod:`stabilitylab.prune.pai`); and the
layerwise shuffle of the IMP mask."""

from __future__ import annotations

from stabilitylab.study.kinds.registry import MaskInputs, Masks, RunKind, register


def _pai_rule(name: str):
    """A pruning-at-init mask rule (:mod:`stabilitylab.prune.pai`) at the IMP mask's density
    over the same prunable weights, scoring W_0 (``pruning.pai_from = "init"``) or W_k, on
    one training batch of data order u_0 from step k (SNIP, GraSP; SynFlow needs no data)."""

    def rule(m: MaskInputs) -> Masks:
        from stabilitylab.prune import density
        from stabilitylab.prune.pai import PAI_RULES

        if m.level == 0:
            return m.imp
        ctx = m.ctx
        if ctx.cfg.pruning.pai_from == "init":
            params, buffers = ctx.init_weights, {n: t[0] for n, t in ctx.init_buffers.items()}
        else:
            params, buffers = m.point.params, m.point.buffers
        import torch

        eligible = {n: torch.ones_like(t, dtype=torch.bool) for n, t in m.imp.items()}
        masks = PAI_RULES[name](ctx.stacked.template, params, buffers, m.batches(1)[0],
                                density(m.imp), eligible, generator=m.generator)
        return {n: masks[n].cpu() for n in m.imp}

    rule.__name__ = f"{name}_mask"
    return rule


def shuffled_mask(m: MaskInputs) -> Masks:
    """The IMP mask with its kept positions permuted at random within each layer (per-layer
    density kept): the layerwise-shuffle ablation of Frankle et al. 2021, "Pruning Neural
    Networks at Initialization: Why are We Missing the Mark?" (ICLR), Sec. 5. Applied to
    IMP's mask it is distributed exactly as the ``random_prune`` control (a uniformly random
    set of each layer's kept count): a second draw of that control, not a different one."""
    from stabilitylab.prune.pai import layerwise_shuffle

    return layerwise_shuffle(m.imp, m.generator) if m.level > 0 else m.imp


register(RunKind("magnitude_init", "W_k under the global magnitude mask of W_0 (Frankle et al. "
                 "2021)", control=True, mask=_pai_rule("magnitude_init"), rank=20))
register(RunKind("snip", "W_k under the SNIP mask (Lee et al. 2019)", control=True,
                 mask=_pai_rule("snip"), rank=21))
register(RunKind("grasp", "W_k under the GraSP mask (Wang et al. 2020)", control=True,
                 mask=_pai_rule("grasp"), rank=22))
register(RunKind("synflow", "W_k under the SynFlow mask (Tanaka et al. 2020)", control=True,
                 mask=_pai_rule("synflow"), rank=23))
register(RunKind("shuffle", "W_k under the IMP mask shuffled within each layer (Frankle et al. "
                 "2021)", control=True, mask=shuffled_mask, rank=24))
