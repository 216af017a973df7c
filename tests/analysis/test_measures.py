"""Candidate stability measures: masks, signs, early-bird, R-hat, gradient noise, Hessian."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from stabilitylab.analysis import measures as ms
from stabilitylab.train.functional import StackedModel


def test_disagreement():
    la = np.array([[[2.0, 1.0], [0.0, 1.0], [3.0, 0.0], [0.0, 5.0]]])  # (1, N=4, C=2)
    lb = np.array([[[2.0, 1.0], [1.0, 0.0], [3.0, 0.0], [1.0, 0.0]]])
    np.testing.assert_allclose(ms.disagreement(la, lb), [0.5])
    assert ms.disagreement(la[0], la[0]) == 0.0
    # classes first, examples last
    np.testing.assert_allclose(ms.disagreement(la.transpose(0, 2, 1), lb.transpose(0, 2, 1),
                                               example_axis=-1, class_axis=-2), [0.5])
    assert ms.disagreement(torch.tensor(la[0]), torch.tensor(lb[0])) == 0.5


def test_masks_and_chance_baseline():
    m1 = np.array([1, 1, 0, 0, 1], bool)
    m2 = np.array([1, 0, 0, 1, 1], bool)
    assert ms.mask_jaccard(m1, m2) == pytest.approx(2 / 4)
    assert ms.mask_hamming(m1, m2) == pytest.approx(2 / 5)
    assert ms.mask_hamming(m1, m2, normalize=False) == 2
    assert ms.mask_jaccard(m1, m1) == 1.0
    assert np.isnan(ms.mask_jaccard(np.zeros(3, bool), np.zeros(3, bool)))
    rng = np.random.default_rng(0)
    p = 0.2
    r = rng.random((2, 200_000)) < p
    assert ms.mask_jaccard(r[0], r[1]) == pytest.approx(ms.chance_jaccard(p), rel=0.03)
    assert ms.chance_jaccard(1.0) == 1.0


def test_sign_flips():
    wk = np.array([1.0, -2.0, 3.0, 0.0, -1.0])
    wt = np.array([2.0, 1.0, -3.0, 1.0, -5.0])
    assert ms.sign_flips(wk, wt) == pytest.approx(2 / 5)
    mask = np.array([1, 1, 0, 1, 1], bool)
    assert ms.sign_flips(wk, wt, mask) == pytest.approx(1 / 4)
    assert ms.sign_flips(wk, wk) == 0.0


def test_magnitude_mask_and_early_bird():
    w = np.array([0.1, -5.0, 3.0, 0.2, -0.05, 4.0])
    prunable = np.array([1, 1, 1, 1, 1, 0], bool)
    np.testing.assert_array_equal(ms.magnitude_mask(w, 0.4, prunable), [0, 1, 1, 0, 0, 0])
    traj = np.stack([w, w * 2, np.array([5.0, -0.1, 3.0, 0.2, -0.05, 4.0])])  # (S=3, P)
    d = ms.early_bird_distance(traj, 0.4, prunable)
    np.testing.assert_allclose(d, [0.0, 2 / 5])
    np.testing.assert_allclose(ms.early_bird_distance(traj, 0.4, prunable, delta=2), [2 / 5])
    batched = ms.early_bird_distance(np.stack([traj, traj[::-1]]), 0.4, prunable)
    np.testing.assert_allclose(batched, [[0.0, 0.4], [0.4, 0.0]])
    # step axis first, params last is the default; other layouts via axis_step
    np.testing.assert_allclose(ms.early_bird_distance(traj[None], 0.4, prunable, axis_step=1),
                               d[None])


def _whole_row_early_bird(traj, density, prunable):
    """The early-bird distance from masks over whole rows (ineligible entries in the row)."""
    elig = np.broadcast_to(prunable, traj.shape[:-2] + traj.shape[-1:])[..., None, :]
    masks = ms.magnitude_mask(traj, density, elig)
    return np.count_nonzero(masks[..., 1:, :] != masks[..., :-1, :], -1) / np.maximum(
        elig.sum(-1), 1)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([0.0, 0.2, 0.5, 0.8, 1.0]),
       st.sampled_from(["none", "ties", "nan"]))
def test_early_bird_over_the_eligible_columns_equals_the_whole_row(seed, density, trouble):
    # early_bird_distance sorts only each row's eligible weights: the same values as masks
    # drawn over whole rows, with ties broken by position and NaN steps as before
    rng = np.random.default_rng(seed)
    traj = rng.normal(size=(2, 3, 6, 40)).astype(np.float32)  # (cell, replica, step, param)
    prunable = rng.random((2, 1, 40)) < rng.uniform(0, 1, (2, 1, 1))  # per cell, maybe empty
    if trouble == "ties":
        traj = np.round(traj * 2) / 2  # many equal magnitudes
    elif trouble == "nan":
        traj[rng.random(traj.shape) < 0.05] = np.nan
    got = ms.early_bird_distance(traj, density, prunable)
    np.testing.assert_array_equal(got, _whole_row_early_bird(traj, density, prunable))


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_split_rhat_iid_vs_shifted(seed):
    rng = np.random.default_rng(seed)
    iid = rng.normal(size=(4, 400))
    shifted = iid + np.arange(4)[:, None] * 1.0
    for method in ("bda3", "rank"):
        assert abs(ms.split_rhat(iid, 0, 1, method=method) - 1.0) < 0.02
        assert ms.split_rhat(shifted, 0, 1, method=method) > 1.1
    # a trend inside each chain is caught by splitting
    trend = rng.normal(size=(4, 400)) + np.linspace(0, 3, 400)
    assert ms.split_rhat(trend, 0, 1) > 1.1


def test_split_rhat_formula_and_axes():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 10))
    halves = np.concatenate([x[:, :5], x[:, 5:]])
    n, w = 5, halves.var(1, ddof=1).mean()
    b = n * halves.mean(1).var(ddof=1)
    expected = np.sqrt(((n - 1) / n * w + b / n) / w)
    assert ms.split_rhat(x, 0, 1) == pytest.approx(expected)
    assert ms.split_rhat(x.T, chain_axis=1, draw_axis=0) == pytest.approx(expected)
    stacked = np.stack([x, x * 2])  # (2, chain, draw): scale-invariant
    np.testing.assert_allclose(ms.split_rhat(stacked, 1, 2), [expected, expected])
    with pytest.raises(ValueError, match="4 draws"):
        ms.split_rhat(x[:, :3], 0, 1)


def test_gradient_noise_scale_estimator():
    rng = np.random.default_rng(0)
    p, b, k = 50, 8, 4000
    g_true = rng.normal(size=p) * 0.3
    sigma_diag = rng.random(p) + 0.5  # per-example covariance, diagonal
    grads = g_true + rng.normal(size=(k, p)) * np.sqrt(sigma_diag / b)
    out = ms.gradient_noise_scale(grads, batch_size=b)
    assert out["trace_cov"] == pytest.approx(sigma_diag.sum(), rel=0.03)
    assert out["grad_norm_sq"] == pytest.approx(g_true @ g_true, rel=0.05)
    assert out["b_simple"] == pytest.approx(sigma_diag.sum() / (g_true @ g_true), rel=0.06)
    s = sigma_diag.sum() / b
    assert out["snr"] == pytest.approx((g_true @ g_true + s / k) / (s / k), rel=0.05)
    batched = ms.gradient_noise_scale(np.stack([grads[:100], grads[100:200]]), b)
    assert batched["b_simple"].shape == (2,)
    with pytest.raises(ValueError):
        ms.gradient_noise_scale(grads[:1], b)


def test_minibatch_gradients_match_autograd():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    stacked = StackedModel(model)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    x, y = torch.randn(30, 4), torch.randint(0, 3, (30,))
    grads = ms.minibatch_gradients(stacked, flat, None, x, y, batch_size=7, k=6,
                                   generator=torch.Generator().manual_seed(3))
    assert grads.shape == (6, stacked.num_params)
    g = torch.Generator().manual_seed(3)
    perm = torch.cat([torch.randperm(30, generator=g), torch.randperm(30, generator=g)])
    for i in range(6):
        idx = perm[i * 7:(i + 1) * 7]
        model.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        ref = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        torch.testing.assert_close(grads[i], ref)
    mask = torch.rand(stacked.num_params) > 0.5
    masked = ms.minibatch_gradients(stacked, flat, None, x, y, 7, 5,
                                    torch.Generator().manual_seed(3), mask=mask)
    assert torch.all(masked[:, ~mask] == 0)


def test_minibatch_gradients_bn_train_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    stacked = StackedModel(model)
    params, buffers = stacked.stack([model])
    flat, bflat = stacked.flatten(params)[0], stacked.flatten_buffers(buffers)[0]
    before = bflat.clone()
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    grads = ms.minibatch_gradients(stacked, flat, bflat, x, y, 5, 4,
                                   torch.Generator().manual_seed(0))
    assert grads.shape == (4, stacked.num_params) and torch.isfinite(grads).all()
    assert torch.equal(bflat, before)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    model.eval()
    model.zero_grad()
    nn.functional.cross_entropy(model(x[perm[:5]]), y[perm[:5]]).backward()
    eval_grads = ms.minibatch_gradients(stacked, flat, bflat, x, y, 5, 4,
                                        torch.Generator().manual_seed(0), train=False)
    torch.testing.assert_close(eval_grads[0],
                               torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    model.train()
    model.zero_grad()
    nn.functional.cross_entropy(model(x[perm[5:10]]), y[perm[5:10]]).backward()
    torch.testing.assert_close(grads[1],
                               torch.cat([p.grad.reshape(-1) for p in model.parameters()]))


def test_hessian_max_eigenvalue_softmax_regression():
    torch.manual_seed(0)
    model = nn.Linear(3, 3).double()
    stacked = StackedModel(model)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    x, y = torch.randn(40, 3, dtype=torch.float64), torch.randint(0, 3, (40,))

    def loss(v):
        w, b = v[:9].reshape(3, 3), v[9:]
        return nn.functional.cross_entropy(x @ w.T + b, y)

    h = torch.autograd.functional.hessian(loss, flat)
    top = torch.linalg.eigvalsh(h).max().item()  # PSD: largest = largest magnitude
    lam = ms.hessian_max_eigenvalue(stacked, flat, None, x, y, n_iter=500, tol=1e-10,
                                    generator=torch.Generator().manual_seed(0))
    assert lam == pytest.approx(top, rel=1e-4)


def test_magnitude_mask_float32_is_the_float64_mask():
    """float32 weights are sorted as float32: |w| and every comparison are exact, so the
    mask (ties included) is the float64 one."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 300)).astype(np.float32)
    w[:, 10:20] = w[:, :10]  # ties across positions
    w[1, 7] = np.nan
    elig = rng.random(300) < 0.8
    np.testing.assert_array_equal(ms.magnitude_mask(w, 0.3, elig),
                                  ms.magnitude_mask(w.astype(np.float64), 0.3, elig))
