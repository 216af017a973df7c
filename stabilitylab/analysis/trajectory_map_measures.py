"""Trajectory maps: where the copies went, in the PCA view of their paths (``trajectory_map``).

Li, Xu, Taylor, Studer & Goldstein, "Visualizing the Loss Landscape of Neural Nets"
(NeurIPS 2018), §7: for each (kind, level, rewind k) the recorded weights of all
complete replicas at every recorded step from k to T are the rows of X; PCA of X centred
at its mean gives the view. Stored: each replica's path in the first
:data:`MAP_COMPONENTS` components, the share of variance each explains, and the
coordinates of W_k (the first complete replica's weights at step k, where every
data-order copy starts).

The PCA is :func:`stabilitylab.analysis.pca.path_pca`: exact, through the N × N Gram
matrix accumulated by dask over the store's chunks (never the whole trajectory in
memory); randomized SVD (dask ``svd_compressed``) above 4096 recorded points. The test-error
contour of the PC1–PC2 plane is computed by the opt-in ``plane`` group
(:mod:`stabilitylab.analysis.plane_measures`), which shares this module's
:func:`map_pca`.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import xarray as xr
from threadpoolctl import threadpool_limits

from stabilitylab.analysis.cells import Cells
from stabilitylab.analysis.pca import BLOCK_VALUES, GRAM_MAX_POINTS, path_pca
from stabilitylab.analysis.registry import Variable, group

log = logging.getLogger(__name__)

MAP_COMPONENTS = 2  # components stored (the `component` coordinate: 1, 2, ...)
_LI = "Li et al., NeurIPS 2018, §7"


def map_pca(ctx, kind, level, k, n_components: int = MAP_COMPONENTS):
    """(PathPCA, replica indices, step indices) of the paths of (kind, level, k), or None
    when no replica is complete; raises ValueError on non-finite weights."""
    found = _map_points(ctx, kind, level, k)
    if found is None:
        return None
    reps, steps = found
    if _held_whole(ctx, reps, steps):  # path_pca holds them whole: read once, as loading
        at = (ctx.kinds.index(kind), ctx.levels.index(level), ctx.rewinds.index(k))
        (x,) = next(ctx.read_ahead([functools.partial(_read_points, ctx, at, reps, steps)]))
    else:
        x = _lazy_points(ctx, kind, level, k, reps, steps)
    return path_pca(x, n_components), reps, steps


def _map_points(ctx, kind, level, k):
    """(replica indices, step indices) of the paths of (kind, level, k): each complete
    replica's recorded steps from k on; None with no complete replica."""
    reps = ctx.complete_replicas(kind, level, k)
    if not reps:
        return None
    return reps, np.nonzero(np.asarray(ctx.steps) >= k)[0]


def _lazy_points(ctx, kind, level, k, reps, steps):
    """The (N, P) points of the paths as a dask array (read block by block by path_pca)."""
    import dask.array as da

    w = ctx.ds.weights.sel(kind=kind, level=level, rewind=k).data  # dask (R, S, P)
    return da.concatenate([w[r][steps] for r in reps], axis=0)


def _read_points(ctx, at, reps, steps) -> tuple[np.ndarray]:
    """The (N, P) points of the paths of the cell at positions ``at`` (kind, level,
    rewind), read with :meth:`StudyContext.read_cells` (no dask graph), as a 1-tuple.
    ``steps``: a contiguous run of step indices (those from k on)."""
    w = ctx.read_cells(*([i] for i in at), step=slice(int(steps[0]), int(steps[-1]) + 1))[0]
    return (w[reps].reshape(-1, w.shape[-1]),)


def _held_whole(ctx, reps, steps) -> bool:
    """Whether :func:`path_pca` holds the (N, P) points whole (one Gram block)."""
    n, p = len(reps) * len(steps), len(ctx.prunable)
    return n <= GRAM_MAX_POINTS and p <= BLOCK_VALUES // max(n, 1)


@group("trajectory_map", reads="trajectory", phase="trajectory maps", rank=17,
       variables=(
           Variable("trajectory_map_path", ("kind", "level", "rewind", "replica", "step",
                                            "component"),
                    "each replica's recorded weights from k to T projected on the principal "
                    "components of all replicas' paths from k to T, centred at their mean "
                    f"({_LI}; NaN before k)", "weight L2 norm", needs_trajectory=True),
           Variable("trajectory_map_explained", ("kind", "level", "rewind", "component"),
                    "share of the paths' variance each component explains", "fraction",
                    needs_trajectory=True),
           Variable("trajectory_map_start", ("kind", "level", "rewind", "component"),
                    "coordinates of W_k (the first complete replica at step k) in the same view",
                    "weight L2 norm", needs_trajectory=True),
       ))
def compute(ctx, results, options, progress=None) -> dict[str, xr.DataArray]:
    """One PCA per (kind, level, k) cell of the study's complete replicas (each cell its own
    eigenproblem), written back in one assignment per variable."""
    comps = list(range(1, MAP_COMPONENTS + 1))
    cells = Cells.of(ctx)
    n = len(cells)
    path = np.full((n, len(ctx.replicas), len(ctx.steps), len(comps)), np.nan)
    explained = np.full((n, len(comps)), np.nan)
    start = np.full((n, len(comps)), np.nan)
    labels = list(zip(*(cells.coord(d).values for d in ("kind", "level", "rewind"))))
    found = [_map_points(ctx, str(kind), int(level), int(k)) for kind, level, k in labels]
    # The cells held whole are read on a background thread while the one before is
    # computed (ctx.read_ahead: at most two in memory); the others are read block by block.
    reads = ctx.read_ahead(
        functools.partial(_read_points, ctx, (cells.kind[i], cells.level[i], cells.rewind[i]),
                          *f) if f is not None and _held_whole(ctx, *f) else ()
        for i, f in enumerate(found))
    # NumPy's BLAS on one thread here: the read-ahead thread decompresses the next cell on
    # the other core, and a BLAS thread that loses its core stalls its partner. On the
    # 2-core AMD EPYC the group took 1.5-2.4 s with two BLAS threads, 0.88-0.93 s with one.
    with threadpool_limits(1, user_api="blas"):
        _maps(ctx, labels, found, reads, path, explained, start, progress)
    out = {name: cells.scatter(ctx, name, values, component=comps) for name, values in (
        ("trajectory_map_path", path), ("trajectory_map_explained", explained),
        ("trajectory_map_start", start))}
    out["trajectory_map_path"].attrs["pca"] = ("exact through the Gram matrix (dask); "
                                               "randomized above 4096 points")
    return out


def _maps(ctx, labels, found, reads, path, explained, start, progress) -> None:
    """Each cell's PCA, written into ``path``, ``explained`` and ``start`` (row per cell)."""
    for i, ((kind, level, k), cell, read) in enumerate(zip(labels, found, reads)):
        if cell is not None:
            reps, steps = cell
            try:
                x = read[0] if read else _lazy_points(ctx, str(kind), int(level), int(k),
                                                      reps, steps)
                res = path_pca(x, MAP_COMPONENTS)
            except ValueError as exc:  # non-finite weights: NaN, one line
                log.warning("trajectory map of (%s, %s, %s) left NaN: %s", kind, level, k, exc)
            else:
                scores = res.scores.reshape(len(reps), len(steps), -1)
                path[i][np.ix_(reps, steps)] = scores
                explained[i] = res.explained
                start[i] = scores[0, 0]
        if progress is not None:
            progress(1)
