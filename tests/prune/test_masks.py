"""Magnitude pruning: torch's global_unstructured agreement, IMP density law, random control."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune as torch_prune

from stabilitylab.prune import (
    density,
    global_magnitude_masks,
    layerwise_magnitude_masks,
    prune,
    random_masks_like,
)


def weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(30, 20, generator=g), "b": torch.randn(10, 30, generator=g),
            "c": torch.randn(5, 10, generator=g)}


def test_global_mask_equals_torch_global_unstructured_over_levels():
    w = weights()
    modules = {n: nn.Linear(t.shape[1], t.shape[0]) for n, t in w.items()}
    for n, m in modules.items():
        m.weight.data.copy_(w[n])
    masks = {n: torch.ones_like(t, dtype=torch.bool) for n, t in w.items()}
    for _level in range(4):
        torch_prune.global_unstructured([(m, "weight") for m in modules.values()],
                                        pruning_method=torch_prune.L1Unstructured, amount=0.2)
        masks = global_magnitude_masks(w, masks, 0.2)
        for n, m in modules.items():
            assert torch.equal(masks[n], m.weight_mask.bool()), n


@settings(max_examples=25, deadline=None)
@given(levels=st.integers(1, 6), fraction=st.floats(0.05, 0.6), seed=st.integers(0, 100))
def test_density_after_n_levels(levels, fraction, seed):
    w = weights(seed)
    total = sum(t.numel() for t in w.values())
    masks = {n: torch.ones_like(t, dtype=torch.bool) for n, t in w.items()}
    for _ in range(levels):
        masks = prune(w, masks, fraction, "global")
    # Each level rounds to a whole weight, so allow one weight of slack per level.
    assert abs(density(masks) - (1 - fraction) ** levels) <= levels / total + 1e-12


def test_layerwise_prunes_each_tensor_by_the_fraction():
    w = weights()
    masks = {n: torch.ones_like(t, dtype=torch.bool) for n, t in w.items()}
    masks = layerwise_magnitude_masks(w, masks, 0.5)
    for n, m in masks.items():
        assert int(m.sum()) == m.numel() - round(0.5 * m.numel())
        kept, dropped = w[n].abs()[m], w[n].abs()[~m]
        assert kept.min() >= dropped.max()


def test_pruned_weights_stay_pruned_across_levels():
    w = weights()
    masks = {n: torch.ones_like(t, dtype=torch.bool) for n, t in w.items()}
    first = prune(w, masks, 0.3)
    w2 = {n: t + 10 * (~first[n]).float() for n, t in w.items()}  # pruned entries now huge
    second = prune(w2, first, 0.3)
    for n in w:
        assert not (second[n] & ~first[n]).any()


def test_random_masks_keep_per_layer_counts():
    w = weights()
    masks = prune(w, {n: torch.ones_like(t, dtype=torch.bool) for n, t in w.items()}, 0.6)
    rand = random_masks_like(masks, torch.Generator().manual_seed(1))
    for n in masks:
        assert int(rand[n].sum()) == int(masks[n].sum())
    assert any(not torch.equal(rand[n], masks[n]) for n in masks)
    assert math.isclose(density(rand), density(masks))


def test_unknown_strategy():
    with pytest.raises(ValueError):
        prune(weights(), {}, 0.2, "structured")


@pytest.mark.parametrize("strategy", ["global", "layerwise"])
def test_an_alive_weight_of_exactly_zero_never_revives_a_pruned_one(strategy):
    # the alive zeros tie with nothing: the pruned index 2 stays pruned, one alive zero goes
    w = {"a": torch.tensor([0.0, 0.0, 9.0, 3.0])}
    m = {"a": torch.tensor([True, True, False, True])}
    out = prune(w, m, 0.34, strategy)["a"]
    assert not out[2]
    assert out.tolist() == [False, True, False, True]
