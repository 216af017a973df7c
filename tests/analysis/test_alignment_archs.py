"""Alignment on every shipped architecture and on plugins with LayerNorm / GroupNorm
(Ainsworth et al., "Git Re-Basin", ICLR 2023: permutation specs, weight and activation
matching)."""

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from stabilitylab.analysis.activation_matching import activation_matching
from stabilitylab.analysis.align import apply_permutation, permutation_spec, weight_matching
from stabilitylab.analysis.barriers import instability
from stabilitylab.analysis.interpolate import evaluate_interpolation
from stabilitylab.analysis.permutation_spec import AlignmentError, derive_spec
from stabilitylab.models import vgg
from stabilitylab.models.conv1d import Conv1dNet
from stabilitylab.models.mlp import MLP
from stabilitylab.models.resnet import CifarResNet
from stabilitylab.train.functional import StackedModel


class NormPlugin(nn.Module):
    """A user's model: LayerNorm on an MLP branch, GroupNorm (1 group and one per channel) in
    a conv branch with a residual connection."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 6, 3, padding=1)
        self.gn1 = nn.GroupNorm(1, 6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.gn2 = nn.GroupNorm(6, 6)
        self.lin = nn.Linear(6, 7)
        self.ln = nn.LayerNorm(7)
        self.fc = nn.Linear(7, 3)

    def forward(self, x):
        h = torch.relu(self.gn1(self.conv1(x)))
        h = torch.relu(h + self.gn2(self.conv2(h)))
        h = torch.relu(self.ln(self.lin(h.mean(dim=(-2, -1)))))
        return self.fc(h)


def _vgg():
    plan = {5: [4, "M", 6, 6, "M", 5]}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vgg, "PLANS", {**vgg.PLANS, **plan})
        return vgg.CifarVGG(5, 3, 4)


ARCHS = {
    "mlp": (lambda: MLP(12, (9, 7), 4), (1, 12)),
    "conv1d": (lambda: Conv1dNet(1, 16, 5, 4), (1, 16)),
    "conv1d_layernorm": (lambda: Conv1dNet(1, 16, 5, 4, norm="layer"), (1, 16)),
    "vgg": (_vgg, (3, 8, 8)),
    "resnet20": (lambda: CifarResNet(20, 3, 4), (3, 8, 8)),
    "plugin": (NormPlugin, (2, 5, 5)),
}


def _randomise(model, seed):
    """Random weights everywhere, including norm affine parameters and BN running stats."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.parameters():
            t.copy_(torch.randn(t.shape, generator=g) * 0.4)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


def _loaded(model, state):
    out = copy.deepcopy(model)
    out.load_state_dict({**model.state_dict(), **state})
    return out.eval()


@settings(max_examples=10, deadline=None)
@given(st.sampled_from(sorted(ARCHS)), st.integers(0, 2**31 - 1))
def test_a_randomly_permuted_copy_computes_the_same_function(arch, seed):
    make, shape = ARCHS[arch]
    model = _randomise(make(), seed % 1000)
    spec = permutation_spec(model)
    rng = np.random.default_rng(seed)
    perm = {p: rng.permutation(n) for p, n in spec.perm_sizes.items()}
    state = _state(model)
    permuted = apply_permutation(spec, perm, state)
    moved = [k for k in state if not torch.equal(state[k], permuted[k])]
    assert moved or all((p == np.arange(len(p))).all() for p in perm.values())
    x = torch.randn(6, *shape, generator=torch.Generator().manual_seed(seed % 997))
    with torch.no_grad():
        want = model(x)
        # float32 reassociation alone moved one ResNet-20 logit of 58.5 by 0.021 (3.6e-4
        # relative): the tolerance scales with the outputs; a wrong permutation is O(1) off
        scale = float(want.abs().max().clamp(min=1.0))
        torch.testing.assert_close(_loaded(model, permuted)(x), want, rtol=2e-3,
                                   atol=1e-4 * scale)


