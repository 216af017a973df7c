"""Layer-wise barriers: which layers carry the barrier between two copies (``layerwise``).

Adilova, Andriushchenko, Kamp, Fischer & Jaggi, "Layer-wise Linear Mode Connectivity"
(ICLR 2024), §3: for each replica pair's final weights W_a, W_b and each layer ℓ, the
path that interpolates layer ℓ alone (weight and bias) and holds every other layer at
W_b (:func:`stabilitylab.analysis.layerwise.layerwise_points`); its barrier has the form of
the LMC barrier (Frankle et al., ICML 2020): max_α E_α − mean(E_0, E_1), on test error
and on test loss, with :data:`LAYERWISE_ALPHAS` points. The path's α = 1 end is a hybrid
(W_b with W_a's layer ℓ), not a trained network, so the barrier is at least half the gap
between the hybrid's error and W_b's (:func:`~stabilitylab.analysis.barriers.instability`). Computed for the ``imp`` kind
(controls stay NaN), which keeps ``analyze``'s default cost within budget.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from stabilitylab.analysis.barriers import alpha_grid, instability
from stabilitylab.analysis.cells import Cells
from stabilitylab.analysis.endpoints import POINTS_BUDGET_BYTES, endpoint_values, finals
from stabilitylab.analysis.interpolate import evaluate_points
from stabilitylab.analysis.layerwise import layer_selectors, layerwise_points
from stabilitylab.analysis.registry import Variable, group

LAYERWISE_ALPHAS = 7  # 0, 1/6, ..., 1 (0.5 included); analyze's time budget, issue #20
LAYERWISE_KINDS = ("imp",)
_DIMS = ("kind", "level", "rewind", "pair", "layer")
_ADILOVA = "Adilova et al., ICLR 2024"


def _work(ctx) -> int:
    return sum(1 for kind, _, _ in ctx.combos() if kind in LAYERWISE_KINDS)


@group("layerwise", reads="function", phase="layer-wise barriers", rank=35, work=_work,
       variables=(
           Variable("layerwise_barrier", _DIMS, "test-error barrier along the path that "
                    "interpolates one layer (weight and bias) between the pair's final weights "
                    f"and holds the others at W_b ({_ADILOVA}; {LAYERWISE_ALPHAS} points; "
                    "`imp` only, NaN for the controls). Its α = 1 end is W_b with W_a's layer, a "
                    "hybrid network: a bad hybrid alone raises the barrier by half its excess "
                    "error", "fraction"),
           Variable("layerwise_loss_barrier", _DIMS, "the same on test loss", "nats"),
           Variable("layerwise_hybrid_error", _DIMS, "test error of that path's α = 1 end: W_b "
                    "with W_a's layer", "fraction"),
       ))
def compute(ctx, results, options, progress=None) -> dict[str, xr.DataArray]:
    """Every (imp cell, pair) × layer × α > 0 point of the study in stacked evaluations
    (blocks of at most :data:`~stabilitylab.analysis.endpoints.POINTS_BUDGET_BYTES` of
    weights); each point's error and loss do not depend on what it is stacked with. The
    α = 0 end, W_b, comes from the shared evaluation of the final networks."""
    selectors = layer_selectors(ctx.stacked)
    layers = list(selectors)
    alphas = alpha_grid(LAYERWISE_ALPHAS)
    data = ctx.data
    bn_x = data.train_x[:ctx.cfg.data.train_eval_size] if ctx.stacked.buffer_slots else None
    chosen = np.isin(np.asarray(ctx.kinds), LAYERWISE_KINDS)[:, None, None]
    cells = Cells.of(ctx, where=np.broadcast_to(chosen, ctx.cells().shape))
    w = finals(ctx, cells)  # (cell, replica, P)
    ok = ctx.completed.values[cells.kind, cells.level, cells.rewind] & np.isfinite(w).all(-1)
    a, b = ctx.pair_sides
    cell_i, pair_i = np.nonzero(ok[:, a] & ok[:, b])  # the (cell, pair) rows to evaluate
    per_row = len(layers) * (len(alphas) - 1) * w.shape[-1] * w.itemsize
    block = max(1, POINTS_BUDGET_BYTES // per_row)
    shape = (len(cells), len(ctx.pairs), len(layers))
    out = {name: np.full(shape, np.nan) for name in _NAMES}
    reported = 0
    for r0 in range(0, len(cell_i), block):
        rows = slice(r0, r0 + block)
        ci, pi = cell_i[rows], pair_i[rows]
        wa = torch.from_numpy(w[ci, a[pi]]).to(ctx.device)
        wb = torch.from_numpy(w[ci, b[pi]]).to(ctx.device)
        pts = torch.cat([layerwise_points(wa[i], wb[i], alphas[1:], selectors[name])
                         for i in range(len(wa)) for name in layers])
        res = evaluate_points(ctx.stacked, pts, data.test_x, data.test_y, bn_recompute_x=bn_x)
        # α = 0 is W_b for every layer: a final network, whose values are shared
        start = endpoint_values(ctx, "test", cells.kind[ci], cells.level[ci], cells.rewind[ci],
                                b[pi])
        curves = _paths(start["error"], res["error"], len(layers))
        at = (ci, pi)
        out["layerwise_barrier"][at] = instability(curves)
        out["layerwise_loss_barrier"][at] = instability(
            _paths(start["loss"], res["loss"], len(layers)))
        out["layerwise_hybrid_error"][at] = curves[:, :, -1]
        if progress is not None:  # the cells before the next block's first row are done
            stop = r0 + block
            finished = int(cell_i[stop]) if stop < len(cell_i) else len(cells)
            progress(finished - reported)
            reported = finished
    if progress is not None and reported < len(cells):
        progress(len(cells) - reported)
    return {name: cells.scatter(ctx, name, values, layer=layers) for name, values in out.items()}


_NAMES = ("layerwise_barrier", "layerwise_loss_barrier", "layerwise_hybrid_error")


def _paths(start: np.ndarray, rest: np.ndarray, layers: int) -> np.ndarray:
    """(pair, layer, alpha) paths: each pair's W_b value ``start`` (pair,) at α = 0 for every
    layer, then the α > 0 values ``rest`` (pair × layer × α > 0, flat, in that order)."""
    n = len(start)
    return np.concatenate([np.broadcast_to(start[:, None, None], (n, layers, 1)),
                           rest.reshape(n, layers, -1)], axis=-1)
