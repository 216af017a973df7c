"""Divergence of copies along training, from the full trajectories (the ``divergence`` group).

Every copy of a (kind, level, rewind) starts at W_k (``perturb`` copies at a slightly
moved W_k) and the store holds its weights at every recorded step, so the growth of the
distance between two copies can be followed, not only its value at T:

- ``divergence_rate``: the slope of log ‖W_a(t) − W_b(t)‖ over the first
  :data:`DIVERGENCE_WINDOW` iterations after k, an empirical finite-time Lyapunov exponent
  of training (:func:`stabilitylab.analysis.divergence.divergence_rate`);
- ``divergence_time``: the iterations after k until the distance first reaches
  :data:`DIVERGENCE_FRACTION` of its value at T;
- ``barrier_at``: the linear-mode-connectivity error barrier (Frankle et al. 2020,
  "Linear Mode Connectivity and the Lottery Ticket Hypothesis", ICML, Def. 1 applied at an
  intermediate step) between the two copies at step k + Δ, for Δ in :data:`DELTAS`: the
  barrier over training time, and the cheap probe "stable at k + Δ?" (copies trained Δ
  steps instead of T − k). Computed for the level-0 copies (the rewind-point question),
  on the test set with :data:`BARRIER_ALPHAS` points; Δ uses the first recorded step at or
  after k + Δ (``barrier_at_step``) and is NaN where none is recorded before T.

The distance-growth curve itself is ``data_order_l2`` (per kind, so per noise kind);
:func:`stabilitylab.analysis.divergence.distance_growth` normalises it.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from stabilitylab.analysis import xr as sxr
from stabilitylab.analysis.barriers import alpha_grid, instability
from stabilitylab.analysis.cells import Cells
from stabilitylab.analysis.endpoints import bn_recompute_x, evaluate_paths
from stabilitylab.analysis.interpolate import evaluate_points
from stabilitylab.analysis.registry import Measure, Variable, allocate, group

DIVERGENCE_WINDOW = 100  # iterations after k over which the log-distance slope is fitted
DIVERGENCE_FRACTION = 0.5  # divergence time: until the distance reaches half its final value
DELTAS = (10, 25, 50, 100, 200)  # barrier_at: iterations after k
BARRIER_ALPHAS = 11  # interpolation points of barrier_at (0, 0.1, ..., 1)

_PAIR = ("kind", "level", "rewind", "pair")
VARIABLES = (
    Variable("divergence_rate", _PAIR, "slope of log `data_order_l2` over the first "
             f"{DIVERGENCE_WINDOW} iterations after k (points with distance 0 left out): an "
             "empirical finite-time Lyapunov exponent of training", "1/iteration",
             needs_trajectory=True),
    Variable("divergence_time", _PAIR, "iterations after k until `data_order_l2` first reaches "
             f"{DIVERGENCE_FRACTION:g} of its value at T", "iterations", needs_trajectory=True),
    Variable("barrier_at", ("kind", "level", "rewind", "pair", "delta"), "LMC test-error "
             "barrier between the pair's weights at the first recorded step ≥ k + Δ "
             f"({BARRIER_ALPHAS} points; level 0 only, NaN elsewhere and where no such step "
             "before T is recorded)", "fraction", needs_trajectory=True),
    Variable("barrier_at_step", ("rewind", "delta"), "the recorded step `barrier_at` used "
             "(−1 where none)", "iterations", dtype="int64"),
)
MEASURES = (
    Measure("divergence_rate", "divergence_rate", "pair", "1/iteration", False,
            f"growth rate of the log distance between two copies over the first "
            f"{DIVERGENCE_WINDOW} iterations after k", "Summers & Dinneen, ICML 2021",
            label="divergence rate", rank=14),
    Measure("divergence_time", "divergence_time", "pair", "iterations", True,
            f"iterations after k until two copies are {DIVERGENCE_FRACTION:g} of their final "
            "distance apart", label="divergence time", rank=15),
)


def probe_steps(steps, rewinds, total_steps: int, deltas=DELTAS) -> np.ndarray:
    """(rewind, delta) int: the first recorded step ≥ k + Δ and < T, or −1 where none."""
    steps = np.asarray(steps)
    out = np.full((len(rewinds), len(deltas)), -1, np.int64)
    for i, k in enumerate(rewinds):
        for j, d in enumerate(deltas):
            after = steps[(steps >= k + d) & (steps < total_steps)]
            if after.size:
                out[i, j] = int(after[0])
    return out


@group("divergence", reads="trajectory", variables=VARIABLES, measures=MEASURES,
       phase="divergence", needs=("trajectory",), rank=15)
def compute(ctx, results, options, progress=None) -> dict[str, xr.DataArray]:
    """Rates and times from the trajectory group's distance curves; barriers along training."""
    dist = results["data_order_l2"]  # (kind, level, rewind, pair, step), NaN before k
    rate, time_ = _rates_and_times(ctx, dist)
    deltas = list(DELTAS)
    at_step = probe_steps(ctx.steps, ctx.rewinds, ctx.resolved.total_steps)
    barrier = _barriers(ctx, at_step, deltas)
    if progress is not None:
        progress(len(Cells.of(ctx)))
    return {"divergence_rate": rate, "divergence_time": time_, "barrier_at": barrier,
            "barrier_at_step": xr.DataArray(at_step, dims=("rewind", "delta"),
                                            coords={"rewind": ctx.rewinds, "delta": deltas})}


