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


def _reference(x, c):
    """The PCA by a dense SVD of the centred points (signs as path_pca fixes them)."""
    centred = x - x.mean(0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    scores = u[:, :c] * s[:c]
    flip = np.where(scores[0] > 0, -1.0, 1.0)
    return scores * flip, (s[:c] ** 2) / (s ** 2).sum()


def test_a_long_path_goes_through_lanczos_and_matches_a_dense_svd():
    from stabilitylab.analysis import pca

    rng = np.random.default_rng(4)
    x = _plane_path(rng, n_points=300) + 0.05 * rng.normal(size=(300, 300))
    assert len(x) > pca.LANCZOS_MIN_POINTS
    res = path_pca(x, 2)
    scores, explained = _reference(x, 2)
    np.testing.assert_allclose(res.scores, scores, atol=1e-9 * np.abs(scores).max())
    np.testing.assert_allclose(res.explained, explained, rtol=1e-10)
    again = path_pca(x, 2)  # a fixed start vector: the same bits every call
    assert np.array_equal(again.scores, res.scores)
    assert np.array_equal(again.explained, res.explained)


def test_without_lanczos_convergence_the_dense_solver_gives_the_same_view(monkeypatch):
    import scipy.sparse.linalg

    x = _plane_path(np.random.default_rng(5), n_points=200)
    x += 0.01 * np.random.default_rng(6).normal(size=x.shape)
    lanczos = path_pca(x, 2)

    def refuse(*args, **kwargs):
        raise scipy.sparse.linalg.ArpackNoConvergence("no convergence", np.zeros(0),
                                                      np.zeros((len(x), 0)))

    monkeypatch.setattr(scipy.sparse.linalg, "eigsh", refuse)
    dense = path_pca(x, 2)
    np.testing.assert_allclose(dense.scores, lanczos.scores, atol=1e-9)
    np.testing.assert_allclose(dense.explained, lanczos.explained, rtol=1e-10)


def test_columns_zero_in_every_row_are_skipped_and_come_back_as_zeros():
    rng = np.random.default_rng(7)
    dense = _plane_path(rng, n_points=120, p=200)
    x = np.zeros((120, 500), np.float32)  # a pruned network: 300 weights 0 at every step
    kept = np.sort(rng.choice(500, 200, replace=False))
    x[:, kept] = dense
    res = path_pca(x, 2)
    alone = path_pca(x[:, kept], 2)  # the same points without the zero columns
    np.testing.assert_allclose(res.scores, alone.scores, atol=1e-9)
    np.testing.assert_allclose(res.explained, alone.explained, rtol=1e-12)
    dropped = np.setdiff1d(np.arange(500), kept)
    assert (res.mean[dropped] == 0).all() and (res.components[:, dropped] == 0).all()
    np.testing.assert_allclose(res.components[:, kept], alone.components, atol=1e-9)
    np.testing.assert_allclose(res.project(x), res.scores, atol=1e-5)
