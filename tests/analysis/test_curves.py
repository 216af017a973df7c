"""Mode-connecting curves (Garipov et al. 2018): geometry, batched training, evaluation."""

import numpy as np
import pytest
import torch
from torch import nn

import stabilitylab
from stabilitylab.analysis.barriers import above_line_barrier, alpha_grid, instability
from stabilitylab.analysis.curves import (
    coefficients,
    curve_lengths,
    curve_points,
    evaluate_curves,
    midpoint,
    train_curves,
)
from stabilitylab.analysis.interpolate import evaluate_interpolation, interpolate_flat
from stabilitylab.train.functional import StackedModel

SHAPES = ["bezier", "polychain"]


def _training(**kw):
    sets = [f"training.{k}={v}" for k, v in kw.items()]
    return stabilitylab.load_config(None, sets).training


def _mlp_problem(seed=0, *, bn=False):
    g = torch.Generator().manual_seed(seed)
    layers = [nn.Linear(6, 12)] + ([nn.BatchNorm1d(12)] if bn else []) + [nn.ReLU(),
                                                                          nn.Linear(12, 3)]
    stacked = StackedModel(nn.Sequential(*layers).double())
    w1 = torch.randn(stacked.num_params, generator=g, dtype=torch.float64)
    w2 = torch.randn(stacked.num_params, generator=g, dtype=torch.float64)
    x = torch.randn(80, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (80,), generator=g)
    return stacked, w1, w2, x, y


@pytest.mark.parametrize("shape", SHAPES)
def test_coefficients_are_affine_and_hit_the_ends(shape):
    t = torch.linspace(0, 1, 41, dtype=torch.float64)
    c = coefficients(shape, t)
    assert torch.allclose(c.sum(-1), torch.ones(41, dtype=torch.float64), atol=1e-15)
    assert c[0].tolist() == [1.0, 0.0, 0.0] and c[-1].tolist() == [0.0, 0.0, 1.0]
    mid = coefficients(shape, torch.tensor(0.5, dtype=torch.float64))
    assert mid[1] == {"bezier": 0.5, "polychain": 1.0}[shape]


def test_midpoint_bezier_is_the_linear_path():
    stacked, w1, w2, x, y = _mlp_problem()
    alphas = alpha_grid(21)
    # Our linear path: alpha * W_a + (1 - alpha) * W_b; the curve runs from W_b (t=0) to W_a.
    linear = interpolate_flat(w1, w2, alphas)
    bezier = curve_points(w2, midpoint(w2, w1), w1, alphas, "bezier")
    torch.testing.assert_close(bezier, linear, rtol=0, atol=1e-14)
    lin = evaluate_interpolation(stacked, w1, w2, alphas, x, y)
    cur = evaluate_curves(stacked, w2[None], midpoint(w2, w1)[None], w1[None], ["bezier"],
                          alphas, x, y)
    np.testing.assert_array_equal(cur["error"][0], lin["error"])
    np.testing.assert_allclose(cur["loss"][0], lin["loss"], rtol=1e-12)
    assert instability(cur["error"][0]) == instability(lin["error"])


def test_midpoint_curves_have_the_straight_length_and_a_bend_is_longer():
    _, w1, w2, _, _ = _mlp_problem()
    straight = float((w1 - w2).norm())
    mid = midpoint(w2, w1)
    lengths = curve_lengths(torch.stack([w2, w2]), torch.stack([mid, mid]),
                            torch.stack([w1, w1]), SHAPES)
    np.testing.assert_allclose(lengths, straight, rtol=1e-12)
    bent = mid + torch.randn(mid.shape, generator=torch.Generator().manual_seed(3),
                             dtype=torch.float64)
    lengths = curve_lengths(torch.stack([w2, w2]), torch.stack([bent, bent]),
                            torch.stack([w1, w1]), SHAPES)
    assert (lengths > straight).all()
    # A fine polyline along the Bézier agrees with the quadrature.
    pts = curve_points(w2, bent, w1, np.linspace(0, 1, 20001), "bezier")
    assert lengths[0] == pytest.approx(float((pts[1:] - pts[:-1]).norm(dim=1).sum()), rel=1e-6)


