"""Distance invariants (L2 and angle are metrics on masked weights): identity, symmetry, triangle, masking, scaling."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from stabilitylab.analysis import distances as d

SETTINGS = settings(max_examples=40, deadline=None)
finite = st.floats(-10, 10, allow_nan=False, width=64)


@st.composite
def vectors(draw, n_vec=3):
    p = draw(st.integers(2, 12))
    vs = [draw(arrays(np.float64, p, elements=finite)) for _ in range(n_vec)]
    mask = draw(arrays(np.bool_, p))
    return vs, mask


@SETTINGS
@given(vectors())
def test_identity_and_symmetry(data):
    (a, b, _), mask = data
    assert d.l2_distance(a, a) == 0.0
    assert d.l2_distance(a, b) == d.l2_distance(b, a)
    assert d.l2_distance(a, b, mask) == d.l2_distance(b, a, mask)
    if np.linalg.norm(a) > 1e-6:
        assert d.angle(a, a) == pytest.approx(0.0, abs=1e-7)
    if np.linalg.norm(a) > 1e-6 and np.linalg.norm(b) > 1e-6:
        assert d.angle(a, b) == pytest.approx(d.angle(b, a), abs=1e-12)
        assert 0.0 <= d.angle(a, b) <= np.pi


@SETTINGS
@given(vectors())
def test_triangle_inequality(data):
    (a, b, c), mask = data
    for m in (None, mask):
        assert d.l2_distance(a, c, m) <= d.l2_distance(a, b, m) + d.l2_distance(b, c, m) + 1e-9
    if min(np.linalg.norm(v) for v in (a, b, c)) > 1e-3:
        assert d.angle(a, c) <= d.angle(a, b) + d.angle(b, c) + 1e-9


@SETTINGS
@given(vectors(), st.floats(-1e3, 1e3, allow_nan=False))
def test_pruned_coordinates_ignored(data, junk):
    (a, b, _), mask = data
    a2, b2 = a.copy(), b.copy()
    a2[~mask] = junk
    b2[~mask] = -junk + 1.0
    assert d.l2_distance(a2, b2, mask) == pytest.approx(d.l2_distance(a, b, mask))
    assert d.l2_distance(a, b, mask) == pytest.approx(d.l2_distance(a * mask, b * mask))
    if np.linalg.norm(a * mask) > 1e-6 and np.linalg.norm(b * mask) > 1e-6:
        assert d.angle(a2, b2, mask) == pytest.approx(d.angle(a, b, mask), abs=1e-9)


@SETTINGS
@given(vectors(), st.floats(0.01, 100))
def test_scaling(data, c):
    (a, b, _), _ = data
    assert d.l2_distance(c * a, c * b) == pytest.approx(c * d.l2_distance(a, b), rel=1e-9, abs=1e-9)
    if np.linalg.norm(a) > 1e-3 and np.linalg.norm(b) > 1e-3:
        assert d.angle(c * a, c * b) == pytest.approx(d.angle(a, b), abs=1e-7)


def test_angle_matches_arccos_and_torch_inputs():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 50))
    cos = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    assert d.angle(a, b) == pytest.approx(np.arccos(cos), rel=1e-10)
    assert d.angle(torch.tensor(a), torch.tensor(b)) == pytest.approx(np.arccos(cos), rel=1e-10)
    assert d.angle(a, -a) == pytest.approx(np.pi)
    assert np.isnan(d.angle(np.zeros(3), a[:3]))


def test_pairwise_matches_loop_and_axes():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 4, 7))  # (level, replica, param)
    mask = rng.random(7) > 0.3
    pairs, vals = d.pairwise_distance(x, replica_axis=1, mask=mask)
    assert pairs.tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    assert vals.shape == (2, 6)
    for p, (i, j) in enumerate(pairs):
        np.testing.assert_allclose(vals[:, p], d.l2_distance(x[:, i], x[:, j], mask))
    # param axis first, replica axis last
    _, vals2 = d.pairwise_distance(np.moveaxis(x, -1, 0), replica_axis=-1, axis=0,
                                   metric="angle")
    _, vals3 = d.pairwise_distance(x, replica_axis=1, metric="angle")
    np.testing.assert_allclose(vals2, vals3)
    with pytest.raises(ValueError, match="unknown metric"):
        d.pairwise_distance(x, 1, metric="cosine")


def test_named_distances_and_ratio():
    rng = np.random.default_rng(2)
    dense, sub = rng.normal(size=(2, 20))
    mask = rng.random(20) > 0.5
    assert d.pruning_noise_distance(dense, sub, mask) == pytest.approx(
        np.linalg.norm(mask * dense - mask * sub))
    assert d.data_order_distance(dense * mask, sub * mask) == pytest.approx(
        np.linalg.norm(mask * dense - mask * sub))
    assert d.random_imp_ratio(58.6, 20.7) == pytest.approx(2.83, abs=0.01)
    assert np.isnan(d.random_imp_ratio(1.0, 0.0))
    assert d.random_imp_ratio([2.0, 4.0], [1.0, 1.0], axis=0) == pytest.approx(3.0)


@pytest.mark.parametrize("metric", ["l2", "angle"])
def test_pairwise_shared_mask_is_the_per_pair_result_to_the_bit(metric):
    """One mask for every replica (the trajectory group's case) takes a path that masks each
    replica once; it must give exactly what the pair-by-pair computation gives."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 4, 3, 257)).astype(np.float32)  # (cell, replica, step, param)
    mask = rng.random((2, 1, 1, 257)) < 0.6  # broadcast over replica and step
    pairs, got = d.pairwise_distance(x, 1, metric=metric, mask=mask)
    fn = {"l2": d.l2_distance, "angle": d.angle}[metric]
    m = np.broadcast_to(mask, x.shape)
    want = np.stack([fn(x[:, i], x[:, j], m[:, i] & m[:, j]) for i, j in pairs], -1)
    np.testing.assert_array_equal(got, want)
    own = m.copy()  # a mask per replica: the general path, same values here
    np.testing.assert_array_equal(d.pairwise_distance(x, 1, metric=metric, mask=own)[1], want)


@pytest.mark.parametrize("metric", ["l2", "angle"])
@pytest.mark.parametrize("chunk", [1, 3 * 4 * 257 * 8 * 2, 10**9])  # a row, 2 rows, all
def test_pairwise_rows_in_chunks_give_the_same_bits(metric, chunk, monkeypatch):
    """The shared-mask path goes through the rows in chunks of CHUNK_BYTES: any chunk size
    gives the pair-by-pair bits, whatever the leading dims (uneven last chunk included)."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 4, 5, 257)).astype(np.float32)  # (cell, replica, step, param)
    x[1, :, 2] = np.nan  # a NaN row stays NaN and touches no other row
    mask = rng.random((3, 1, 1, 257)) < 0.7
    x[0, 1, 3, ~mask[0, 0, 0]] = np.nan  # NaN where pruned: ignored
    fn = {"l2": d.l2_distance, "angle": d.angle}[metric]
    m = np.broadcast_to(mask, x.shape)
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    want = np.stack([fn(x[:, i], x[:, j], m[:, i] & m[:, j]) for i, j in pairs], -1)
    monkeypatch.setattr(d, "CHUNK_BYTES", chunk)
    got = d.pairwise_distance(x, 1, metric=metric, mask=mask)[1]
    np.testing.assert_array_equal(got, want)
    assert np.isnan(got[1, 2]).all() and np.isfinite(np.delete(got, 2, axis=1)).all()


@pytest.mark.parametrize("metric", ["l2", "angle"])
@pytest.mark.parametrize("chunk", [1, 2 * 257 * 8, 5 * 257 * 8 + 1])  # a row, 2 rows, uneven
def test_distances_in_row_chunks_give_the_same_bits(metric, chunk, monkeypatch):
    """l2_distance and angle go through large inputs in chunks of rows (reduced over the
    last axis): any chunk size gives the bits of the whole arrays at once, with inputs
    that broadcast (one side and the mask without the step axis), float32 in, NaN rows."""
    rng = np.random.default_rng(5)
    a = rng.normal(size=(3, 7, 257)).astype(np.float32)  # (cell, step, param)
    b = rng.normal(size=(3, 1, 257)).astype(np.float32)
    a[2, 4] = np.nan
    mask = rng.random((3, 1, 257)) < 0.7
    a[0, 1, ~mask[0, 0]] = np.nan  # NaN and -0.0 where pruned: ignored, as np.where drops them
    b[1, 0, ~mask[1, 0]] = -0.0
    fn = {"l2": d.l2_distance, "angle": d.angle}[metric]
    monkeypatch.setattr(d, "CHUNK_BYTES", 10**9)
    want = fn(a, b, mask)
    other_axis = fn(np.moveaxis(a, -1, 0), np.moveaxis(b, -1, 0), np.moveaxis(mask, -1, 0),
                    axis=0)
    monkeypatch.setattr(d, "CHUNK_BYTES", chunk)
    got = fn(a, b, mask)
    assert got.shape == (3, 7)
    np.testing.assert_array_equal(got, want)
    assert np.isnan(got[2, 4]) and np.isfinite(np.delete(got.reshape(-1), 2 * 7 + 4)).all()
    np.testing.assert_array_equal(fn(a, b), fn(a.astype(np.float64), b.astype(np.float64)))
    np.testing.assert_allclose(other_axis, want, rtol=1e-12)  # another axis: whole arrays


@pytest.mark.parametrize("shared", [True, False])
def test_pairwise_several_metrics_are_each_metric_alone(shared):
    """A tuple of metrics gives, along a last metric axis, exactly each metric's values alone
    (one mask for all replicas, or a mask per replica), from float32 weights."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 3, 4, 129)).astype(np.float32)  # (cell, replica, step, param)
    mask = rng.random((2, 1, 1, 129)) < 0.6
    if not shared:
        mask = rng.random((2, 3, 1, 129)) < 0.6
    _, both = d.pairwise_distance(x, 1, metric=("l2", "angle"), mask=mask)
    assert both.shape == (2, 4, 3, 2)
    for i, metric in enumerate(("l2", "angle")):
        np.testing.assert_array_equal(both[..., i],
                                      d.pairwise_distance(x, 1, metric=metric, mask=mask)[1])
    with pytest.raises(ValueError, match="unknown metric"):
        d.pairwise_distance(x, 1, metric=("l2", "cosine"))
