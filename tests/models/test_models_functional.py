"""Every model under torch.func.functional_call + vmap with stacked params and buffers."""

import copy

import pytest
import torch

from stabilitylab.config.schema import ModelConfig
from stabilitylab.models import build_model
from stabilitylab.train.functional import StackedModel

CASES = [  # small shapes and widths: CPU time is shared
    (ModelConfig(name="mlp", options={"hidden": (8, 6)}), (1, 40)),
    (ModelConfig(name="conv1d", options={"channels": 4}), (1, 40)),
    (ModelConfig(name="resnet20"), (3, 8, 8)),
    (ModelConfig(name="vgg11"), (3, 16, 16)),
]


def _replicas(cfg, shape, r=3):
    return [build_model(cfg, shape, 10, torch.Generator().manual_seed(i)) for i in range(r)]


@pytest.mark.parametrize("cfg,shape", CASES, ids=[c.name for c, _ in CASES])
def test_stacked_eval_matches_each_module(cfg, shape):
    models = _replicas(cfg, shape)
    sm = StackedModel(models[0])
    params, buffers = sm.stack(models)
    x = torch.randn(3, 4, *shape)
    with torch.no_grad():
        out = sm.forward(params, buffers, x, train=False)
        ref = torch.stack([m.eval()(x[i]) for i, m in enumerate(models)])
        shared = sm.forward(params, buffers, x[0], train=False, shared_input=True)
        ref_shared = torch.stack([m(x[0]) for m in models])
    assert out.shape == (3, 4, 10)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(shared, ref_shared, atol=1e-5, rtol=1e-4)


def test_batchnorm_train_updates_running_stats_per_replica():
    cfg, shape = ModelConfig(name="resnet20"), (3, 8, 8)
    models = _replicas(cfg, shape)
    sm = StackedModel(models[0])
    params, buffers = sm.stack(models)
    assert any(n.endswith("running_mean") for n in buffers)
    x = torch.randn(3, 4, *shape)
    before = {n: b.clone() for n, b in buffers.items()}
    with torch.no_grad():
        out = sm.forward(params, buffers, x, train=True)
        refs = [copy.deepcopy(m).train() for m in models]
        ref = torch.stack([m(x[i]) for i, m in enumerate(refs)])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    for name, stacked in buffers.items():
        expect = torch.stack([dict(m.named_buffers())[name] for m in refs])
        torch.testing.assert_close(stacked, expect, atol=1e-5, rtol=1e-4)
    rm = "bn.running_mean"
    assert not torch.equal(buffers[rm], before[rm])  # updated in place
    assert not torch.equal(buffers[rm][0], buffers[rm][1])  # and per replica


def test_train_mode_gradients_flow_through_vmap():
    cfg, shape = ModelConfig(name="resnet20"), (3, 8, 8)
    models = _replicas(cfg, shape, r=2)
    sm = StackedModel(models[0])
    params, buffers = sm.stack(models)
    params = {n: p.requires_grad_() for n, p in params.items()}
    out = sm.forward(params, buffers, torch.randn(2, 4, *shape), train=True)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params.values())


def test_dropout_differs_across_replicas():
    cfg = ModelConfig(name="mlp", options={"hidden": (16,)}, dropout=0.5)
    model = build_model(cfg, (1, 40), 10, torch.Generator().manual_seed(0))
    sm = StackedModel(model)
    params, buffers = sm.stack([model, model, model])  # identical replicas
    x = torch.randn(8, 1, 40)
    out = sm.forward(params, buffers, x, train=True, shared_input=True)
    assert not torch.equal(out[0], out[1])
    ev = sm.forward(params, buffers, x, train=False, shared_input=True)
    assert torch.equal(ev[0], ev[1])
