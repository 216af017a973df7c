"""Thin xarray wrappers over the array layer, keyed by dim name (docs/store-schema.md).

Every wrapper is an ``xr.apply_ufunc`` over the array function with the named core
dims, so it broadcasts over all other dims (kind, level, rewind, ...) and stays
lazy on dask-backed DataArrays (``dask="parallelized"``; a core dim split across
chunks is rechunked). See the array modules for the definitions and costs.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from stabilitylab.analysis import barriers, distances, divergence, measures, stats

__all__ = [
    "above_line_barrier",
    "angle",
    "divergence_rate",
    "divergence_time",
    "early_bird_curve",
    "early_bird_distance",
    "instability",
    "l2_distance",
    "pairwise",
    "rank_correlations",
    "split_rhat",
]

_DASK = {"dask": "parallelized", "dask_gufunc_kwargs": {"allow_rechunk": True}}


def _distance(fn, da1, da2, dim, mask):
    if mask is None:
        return xr.apply_ufunc(lambda a, b: fn(a, b, axis=-1), da1, da2,
                              input_core_dims=[[dim], [dim]], output_dtypes=[np.float64], **_DASK)
    return xr.apply_ufunc(lambda a, b, m: fn(a, b, m, axis=-1), da1, da2, mask,
                          input_core_dims=[[dim], [dim], [dim]], output_dtypes=[np.float64],
                          **_DASK)


def l2_distance(da1: xr.DataArray, da2: xr.DataArray, dim: str = "param",
                mask: xr.DataArray | None = None) -> xr.DataArray:
    """‖m⊙a − m⊙b‖₂ over ``dim`` (:func:`stabilitylab.analysis.distances.l2_distance`)."""
    return _distance(distances.l2_distance, da1, da2, dim, mask)


def angle(da1: xr.DataArray, da2: xr.DataArray, dim: str = "param",
          mask: xr.DataArray | None = None) -> xr.DataArray:
    """Angle in radians over ``dim`` (:func:`stabilitylab.analysis.distances.angle`)."""
    return _distance(distances.angle, da1, da2, dim, mask)


def pairwise(da: xr.DataArray, dim: str = "replica", *, param_dim: str = "param",
             metric: str | tuple[str, ...] = "l2",
             mask: xr.DataArray | None = None) -> xr.DataArray:
    """Distance between every pair i < j along ``dim``, as a new ``pair`` dim; with a tuple
    of metrics, every one from one pass over ``da``, along a new ``metric`` dim.

    The ``pair`` coordinate holds labels like ``"0-1"`` built from the ``dim``
    coordinate, with ``pair_a`` / ``pair_b`` (the two ``dim`` labels) as extra coordinates, as in the
    ``analysis`` group.
    (:func:`stabilitylab.analysis.distances.pairwise_distance`.)
    """
    labels = da[dim].values if dim in da.coords else np.arange(da.sizes[dim])
    n = da.sizes[dim]
    pairs = np.array([(i, j) for i in range(n) for j in range(i + 1, n)], dtype=int).reshape(-1, 2)

    def fn(x, *m):
        mask_ = m[0][..., None, :] if m else None  # the mask has no replica axis
        return distances.pairwise_distance(x, -2, metric=metric, mask=mask_, axis=-1)[1]

    several = not isinstance(metric, str)
    args = [da] if mask is None else [da, mask]
    cores = [[dim, param_dim]] + ([] if mask is None else [[param_dim]])
    sizes = {"pair": len(pairs)} | ({"metric": len(metric)} if several else {})
    out = xr.apply_ufunc(fn, *args, input_core_dims=cores, output_core_dims=[list(sizes)],
                         output_dtypes=[np.float64], dask="parallelized",
                         dask_gufunc_kwargs={"allow_rechunk": True, "output_sizes": sizes})
    out = out.assign_coords(
        pair=[f"{labels[i]}-{labels[j]}" for i, j in pairs],
        pair_a=("pair", labels[pairs[:, 0]]), pair_b=("pair", labels[pairs[:, 1]]))
    return out.assign_coords(metric=list(metric)) if several else out


def instability(curve: xr.DataArray, dim: str = "alpha") -> xr.DataArray:
    """max_α E_α − mean of the endpoints (:func:`stabilitylab.analysis.barriers.instability`)."""
    return xr.apply_ufunc(lambda c: barriers.instability(c, axis=-1), curve,
                          input_core_dims=[[dim]], output_dtypes=[np.float64], **_DASK)


def above_line_barrier(curve: xr.DataArray, dim: str = "alpha") -> xr.DataArray:
    """Entezari et al. barrier above the endpoint line; α from the ``dim`` coordinate
    when present (:func:`stabilitylab.analysis.barriers.above_line_barrier`)."""
    alphas = curve[dim].values if dim in curve.coords else None
    return xr.apply_ufunc(lambda c: barriers.above_line_barrier(c, alphas, axis=-1), curve,
                          input_core_dims=[[dim]], output_dtypes=[np.float64], **_DASK)


def split_rhat(da: xr.DataArray, chain_dim: str = "replica", draw_dim: str = "step", *,
               method: str = "bda3") -> xr.DataArray:
    """Split-R̂ over (``chain_dim``, ``draw_dim``) — function-space scalars only, never
    raw weights (:func:`stabilitylab.analysis.measures.split_rhat`)."""
    return xr.apply_ufunc(lambda x: measures.split_rhat(x, -2, -1, method=method), da,
                          input_core_dims=[[chain_dim, draw_dim]], output_dtypes=[np.float64],
                          **_DASK)


def early_bird_distance(traj: xr.DataArray, density: float,
                        prunable_mask: xr.DataArray | None = None, *, step_dim: str = "step",
                        param_dim: str = "param", delta: int = 1) -> xr.DataArray:
    """Mask distance between steps t and t+Δ, indexed by t along ``step_dim``
    (:func:`stabilitylab.analysis.measures.early_bird_distance`)."""
    n_out = traj.sizes[step_dim] - delta

    def fn(x, *m):
        return measures.early_bird_distance(x, density, m[0] if m else None, delta=delta)

    args = [traj] if prunable_mask is None else [traj, prunable_mask]
    cores = [[step_dim, param_dim]] + ([] if prunable_mask is None else [[param_dim]])
    out = xr.apply_ufunc(fn, *args, input_core_dims=cores, output_core_dims=[[step_dim]],
                         exclude_dims={step_dim}, output_dtypes=[np.float64],
                         dask="parallelized",
                         dask_gufunc_kwargs={"allow_rechunk": True,
                                             "output_sizes": {step_dim: n_out}})
    if step_dim in traj.coords:
        out = out.assign_coords({step_dim: traj[step_dim].values[:n_out]})
    return out


_CORR_KEYS = ("n", "spearman", "spearman_pvalue", "spearman_low", "spearman_high",
              "kendall", "kendall_pvalue", "kendall_low", "kendall_high")


def rank_correlations(measure: xr.DataArray, accuracy: xr.DataArray, dim: str = "rewind", *,
                      n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> xr.Dataset:
    """Spearman/Kendall of ``measure`` vs ``accuracy`` along ``dim``, with bootstrap CIs,
    for every combination of the other dims
    (:func:`stabilitylab.analysis.stats.rank_correlations`). Returns a Dataset with
    one variable per statistic."""

    def fn(m, a):
        r = stats.rank_correlations(m, a, n_boot=n_boot, seed=seed, ci=ci)
        return tuple(np.float64(r[k]) for k in _CORR_KEYS)

    outs = xr.apply_ufunc(fn, measure, accuracy, input_core_dims=[[dim], [dim]],
                          output_core_dims=[[] for _ in _CORR_KEYS], vectorize=True,
                          output_dtypes=[np.float64] * len(_CORR_KEYS), **_DASK)
    ds = xr.Dataset(dict(zip(_CORR_KEYS, outs)))
    ds.attrs.update(n_boot=n_boot, seed=seed, ci=ci, method="percentile bootstrap")
    return ds


def _early_bird_rows(x: np.ndarray, density: float, elig: np.ndarray | None) -> np.ndarray:
    """(..., S, P) → (..., S − 1): mask distance of each step to the one before it."""
    if x.shape[-2] < 2:
        return np.empty(x.shape[:-1][:-1] + (0,))
    return measures.early_bird_distance(x, density, elig, delta=1)


def early_bird_curve(traj: xr.DataArray, density: float,
                     prunable_mask: xr.DataArray | None = None, *, step_dim: str = "step",
                     param_dim: str = "param") -> xr.DataArray:
    """Mask distance between each recorded step and the step before it, indexed by the later
    step (NaN at the first): :func:`stabilitylab.analysis.measures.early_bird_distance`
    with Δ = 1, as a curve of ``traj``'s length.

    Out of core: on a dask-backed ``traj`` every block of steps is read once, with one step
    of overlap from the block before, so memory stays that of a block however many steps
    are recorded. ``prunable_mask`` broadcasts against ``traj`` without ``step_dim``.
    """
    import dask.array as da

    traj = traj.transpose(..., step_dim, param_dim)
    lead = traj.dims[:-2]
    elig = None
    if prunable_mask is not None:
        like = traj.isel({step_dim: 0}, drop=True)
        elig = np.asarray(prunable_mask.broadcast_like(like).transpose(*lead, param_dim).values,
                          bool)
    coords = {d: traj[d] for d in traj.dims[:-1] if d in traj.coords}

    def rows(x, where):
        m = None if elig is None else elig[where]
        return _early_bird_rows(x, density, m)

    if not isinstance(traj.data, da.Array):
        x = np.asarray(traj.values)
        body = rows(x, (Ellipsis,))
        nan = np.full(x.shape[:-2] + (1,), np.nan)
        return xr.DataArray(np.concatenate([nan, body], -1), dims=traj.dims[:-1], coords=coords)
    x = traj.data.rechunk({traj.ndim - 1: -1})
    ax = traj.ndim - 2
    ext = da.overlap.overlap(x, depth={ax: (1, 0)}, boundary="none") if len(x.chunks[ax]) > 1 \
        else x

    def block(b, block_info=None):
        loc = block_info[None]["array-location"]
        first = block_info[None]["chunk-location"][ax] == 0
        out = rows(b, tuple(slice(*s) for s in loc[:-1]))
        if first:
            out = np.concatenate([np.full(out.shape[:-1] + (1,), np.nan), out], -1)
        return out

    out = da.map_blocks(block, ext, drop_axis=traj.ndim - 1, chunks=x.chunks[:-1],
                        dtype=np.float64, meta=np.empty((0,) * (traj.ndim - 1)))
    return xr.DataArray(out, dims=traj.dims[:-1], coords=coords)


def _steps_outside(d: np.ndarray) -> np.ndarray:
    """``d`` (..., rows, step) laid out with the step axis outside the last other axis.

    The sums over steps in :mod:`stabilitylab.analysis.divergence` then round exactly as
    for one (rows, step) curve set evaluated alone (as analyze did per (kind, level,
    rewind) cell, where the pairs were the inner axis): batching does not change the bits.
    """
    if d.ndim < 2:
        return d
    return np.moveaxis(np.ascontiguousarray(np.moveaxis(d, -1, -2)), -2, -1)


def divergence_rate(dist: xr.DataArray, steps, window, *, dim: str = "step") -> xr.DataArray:
    """Slope of log ``dist`` over the first ``window`` steps, along ``dim`` (``steps``: its
    recorded steps, the first being k) (:func:`stabilitylab.analysis.divergence.divergence_rate`)."""
    return xr.apply_ufunc(
        lambda d: divergence.divergence_rate(_steps_outside(d), steps, window, axis=-1), dist,
        input_core_dims=[[dim]], output_dtypes=[np.float64], **_DASK)


def divergence_time(dist: xr.DataArray, steps, fraction: float = 0.5, *,
                    dim: str = "step") -> xr.DataArray:
    """Steps after k until ``dist`` first reaches ``fraction`` of its last value, along
    ``dim`` (:func:`stabilitylab.analysis.divergence.divergence_time`)."""
    return xr.apply_ufunc(
        lambda d: divergence.divergence_time(_steps_outside(d), steps, fraction, axis=-1), dist,
        input_core_dims=[[dim]], output_dtypes=[np.float64], **_DASK)
