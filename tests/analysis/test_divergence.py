"""Divergence measures: exponential curves give their rate, time invariances, NaN handling."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stabilitylab.analysis.divergence import distance_growth, divergence_rate, divergence_time


def steps_strategy():
    return st.lists(st.integers(1, 40), min_size=3, max_size=12).map(
        lambda gaps: np.concatenate([[25], 25 + np.cumsum(gaps)]))


@settings(max_examples=40, deadline=None)
@given(steps=steps_strategy(), lam=st.floats(-0.05, 0.2), c=st.floats(1e-8, 1e3),
       window=st.integers(1, 400))
def test_exponential_curve_gives_its_rate(steps, lam, c, window):
    d = c * np.exp(lam * steps)
    rate = divergence_rate(d, steps, window)
    n_in = int(np.sum(steps - steps[0] <= window))
    if n_in >= 2:
        assert rate == pytest.approx(lam, abs=1e-9)
    else:
        assert np.isnan(rate)


def test_rate_ignores_zero_and_uses_only_the_window():
    steps = np.arange(0, 100, 10)
    d = 1e-6 * np.exp(0.1 * steps)
    d[0] = 0.0  # two data-order copies coincide at the start
    d[6:] = 5.0  # saturated later: outside the window it must not matter
    assert divergence_rate(d, steps, window=50) == pytest.approx(0.1)
    assert np.isnan(divergence_rate(d, steps, window=10))  # only one positive point
    assert np.isnan(divergence_rate(np.zeros(10), steps, window=90))


def test_rate_is_vectorised_over_leading_axes_and_any_axis():
    steps = np.array([0, 5, 10, 20])
    lams = np.array([[0.01, 0.02, 0.03], [0.1, 0.2, -0.1]])
    d = np.exp(lams[..., None] * steps)  # (2, 3, 4)
    np.testing.assert_allclose(divergence_rate(d, steps, 20), lams, atol=1e-12)
    np.testing.assert_allclose(divergence_rate(np.moveaxis(d, -1, 0), steps, 20, axis=0), lams,
                               atol=1e-12)
    d[0, 0, 1:] = np.nan
    out = divergence_rate(d, steps, 20)
    assert np.isnan(out[0, 0]) and np.isfinite(out[1]).all()


@settings(max_examples=40, deadline=None)
@given(d=st.lists(st.floats(0, 1e3), min_size=2, max_size=10), scale=st.floats(1e-6, 1e6),
       f1=st.floats(0.01, 1.0), f2=st.floats(0.01, 1.0))
def test_time_scale_invariant_and_monotone_in_fraction(d, scale, f1, f2):
    d = np.asarray(d)
    steps = 10 + 3 * np.arange(d.size)
    t = divergence_time(d, steps, f1)
    t_scaled = divergence_time(d * scale, steps, f1)
    if d[-1] > 0 and np.all(np.isfinite(d * scale)):
        # rounding of d * scale can only move a point lying exactly on the threshold
        lo, hi = sorted((f1, f2))
        assert divergence_time(d, steps, lo) <= divergence_time(d, steps, hi)
        assert 0 <= t <= steps[-1] - steps[0]
        if not np.any(np.isclose(d, f1 * d[-1], rtol=1e-9)):
            assert t_scaled == t
    else:
        assert np.isnan(t) and np.isnan(t_scaled)


def test_time_examples_and_nan():
    steps = np.array([25, 30, 40, 60, 100])
    d = np.array([[0.0, 1.0, 4.0, 8.0, 10.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(divergence_time(d, steps, 0.5), [35.0, np.nan])
    assert divergence_time(d[0], steps, 1.0) == 75.0
    assert divergence_time(d[0], steps, 0.05) == 5.0
    assert np.isnan(divergence_time(d[0], steps, 2.0))  # never reached
    assert np.isnan(divergence_time([1.0, np.nan], [0, 1]))


def test_growth_normalises_by_the_final_value():
    steps = np.array([0, 1, 2])
    d = np.array([[1.0, 2.0, 4.0], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(distance_growth(d, steps), [[0.25, 0.5, 1.0], [np.nan] * 3])
    np.testing.assert_array_equal(distance_growth(d.T, steps, axis=0), distance_growth(d, steps).T)


def test_bad_inputs():
    with pytest.raises(ValueError, match="increasing"):
        divergence_rate([1.0, 2.0], [5, 5], 10)
    with pytest.raises(ValueError, match="points"):
        divergence_time([1.0, 2.0, 3.0], [0, 1])
    with pytest.raises(ValueError, match="window"):
        divergence_rate([1.0, 2.0], [0, 1], 0)
    with pytest.raises(ValueError, match="fraction"):
        divergence_time([1.0, 2.0], [0, 1], -0.5)
