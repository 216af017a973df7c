"""The paired matching rule (Frankle et al., ICML 2020, Sec. 4 and 4.4, as a one-sided test)."""

import numpy as np
import pytest
import xarray as xr
from scipy import stats

from stabilitylab.analysis.prediction import matching, paired_matching


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_equal_to_dense_copies_is_matching(rng):
    dense = 0.9 + 0.01 * rng.standard_normal(5)
    out = paired_matching(dense, dense)
    assert out["difference"] == 0.0 and out["low"] == 0.0 and out["n"] == 5
    assert bool(out["matching"])


def test_clearly_worse_is_not_matching(rng):
    dense = 0.9 + 0.003 * rng.standard_normal(5)
    sub = dense - 0.05 + 0.001 * rng.standard_normal(5)
    out = paired_matching(sub, dense)
    assert out["low"] < -out["margin"] and not bool(out["matching"])


def test_small_noisy_drop_within_margin_matches():
    dense = np.array([0.90, 0.91, 0.92])
    sub = dense - 0.001  # a 0.1-point drop on every pair: the bound is -0.1 points
    out = paired_matching(sub, dense)
    assert np.isclose(out["low"], -0.001) and bool(out["matching"])
    # the margin is one sd of the dense copies when that is above 0.2 points
    assert np.isclose(out["margin"], np.std(dense, ddof=1))


def test_bound_uses_student_t_with_n_minus_1_dof():
    dense = np.array([0.90, 0.91, 0.92, 0.89])
    d = np.array([-0.004, 0.002, -0.010, 0.001])
    out = paired_matching(dense + d, dense)
    want = d.mean() - stats.t.ppf(0.95, 3) * d.std(ddof=1) / np.sqrt(4)
    assert np.isclose(out["low"], want, rtol=0, atol=1e-12)
    # a normal quantile (or n dof) would give a different, tighter bound
    assert not np.isclose(out["low"], d.mean() - 1.645 * d.std(ddof=1) / 2, atol=1e-6)
    assert not np.isclose(out["low"], d.mean() - stats.t.ppf(0.95, 4) * d.std(ddof=1) / 2,
                          atol=1e-6)


def test_one_replica_is_undefined_not_an_error():
    out = paired_matching(np.array([0.95]), np.array([0.90]))
    assert out["n"] == 1 and np.isnan(out["low"]) and not bool(out["matching"])
    assert out["difference"] == pytest.approx(0.05)


def test_missing_copies_are_left_out_of_the_pairs():
    dense = np.array([0.90, np.nan, 0.92, 0.91])
    sub = np.array([0.90, 0.91, np.nan, 0.91])
    out = paired_matching(sub, dense)
    assert out["n"] == 2 and out["difference"] == pytest.approx(0.0)


def _per_replica(acc):
    kinds, levels, rewinds = ["imp", "random_prune"], [0, 1], [0, 25]
    return xr.DataArray(acc, dims=("kind", "level", "rewind", "replica"),
                        coords={"kind": kinds, "level": levels, "rewind": rewinds,
                                "replica": [0, 1, 2]})


def test_xarray_wrapper_pairs_with_level0_copies_at_the_same_k(rng):
    acc = np.empty((2, 2, 2, 3))
    dense = 0.9 + 0.004 * rng.standard_normal((2, 3))  # (rewind, replica)
    acc[:, :] = dense
    acc[0, 1, 1] = dense[1] - 0.0005  # imp level 1, k = 25: a hair below its own dense copies
    acc[1, 1, 0] = dense[0] - 0.08  # random_prune level 1, k = 0: far worse
    acc[1, 1, 1] = dense[0]  # equal to the dense copies at k = 0, but compared at k = 25
    out = matching(_per_replica(acc))
    m = out["matching"]
    assert m.dtype == bool and m.dims == ("kind", "level", "rewind")
    assert m.sel(kind="imp", level=0).all()  # the dense copies match themselves
    assert bool(m.sel(kind="imp", level=1, rewind=25))
    assert not bool(m.sel(kind="random_prune", level=1, rewind=0))
    diff = out["matching_difference"].sel(kind="random_prune", level=1, rewind=25)
    assert float(diff) == pytest.approx(float((dense[0] - dense[1]).mean()))
    assert out["matching_pairs"].dtype == np.int64 and int(out["matching_pairs"].max()) == 3
    assert out["matching_margin"].dims == ("rewind",)


def test_xarray_wrapper_without_level0_copies_is_all_undefined():
    acc = _per_replica(np.full((2, 2, 2, 3), 0.9)).sel(level=[1])
    out = matching(acc)
    assert not out["matching"].any() and np.isnan(out["matching_low"]).all()
