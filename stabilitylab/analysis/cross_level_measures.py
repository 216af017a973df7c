"""Cross-level barrier: are consecutive IMP solutions linearly connected? (``cross_level``).

Paul, Chen, Larsen, Frankle, Ganguli & Dziugaite, "Unmasking the Lottery Ticket
Hypothesis: What's Encoded in a Winning Ticket's Mask?" (ICLR 2023), §4: IMP at level L
finds a matching subnetwork when the solution of level L − 1 and that of level L (trained
from the same rewind point k under the next mask) are linearly connected. Here, for the
``imp`` kind, each replica and each k: the LMC barrier (Frankle et al., ICML 2020),
max_α E(αW_L + (1 − α)W_{L−1}) − mean of the endpoints, between level L − 1's and level
L's final weights, on test error and loss with :data:`CROSS_LEVEL_ALPHAS` points. It is
stored at level L (level 0 has no parent: NaN), beside that level's matching flag.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from stabilitylab.analysis.barriers import alpha_grid, instability
from stabilitylab.analysis.interpolate import interpolate_flat
from stabilitylab.analysis.layerwise import evaluate_in_chunks
from stabilitylab.analysis.registry import Variable, allocate, group

CROSS_LEVEL_ALPHAS = 11  # 0, 0.1, ..., 1 (`stabilitylab compare --alphas 11` gives the same)
_DIMS = ("level", "rewind", "replica")
_PAUL = "Paul et al., ICLR 2023"


def _work(ctx) -> int:
    return sum(1 for lv in ctx.levels[1:] for k in ctx.rewinds
               if ctx.complete_replicas("imp", lv, k))


@group("cross_level", reads="function", phase="cross-level barriers", rank=37, work=_work,
       variables=(
           Variable("cross_level_barrier", _DIMS, "test-error barrier on the linear path between "
                    "level L−1's and level L's final `imp` weights (same replica, same k), "
                    f"stored at level L ({_PAUL}; {CROSS_LEVEL_ALPHAS} points; NaN at level 0)",
                    "fraction"),
           Variable("cross_level_loss_barrier", _DIMS, "the same on test loss", "nats"),
       ))
def compute(ctx, results, options, progress=None) -> dict[str, xr.DataArray]:
    """One stacked evaluation per (level ≥ 1, k): every replica's path."""
    err, loss = allocate(ctx, "cross_level_barrier"), allocate(ctx, "cross_level_loss_barrier")
    alphas = alpha_grid(CROSS_LEVEL_ALPHAS)
    data = ctx.data
    bn_x = data.train_x[:ctx.cfg.data.train_eval_size] if ctx.stacked.buffer_slots else None
    if "imp" not in ctx.kinds:
        return {"cross_level_barrier": err, "cross_level_loss_barrier": loss}
    for parent, level in zip(ctx.levels, ctx.levels[1:]):
        for k in ctx.rewinds:
            reps = ctx.complete_replicas("imp", level, k)
            if not reps:
                continue
            both = [r for r in reps if ctx.complete("imp", parent, k, r)]
            child = torch.from_numpy(ctx.final_weights("imp", level, k)).to(ctx.device)
            older = torch.from_numpy(ctx.final_weights("imp", parent, k)).to(ctx.device)
            both = [r for r in both if torch.isfinite(child[r]).all()
                    and torch.isfinite(older[r]).all()]
            if both:
                pts = torch.cat([interpolate_flat(child[r], older[r], alphas) for r in both])
                res = evaluate_in_chunks(ctx.stacked, pts, data.test_x, data.test_y,
                                         bn_recompute_x=bn_x)
                shape = (len(both), len(alphas))
                at = {"level": level, "rewind": k, "replica": [ctx.replicas[r] for r in both]}
                err.loc[at] = instability(res["error"].reshape(shape))
                loss.loc[at] = instability(res["loss"].reshape(shape))
            if progress is not None:
                progress(1)
    return {"cross_level_barrier": err, "cross_level_loss_barrier": loss}


def cross_level_mean(analysis: xr.Dataset) -> xr.DataArray | None:
    """(level, rewind) replica mean of ``cross_level_barrier`` (None when not computed)."""
    if "cross_level_barrier" not in analysis:
        return None
    with np.errstate(invalid="ignore"):
        return analysis["cross_level_barrier"].mean("replica", skipna=True)
