"""Planes through three points (Garipov et al., NeurIPS 2018, Fig. 1): basis, grid, bad input."""

import numpy as np
import pytest
import torch

from stabilitylab.analysis.planes import (
    DegeneratePlaneError,
    plane_basis,
    plane_grid,
    plane_points,
)


def test_the_basis_is_orthonormal_and_keeps_true_distances():
    rng = np.random.default_rng(0)
    wa, wb, wc = rng.normal(size=(3, 50))
    plane = plane_basis(wa, wb, wc)
    assert abs(plane.u @ plane.v) < 1e-12
    np.testing.assert_allclose([plane.u @ plane.u, plane.v @ plane.v], 1.0)
    for i, w in enumerate((wa, wb, wc)):  # the anchors' coordinates put them back exactly
        x, y = plane.anchors[i]
        np.testing.assert_allclose(plane.origin + x * plane.u + y * plane.v, w, atol=1e-12)
    _, (bx, by), (cx, cy) = plane.anchors
    assert np.isclose(np.hypot(cx - bx, cy - by), np.linalg.norm(wc - wb))


def test_the_grid_holds_both_segment_ends_and_the_segment_row():
    anchors = np.array([[0.0, 0.0], [3.7, 0.0], [-1.2, 2.5]])
    xs, ys = plane_grid(anchors, 21, 0.25)
    assert len(xs) == len(ys) == 21
    assert 0.0 in xs and 3.7 in xs and 0.0 in ys
    assert xs.min() < -1.2 and xs.max() > 3.7 and ys.max() > 2.5  # the margin


def test_pruned_weights_stay_zero_on_the_plane():
    rng = np.random.default_rng(1)
    mask = rng.random(40) < 0.5
    wa, wb, wc = rng.normal(size=(3, 40)) * mask
    plane = plane_basis(wa, wb, wc)
    xs, ys = plane_grid(plane.anchors, 5)
    pts = plane_points(plane, xs, ys, mask=mask)
    assert pts.dtype == torch.float32 and pts.shape == (25, 40)
    assert (pts[:, ~torch.from_numpy(mask)] == 0).all()


@pytest.mark.parametrize("which", ["identical", "collinear", "same ends"])
def test_degenerate_points_are_one_clear_line(which):
    rng = np.random.default_rng(2)
    wa, wb = rng.normal(size=(2, 30))
    three = {"identical": (wa, wa, wa), "collinear": (wa, wb, wa + 2.5 * (wb - wa)),
             "same ends": (wa, wa, wb)}[which]
    with pytest.raises(DegeneratePlaneError) as info:
        plane_basis(*three)
    assert "\n" not in str(info.value) and "plane" in str(info.value)
