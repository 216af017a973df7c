"""The batched engine agrees with the plain single-replica reference path."""

import copy

import numpy as np
import pytest
import torch
from engine_helpers import OPTIMIZER_CASES, data, make_data, tiny_conv, tiny_mlp  # noqa: F401 (fixture)

from stabilitylab.config import load_config
from stabilitylab.study.resolve import resolve_study
from stabilitylab.train.engine import GroupPlan, train_group
from stabilitylab.train.functional import StackedModel
from stabilitylab.train.reference import train_reference


def resolved_for(*overrides, steps=30):
    base = ["data.num_samples=300", "training.batch_size=20", f"training.steps='{steps}it'",
            "study.rewinds=['0it','5it']", "training.eval_every='10it'", "training.log_every='5it'"]
    return resolve_study(load_config(None, base + list(overrides)))


def run_both(model, data, resolved, seeds, masks=None, start=0):
    stacked = StackedModel(model)
    copies = [copy.deepcopy(model) for _ in seeds]
    params, buffers = stacked.stack(copies)
    R = len(seeds)
    stacked_masks = {n: torch.stack([m] * R).float() for n, m in (masks or {}).items()}
    plan = GroupPlan(runs=list(range(R)), start_steps=[start] * R, data_seeds=seeds,
                     params=params, buffers=buffers, masks=stacked_masks)
    result = train_group(stacked, plan, data, resolved)
    refs = [train_reference(copy.deepcopy(model), data, resolved, start_step=start, data_seed=s,
                            masks=masks) for s in seeds]
    return stacked, result, refs


@pytest.mark.parametrize("optimizer", OPTIMIZER_CASES)
def test_batched_matches_reference_mlp(optimizer, data):
    resolved = resolved_for(*optimizer, "training.warmup='5it'", "training.milestones=['20it']")
    model = tiny_mlp()
    _, result, refs = run_both(model, data, resolved, seeds=[11, 12, 13])
    for r, ref in enumerate(refs):
        for name, p in ref.named_parameters():
            torch.testing.assert_close(result.params[name][r], p.detach(), rtol=1e-4, atol=1e-5)


def test_batched_matches_reference_conv_and_bn(data):
    data = make_data(shape=(1, 8))
    resolved = resolved_for()
    for model in (tiny_conv(), tiny_conv(bn=True)):
        _, result, refs = run_both(model, data, resolved, seeds=[1, 2])
        for r, ref in enumerate(refs):
            for name, p in ref.named_parameters():
                torch.testing.assert_close(result.params[name][r], p.detach(), rtol=1e-4, atol=1e-5)
            for name, b in ref.named_buffers():
                if b.is_floating_point():
                    torch.testing.assert_close(result.buffers[name][r], b, rtol=1e-4, atol=1e-5)


def test_masked_weights_stay_exactly_zero_and_get_no_momentum(data):
    resolved = resolved_for("training.weight_decay=0.01")
    model = tiny_mlp()
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(16, 8, generator=g) > 0.5
    seen = []

    class Spy:
        def record(self, runs, step, weights):
            seen.append(weights.copy())

    stacked = StackedModel(model)
    params, buffers = stacked.stack([model, model])
    plan = GroupPlan(runs=[0, 1], start_steps=[0, 0], data_seeds=[1, 2], params=params,
                     buffers=buffers, masks={"1.weight": torch.stack([mask, mask]).float()})
    result = train_group(stacked, plan, data, resolved, recorder=Spy())
    slot = stacked.param_slots[0]
    assert slot.name == "1.weight"
    pruned = ~mask.flatten().numpy()
    for w in seen:  # every recorded step, every replica
        assert np.all(w[:, slot.offset:slot.offset + slot.size][:, pruned] == 0.0)
    assert torch.all(result.params["1.weight"][:, ~mask] == 0)
    assert torch.all(result.params["1.weight"][:, mask] != 0)


def test_determinism_bitwise(data):
    resolved = resolved_for("training.optimizer='adam'", "training.lr=0.01")
    a = run_both(tiny_mlp(), data, resolved, seeds=[3, 4])[1]
    b = run_both(tiny_mlp(), data, resolved, seeds=[3, 4])[1]
    for name in a.params:
        assert torch.equal(a.params[name], b.params[name])
    np.testing.assert_array_equal(a.train_loss, b.train_loss)


def test_mixed_start_steps_match_separate_runs(data):
    """Replicas at different rewind points in one group equal the same runs trained alone."""
    resolved = resolved_for()
    model = tiny_mlp()
    stacked = StackedModel(model)
    params, buffers = stacked.stack([model, model])
    together = train_group(stacked, GroupPlan(runs=[0, 1], start_steps=[0, 7], data_seeds=[5, 6],
                                              params=params, buffers=buffers), data, resolved)
    for r, (start, seed) in enumerate([(0, 5), (7, 6)]):
        p1, b1 = stacked.stack([model])
        alone = train_group(stacked, GroupPlan(runs=[0], start_steps=[start], data_seeds=[seed],
                                               params=p1, buffers=b1), data, resolved)
        for name in alone.params:
            torch.testing.assert_close(together.params[name][r], alone.params[name][0],
                                       rtol=1e-5, atol=1e-6)


def test_metrics_are_filled_on_schedule(data):
    resolved = resolved_for()
    _, result, _ = run_both(tiny_mlp(), data, resolved, seeds=[1, 2])
    assert np.isfinite(result.train_loss).all()
    assert np.isfinite(result.test_acc).all() and result.test_acc.shape[1] == len(resolved.eval_steps)
    assert ((result.test_acc >= 0) & (result.test_acc <= 1)).all()
    assert result.diverged_step == [-1, -1]


def test_divergence_is_detected(data):
    resolved = resolved_for("training.lr=1e6", "training.momentum=0.0")
    _, result, _ = run_both(tiny_mlp(), data, resolved, seeds=[1])
    assert result.diverged_step[0] >= 0
