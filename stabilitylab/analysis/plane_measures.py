"""Error and loss planes through three networks, and the trajectory maps' contour (``plane``).

Garipov, Izmailov, Podoprikhin, Vetrov & Wilson, "Loss Surfaces, Mode Connectivity, and
Fast Ensembling of DNNs" (NeurIPS 2018), Fig. 1: test error and loss on the plane through
three networks (:mod:`stabilitylab.analysis.planes`: Gram–Schmidt basis, a
:data:`~stabilitylab.analysis.planes.GRID_POINTS`² grid with a margin, pruned weights kept 0,
BatchNorm statistics recomputed at every node). For each (kind, level) the default planes
pass through W_a = copy 0's final weights, W_b = copy 1's, and W_c = W_k, at three rewind
points (the ``plane`` coordinate): the first k, the last k, and the k of the LMC rule
(earliest k with mean instability below the threshold; NaN where no k is stable).

In the same pass, the test-error contour of each trajectory map's PC1–PC2 plane
(Li et al., NeurIPS 2018, §7) is evaluated at those k on the same number of nodes.

Opt-in (``--measures plane``): on the default study it costs 2 × 441 forward passes over
the test set per (kind, level, plane), more than the whole default ``analyze``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import xarray as xr

from stabilitylab.analysis.barriers import LMC_THRESHOLD
from stabilitylab.analysis.planes import (
    GRID_POINTS,
    MARGIN,
    DegeneratePlaneError,
    Plane,
    evaluate_plane,
    plane_basis,
    plane_grid,
)
from stabilitylab.analysis.registry import Variable, allocate, group
from stabilitylab.analysis.trajectory_map_measures import map_pca

log = logging.getLogger(__name__)

PLANES = ("first", "last", "lmc")  # the `plane` coordinate: which rewind point
ANCHORS = ("a", "b", "c")  # W_a (copy 0 at T), W_b (copy 1 at T), W_c (W_k)
_KLP = ("kind", "level", "plane")
_GRID = ("kind", "level", "plane", "plane_y", "plane_x")
_GARIPOV = "Garipov et al., NeurIPS 2018, Fig. 1"


def _work(ctx) -> int:
    return len({(kind, level) for kind, level, _ in ctx.combos()}) * len(PLANES)


VARIABLES = (
    Variable("plane_rewind", _KLP, "the rewind point k of each plane: the first k, the last k, "
             "the LMC rule's k (−1 where none)", "iterations", dtype="int64"),
    Variable("plane_test_error", _GRID, "test error on the plane through W_a (copy 0 at T), "
             f"W_b (copy 1 at T) and W_c = W_k, at the grid nodes ({_GARIPOV})", "fraction"),
    Variable("plane_test_loss", _GRID, "test cross-entropy on the same nodes", "nats"),
    Variable("plane_x_coord", ("kind", "level", "plane", "plane_x"), "x of each node: "
             "distance from W_a along W_b − W_a", "weight L2 norm"),
    Variable("plane_y_coord", ("kind", "level", "plane", "plane_y"), "y of each node: "
             "distance from the line through W_a and W_b, towards W_c", "weight L2 norm"),
    Variable("plane_anchor_x", ("kind", "level", "plane", "anchor"), "x of W_a, W_b, W_c",
             "weight L2 norm"),
    Variable("plane_anchor_y", ("kind", "level", "plane", "anchor"), "y of W_a, W_b, W_c",
             "weight L2 norm"),
    Variable("plane_anchor_error", ("kind", "level", "plane", "anchor"), "test error of "
             "W_a, W_b, W_c evaluated directly", "fraction"),
    Variable("map_test_error", _GRID, "test error on the trajectory map's PC1–PC2 plane (mean "
             "of the paths + x·PC1 + y·PC2) at the planes' k (Li et al., NeurIPS 2018, §7)",
             "fraction"),
    Variable("map_x_coord", ("kind", "level", "plane", "plane_x"), "PC1 coordinate of each "
             "node of `map_test_error`", "weight L2 norm"),
    Variable("map_y_coord", ("kind", "level", "plane", "plane_y"), "PC2 coordinate of each "
             "node", "weight L2 norm"),
)


def plane_rewinds(ctx, results, kind, level) -> list[int]:
    """The k of each entry of :data:`PLANES` for (kind, level) (−1: none)."""
    ks = [k for k in ctx.rewinds if ctx.complete_replicas(kind, level, k)]
    if not ks:
        return [-1] * len(PLANES)
    lmc = -1
    if "instability" in results:
        inst = results["instability"].sel(kind=kind, level=level).mean("pair", skipna=True)
        stable = [k for k in ks if float(inst.sel(rewind=k)) < LMC_THRESHOLD]
        lmc = stable[0] if stable else -1
    return [ks[0], ks[-1], lmc]


@group("plane", reads="function", phase="planes", rank=60, work=_work, needs=("interpolation",),
       default=False, variables=VARIABLES)
def compute(ctx, results, options, progress=None) -> dict[str, xr.DataArray]:
    """The three default planes and the map contours of every (kind, level)."""
    node = list(range(GRID_POINTS))
    grid = {"plane": list(PLANES), "plane_x": node, "plane_y": node}
    out = {v.name: allocate(ctx, v.name, anchor=list(ANCHORS), **grid) for v in VARIABLES}
    out["plane_rewind"] = out["plane_rewind"].fillna(-1).astype(np.int64)
    data = ctx.data
    bn_x = data.train_x[:ctx.cfg.data.train_eval_size] if ctx.stacked.buffer_slots else None
    for kind, level in dict.fromkeys((kd, lv) for kd, lv, _ in ctx.combos()):
        for name, k in zip(PLANES, plane_rewinds(ctx, results, kind, level)):
            at = {"kind": kind, "level": level, "plane": name}
            out["plane_rewind"].loc[at] = k
            if k >= 0:
                mask = ctx.mask(kind, level, k)
                _three_point_plane(ctx, out, at, k, mask, bn_x)
                _map_contour(ctx, out, at, k, mask, bn_x)
            if progress is not None:
                progress(1)
    return out


def _three_point_plane(ctx, out, at, k, mask, bn_x) -> None:
    from stabilitylab.analysis.interpolate import evaluate_points

    kind, level = at["kind"], at["level"]
    reps = ctx.complete_replicas(kind, level, k)
    if len(reps) < 2:
        log.warning("plane %s of (%s, level %s): fewer than 2 complete copies; left NaN",
                    at["plane"], kind, level)
        return
    finals = ctx.final_weights(kind, level, k)
    start = np.asarray(ctx.ds.weights.sel(kind=kind, level=level, rewind=k, replica=reps[0],
                                          step=k).values, np.float32)
    three = np.stack([finals[reps[0]], finals[reps[1]], start])
    try:
        plane = plane_basis(*three)
    except DegeneratePlaneError as exc:
        log.warning("plane %s of (%s, level %s, k=%s) left NaN: %s", at["plane"], kind, level,
                    k, exc)
        return
    xs, ys = plane_grid(plane.anchors, GRID_POINTS, MARGIN)
    res = evaluate_plane(ctx.stacked, plane, xs, ys, ctx.data.test_x, ctx.data.test_y,
                         mask=mask, bn_recompute_x=bn_x, device=ctx.device)
    direct = evaluate_points(ctx.stacked, torch.from_numpy(three).to(ctx.device),
                             ctx.data.test_x, ctx.data.test_y, bn_recompute_x=bn_x)
    out["plane_test_error"].loc[at] = res["error"]
    out["plane_test_loss"].loc[at] = res["loss"]
    out["plane_x_coord"].loc[at] = xs
    out["plane_y_coord"].loc[at] = ys
    out["plane_anchor_x"].loc[at] = plane.anchors[:, 0]
    out["plane_anchor_y"].loc[at] = plane.anchors[:, 1]
    out["plane_anchor_error"].loc[at] = direct["error"]


def _map_contour(ctx, out, at, k, mask, bn_x) -> None:
    try:
        found = map_pca(ctx, at["kind"], at["level"], k)
    except ValueError as exc:
        log.warning("map contour of (%s, level %s, k=%s) left NaN: %s", at["kind"], at["level"],
                    k, exc)
        return
    if found is None or not np.isfinite(found[0].explained).all():
        return
    pca = found[0]
    lo, hi = pca.scores.min(0), pca.scores.max(0)
    pad = MARGIN * np.maximum(hi - lo, 1e-12)
    xs = np.linspace(lo[0] - pad[0], hi[0] + pad[0], GRID_POINTS)
    ys = np.linspace(lo[1] - pad[1], hi[1] + pad[1], GRID_POINTS)
    view = Plane(pca.mean, pca.components[0], pca.components[1], np.zeros((3, 2)))
    res = evaluate_plane(ctx.stacked, view, xs, ys, ctx.data.test_x, ctx.data.test_y,
                         mask=mask, bn_recompute_x=bn_x, device=ctx.device)
    out["map_test_error"].loc[at] = res["error"]
    out["map_x_coord"].loc[at] = xs
    out["map_y_coord"].loc[at] = ys
