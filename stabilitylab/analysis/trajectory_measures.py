"""Measures read straight off the recorded trajectories (no forward passes).

- data-order distance curves between replica pairs (L2, angle);
- pruning-noise distance curves against the dense copy with the same data order
  (IMP and random-prune runs; NaN for reinit runs, which do not start from W_k);
- sign flips between W_k and W_T;
- early-bird mask distance along each trajectory;
- overlap of the masks IMP would draw from each replica.

Each function fills xarray DataArrays keyed by the store's dim names; entries
for runs that are not complete stay NaN.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from stabilitylab.analysis.distances import angle, l2_distance
from stabilitylab.analysis.measures import (
    chance_jaccard,
    early_bird_distance,
    magnitude_mask,
    mask_jaccard,
    sign_flips,
)
from stabilitylab.analysis.registry import Measure, Variable, allocate, group

EARLY_WINDOW = 10  # recorded intervals after k averaged into the scalar early-bird measure

_PAIR_STEP = ("kind", "level", "rewind", "pair", "step")
_RUN_STEP = ("kind", "level", "rewind", "step")
VARIABLES = (
    Variable("data_order_l2", _PAIR_STEP, "L2 distance between the pair's weights at each "
             "recorded step ≥ rewind (NaN before)", "weight L2 norm"),
    Variable("data_order_angle", _PAIR_STEP, "angle between the pair's weight vectors, same",
             "radians"),
    Variable("data_order_l2_final", ("kind", "level", "rewind", "pair"),
             "`data_order_l2` at T", "weight L2 norm"),
    Variable("data_order_angle_final", ("kind", "level", "rewind", "pair"),
             "`data_order_angle` at T", "radians"),
    Variable("pruning_noise_l2", _RUN_STEP, "‖m⊙W_dense − m⊙W_sub‖ between replica 0 of (kind, "
             "level) and `imp` level 0 replica 0 (same k), over surviving weights; levels ≥ 1; "
             "NaN for `reinit` (it does not start from W_k, so the dense copy is no "
             "counterpart)", "weight L2 norm"),
    Variable("pruning_noise_angle", _RUN_STEP, "the angle between the same two", "radians"),
    Variable("random_imp_ratio_data_order", ("level", "rewind"), "Random/IMP ratio of the "
             "final-step data-order L2 distance (pair mean)", "ratio"),
    Variable("random_imp_ratio_pruning_noise", ("level", "rewind"), "Random/IMP ratio of the "
             "final-step pruning-noise L2 distance", "ratio"),
    Variable("mask_jaccard", ("level", "rewind", "pair"), "Jaccard overlap of the masks IMP "
             "would draw from each replica's final weights at the next level's density",
             "fraction"),
    Variable("mask_jaccard_chance", ("level", "rewind"), "p/(2−p) at density p", "fraction"),
    Variable("sign_flips", ("kind", "level", "rewind", "replica"), "fraction of surviving "
             "weights whose sign differs between W_k and W_T", "fraction"),
    Variable("early_bird", ("kind", "level", "rewind", "replica", "step"), "Hamming distance "
             "between magnitude masks of consecutive recorded steps", "fraction",
             needs_trajectory=True),
    Variable("early_bird_early", ("kind", "level", "rewind", "replica"), "`early_bird` "
             f"averaged over the first {EARLY_WINDOW} recorded intervals after k", "fraction",
             needs_trajectory=True),
)
MEASURES = (
    Measure("data_order_l2", "data_order_l2_final", "pair", "weight L2 norm", False,
            "L2 distance between the two replicas' final weights ‖W_a − W_b‖",
            "Frankle et al., arXiv 1903.01611", label="data-order L2 distance", rank=7),
    Measure("data_order_angle", "data_order_angle_final", "pair", "radians", False,
            "angle between the two replicas' final weight vectors",
            label="data-order angle", rank=8),
    Measure("mask_jaccard", "mask_jaccard", "pair", "fraction", True,
            "Jaccard overlap of the masks IMP would draw from each replica's final weights",
            label="mask Jaccard (replica masks)", rank=9),
    Measure("sign_flips", "sign_flips", "replica", "fraction", False,
            "share of surviving weights whose sign differs between W_k and W_T",
            label="sign flips since k", rank=10),
    Measure("early_bird", "early_bird_early", "replica", "fraction", False,
            "Hamming distance between magnitude masks of consecutive recorded steps, mean over "
            "the first steps after k, as a share of prunable weights", "You et al., ICLR 2020",
            label="early-bird mask distance", rank=11),
)


@group("trajectory", reads="trajectory", variables=VARIABLES, measures=MEASURES,
       phase="trajectory measures", rank=10)
def compute(ctx, results, options, progress=None) -> dict[str, xr.DataArray]:
    """The trajectory group: every variable above, in one pass over the runs."""
    out = trajectory_measures(ctx, progress=progress)
    out.update(random_imp_ratios(ctx, out))
    T = ctx.resolved.total_steps
    out["data_order_l2_final"] = out["data_order_l2"].sel(step=T, drop=True)
    out["data_order_angle_final"] = out["data_order_angle"].sel(step=T, drop=True)
    return out


def trajectory_measures(ctx, progress=None) -> dict[str, xr.DataArray]:
    """Every trajectory measure for every complete (kind, level, rewind)."""
    out = {name: allocate(ctx, name) for name in (
        "data_order_l2", "data_order_angle", "pruning_noise_l2", "pruning_noise_angle",
        "sign_flips", "early_bird", "early_bird_early", "mask_jaccard", "mask_jaccard_chance")}
    fraction = ctx.cfg.pruning.fraction
    dense_cache: dict[int, np.ndarray] = {}
    for kind, level, k in list(ctx.combos()):
        reps = ctx.complete_replicas(kind, level, k)
        traj = ctx.trajectory(kind, level, k)  # (R, S, P), NaN before k
        mask = ctx.mask(kind, level, k)
        at = {"kind": kind, "level": level, "rewind": k}
        valid = ctx.steps >= k
        # Data-order distance: every pair of complete replicas, over step.
        for p, (a, b) in enumerate(ctx.pairs):
            if a in reps and b in reps:
                out["data_order_l2"].loc[{**at, "pair": ctx.pair_labels[p]}] = l2_distance(
                    traj[a], traj[b], mask)
                out["data_order_angle"].loc[{**at, "pair": ctx.pair_labels[p]}] = angle(
                    traj[a], traj[b], mask)
        # Pruning noise: replica 0 of a pruned run vs the dense copy from W_k under u_0
        # (Frankle et al. 2019, arXiv 1903.01611). Not for reinit: it does not start from
        # W_k, so the dense copy is not its counterpart and the distance would mix the
        # re-initialization into the pruning noise; it stays NaN.
        if kind != "reinit" and level > 0 and 0 in reps and ctx.complete("imp", 0, k, 0):
            if k not in dense_cache:
                dense_cache[k] = ctx.trajectory("imp", 0, k)[0]
            out["pruning_noise_l2"].loc[at] = l2_distance(dense_cache[k], traj[0], mask)
            out["pruning_noise_angle"].loc[at] = angle(dense_cache[k], traj[0], mask)
        # Sign flips between the run's start (step k) and its end (T).
        start = int(np.flatnonzero(ctx.steps == k)[0])
        survivors = mask & ctx.prunable
        for r in reps:
            out["sign_flips"].loc[{**at, "replica": ctx.replicas[r]}] = sign_flips(
                traj[r, start], traj[r, -1], survivors)
        # Early-bird: masks at the next level's density over this run's survivors.
        next_density = 1.0 - fraction
        steps_k = ctx.steps[valid]
        for r in reps:
            eb = early_bird_distance(traj[r][valid], next_density, survivors)
            curve = np.full(len(ctx.steps), np.nan)
            curve[np.flatnonzero(valid)[1:]] = eb
            out["early_bird"].loc[{**at, "replica": ctx.replicas[r]}] = curve
            out["early_bird_early"].loc[{**at, "replica": ctx.replicas[r]}] = float(
                np.mean(eb[:EARLY_WINDOW])) if len(steps_k) > 1 else np.nan
        # Mask overlap: the masks IMP would draw from each replica's final weights.
        if kind == "imp":
            drawn = {r: magnitude_mask(traj[r, -1], next_density, survivors) for r in reps}
            for p, (a, b) in enumerate(ctx.pairs):
                if a in reps and b in reps:
                    out["mask_jaccard"].loc[{"level": level, "rewind": k,
                                             "pair": ctx.pair_labels[p]}] = mask_jaccard(
                        drawn[a][survivors], drawn[b][survivors])
            out["mask_jaccard_chance"].loc[{"level": level, "rewind": k}] = chance_jaccard(next_density)
        if progress is not None:
            progress(1)
    return out


def random_imp_ratios(ctx, measures: dict[str, xr.DataArray]) -> dict[str, xr.DataArray]:
    """Random/IMP ratios of the final-step distances (Frankle et al. 2019, arXiv 1903.01611, §4:
    "a randomly pruned network ... is less stable"; LeNet data order 58.6/20.7 = 2.8x)."""
    T = ctx.resolved.total_steps
    out = {}
    for name, source in (("random_imp_ratio_data_order", "data_order_l2"),
                         ("random_imp_ratio_pruning_noise", "pruning_noise_l2")):
        final = measures[source].sel(step=T)
        if "pair" in final.dims:
            final = final.mean("pair", skipna=True)
        out[name] = final.sel(kind="random_prune") / final.sel(kind="imp")
    return out