def _rates_and_times(ctx, dist: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray]:
    """divergence_rate and divergence_time of every (kind, level, pair) at once, one array
    operation per rewind point (each has its own steps ≥ k)."""
    rate, time_ = allocate(ctx, "divergence_rate"), allocate(ctx, "divergence_time")
    present = ctx.cells()
    for k in ctx.rewinds:
        valid = ctx.steps >= k
        if valid.sum() < 2:
            continue
        curves = dist.sel(rewind=k).isel(step=np.flatnonzero(valid))
        here = present.sel(rewind=k)
        r = sxr.divergence_rate(curves, ctx.steps[valid], DIVERGENCE_WINDOW)
        t = sxr.divergence_time(curves, ctx.steps[valid], DIVERGENCE_FRACTION)
        rate.loc[{"rewind": k}] = r.where(here).transpose(*rate.dims[:2], "pair")
        time_.loc[{"rewind": k}] = t.where(here).transpose(*time_.dims[:2], "pair")
    return rate, time_


def _barriers(ctx, at_step: np.ndarray, deltas: list[int]) -> xr.DataArray:
    """barrier_at for the level-0 cells: the interior points of every (cell, pair, Δ) path
    in one stack of points (:func:`~stabilitylab.analysis.interpolate.evaluate_points`,
    blocks of pairs if large) and each network at the ends once; the probe steps of all
    cells read in one pass."""
    barrier = allocate(ctx, "barrier_at", delta=deltas)
    level0 = np.zeros(ctx.cells().shape, bool)
    level0[:, 0, :] = True
    cells = Cells.of(ctx, where=level0 & (at_step >= 0).any(1)[None, None, :])
    if not len(cells):
        return barrier
    rows = at_step[cells.rewind]  # (cell, delta) step or -1
    use = np.where(rows >= 0, rows, ctx.steps[-1])  # a stand-in step, masked below
    index = xr.DataArray(np.searchsorted(ctx.steps, use), dims=("cell", "delta"))
    lazy = cells.take(ctx.ds.weights).isel(step=index).astype(np.float32)
    (w,) = ctx.timed_compute(lazy.transpose("cell", "delta", "replica", "param"))
    w = w.values  # (cell, delta, replica, P)
    complete = ctx.completed.values[cells.kind, cells.level, cells.rewind]
    a, b = ctx.pair_sides
    finite = np.isfinite(w).all(-1)  # (cell, delta, replica)
    ok = ((complete[:, None, a] & complete[:, None, b]) & finite[..., a] & finite[..., b]
          & (rows >= 0)[..., None])  # (cell, delta, pair)
    ci, di, pi = np.nonzero(ok)
    values = np.full(ok.shape, np.nan)
    if len(ci):
        x, y, bn_x = ctx.data.test_x, ctx.data.test_y, bn_recompute_x(ctx)
        wa = torch.from_numpy(w[ci, di, a[pi]]).to(ctx.device)
        wb = torch.from_numpy(w[ci, di, b[pi]]).to(ctx.device)
        inner = evaluate_paths(ctx, wa, wb, alpha_grid(BARRIER_ALPHAS)[1:-1], x, y, bn_x)
        # the ends: each network once, though a replica is an end of R - 1 pairs
        used = np.zeros(w.shape[:3], bool)
        used[ci, di, a[pi]] = used[ci, di, b[pi]] = True
        ends = np.full(used.shape, np.nan)
        ends[used] = evaluate_points(ctx.stacked, torch.from_numpy(w[used]).to(ctx.device),
                                     x, y, bn_recompute_x=bn_x)["error"]
        curves = np.concatenate([ends[ci, di, b[pi]][:, None], inner["error"],
                                 ends[ci, di, a[pi]][:, None]], 1)  # α·W_a + (1 − α)·W_b
        values[ci, di, pi] = instability(curves)
    return cells.scatter(ctx, "barrier_at", values.transpose(0, 2, 1), delta=deltas)
