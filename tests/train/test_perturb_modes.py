"""The init-scale perturbation modes (Kwok et al., ICML 2025): what moves, by how much, and
that each is a function of the seed alone; the old modes draw as they always did."""

import math

import pytest
import torch

from stabilitylab.core.errors import ConfigError
from stabilitylab.study.perturb_start import batch_gradient
from stabilitylab.train.perturb import (
    batch_gradient_step,
    init_scale_gaussian,
    init_scales,
    perturb,
    single_weight,
)


def model_weights(seed=0, dtype=torch.float64):
    """A W_0 (weights with spread, biases at 0) and a W_k near it, with IMP-style masks."""
    g = torch.Generator().manual_seed(seed)
    init = {"a.weight": torch.randn(40, 30, generator=g, dtype=dtype) * 0.3,
            "a.bias": torch.zeros(40, dtype=dtype),
            "b.weight": torch.randn(10, 40, generator=g, dtype=dtype) * 0.05,
            "b.bias": torch.zeros(10, dtype=dtype)}
    masks = {"a.weight": torch.rand(40, 30, generator=g) < 0.6,
             "b.weight": torch.rand(10, 40, generator=g) < 0.6}
    params = {n: (t + 0.01 * torch.randn(t.shape, generator=g, dtype=dtype)) for n, t in
              init.items()}
    for n, m in masks.items():
        params[n] = params[n] * m
    return params, masks, init


def gen(seed):
    return torch.Generator().manual_seed(seed)


def moved(a, b):
    return {n: a[n] != b[n] for n in a}


def test_init_scales_are_each_layers_init_std_and_constant_tensors_borrow_the_next():
    _, _, init = model_weights()
    s = init_scales(init)
    assert s["a.weight"] == pytest.approx(float(init["a.weight"].std(unbiased=False)))
    assert s["b.weight"] == pytest.approx(float(init["b.weight"].std(unbiased=False)))
    assert s["a.bias"] == s["b.weight"]  # the next layer's weights set a bias's scale
    assert s["b.bias"] == s["b.weight"]  # the last: the nearest preceding one


def test_init_scale_moves_every_surviving_weight_by_epsilon_sigma_z():
    params, masks, init = model_weights()
    eps = 1e-3
    out = init_scale_gaussian(params, masks, init, gen(1), epsilon=eps)
    sigma = init_scales(init)
    z = torch.cat([((out[n] - params[n]) / (eps * sigma[n]))[masks.get(n, torch.ones_like(
        params[n], dtype=torch.bool))] for n in params])
    assert z.numel() == sum(int(m.sum()) for m in masks.values()) + 50  # + the 50 biases
    assert abs(float(z.mean())) < 0.1 and float(z.std()) == pytest.approx(1.0, abs=0.08)
    for n, m in masks.items():
        assert torch.equal(out[n][~m], params[n][~m])  # pruned positions stay exactly 0
    # the size per layer follows its own init scale: ratio of rms moves = ratio of sigmas
    rms = {n: float((out[n] - params[n])[masks[n]].square().mean().sqrt()) for n in masks}
    assert rms["a.weight"] / rms["b.weight"] == pytest.approx(
        sigma["a.weight"] / sigma["b.weight"], rel=0.15)


def test_init_scale_is_seeded_and_leaves_its_inputs():
    params, masks, init = model_weights()
    saved = {n: p.clone() for n, p in params.items()}
    a = init_scale_gaussian(params, masks, init, gen(3), epsilon=1e-4)
    b = init_scale_gaussian(params, masks, init, gen(3), epsilon=1e-4)
    c = init_scale_gaussian(params, masks, init, gen(4), epsilon=1e-4)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)
    assert all(torch.equal(params[n], saved[n]) for n in params)


@pytest.mark.parametrize("fraction", [0.01, 0.25, 0.5])
def test_fraction_moves_exactly_that_share_of_the_surviving_weights(fraction):
    params, masks, init = model_weights()
    n_kept = sum(int(m.sum()) for m in masks.values()) + 50
    out = init_scale_gaussian(params, masks, init, gen(2), epsilon=1e-3, fraction=fraction)
    changed = sum(int(c.sum()) for c in moved(out, params).values())
    assert changed == round(fraction * n_kept)
    for n, m in masks.items():
        assert not moved(out, params)[n][~m].any()
    again = init_scale_gaussian(params, masks, init, gen(2), epsilon=1e-3, fraction=fraction)
    assert all(torch.equal(out[n], again[n]) for n in out)


def test_single_weight_moves_one_surviving_weight_by_epsilon_sigma():
    params, masks, init = model_weights(dtype=torch.float32)
    params64 = {n: p.double() for n, p in params.items()}
    for seed in range(5):
        out = single_weight(params, masks, init, gen(seed), epsilon=1e-2)
        where = [(n, c.nonzero()) for n, c in moved(out, params).items() if c.any()]
        assert len(where) == 1 and len(where[0][1]) == 1
        name, idx = where[0][0], tuple(where[0][1][0].tolist())
        assert masks.get(name, torch.ones_like(params[name], dtype=torch.bool))[idx]
        step = abs(float(out[name][idx]) - float(params64[name][idx]))
        assert step == pytest.approx(1e-2 * init_scales(init)[name], rel=1e-4)
        again = single_weight(params, masks, init, gen(seed), epsilon=1e-2)
        assert all(torch.equal(out[n], again[n]) for n in out)


