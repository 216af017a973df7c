"""Start-point perturbations: relative size, masks respected, one-ulp bit flip, seeding."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stabilitylab.core.errors import ConfigError
from stabilitylab.train.perturb import bit_flip, bit_flip_site, perturb, relative_gaussian


def replica(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    params = {"a.weight": torch.randn(6, 5, generator=g, dtype=dtype),
              "a.bias": torch.randn(6, generator=g, dtype=dtype),
              "b.weight": torch.randn(3, 6, generator=g, dtype=dtype)}
    masks = {"a.weight": torch.rand(6, 5, generator=g) < 0.5,
             "b.weight": torch.rand(3, 6, generator=g) < 0.5}
    for n, m in masks.items():
        params[n] = params[n] * m  # pruned weights are exactly 0, as the engine keeps them
    return params, masks


def gen(seed):
    return torch.Generator().manual_seed(seed)


def norm(d):
    return math.sqrt(sum(float(t.double().square().sum()) for t in d.values()))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), eps=st.sampled_from([1e-6, 1e-3, 0.1, 1.0]))
def test_relative_gaussian_has_relative_size_epsilon_in_float64(seed, eps):
    params, masks = replica(seed, torch.float64)
    out = relative_gaussian(params, masks, gen(seed), epsilon=eps)
    diff = {n: out[n] - params[n] for n in params}
    assert norm(diff) / norm(params) == pytest.approx(eps, rel=1e-6 if eps < 1e-3 else 1e-9)
    for n, m in masks.items():
        assert torch.equal(out[n][~m], torch.zeros_like(out[n][~m]))  # pruned positions untouched: exactly 0
    assert all((out[n] != params[n]).any() for n in params)  # biases move too


def test_relative_gaussian_float32_is_epsilon_up_to_float32_rounding():
    params, masks = replica(1)
    out = relative_gaussian(params, masks, gen(1))
    rel = norm({n: out[n].double() - params[n].double() for n in params}) / norm(params)
    assert rel == pytest.approx(1e-6, rel=0.1)
    assert all(out[n].dtype == torch.float32 for n in out)


def test_relative_gaussian_is_seeded_and_leaves_inputs():
    params, masks = replica(2)
    saved = {n: p.clone() for n, p in params.items()}
    a = relative_gaussian(params, masks, gen(5), epsilon=1e-3)
    b = relative_gaussian(params, masks, gen(5), epsilon=1e-3)
    c = relative_gaussian(params, masks, gen(6), epsilon=1e-3)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)
    assert all(torch.equal(saved[n], params[n]) for n in params)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_bit_flip_changes_one_surviving_element_by_one_ulp(seed):
    params, masks = replica(seed)
    saved = {n: p.clone() for n, p in params.items()}
    out = bit_flip(params, masks, gen(seed))
    changed = [(n, i) for n in params for i in torch.nonzero((out[n] != params[n]).flatten())]
    assert len(changed) == 1
    n, i = changed[0]
    old, new = params[n].flatten()[i], out[n].flatten()[i]
    assert abs(int(old.view(torch.int32)) - int(new.view(torch.int32))) == 1
    assert abs(float(new) - float(old)) == pytest.approx(
        math.ulp(float(old)) * 2 ** 29, rel=0.5)  # one float32 ulp = 2^29 float64 ulps
    if n in masks:
        assert bool(masks[n].flatten()[i])  # never a pruned position
    assert all(torch.equal(saved[k], params[k]) for k in params)


def test_bit_flip_is_seeded_and_uniform_over_survivors():
    params, masks = replica(3)
    a, b = bit_flip(params, masks, gen(7)), bit_flip(params, masks, gen(7))
    assert all(torch.equal(a[n], b[n]) for n in a)
    sites = {bit_flip_site(params, masks, gen(s)) for s in range(400)}
    survivors = sum(int(masks.get(n, torch.ones(p.shape, dtype=bool)).sum())
                    for n, p in params.items())
    assert len(sites) > 0.8 * survivors  # 400 draws reach nearly every survivor
    assert all(masks.get(n, torch.ones(params[n].shape, dtype=bool)).flatten()[i]
               for n, i in sites)


def test_perturb_dispatch_and_errors():
    params, masks = replica(4)
    assert all(torch.equal(perturb(params, masks, gen(1), kind="bit_flip")[n],
                           bit_flip(params, masks, gen(1))[n]) for n in params)
    with pytest.raises(ConfigError, match="kind"):
        perturb(params, masks, gen(1), kind="flip")
    with pytest.raises(ConfigError, match="epsilon"):
        relative_gaussian(params, masks, gen(1), epsilon=-1.0)
    with pytest.raises(ConfigError, match="float32"):
        bit_flip({"w": torch.ones(3, dtype=torch.float64)}, None, gen(1))
    with pytest.raises(ConfigError, match="shape"):
        bit_flip(params, {"a.weight": torch.ones(2, dtype=bool)}, gen(1))
