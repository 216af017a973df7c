"""Each run's final network evaluated once, shared by the groups that need it.

The interpolation group needs every endpoint's error and loss on the test set and on the
train subset (α = 0 and α = 1 of each path); the replica group needs the endpoints' test
logits (disagreement). A replica appears in R − 1 pairs, so evaluating endpoints per pair
repeats work; here every complete run of every cell is evaluated once, as one stack of
points (:func:`stabilitylab.analysis.interpolate.evaluate_points`), and the result is kept
in the context. :func:`evaluate_paths` evaluates the points along many paths as one stack.
"""

from __future__ import annotations

import numpy as np
import torch

from stabilitylab.analysis.cells import Cells
from stabilitylab.analysis.interpolate import evaluate_points, interpolate_pairs


def splits(ctx) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The evaluation sets of the function-space measures: test, and the fixed train subset."""
    data, n_train = ctx.data, ctx.cfg.data.train_eval_size
    return {"test": (data.test_x, data.test_y),
            "train": (data.train_x[:n_train], data.train_y[:n_train])}


def bn_recompute_x(ctx) -> torch.Tensor | None:
    """Training examples for the BatchNorm recompute (None for nets without BatchNorm)."""
    n_train = ctx.cfg.data.train_eval_size
    return ctx.data.train_x[:n_train] if ctx.stacked.buffer_slots else None


def finals(ctx, cells: Cells) -> np.ndarray:
    """(cell, replica, P) float32 final weights."""
    return cells.take(ctx.load("final_weights")).transpose("cell", "replica", "param").values


def endpoint_eval(ctx, split: str) -> dict:
    """Error, loss (cell, replica) and, for ``"test"``, logits (cell, replica, example,
    class) of every final network with finite weights (NaN elsewhere), BatchNorm
    statistics recomputed as on the interpolation path. Computed once per context."""
    key = ("endpoints", split)
    if key in ctx.cache:
        return ctx.cache[key]
    cells = Cells.of(ctx)
    w = finals(ctx, cells)
    ok = ctx.completed.values[cells.kind, cells.level, cells.rewind] & np.isfinite(w).all(-1)
    x, y = splits(ctx)[split]
    res = evaluate_points(ctx.stacked, torch.from_numpy(w[ok]).to(ctx.device), x, y,
                          bn_recompute_x=bn_recompute_x(ctx), return_logits=split == "test")
    out = {"cells": cells, "ok": ok}
    for name in ("error", "loss"):
        full = np.full(ok.shape, np.nan)
        full[ok] = res[name]
        out[name] = full
    if split == "test":
        logits = np.full(ok.shape + tuple(res["logits"].shape[1:]), np.nan, np.float32)
        logits[ok] = res["logits"].numpy()
        out["logits"] = logits
    ctx.cache[key] = out
    return out


def endpoint_values(ctx, split: str, kind, level, rewind, replica) -> dict[str, np.ndarray]:
    """Error and loss of the final networks at (kind, level, rewind, replica) positions
    (arrays of indices into the context's lists), from :func:`endpoint_eval`: a group whose
    paths end at final networks takes their values from there instead of evaluating them
    again (each point's values do not depend on what it is evaluated with)."""
    ends = endpoint_eval(ctx, split)
    cells = ends["cells"]
    out = {}
    for q in ("error", "loss"):
        grid = np.full(ctx.cells().shape + ends[q].shape[1:], np.nan)
        grid[cells.kind, cells.level, cells.rewind] = ends[q]
        out[q] = grid[kind, level, rewind, replica]
    return out


#: Weights of the points evaluated at once (N = pairs × α per block, memory permitting).
POINTS_BUDGET_BYTES = 256 * 2**20


def evaluate_paths(ctx, wa: torch.Tensor, wb: torch.Tensor, alphas, x, y, bn_x) -> dict:
    """Error and loss (n, A) at α·W_a + (1 − α)·W_b for n pairs (rows of ``wa``, ``wb``)
    and the A given α, every pair's points in one stack (blocks of pairs if large)."""
    n, n_alpha = wa.shape[0], len(alphas)
    out = {"error": np.empty((n, n_alpha)), "loss": np.empty((n, n_alpha))}
    if n == 0 or n_alpha == 0:
        return out
    per_pair = n_alpha * wa.shape[1] * wa.element_size()
    block = max(1, POINTS_BUDGET_BYTES // per_pair)
    for start in range(0, n, block):
        stop = min(n, start + block)
        points = interpolate_pairs(wa[start:stop], wb[start:stop], alphas)
        res = evaluate_points(ctx.stacked, points.reshape(-1, wa.shape[1]), x, y,
                              bn_recompute_x=bn_x)
        for q in ("error", "loss"):
            out[q][start:stop] = res[q].reshape(stop - start, n_alpha)
    return out
