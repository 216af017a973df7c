"""Planes through three weight vectors (array layer of the ``plane`` and ``trajectory_map`` groups).

Garipov, Izmailov, Podoprikhin, Vetrov & Wilson, "Loss Surfaces, Mode Connectivity, and
Fast Ensembling of DNNs" (NeurIPS 2018), Fig. 1 and §A (the planes of their figures):
the plane through W_a, W_b, W_c has the orthonormal basis given by Gram–Schmidt,

    u = (W_b − W_a) / ‖W_b − W_a‖,   v = r / ‖r‖  with  r = (W_c − W_a) − ((W_c − W_a)·u) u,

and the point with coordinates (x, y) is W_a + x u + y v, so distances on a figure of
the plane are true L2 distances in weight space. :func:`plane_grid` lays an n × n grid
with a margin around the three points such that W_a and W_b are grid nodes and the row
y = 0 is the segment between them: its nodes are points of the linear path
αW_a + (1 − α)W_b at α = 1 − x / ‖W_b − W_a‖.

Pruned weights stay 0: the three points of a subnetwork share its mask, so the plane lies
in the subnetwork's subspace; :func:`plane_points` also multiplies by the mask, so that
rounding can never make a pruned weight non-zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from stabilitylab.core.errors import StabilityLabError

GRID_POINTS = 21  # per side (Garipov et al. used 21 x 21 in their released plane scripts' spirit)
MARGIN = 0.25  # of the three points' extent, on every side
COLLINEAR_RTOL = 1e-6  # ‖r‖ below this share of the larger side: the points are collinear


class DegeneratePlaneError(StabilityLabError, ValueError):
    """Three points that span no plane (two identical, or all on one line)."""


@dataclass
class Plane:
    """A plane W_a + x u + y v (float64) and the coordinates of its three anchor points."""

    origin: np.ndarray  # (P,) W_a
    u: np.ndarray  # (P,)
    v: np.ndarray  # (P,)
    anchors: np.ndarray  # (3, 2): (x, y) of W_a, W_b, W_c

    def coordinates(self, points) -> np.ndarray:
        """(M, P) → (M, 2): the orthogonal projection of each point on the plane."""
        d = np.asarray(points, np.float64) - self.origin
        return np.stack([d @ self.u, d @ self.v], -1)


def plane_basis(wa, wb, wc, *, rtol: float = COLLINEAR_RTOL) -> Plane:
    """The plane through ``wa``, ``wb``, ``wc`` (each (P,)), Gram–Schmidt orthonormal basis.

    Garipov et al., NeurIPS 2018, Fig. 1 (module docstring). Raises
    :class:`DegeneratePlaneError` (one line) when W_a = W_b or the three points are
    collinear within ``rtol``.
    """
    wa, wb, wc = (np.asarray(w, np.float64).reshape(-1) for w in (wa, wb, wc))
    ab, ac = wb - wa, wc - wa
    d = float(np.linalg.norm(ab))
    if not np.isfinite(d) or not np.isfinite(ac).all():
        raise DegeneratePlaneError("plane: the three points must be finite")
    if d == 0:
        raise DegeneratePlaneError("plane: W_a and W_b are identical, so no plane is defined "
                                   "through the three points")
    u = ab / d
    r = ac - (ac @ u) * u
    r = r - (r @ u) * u  # a second Gram–Schmidt pass against rounding
    nr = float(np.linalg.norm(r))
    if nr <= rtol * max(d, float(np.linalg.norm(ac))):
        raise DegeneratePlaneError("plane: the three points are collinear (or two are "
                                   "identical), so no plane is defined through them")
    v = r / nr
    anchors = np.array([[0.0, 0.0], [d, 0.0], [ac @ u, ac @ v]])
    return Plane(wa, u, v, anchors)


def plane_grid(anchors, n: int = GRID_POINTS, margin: float = MARGIN):
    """(xs, ys), each (n,): a square grid around the three ``anchors`` (3, 2) with ``margin``
    (of the larger extent) on every side.

    W_a = (0, 0) and W_b = (d, 0) are nodes (x spacing d / q for an integer q) and y = 0 is
    a row, so the segment between them is sampled by the grid itself. n ≥ 3.
    """
    anchors = np.asarray(anchors, np.float64)
    d = float(anchors[1, 0])
    lo, hi = float(anchors[:, 0].min()), float(anchors[:, 0].max())
    ylo, yhi = min(0.0, float(anchors[:, 1].min())), max(0.0, float(anchors[:, 1].max()))
    side = (1 + 2 * margin) * max(hi - lo, yhi - ylo)  # a square: true distances either way
    lo, hi = (lo + hi - side) / 2, (lo + hi + side) / 2
    ylo, yhi = (ylo + yhi - side) / 2, (ylo + yhi + side) / 2
    q = int(np.clip(round(d / ((hi - lo) / (n - 1))), 1, n - 1))
    h = d / q
    i0 = int(np.clip(round(-lo / h), 0, n - 1 - q))
    xs = (np.arange(n) - i0) * h
    xs[i0 + q] = d  # exactly W_b's coordinate
    hy = (yhi - ylo) / (n - 1)
    j0 = int(np.clip(round(-ylo / hy), 0, n - 1))
    ys = (np.arange(n) - j0) * hy
    return xs, ys


def plane_points(plane: Plane, xs, ys, *, mask=None, dtype=torch.float32,
                 device=None) -> torch.Tensor:
    """(len(ys) · len(xs), P) flat weights W_a + x u + y v, row-major over (y, x).

    ``mask`` (P,) bool: positions set to exactly 0 (pruned weights stay pruned).
    """
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    pts = plane.origin + xx.reshape(-1, 1) * plane.u + yy.reshape(-1, 1) * plane.v
    if mask is not None:
        pts = pts * np.asarray(mask, bool)
    return torch.as_tensor(pts, dtype=dtype, device=device)


def evaluate_plane(stacked, plane: Plane, xs, ys, x, y, *, mask=None, bn_recompute_x=None,
                   device=None, max_points: int = 128) -> dict:
    """Error and loss at every grid node, (len(ys), len(xs)) each, through
    :func:`stabilitylab.analysis.interpolate.evaluate_points` (the grid nodes are stacked
    replicas, ``max_points`` at a time; BatchNorm statistics recomputed at every node on
    ``bn_recompute_x``)."""
    from stabilitylab.analysis.interpolate import evaluate_points

    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    rows = max(1, max_points // len(xs))
    error, loss = np.empty((len(ys), len(xs))), np.empty((len(ys), len(xs)))
    for start in range(0, len(ys), rows):
        pts = plane_points(plane, xs, ys[start:start + rows], mask=mask, device=device)
        res = evaluate_points(stacked, pts, x, y, bn_recompute_x=bn_recompute_x)
        error[start:start + rows] = res["error"].reshape(-1, len(xs))
        loss[start:start + rows] = res["loss"].reshape(-1, len(xs))
    return {"error": error, "loss": loss}
