"""Permutation invariants and weight matching (Ainsworth et al., "Git Re-Basin", ICLR 2023: weight matching)."""

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from stabilitylab.analysis.align import (
    align_flat,
    apply_permutation,
    permutation_spec,
    weight_matching,
)
from stabilitylab.analysis.distances import l2_distance
from stabilitylab.analysis.measures import disagreement
from stabilitylab.train.functional import StackedModel


def _mlp():
    return nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 10), nn.ReLU(),
                         nn.Linear(10, 3))


def _conv1d():
    return nn.Sequential(nn.Conv1d(2, 6, 3), nn.BatchNorm1d(6), nn.ReLU(),
                         nn.Conv1d(6, 7, 3, stride=2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(7 * 3, 9), nn.ReLU(), nn.Dropout(0.1), nn.Linear(9, 4))


def _conv2d():
    return nn.Sequential(nn.Conv2d(1, 5, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(5, 6, 2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(6 * 2 * 2, 3))


class _FunctionalConvNet(nn.Module):
    """Like the registry's conv1d: named layers, functional ReLU, reshape(B, -1)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 6, 5, stride=2, padding=2)
        self.conv2 = nn.Conv1d(6, 5, 3, stride=2, padding=1)
        self.fc = nn.Linear(5 * 3, 4)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = nn.functional.relu(self.conv2(x))
        return self.fc(x.reshape(x.shape[0], -1))


class _GlobalPoolNet(nn.Module):
    """VGG-style head: conv-BN blocks in a Sequential, then x.mean over space, then fc."""

    def __init__(self, reduce_dims=(-2, -1)):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                    nn.MaxPool2d(2), nn.Conv2d(4, 5, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(5, 3)
        self.reduce_dims = reduce_dims

    def forward(self, x):
        return self.fc(self.layers(x).mean(dim=self.reduce_dims))


ARCHS = {"mlp": (_mlp, (5,)), "conv1d": (_conv1d, (2, 10)), "conv2d": (_conv2d, (1, 8, 8)),
         "functional": (_FunctionalConvNet, (1, 10)), "global_pool": (_GlobalPoolNet, (1, 6, 6))}


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()
            if v.is_floating_point()}


def _with_state(model, state):
    out = copy.deepcopy(model)
    out.load_state_dict({**model.state_dict(), **state})
    return out.eval()


def _randomise_bn(model, seed):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))


@settings(max_examples=12, deadline=None)
@given(st.sampled_from(sorted(ARCHS)), st.integers(0, 2**31 - 1))
def test_planted_permutation_recovered_and_function_unchanged(arch, seed):
    make, in_shape = ARCHS[arch]
    torch.manual_seed(seed % 10_000)
    model = make().eval()
    _randomise_bn(model, seed)
    spec = permutation_spec(model)
    a = _state(model)
    rng = np.random.default_rng(seed)
    planted = {p: rng.permutation(n) for p, n in spec.perm_sizes.items()}
    b = apply_permutation(spec, planted, a)
    x = torch.randn(16, *in_shape)
    with torch.no_grad():
        la, lb = model(x), _with_state(model, b)(x)
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-5)
    assert disagreement(la, lb) == 0.0
    flat = lambda s: torch.cat([s[k].reshape(-1) for k in sorted(s)])
    if any((p != np.arange(len(p))).any() for p in planted.values()):
        assert l2_distance(flat(a), flat(b)) > 0
    perm = weight_matching(spec, a, b, seed=seed)
    back = apply_permutation(spec, perm, b)
    for k in a:
        assert torch.equal(back[k], a[k]), k
    for p, idx in planted.items():  # perm is the inverse of the planted one
        np.testing.assert_array_equal(idx[perm[p]], np.arange(len(idx)))


def test_numpy_and_align_flat():
    torch.manual_seed(0)
    model = _mlp()
    stacked = StackedModel(model)
    spec = permutation_spec(model)
    a = {k: v.numpy() for k, v in _state(model).items()}
    planted = {p: np.random.default_rng(1).permutation(n) for p, n in spec.perm_sizes.items()}
    b = apply_permutation(spec, planted, a)
    assert isinstance(b["0.weight"], np.ndarray)
    fa = np.concatenate([a[n].reshape(-1) for n in stacked.param_names])
    fb = np.concatenate([b[n].reshape(-1) for n in stacked.param_names])
    aligned, _ = align_flat(model, fa, fb)
    np.testing.assert_array_equal(aligned, fa)
    aligned_t, _ = align_flat(stacked, torch.tensor(fa), torch.tensor(fb))
    assert torch.equal(aligned_t, torch.tensor(fa))


def test_matching_unrelated_models_reduces_distance():
    torch.manual_seed(0)
    m1, m2 = _mlp(), _mlp()
    spec = permutation_spec(m1)
    a, b = _state(m1), _state(m2)
    perm = weight_matching(spec, a, b)
    c = apply_permutation(spec, perm, b)
    flat = lambda s: torch.cat([s[k].reshape(-1) for k in sorted(s)])
    assert l2_distance(flat(a), flat(c)) < l2_distance(flat(a), flat(b))
    x = torch.randn(20, 5)
    torch.testing.assert_close(_with_state(m2, c)(x), m2(x), rtol=1e-5, atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.05, 20.0))
def test_positive_relu_rescaling_preserves_function(seed, c):
    torch.manual_seed(seed % 10_000)
    model = _mlp().double().eval()
    unit = seed % 12
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        scaled[0].weight[unit] *= c
        scaled[0].bias[unit] *= c
        scaled[2].weight[:, unit] /= c
    x = torch.randn(16, 5, dtype=torch.float64)
    torch.testing.assert_close(scaled(x), model(x), rtol=1e-9, atol=1e-9)


def test_unsupported_architectures_raise():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return x + self.lin(x)

    # the residual ties the hidden units to the (never permuted) input: nothing to permute
    with pytest.raises(NotImplementedError, match="no hidden units"):
        permutation_spec(Residual())

    class Concat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.fc = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(6, 2)

        def forward(self, x):
            return self.fc(torch.cat([self.a(x), self.b(x)], 1))

    with pytest.raises(NotImplementedError, match="'cat'.*no permutation rule"):
        permutation_spec(Concat())
    with pytest.raises(NotImplementedError, match="grouped"):
        permutation_spec(nn.Sequential(nn.Conv1d(2, 4, 3, groups=2), nn.Flatten(),
                                       nn.Linear(4, 2)))
    with pytest.raises(NotImplementedError, match="LSTM"):
        permutation_spec(nn.Sequential(nn.Linear(4, 4), nn.LSTM(4, 4)))
    with pytest.raises(NotImplementedError, match="unit axis"):
        permutation_spec(_GlobalPoolNet(reduce_dims=(1,)))


@pytest.mark.parametrize("name", ["mlp", "conv1d"])
def test_registry_models(name):
    """The study's own MLP / conv1d nets are chain-structured and supported."""
    if name == "mlp":
        mod = pytest.importorskip("stabilitylab.models.mlp")
        model, x = mod.MLP(6, (7, 5), 3), torch.randn(9, 2, 3)
    else:
        mod = pytest.importorskip("stabilitylab.models.conv1d")
        model, x = mod.Conv1dNet(1, 12, 4, 3), torch.randn(9, 1, 12)
    model.eval()
    spec = permutation_spec(model)
    assert len(spec.perm_sizes) == (2 if name == "mlp" else 3)
    a = _state(model)
    planted = {p: np.random.default_rng(0).permutation(n) for p, n in spec.perm_sizes.items()}
    b = apply_permutation(spec, planted, a)
    torch.testing.assert_close(_with_state(model, b)(x), model(x), rtol=1e-5, atol=1e-5)
    back = apply_permutation(spec, weight_matching(spec, a, b), b)
    assert all(torch.equal(back[k], a[k]) for k in a)