def test_trained_curves_on_softmax_regression_have_no_barrier():
    """Cross-entropy of softmax regression is convex. If the control point's loss is below the
    endpoints' mean (true at the midpoint, and training lowers it), the loss along a Bézier or
    chain, a convex combination of the three points, stays under the straight line between
    the endpoint losses: the above-the-line barrier is 0 and the loss barrier is its floor
    |L_0 − L_1| / 2 (nothing rises above the higher endpoint)."""
    g = torch.Generator().manual_seed(1)
    stacked = StackedModel(nn.Linear(5, 3).double())
    x = torch.randn(200, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (200,), generator=g)
    w = torch.randn(4, stacked.num_params, generator=g, dtype=torch.float64) * 2
    starts, ends = torch.cat([w[:2], w[:2]]), torch.cat([w[2:], w[2:]])
    shapes = ["bezier", "bezier", "polychain", "polychain"]
    controls = train_curves(stacked, starts, ends, shapes, x, y, _training(lr=0.05), steps=150,
                            seed=0)
    assert not torch.equal(controls, midpoint(starts, ends))  # it did train
    alphas = alpha_grid(41)
    res = evaluate_curves(stacked, starts, controls, ends, shapes, alphas, x, y)
    loss = res["loss"]
    for r in range(4):
        assert above_line_barrier(loss[r], alphas) <= 1e-12
        assert instability(loss[r]) == pytest.approx(abs(loss[r, 0] - loss[r, -1]) / 2,
                                                     abs=1e-12)
    # The trained curves beat the straight line on the expected (mean) loss along the path.
    lin = np.stack([evaluate_interpolation(stacked, e, s, alphas, x, y)["loss"]
                    for s, e in zip(starts[:2], ends[:2])])
    assert (loss[:2].mean(1) < lin.mean(1)).all()


def test_training_never_revives_a_pruned_weight():
    stacked, w1, w2, x, y = _mlp_problem(2, bn=True)
    prunable = torch.zeros(stacked.num_params, dtype=torch.bool)
    for s in stacked.param_slots:
        if s.prunable:
            prunable[s.offset:s.offset + s.size] = True
    g = torch.Generator().manual_seed(0)
    mask = ~(prunable & (torch.rand(stacked.num_params, generator=g) < 0.5))
    starts = torch.stack([w1 * mask, w1 * mask])
    ends = torch.stack([w2 * mask, w2 * mask])
    masks = torch.stack([mask, mask])
    controls = train_curves(stacked, starts, ends, SHAPES, x, y, _training(weight_decay=1e-3),
                            steps=30, masks=masks, seed=0)
    assert (controls[:, ~mask] == 0).all()  # exactly 0, momentum and decay included
    assert (controls[:, mask] != midpoint(starts, ends)[:, mask]).any()
    # Without the masks the same gradients would fill the pruned positions.
    free = train_curves(stacked, starts, ends, SHAPES, x, y, _training(), steps=3, seed=0)
    assert (free[:, ~mask] != 0).any()
    t = torch.rand(7, generator=g, dtype=torch.float64)
    for r, shape in enumerate(SHAPES):
        pts = curve_points(starts[r], controls[r], ends[r], t.numpy(), shape)
        assert (pts[:, ~mask] == 0).all()


def test_a_curve_does_not_depend_on_the_other_curves_of_its_batch():
    """Replicas of one batched run are independent: pair 0's control point is the same
    whichever pair trains beside it (same seed: same batches and t draws)."""
    stacked, w1, w2, x, y = _mlp_problem(4)
    w3 = w1.flip(0)
    first = train_curves(stacked, torch.stack([w2, w2]), torch.stack([w1, w3]), SHAPES, x, y,
                         _training(), steps=5, seed=7)
    second = train_curves(stacked, torch.stack([w2, w3]), torch.stack([w1, w2]), SHAPES, x, y,
                          _training(), steps=5, seed=7)
    torch.testing.assert_close(first[0], second[0], rtol=0, atol=1e-12)
    assert not torch.allclose(first[1], second[1])


def test_bn_points_are_recomputed_along_the_curve():
    stacked, w1, w2, x, y = _mlp_problem(5, bn=True)
    mid = midpoint(w2, w1)
    with pytest.raises(ValueError, match="bn_recompute_x"):
        evaluate_curves(stacked, w2[None], mid[None], w1[None], ["bezier"], alpha_grid(5), x, y)
    res = evaluate_curves(stacked, w2[None], mid[None], w1[None], ["bezier"], alpha_grid(5), x,
                          y, bn_recompute_x=x)
    lin = evaluate_interpolation(stacked, w1, w2, alpha_grid(5), x, y, bn_recompute_x=x)
    np.testing.assert_allclose(res["loss"][0], lin["loss"], rtol=1e-10)


def test_mismatched_inputs_are_refused():
    stacked, w1, w2, x, y = _mlp_problem()
    with pytest.raises(ValueError, match="shapes"):
        train_curves(stacked, w1[None], w2[None], ["bezier", "bezier"], x, y, _training(),
                     steps=1)
    with pytest.raises(ValueError, match="unknown curve shape"):
        coefficients("spline", torch.zeros(3))
