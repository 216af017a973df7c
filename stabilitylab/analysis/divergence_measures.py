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

from stabilitylab.analysis.barriers import alpha_grid, instability
from stabilitylab.analysis.divergence import divergence_rate, divergence_time
from stabilitylab.analysis.interpolate import evaluate_interpolation
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
    rate, time_ = allocate(ctx, "divergence_rate"), allocate(ctx, "divergence_time")
    deltas = list(DELTAS)
    barrier = allocate(ctx, "barrier_at", delta=deltas)
    at_step = probe_steps(ctx.steps, ctx.rewinds, ctx.resolved.total_steps)
    alphas = alpha_grid(BARRIER_ALPHAS)
    data = ctx.data
    n_train = ctx.cfg.data.train_eval_size
    bn_x = data.train_x[:n_train] if ctx.stacked.buffer_slots else None
    for kind, level, k in list(ctx.combos()):
        valid = ctx.steps >= k
        steps_k = ctx.steps[valid]
        at = {"kind": kind, "level": level, "rewind": k}
        if len(steps_k) >= 2:
            curves = dist.sel(at).values[..., valid]  # (pair, S_k)
            rate.loc[at] = divergence_rate(curves, steps_k, DIVERGENCE_WINDOW)
            time_.loc[at] = divergence_time(curves, steps_k, DIVERGENCE_FRACTION)
        if level == ctx.levels[0] and (at_step[ctx.rewinds.index(k)] >= 0).any():
            reps = ctx.complete_replicas(kind, level, k)
            row = at_step[ctx.rewinds.index(k)]
            wanted = [int(s) for s in row if s >= 0]  # all after k: nothing to mask
            stored = ctx.ds.weights.sel(kind=kind, level=level, rewind=k, step=wanted).values
            for j, s in enumerate(row):
                if s < 0:
                    continue
                w = torch.from_numpy(stored[:, wanted.index(int(s))].astype(np.float32)).to(ctx.device)
                for p, (a, b) in enumerate(ctx.pairs):
                    if a in reps and b in reps and torch.isfinite(w[[a, b]]).all():
                        res = evaluate_interpolation(ctx.stacked, w[a], w[b], alphas,
                                                     data.test_x, data.test_y, bn_recompute_x=bn_x)
                        barrier.loc[{**at, "pair": ctx.pair_labels[p], "delta": deltas[j]}] = float(
                            instability(np.asarray(res["error"])))
        if progress is not None:
            progress(1)
    return {"divergence_rate": rate, "divergence_time": time_, "barrier_at": barrier,
            "barrier_at_step": xr.DataArray(at_step, dims=("rewind", "delta"),
                                            coords={"rewind": ctx.rewinds, "delta": deltas})}
