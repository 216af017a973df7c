"""Barriers after REPAIR, with and without weight matching.

- ``repaired_instability``: the LMC error barrier (Frankle et al., ICML 2020, eq. 1) on
  the path between a pair's final weights after REPAIR (Jordan et al., ICLR 2023, §4:
  every hidden channel's mean and std reset to the interpolation of the endpoints');
- ``aligned_repaired_instability``: the same after weight matching B to A first
  (Ainsworth et al., ICLR 2023, Alg. 1), the setting in which Jordan et al. report it.

The REPAIR statistics and the BatchNorm recompute use the fixed train subset
(``data.train_eval_size`` examples); errors are on the test set. Every point is evaluated
by :func:`~stabilitylab.analysis.interpolate.evaluate_points`. Pairs of ``init`` copies
(independently initialised) are measured like every other kind and keep their kind label.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import xarray as xr

from stabilitylab.analysis.barriers import alpha_grid, instability
from stabilitylab.analysis.interpolate import evaluate_points
from stabilitylab.analysis.registry import Measure, Variable, allocate, group

log = logging.getLogger(__name__)

_CURVE = ("kind", "level", "rewind", "pair", "alpha")
_PAIR = ("kind", "level", "rewind", "pair")
_JORDAN = "Jordan et al., ICLR 2023, §4"


@group("repair", reads="function", phase="REPAIR", rank=35, default=False,
       variables=(
           Variable("repaired_test_error", _CURVE, "test error along the path after REPAIR "
                    "(per-channel statistics reset to the endpoints' interpolation)",
                    "fraction"),
           Variable("aligned_repaired_test_error", _CURVE, "the same after weight matching "
                    "W_b to W_a first", "fraction"),
           Variable("repaired_instability", _PAIR, f"error barrier after REPAIR ({_JORDAN})",
                    "fraction"),
           Variable("aligned_repaired_instability", _PAIR, "error barrier after weight "
                    f"matching and REPAIR ({_JORDAN}); NaN where alignment is not supported",
                    "fraction"),
       ),
       measures=(
           Measure("repaired_instability", "repaired_instability", "pair", "fraction", False,
                   "test-error barrier between two replicas after resetting every hidden "
                   "channel's mean and std to the interpolation of the endpoints'", _JORDAN,
                   label="repaired barrier (REPAIR)", rank=7),
           Measure("aligned_repaired_instability", "aligned_repaired_instability", "pair",
                   "fraction", False, "the same after permuting one replica's units to match "
                   "the other's by weight matching", f"Ainsworth et al., ICLR 2023; {_JORDAN}",
                   label="aligned + repaired barrier", rank=8),
       ))
def compute_repair(ctx, results, options, progress=None) -> dict[str, xr.DataArray]:
    return repair_measures(ctx, n_alphas=options.alphas, progress=progress)


def repair_measures(ctx, *, n_alphas: int = 30, progress=None) -> dict[str, xr.DataArray]:
    """Repaired (and aligned + repaired) curves and barriers for every complete pair."""
    from stabilitylab.analysis.repair import RepairedModel

    alphas = alpha_grid(n_alphas)
    out = {n: allocate(ctx, n, alpha=alphas) for n in ("repaired_test_error",
                                                       "aligned_repaired_test_error")}
    n_train = ctx.cfg.data.train_eval_size
    repair_x = ctx.data.train_x[:n_train].to(ctx.device)
    bn_x = repair_x if ctx.stacked.buffer_slots else None
    repaired = RepairedModel(ctx.stacked)
    from stabilitylab.analysis.align import flat_aligner  # scipy.optimize: when aligning

    align = flat_aligner(ctx.stacked, "aligned repaired barrier")
    x, y = ctx.data.test_x, ctx.data.test_y
    for kind, level, k in list(ctx.combos()):
        reps = ctx.complete_replicas(kind, level, k)
        final_np = ctx.final_weights(kind, level, k)
        reps = [r for r in reps if np.isfinite(final_np[r]).all()]
        finals = torch.from_numpy(final_np).to(ctx.device)
        for p, (a, b) in enumerate(ctx.pairs):
            if a not in reps or b not in reps:
                continue
            at = {"kind": kind, "level": level, "rewind": k, "pair": ctx.pair_labels[p]}
            others = {"repaired_test_error": finals[b]}
            if align is not None:
                others["aligned_repaired_test_error"] = torch.as_tensor(
                    align(final_np[a], final_np[b]), device=ctx.device)
            for name, other in others.items():
                points = repaired.repaired_path(finals[a], other, alphas, repair_x)
                res = evaluate_points(repaired.stacked, points, x, y, bn_recompute_x=bn_x)
                out[name].loc[at] = res["error"]
        if progress is not None:
            progress(1)
    coords = out["repaired_test_error"].isel(alpha=0, drop=True).coords
    for curve, barrier in (("repaired_test_error", "repaired_instability"),
                           ("aligned_repaired_test_error", "aligned_repaired_instability")):
        out[barrier] = xr.DataArray(instability(out[curve].values), dims=_PAIR, coords=coords)
    if align is None:
        out["aligned_repaired_instability"].attrs["note"] = \
            "weight matching not supported for this model"
    return out