def test_modules_limit_every_mode_to_their_parameters():
    params, masks, init = model_weights(dtype=torch.float32)  # bit flips are of float32
    grad = {n: torch.randn(p.shape, generator=gen(9), dtype=p.dtype) for n, p in params.items()}
    for kind in ("gaussian", "init_scale", "single_weight", "batch", "bit_flip"):
        for modules in (("b",), ("a.bias",)):
            out = perturb(params, masks, gen(0), kind=kind, epsilon=1e-2, init=init,
                          gradient=grad, modules=modules)
            hit = {n for n, c in moved(out, params).items() if c.any()}
            allowed = {n for n in params if n == modules[0] or n.startswith(modules[0] + ".")}
            assert hit and hit <= allowed, (kind, modules, hit)
    with pytest.raises(ConfigError, match="no module or parameter named 'c'"):
        perturb(params, masks, gen(0), kind="init_scale", init=init, modules=("c",))


def test_batch_mode_is_a_step_along_the_gradient_of_init_scale_size():
    params, masks, init = model_weights()
    grad = {n: torch.randn(p.shape, generator=gen(7), dtype=p.dtype) for n, p in params.items()}
    eps = 1e-3
    out = batch_gradient_step(params, masks, init, grad, gen(0), epsilon=eps)
    sigma = init_scales(init)
    keep = {n: masks.get(n, torch.ones_like(p, dtype=torch.bool)) for n, p in params.items()}
    delta = {n: out[n] - params[n] for n in params}
    ratio = torch.cat([(delta[n] / grad[n])[keep[n]] for n in params])
    assert float(ratio.min()) > 0 and float(ratio.std() / ratio.mean()) < 1e-8  # δ ∝ +g
    size = math.sqrt(sum(sigma[n] ** 2 * int(keep[n].sum()) for n in params))
    norm = math.sqrt(sum(float(d.square().sum()) for d in delta.values()))
    assert norm == pytest.approx(eps * size, rel=1e-9)
    for n, m in masks.items():
        assert torch.equal(delta[n][~m], torch.zeros_like(delta[n][~m]))
    zero = {n: torch.zeros_like(g) for n, g in grad.items()}
    same = batch_gradient_step(params, masks, init, zero, gen(0), epsilon=eps)
    assert all(torch.equal(same[n], params[n]) for n in params)


def test_batch_gradient_is_the_masked_cross_entropy_gradient():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = {"0.weight": torch.rand(6, 4, generator=gen(1)) < 0.5}
    x, y = torch.randn(8, 4, generator=gen(2)), torch.randint(3, (8,), generator=gen(3))
    g = batch_gradient(model, params, {}, masks, x, y)
    ref = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    with torch.no_grad():
        for n, p in ref.named_parameters():
            p.copy_(params[n] * masks[n] if n in masks else params[n])
    torch.nn.functional.cross_entropy(ref(x), y).backward()
    for n, p in ref.named_parameters():
        want = p.grad * masks[n] if n in masks else p.grad  # chain rule through m ⊙ W
        torch.testing.assert_close(g[n], want)
    assert all(torch.equal(params[n], p) for n, p in model.named_parameters())  # unchanged


def test_gaussian_default_draws_as_specified():
    """The original mode, written out from its definition: z drawn tensor by tensor (full
    shape), zeroed where pruned, scaled to ε‖m ⊙ W‖ globally (stores of existing configs
    stay bitwise the same)."""
    params, masks, _ = model_weights(dtype=torch.float32)
    g = gen(11)
    keep = {n: masks.get(n, torch.ones_like(p, dtype=torch.bool)) for n, p in params.items()}
    z = {n: torch.randn(p.shape, generator=g, dtype=torch.float64) * keep[n]
         for n, p in params.items()}
    w = math.sqrt(sum(float((p.double() * keep[n]).square().sum()) for n, p in params.items()))
    zn = math.sqrt(sum(float(t.square().sum()) for t in z.values()))
    want = {n: torch.where(keep[n], (p.double() + z[n] * (1e-6 * w / zn)).float(), p)
            for n, p in params.items()}
    out = perturb(params, masks, gen(11))
    assert all(torch.equal(out[n], want[n]) for n in out)


def test_new_modes_need_w0_and_the_batch_mode_a_gradient():
    params, masks, init = model_weights()
    with pytest.raises(ConfigError, match="W_0"):
        perturb(params, masks, gen(0), kind="init_scale")
    with pytest.raises(ConfigError, match="gradient"):
        perturb(params, masks, gen(0), kind="batch", init=init)
    with pytest.raises(ConfigError, match="perturb_fraction"):
        init_scale_gaussian(params, masks, init, gen(0), fraction=0.0)
