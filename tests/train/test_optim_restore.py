"""Restoring the optimizer state at k continues the original trajectory exactly."""

import torch
from engine_helpers import data, tiny_mlp  # noqa: F401 (fixture)
from test_engine import resolved_for

from stabilitylab.train.engine import GroupPlan, train_group
from stabilitylab.train.functional import StackedModel


def test_copy_with_restored_state_continues_the_dense_run(data):
    resolved = resolved_for(steps=30)
    model = tiny_mlp()
    stacked = StackedModel(model)
    params, buffers = stacked.stack([model])
    snaps = {}

    def on_snapshot(step, p, b, opt):
        snaps[step] = ({n: t.clone() for n, t in p.items()}, opt.state_of(0))

    plan = GroupPlan(runs=[0], start_steps=[0], data_seeds=[9], params=params, buffers=buffers,
                     snapshot_steps=(5,))
    dense = train_group(stacked, plan, data, resolved, on_snapshot=on_snapshot)
    w5, state5 = snaps[5]
    restored = GroupPlan(runs=[0], start_steps=[5], data_seeds=[9], params=w5, buffers={},
                         opt_state={s: {n: t[None] for n, t in d.items()} for s, d in state5.items()},
                         opt_steps=[5])
    copy = train_group(stacked, restored, data, resolved)
    fresh = train_group(stacked, GroupPlan(runs=[0], start_steps=[5], data_seeds=[9], params=w5,
                                           buffers={}), data, resolved)
    for n in dense.params:
        torch.testing.assert_close(copy.params[n], dense.params[n], rtol=0, atol=1e-6)
    assert any(not torch.allclose(fresh.params[n], dense.params[n]) for n in dense.params)
