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
from stabilitylab.analysis.cells import Cells
from stabilitylab.analysis.endpoints import endpoint_values, finals
from stabilitylab.analysis.interpolate import evaluate_points, interpolate_flat
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
    """Every (imp cell at level ≥ 1, replica) path of the study in one stacked evaluation
    of its interior points; both ends are final networks, whose values are shared
    (:func:`~stabilitylab.analysis.endpoints.endpoint_values`)."""
    names = ("cross_level_barrier", "cross_level_loss_barrier")
    if "imp" not in ctx.kinds or len(ctx.levels) < 2:
        return {name: allocate(ctx, name) for name in names}
    alphas = alpha_grid(CROSS_LEVEL_ALPHAS)
    data = ctx.data
    bn_x = data.train_x[:ctx.cfg.data.train_eval_size] if ctx.stacked.buffer_slots else None
    where = np.zeros(ctx.cells().shape, bool)
    where[ctx.kinds.index("imp"), 1:] = True  # level L ≥ 1; its parent is the level before
    cells = Cells.of(ctx, where=where)
    parents = Cells(cells.kind, cells.level - 1, cells.rewind, cells.labels)
    child, older = finals(ctx, cells), finals(ctx, parents)  # (cell, replica, P)
    complete = ctx.completed.values
    both = (complete[cells.kind, cells.level, cells.rewind]
            & complete[parents.kind, parents.level, parents.rewind]
            & np.isfinite(child).all(-1) & np.isfinite(older).all(-1))
    cell_i, rep_i = np.nonzero(both)
    values = {name: np.full(both.shape, np.nan) for name in names}
    if len(cell_i):
        pts = torch.cat([interpolate_flat(torch.from_numpy(child[c, r]).to(ctx.device),
                                          torch.from_numpy(older[c, r]).to(ctx.device),
                                          alphas[1:-1])
                         for c, r in zip(cell_i, rep_i)])
        res = evaluate_points(ctx.stacked, pts, data.test_x, data.test_y, bn_recompute_x=bn_x)
        shape = (len(cell_i), len(alphas) - 2)
        # α = 0: level L − 1's final network, α = 1: level L's (both evaluated already)
        start, end = (endpoint_values(ctx, "test", side.kind[cell_i], side.level[cell_i],
                                      side.rewind[cell_i], rep_i) for side in (parents, cells))
        for name, q in zip(names, ("error", "loss")):
            curve = np.concatenate([start[q][:, None], res[q].reshape(shape), end[q][:, None]], 1)
            values[name][cell_i, rep_i] = instability(curve)
    if progress is not None:
        progress(len(cells))
    return {name: cells.scatter(ctx, name, v, drop="kind") for name, v in values.items()}


def cross_level_mean(analysis: xr.Dataset) -> xr.DataArray | None:
    """(level, rewind) replica mean of ``cross_level_barrier`` (None when not computed)."""
    if "cross_level_barrier" not in analysis:
        return None
    with np.errstate(invalid="ignore"):
        return analysis["cross_level_barrier"].mean("replica", skipna=True)
