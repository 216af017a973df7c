"""Intervals resample replicas, not pairs; below MIN_REPLICAS they are a labelled range."""

import numpy as np
import pytest

from stabilitylab.report import intervals as I


def _pairs(r: int):
    pairs = [(i, j) for i in range(r) for j in range(i + 1, r)]
    return np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])


def _naive_pair_bootstrap(values, n_boot=2000, seed=0):
    """What the report used to do: resample the pair values as if independent."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (n_boot, values.size))].mean(axis=1)
    return np.percentile(means, [2.5, 97.5])


def test_few_replicas_give_the_range_with_its_n():
    a, b = _pairs(3)
    iv = I.pair_interval([0.01, 0.02, 0.03], a, b)
    assert iv.method == I.RANGE and (iv.low, iv.high) == (0.01, 0.03)
    assert iv.text() == "range [1.00, 3.00], n = 3 replicas (3 pairs)"
    iv = I.replica_interval([0.90, np.nan, 0.92])  # a missing run is not counted
    assert iv.n == 2 and iv.text() == "range [90.00, 92.00], n = 2 replicas"
    assert I.replica_interval([np.nan, np.nan]).text() == "–"


def test_replica_bootstrap_is_wider_than_resampling_dependent_pairs():
    """One replica far from the others makes every pair it is in large: the pairs are not
    independent, and resampling them understates the spread."""
    r = 8
    a, b = _pairs(r)
    rng = np.random.default_rng(3)
    values = rng.uniform(0.005, 0.010, a.size) + 0.05 * ((a == 0) | (b == 0))
    iv = I.pair_interval(values, a, b)
    assert iv.method == I.CI and iv.n == r and iv.pairs == a.size
    assert iv.low <= iv.mean <= iv.high
    naive_lo, naive_hi = _naive_pair_bootstrap(values)
    assert iv.high - iv.low > 1.3 * (naive_hi - naive_lo)
    assert iv.text().startswith("95% CI [") and iv.text().endswith(f"n = {r} replicas (28 pairs)")
    again = I.pair_interval(values, a, b)  # seeded: the same report twice
    assert (again.low, again.high) == (iv.low, iv.high)


def test_resampled_pair_means_weight_pairs_by_replica_counts():
    a, b = np.array([0, 0, 1]), np.array([1, 2, 2])
    w = np.array([[1.0, 2.0, 2.0], [0.0, 0.0, 0.0]])  # replica 0 once, 1 twice... and empty
    means = I.resampled_pair_means(np.array([1.0, 2.0, 3.0]), w)
    assert means[0] == pytest.approx((1 + 4 + 6) / 5) and np.isnan(means[1])
    _, weights = I.pair_weights(a, b, n_boot=50)
    assert weights.shape == (50, 3) and (weights >= 0).all()


def test_stability_point_and_its_spread():
    k = [0, 25, 100]
    a, b = _pairs(3)
    values = np.array([[0.10, 0.20, 0.30],   # k=0: unstable in every pair
                       [0.01, 0.03, 0.01],   # k=25: mean 1.67 pp < 2: stable; one pair is not
                       [0.01, 0.01, 0.01]])
    sp = I.stability_point(k, values, a, b, 0.02)
    assert (sp.k, sp.low, sp.high, sp.method) == (25, 25, 100, I.RANGE)
    assert sp.text() == "range over single pairs [k = 25, 100], n = 3 replicas (3 pairs)"
    same = I.stability_point(k, np.where(values > 0.02, 0.01, values), a, b, 0.02)
    assert same.text() == "every single pair gives k = 0, n = 3 replicas (3 pairs)"
    never = I.stability_point(k, values + 0.5, a, b, 0.02)
    assert never.k is None and never.high is None
    a, b = _pairs(6)
    rng = np.random.default_rng(0)
    values = np.stack([rng.uniform(0.05, 0.1, a.size), rng.uniform(0.0, 0.015, a.size),
                       rng.uniform(0.0, 0.01, a.size)])
    sp = I.stability_point(k, values, a, b, 0.02)
    assert sp.method == I.CI and sp.k == 25 and sp.low == sp.high == 25 and sp.n == 6
