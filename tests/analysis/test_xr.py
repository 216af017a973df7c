"""xarray wrappers: dim-keyed, broadcasting, lazy on dask, equal to the array layer."""

import numpy as np
import pytest
import xarray as xr

from stabilitylab.analysis import barriers, distances, measures, stats
from stabilitylab.analysis import xr as sxr

dask = pytest.importorskip("dask")


@pytest.fixture
def weights():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(2, 3, 4, 10)).astype(np.float32)  # rewind, replica, step, param
    return xr.DataArray(data, dims=("rewind", "replica", "step", "param"),
                        coords={"rewind": [0, 100], "replica": [0, 1, 2],
                                "step": [0, 10, 20, 30]})


def test_distances_and_pairwise(weights):
    mask = xr.DataArray(np.arange(10) % 3 != 0, dims="param")
    a, b = weights.isel(replica=0), weights.isel(replica=1)
    out = sxr.l2_distance(a, b, mask=mask)
    assert out.dims == ("rewind", "step")
    np.testing.assert_allclose(out, distances.l2_distance(a.values, b.values, mask.values))
    np.testing.assert_allclose(sxr.angle(a, b), distances.angle(a.values, b.values))
    pw = sxr.pairwise(weights, "replica", mask=mask)
    assert pw.dims == ("rewind", "step", "pair")
    assert list(pw.pair.values) == ["0-1", "0-2", "1-2"]
    assert list(pw.pair_b.values) == [1, 2, 2]
    np.testing.assert_allclose(pw.sel(pair="0-1"), out)


def test_lazy_on_dask(weights):
    lazy = weights.chunk({"rewind": 1, "param": 5})  # core dim split across chunks
    out = sxr.pairwise(lazy, "replica", metric="angle")
    assert isinstance(out.data, dask.array.Array)
    np.testing.assert_allclose(out.compute(), sxr.pairwise(weights, "replica", metric="angle"))
    d = sxr.l2_distance(lazy.isel(replica=0), lazy.isel(replica=2))
    assert isinstance(d.data, dask.array.Array)
    eb = sxr.early_bird_distance(lazy, 0.5)
    assert isinstance(eb.data, dask.array.Array)
    np.testing.assert_allclose(eb.compute(), measures.early_bird_distance(weights.values, 0.5))
    assert list(eb.step.values) == [0, 10, 20]


def test_barriers_rhat_and_correlations():
    rng = np.random.default_rng(1)
    alphas = barriers.alpha_grid(5)
    curve = xr.DataArray(rng.random((2, 3, 5)), dims=("rewind", "pair", "alpha"),
                         coords={"alpha": alphas})
    lazy = curve.chunk({"rewind": 1})
    inst = sxr.instability(lazy)
    assert isinstance(inst.data, dask.array.Array)
    np.testing.assert_allclose(inst, barriers.instability(curve.values))
    np.testing.assert_allclose(sxr.above_line_barrier(curve),
                               barriers.above_line_barrier(curve.values, alphas))

    losses = xr.DataArray(rng.normal(size=(2, 4, 50)), dims=("rewind", "replica", "example"))
    rh = sxr.split_rhat(losses.chunk({"rewind": 1}), "replica", "example")
    assert rh.dims == ("rewind",)
    np.testing.assert_allclose(rh, measures.split_rhat(losses.values, 1, 2))

    measure = xr.DataArray(rng.normal(size=(2, 8)), dims=("level", "rewind"))
    acc = -measure + 0.3 * rng.normal(size=(2, 8))
    ds = sxr.rank_correlations(measure.chunk({"level": 1}), acc, n_boot=100)
    assert isinstance(ds.spearman.data, dask.array.Array)
    ds = ds.compute()
    assert ds.spearman.dims == ("level",)
    ref = stats.rank_correlations(measure.values[1], acc.values[1], n_boot=100)
    for k in ("n", "spearman", "kendall_low", "kendall_high", "spearman_pvalue"):
        assert ds[k].values[1] == pytest.approx(ref[k])


def test_pairwise_several_metrics_along_a_metric_dim():
    """sxr.pairwise with a tuple of metrics: a ``metric`` dim holding each metric alone."""
    rng = np.random.default_rng(7)
    w = xr.DataArray(rng.normal(size=(3, 5, 40)).astype(np.float32),
                     dims=("replica", "step", "param"))
    mask = xr.DataArray(rng.random(40) < 0.5, dims="param")
    both = sxr.pairwise(w, "replica", metric=("l2", "angle"), mask=mask)
    assert list(both.metric.values) == ["l2", "angle"] and both.sizes["pair"] == 3
    for metric in ("l2", "angle"):
        xr.testing.assert_identical(both.sel(metric=metric, drop=True),
                                    sxr.pairwise(w, "replica", metric=metric, mask=mask))
