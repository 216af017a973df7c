"""Trajectory PCA (Li et al., NeurIPS 2018, §7): exact on a path lying in a known plane."""

import dask.array as da
import numpy as np
import pytest

from stabilitylab.analysis.pca import path_pca


def _plane_path(rng, n_points=60, p=300):
    origin, a, b = rng.normal(size=(3, p))
    t = np.linspace(0, 1, n_points)
    return origin + np.outer(3 * t * np.cos(4 * t), a) + np.outer(np.sin(3 * t), b)


@pytest.mark.parametrize("method", ["gram", "randomized"])
def test_a_path_in_a_plane_is_two_components_that_reproduce_it(method):
    x = _plane_path(np.random.default_rng(0))
    res = path_pca(da.from_array(x, chunks=(7, 64)), 2, method=method)  # chunked: out of core
    assert res.method == method
    np.testing.assert_allclose(res.explained.sum(), 1.0, atol=1e-9)
    assert res.explained[0] >= res.explained[1] > 0
    np.testing.assert_allclose(res.mean + res.scores @ res.components, x, atol=1e-6)
    np.testing.assert_allclose(res.components @ res.components.T, np.eye(2), atol=1e-9)
    np.testing.assert_allclose(res.project(x.mean(0)[None]), 0.0, atol=1e-9)  # mean ↦ 0
    np.testing.assert_allclose(res.project(x), res.scores, atol=1e-6)
    assert (res.scores[0] <= 0).all()  # the sign convention: the start on the negative side


def test_a_third_direction_is_not_explained_by_two_components():
    rng = np.random.default_rng(1)
    x = _plane_path(rng) + np.outer(np.linspace(0, 1, 60) ** 2, rng.normal(size=300))
    res = path_pca(x, 2)
    assert res.explained.sum() < 1 - 1e-6
    three = path_pca(x, 3)
    np.testing.assert_allclose(three.explained.sum(), 1.0, atol=1e-9)
    np.testing.assert_allclose(three.explained[:2], res.explained, rtol=1e-9)


def test_identical_points_give_nan_shares_and_zero_coordinates_not_an_error():
    res = path_pca(np.ones((5, 10)), 2)
    assert np.isnan(res.explained).all()
    assert (res.scores == 0).all()


def test_non_finite_points_are_refused_in_one_line():
    x = np.ones((4, 3))
    x[1, 2] = np.nan
    with pytest.raises(ValueError, match="not all finite"):
        path_pca(x, 2)


def test_the_gram_pass_sums_column_blocks_exactly(monkeypatch):
    from stabilitylab.analysis import pca

    x = _plane_path(np.random.default_rng(3))
    whole = path_pca(x, 2)
    monkeypatch.setattr(pca, "BLOCK_VALUES", 60 * 16)  # 19 blocks of 16 columns
    blocked = path_pca(da.from_array(x, chunks=(25, 300)), 2)
    np.testing.assert_allclose(blocked.scores, whole.scores, atol=1e-9)
    np.testing.assert_allclose(blocked.explained, whole.explained, rtol=1e-12)
