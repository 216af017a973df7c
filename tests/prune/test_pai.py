"""Pruning-at-init rules: exact density, no revival, determinism, and each paper's formula."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from stabilitylab.core.errors import ConfigError
from stabilitylab.models.common import BatchNorm2d
from stabilitylab.models.mlp import MLP
from stabilitylab.prune import global_magnitude_masks
from stabilitylab.prune.pai import (
    PAI_RULES,
    grasp_masks,
    grasp_scores,
    kept_count,
    layerwise_shuffle,
    magnitude_init_masks,
    masks_from_scores,
    prunable_names,
    snip_masks,
    snip_scores,
    synflow_masks,
    synflow_scores,
)
from stabilitylab.train.functional import StackedModel


def tiny(seed=0):
    torch.manual_seed(seed)
    model = MLP(12, (7, 5), 3)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(seed)
    batch = (torch.randn(16, 1, 12, generator=g), torch.randint(0, 3, (16,), generator=g))
    return model, params, batch


MODEL, PARAMS, BATCH = tiny()
TEMPLATE = StackedModel(MODEL).template  # the engine's meta template


def random_masks(params, names, keep_p, seed):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(params[n].shape, generator=g) < keep_p for n in names}


def count(masks):
    return sum(int(m.sum()) for m in masks.values())


def run_rule(name, density, masks, params=PARAMS, **kw):
    if name == "synflow":
        kw.setdefault("iterations", 4)
    return PAI_RULES[name](TEMPLATE, params, {}, BATCH, density, masks, **kw)


@settings(max_examples=8, deadline=None)
@given(rule=st.sampled_from(sorted(PAI_RULES)), density=st.floats(0.0, 1.0),
       keep_p=st.floats(0.3, 1.0), seed=st.integers(0, 50))
def test_exact_density_and_no_revival(rule, density, keep_p, seed):
    names = prunable_names(MODEL)
    current = random_masks(PARAMS, names, keep_p, seed)
    out = run_rule(rule, density, current)
    assert set(out) == set(names)
    assert count(out) == round(density * count(current))
    for n in names:
        assert out[n].dtype == torch.bool and out[n].shape == PARAMS[n].shape
        assert not (out[n] & ~current[n]).any(), f"{rule} revived a pruned weight in {n}"


@pytest.mark.parametrize("rule", sorted(PAI_RULES))
def test_rules_are_deterministic_and_default_to_all_prunable(rule):
    a = run_rule(rule, 0.3, None)
    b = run_rule(rule, 0.3, None)
    assert all(torch.equal(a[n], b[n]) for n in a)
    total = sum(PARAMS[n].numel() for n in prunable_names(MODEL))
    assert count(a) == round(0.3 * total)
    assert set(a) == {"hidden.0.weight", "hidden.1.weight", "fc.weight"}  # biases never pruned


def test_rules_do_not_modify_their_inputs():
    before = {n: p.clone() for n, p in PARAMS.items()}
    current = random_masks(PARAMS, prunable_names(MODEL), 0.7, 3)
    saved = {n: m.clone() for n, m in current.items()}
    for rule in PAI_RULES:
        run_rule(rule, 0.4, current)
    assert all(torch.equal(before[n], PARAMS[n]) for n in PARAMS)
    assert all(torch.equal(saved[n], current[n]) for n in current)


def test_magnitude_at_init_equals_global_magnitude_pruning():
    names = prunable_names(MODEL)
    weights = {n: PARAMS[n] for n in names}
    current = random_masks(PARAMS, names, 0.8, 1)
    alive = count(current)
    for density in (0.1, 0.37, 0.5, 0.9):
        fraction = 1 - density
        if round(density * alive) + round(fraction * alive) != alive:
            continue  # the two roundings disagree only on exact halves
        ours = magnitude_init_masks(TEMPLATE, PARAMS, {}, None, density, current)
        theirs = global_magnitude_masks(weights, current, fraction)
        assert all(torch.equal(ours[n], theirs[n]) for n in names)


def test_ties_are_pruned_by_index_like_masks_py():
    scores = {"a": torch.ones(4), "b": torch.ones(2)}
    out = masks_from_scores(scores, 0.5)
    assert out["a"].tolist() == [False, False, False, True] and out["b"].tolist() == [True, True]


def test_snip_scores_equal_plain_autograd():
    model, params, (x, y) = tiny(1)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    expected = {n: (p.grad * p).abs() for n, p in model.named_parameters() if n.endswith("weight")}
    got = snip_scores(StackedModel(model).template, params, {}, (x, y))
    for n, want in expected.items():
        torch.testing.assert_close(got[n], want, rtol=1e-5, atol=1e-8)
    masks = snip_masks(model, params, {}, (x, y), 0.25)
    ref = masks_from_scores(expected, 0.25)
    assert all(torch.equal(masks[n], ref[n]) for n in ref)


def test_snip_at_a_masked_point_uses_the_masked_weights():
    model, params, (x, y) = tiny(2)
    current = random_masks(params, prunable_names(model), 0.6, 2)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in current:
                p.mul_(current[n])
    nn.functional.cross_entropy(model(x), y).backward()
    got = snip_scores(model, params, {}, (x, y), current)
    for n, p in model.named_parameters():
        if n in current:
            torch.testing.assert_close(got[n], (p.grad * p).abs(), rtol=1e-5, atol=1e-8)


def test_grasp_scores_equal_double_backward_and_keep_the_lowest():
    model, params, (x, y) = tiny(3)
    weights = [p for n, p in model.named_parameters() if n in set(prunable_names(model))]
    names = prunable_names(model)
    loss = nn.functional.cross_entropy(model(x), y)
    g = torch.autograd.grad(loss, weights, create_graph=True)
    z = sum((gi * gi.detach()).sum() for gi in g)
    hg = torch.autograd.grad(z, weights)
    expected = {n: -w.detach() * h for n, w, h in zip(names, weights, hg, strict=True)}
    got = grasp_scores(model, params, {}, (x, y))
    for n in names:
        torch.testing.assert_close(got[n], expected[n], rtol=1e-4, atol=1e-9)
    masks = grasp_masks(model, params, {}, (x, y), 0.3)
    flat_s = torch.cat([expected[n].flatten() for n in names])
    flat_m = torch.cat([masks[n].flatten() for n in names])
    assert flat_s[flat_m].max() <= flat_s[~flat_m].min()  # the highest scores are removed


def test_synflow_two_layer_linear_closed_form():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 2, bias=False))
    params = {n: p.detach().clone() for n, p in net.named_parameters()}
    w1, w2 = params["0.weight"].abs().double(), params["2.weight"].abs().double()
    # R = 1ᵀ|W2||W1|1: ∂R/∂W1_ij = Σ_k |W2_ki|, ∂R/∂W2_ki = Σ_j |W1_ij|.
    expected = {"0.weight": w1 * w2.sum(0)[:, None], "2.weight": w2 * w1.sum(1)[None, :]}
    got = synflow_scores(net, params, {}, None, (4,))
    for n, want in expected.items():
        torch.testing.assert_close(got[n], want)
    one_shot = synflow_masks(net, params, {}, torch.zeros(1, 4), 0.5, iterations=1)
    ref = masks_from_scores(expected, 0.5)
    assert all(torch.equal(one_shot[n], ref[n]) for n in ref)


def test_synflow_iterates_with_the_exponential_schedule():
    """Iterating changes the outcome: scores are recomputed after each cut."""
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(6, 6, bias=False), nn.ReLU(), nn.Linear(6, 6, bias=False),
                        nn.ReLU(), nn.Linear(6, 2, bias=False))
    params = {n: p.detach().clone() for n, p in net.named_parameters()}
    total = sum(p.numel() for p in params.values())
    current = {n: torch.ones(p.shape, dtype=torch.bool) for n, p in params.items()}
    for i in range(1, 4):  # Alg. 1 by hand: recompute scores, cut to round(d^(i/n) * total)
        keep = round(0.05 ** (i / 3) * total)
        scores = synflow_scores(net, params, {}, current, (6,))
        current = masks_from_scores(scores, keep / count(current), current)
        assert count(current) == keep
    masks = synflow_masks(net, params, {}, torch.zeros(1, 6), 0.05, iterations=3)
    assert all(torch.equal(masks[n], current[n]) for n in masks)
    assert count(masks) == round(0.05 * total)
    # no layer is cut off entirely (SynFlow's point: it avoids layer collapse)
    assert all(int(m.sum()) > 0 for m in masks.values())


def test_synflow_handles_batchnorm_in_float64_and_leaves_buffers():
    torch.manual_seed(6)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(3 * 4 * 4, 2))
    net.eval()
    params = {n: p.detach().clone() for n, p in net.named_parameters()}
    buffers = {n: b.detach().clone() + 1.0 for n, b in net.named_buffers() if b.is_floating_point()}
    saved = {n: b.clone() for n, b in buffers.items()}
    masks = synflow_masks(net, params, buffers, (torch.zeros(2, 1, 6, 6), None), 0.3,
                          iterations=3)
    assert count(masks) == round(0.3 * (27 + 96))
    assert all(torch.equal(saved[n], buffers[n]) for n in buffers)
    # identity statistics: the running stats given do not change the scores
    s1 = synflow_scores(net, params, buffers, None, (1, 6, 6))
    s2 = synflow_scores(net, params, {}, None, (1, 6, 6))
    assert all(torch.equal(s1[n], s2[n]) for n in s1) and s1["0.weight"].dtype == torch.float64


def test_snip_and_grasp_with_batchnorm_do_not_touch_running_stats():
    torch.manual_seed(7)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(3 * 4 * 4, 2))
    params = {n: p.detach().clone() for n, p in net.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in net.named_buffers() if b.is_floating_point()}
    saved = {n: b.clone() for n, b in buffers.items()}
    batch = (torch.randn(5, 1, 6, 6), torch.randint(0, 2, (5,)))
    for rule in (snip_masks, grasp_masks):
        m = rule(StackedModel(net).template, params, buffers, batch, 0.5)
        assert count(m) == round(0.5 * (27 + 96))
    assert all(torch.equal(saved[n], buffers[n]) for n in buffers)


def test_layerwise_shuffle_preserves_counts_is_seeded_and_moves_positions():
    names = prunable_names(MODEL)
    mask = snip_masks(TEMPLATE, PARAMS, {}, BATCH, 0.3)
    a = layerwise_shuffle(mask, torch.Generator().manual_seed(0))
    b = layerwise_shuffle(mask, torch.Generator().manual_seed(0))
    c = layerwise_shuffle(mask, torch.Generator().manual_seed(1))
    assert all(int(a[n].sum()) == int(mask[n].sum()) for n in names)
    assert all(torch.equal(a[n], b[n]) for n in names)
    assert any(not torch.equal(a[n], c[n]) for n in names)
    assert any(not torch.equal(a[n], mask[n]) for n in names)


@settings(max_examples=10, deadline=None)
@given(keep_p=st.floats(0.0, 1.0), seed=st.integers(0, 1000))
def test_layerwise_shuffle_within_never_revives(keep_p, seed):
    names = prunable_names(MODEL)
    within = random_masks(PARAMS, names, 0.8, seed)
    g = torch.Generator().manual_seed(seed)
    mask = {n: within[n] & (torch.rand(within[n].shape, generator=g) < keep_p) for n in names}
    out = layerwise_shuffle(mask, g, within=within)
    for n in names:
        assert int(out[n].sum()) == int(mask[n].sum())
        assert not (out[n] & ~within[n]).any()


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(ConfigError, match="density"):
        snip_masks(TEMPLATE, PARAMS, {}, BATCH, 1.5)
    with pytest.raises(ConfigError, match="density"):
        kept_count(float("nan"), 10)
    with pytest.raises(ConfigError, match="iterations"):
        synflow_masks(TEMPLATE, PARAMS, {}, BATCH, 0.5, iterations=0)
    with pytest.raises(ConfigError, match="NaN"):
        masks_from_scores({"a": torch.tensor([1.0, float("nan")])}, 0.5)
    with pytest.raises(ConfigError, match="shape"):
        snip_masks(TEMPLATE, PARAMS, {}, BATCH, 0.5, {"fc.weight": torch.ones(2, 2, dtype=bool)})
    with pytest.raises(ConfigError, match="positions"):
        layerwise_shuffle({"a": torch.ones(3, dtype=bool)}, torch.Generator(),
                          within={"a": torch.tensor([True, False, False])})


@pytest.mark.parametrize("rule", sorted(PAI_RULES))
def test_exact_zero_weights_never_let_a_pruned_weight_back(rule):
    """Survivors that score exactly 0 (zero weights) still sort above pruned ones."""
    names = prunable_names(MODEL)
    params = dict(PARAMS)
    current = random_masks(PARAMS, names, 0.5, 9)
    for n in names:  # a third of the survivors are exactly 0
        zero = torch.rand(params[n].shape, generator=torch.Generator().manual_seed(1)) < 0.33
        params[n] = torch.where(zero & current[n], torch.zeros_like(params[n]), params[n])
    out = run_rule(rule, 0.9, current, params=params)
    assert count(out) == round(0.9 * count(current))
    assert all(not (out[n] & ~current[n]).any() for n in names)
