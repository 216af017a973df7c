"""Rank correlations with bootstrap CIs, and rewind-point prediction rules."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from stabilitylab.analysis import stats as s


def test_vectorised_bootstrap_statistics_match_scipy():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, size=(20, 9)).astype(float)  # many ties, like resamples
    y = rng.integers(0, 4, size=(20, 9)).astype(float)
    rho, tau = s._spearman_rows(x, y), s._kendall_rows(x, y)
    for i in range(20):
        with np.errstate(invalid="ignore", divide="ignore"):
            np.testing.assert_allclose(rho[i], sps.spearmanr(x[i], y[i]).statistic, atol=1e-12)
            np.testing.assert_allclose(tau[i], sps.kendalltau(x[i], y[i]).statistic, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(8, 20), st.floats(0.2, 3.0))
def test_bootstrap_ci_contains_point_estimate(seed, n, noise):
    rng = np.random.default_rng(seed)
    m = rng.normal(size=n)
    acc = -m + noise * rng.normal(size=n)
    r = s.rank_correlations(m, acc, n_boot=300, seed=seed)
    assert r["n"] == n
    for k in ("spearman", "kendall"):
        assert r[f"{k}_low"] - 1e-12 <= r[k] <= r[f"{k}_high"] + 1e-12
        assert -1 <= r[f"{k}_low"] <= r[f"{k}_high"] <= 1


def test_rank_correlations_nan_safe_and_deterministic():
    m = np.array([1.0, 2.0, np.nan, 4.0, 5.0, 6.0])
    a = np.array([0.9, 0.8, 0.7, np.nan, 0.5, 0.4])
    r = s.rank_correlations(m, a, n_boot=200)
    assert r["n"] == 4 and r["spearman"] == pytest.approx(-1.0) and r["kendall"] == pytest.approx(-1)
    assert r == s.rank_correlations(m, a, n_boot=200)
    few = s.rank_correlations([1.0, 2.0, np.nan], [1.0, 2.0, 3.0])
    assert few["n"] == 2 and np.isnan(few["spearman"]) and np.isnan(few["kendall_high"])
    with pytest.raises(ValueError):
        s.rank_correlations([1, 2, 3], [1, 2])


def test_lmc_rule_picks_earliest_stable():
    rewinds = [0, 100, 200, 500, 1000]
    inst = [0.09, 0.05, 0.015, 0.03, 0.01]
    assert s.predict_rewind_lmc(rewinds, inst) == 200
    # unsorted input, NaN never stable
    assert s.predict_rewind_lmc([500, 0, 200], [0.01, np.nan, 0.019]) == 200
    assert s.predict_rewind_lmc(rewinds, inst, threshold=0.1) == 0
    assert s.predict_rewind_lmc(rewinds, [0.5] * 5) is None


def test_measure_rules_oracle_and_gap():
    rewinds = np.array([0, 100, 200, 500])
    measure = np.array([10.0, 5.0, 2.1, 2.0])
    assert s.predict_rewind_measure(rewinds, measure, tol=0.1) == 200
    assert s.predict_rewind_measure(rewinds, measure, tol=0.0) == 500
    assert s.predict_rewind_measure(rewinds, [1.0, 0.5, 0.2, np.nan], tol=0.0) == 200
    assert s.predict_rewind_measure(rewinds, measure, rule="threshold", threshold=6) == 100
    assert s.predict_rewind_measure(rewinds, measure, rule="threshold", threshold=6,
                                    direction="above") == 0
    assert s.predict_rewind_measure(rewinds, [np.nan] * 4) is None
    with pytest.raises(ValueError):
        s.predict_rewind_measure(rewinds, measure, rule="threshold")
    acc = np.array([0.80, 0.85, 0.90, 0.90])
    assert s.oracle_rewind(rewinds, acc) == 200  # ties go to the earliest
    assert s.oracle_rewind(rewinds, [np.nan] * 4) is None
    assert s.accuracy_gap(100, 200, rewinds, acc) == pytest.approx(0.05)
    assert s.accuracy_gap(200, 200, rewinds, acc) == 0.0
    assert np.isnan(s.accuracy_gap(None, 200, rewinds, acc))
    with pytest.raises(ValueError, match="not among"):
        s.accuracy_gap(300, 200, rewinds, acc)
