"""Barrier invariants (Frankle et al., ICML 2020; Entezari et al., ICLR 2022): B(W,W)=0, symmetry,
nested grids never lower the max, endpoint bounds."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from stabilitylab.analysis import barriers as b

SETTINGS = settings(max_examples=50, deadline=None)
unit = st.floats(0, 1, allow_nan=False)


def test_alpha_grid():
    g = b.alpha_grid()
    assert g.shape == (30,) and g[0] == 0.0 and g[-1] == 1.0
    assert np.all(np.isin(b.alpha_grid(5), b.alpha_grid(9)))
    with pytest.raises(ValueError):
        b.alpha_grid(1)


@SETTINGS
@given(unit, st.integers(2, 40))
def test_constant_curve_is_zero(e, n):
    curve = np.full(n, e)
    assert b.instability(curve) == 0.0
    assert b.above_line_barrier(curve) == 0.0


@SETTINGS
@given(arrays(np.float64, st.integers(2, 30), elements=unit))
def test_symmetric_and_bounded(curve):
    inst = b.instability(curve)
    assert inst == pytest.approx(b.instability(curve[::-1]), abs=1e-15)
    assert b.above_line_barrier(curve) == pytest.approx(b.above_line_barrier(curve[::-1]),
                                                        abs=1e-12)
    assert abs(curve[0] - curve[-1]) / 2 - 1e-15 <= inst <= 1.0
    assert b.above_line_barrier(curve) >= 0.0


@SETTINGS
@given(st.lists(st.floats(-3, 3), min_size=1, max_size=4), st.integers(2, 20))
def test_refining_nested_grid_never_lowers_max(coeffs, n):
    def f(a):  # a fixed smooth "error" along the path, squashed into [0, 1]
        return 1 / (1 + np.exp(-np.polynomial.polynomial.polyval(a, coeffs)))

    coarse, fine = f(b.alpha_grid(n)), f(b.alpha_grid(2 * n - 1))
    assert b.instability(fine) >= b.instability(coarse) - 1e-12
    assert b.above_line_barrier(fine) >= b.above_line_barrier(coarse) - 1e-12


def test_known_values_and_axes():
    curve = np.array([[0.1, 0.5, 0.3], [0.2, 0.2, 0.2]])
    np.testing.assert_allclose(b.instability(curve), [0.3, 0.0])
    np.testing.assert_allclose(b.instability(curve.T, axis=0), [0.3, 0.0])
    # line at alpha=0.5 is 0.2 -> above-line barrier 0.3
    np.testing.assert_allclose(b.above_line_barrier(curve), [0.3, 0.0])
    assert b.above_line_barrier([0.0, 1.0, 0.0], alphas=[0, 0.25, 1]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="endpoints"):
        b.above_line_barrier([0, 1, 0], alphas=[0.1, 0.5, 1.0])
    assert np.isnan(b.instability([0.1, np.nan, 0.1]))
    assert b.loss_barrier is b.instability


def test_stable_and_matching():
    np.testing.assert_array_equal(b.is_stable([0.01, 0.02, 0.03, np.nan]),
                                  [True, False, False, False])
    assert b.is_stable(0.04, threshold=0.05)
    np.testing.assert_array_equal(b.is_matching([0.900, 0.898, 0.897], 0.9),
                                  [True, True, False])