def test_resnet_spec_shares_one_permutation_per_stream_and_matches_the_derived_one():
    for depth in (20, 32):
        model = CifarResNet(depth, 3, 10)
        declared, derived = permutation_spec(model), derive_spec(model)
        assert declared.canonical() == derived.canonical() and declared.buffers == derived.buffers
        n = (depth - 2) // 6
        assert len(declared.perm_sizes) == 3 + 3 * n  # 3 streams + one per block interior
    spec = permutation_spec(CifarResNet(20, 3, 10))

    def on(name, axis):
        return next(p for ax, p, _ in spec.axes[name] if ax == axis)

    stream1 = on("blocks.3.shortcut.0.weight", 0)
    assert stream1 == on("blocks.3.conv2.weight", 0) == on("blocks.5.conv2.weight", 0) \
        == on("blocks.4.conv1.weight", 1) == on("blocks.6.shortcut.0.weight", 1)
    stream0 = on("blocks.3.shortcut.0.weight", 1)
    assert stream0 == on("conv.weight", 0) == on("blocks.2.bn2.weight", 0) != stream1
    assert on("blocks.3.conv1.weight", 0) not in (stream0, stream1)
    assert "blocks.3.shortcut.1.running_var" in spec.buffers


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_matching_recovers_a_planted_permutation_and_the_aligned_barrier_is_zero(arch):
    make, shape = ARCHS[arch]
    model = _randomise(make(), 3)
    spec = permutation_spec(model)
    stacked = StackedModel(model)
    rng = np.random.default_rng(0)
    planted = {p: rng.permutation(n) for p, n in spec.perm_sizes.items()}
    a = {n: t for n, t in _state(model).items() if n in stacked.param_names}
    b = apply_permutation(spec, planted, a)
    flat = lambda s: torch.cat([s[n].reshape(-1) for n in stacked.param_names])
    x = torch.randn(64, *shape, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 4 if arch != "plugin" else 3, (64,))
    bn_x = x if stacked.buffer_slots else None
    for how in ("weight", "activation"):
        if how == "weight":
            perm = weight_matching(spec, a, b)
        else:
            perm = activation_matching(stacked, spec, flat(a), flat(b), x)
        for p, idx in planted.items():  # the inverse of the planted permutation
            np.testing.assert_array_equal(idx[perm[p]], np.arange(len(idx)), err_msg=f"{how} {p}")
        aligned = flat(apply_permutation(spec, perm, b))
        assert torch.equal(aligned, flat(a))
        res = evaluate_interpolation(stacked, flat(a), aligned, np.linspace(0, 1, 5), x, y,
                                     bn_recompute_x=bn_x)
        assert instability(res["error"]) == 0.0


@pytest.mark.parametrize("arch", ["mlp", "resnet20"])
def test_aligning_a_subnetwork_keeps_its_density_per_layer_and_exact_zeros(arch):
    make, _ = ARCHS[arch]
    stacked = StackedModel(make())
    spec = permutation_spec(make())
    g = torch.Generator().manual_seed(0)
    weights, masks = [], []
    for seed in (1, 2):
        w = {n: t.detach() for n, t in _state(_randomise(make(), seed)).items()
             if n in stacked.param_names}
        m = {n: torch.rand(t.shape, generator=g) < 0.3 for n, t in w.items()
             if n in stacked.prunable_names}
        weights.append({n: t * m[n] if n in m else t for n, t in w.items()})
        masks.append(m)
    perm = weight_matching(spec, weights[0], weights[1])
    assert any((p != np.arange(len(p))).any() for p in perm.values())
    aligned = apply_permutation(spec, perm, weights[1])
    mask = apply_permutation(spec, perm, masks[1])
    for n, m in mask.items():
        assert m.dtype == torch.bool
        assert int(m.sum()) == int(masks[1][n].sum())  # same density per layer
        assert torch.all(aligned[n][~m] == 0)  # pruned weights exactly 0
        assert torch.equal(aligned[n] != 0, m & (aligned[n] != 0))


def test_an_underivable_architecture_is_refused_in_one_line_naming_the_module():
    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.rnn = nn.GRU(4, 4)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.rnn(self.lin(x))[0])

    with pytest.raises(AlignmentError) as err:
        permutation_spec(Gated())
    assert "'rnn' (GRU)" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(AlignmentError, match="GroupNorm.*groups"):
        permutation_spec(nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(),
                                       nn.Linear(4, 2)))

    class Declares(nn.Module):
        def permutation_spec(self):
            return [1, 2]

    with pytest.raises(AlignmentError, match="not a PermutationSpec"):
        permutation_spec(Declares())
