"""Replica batching: R copies of the MNIST-1D MLP (40-300-100-10, batch 100).

    python benchmarks/bench_replicas.py [--replicas 16 64] [--steps 200]

Ours: the batched engine (one vmapped model, one stacked optimizer update per step).
Baseline: a plain PyTorch loop, nn.Linear + torch.optim.SGD, one replica at a time.
Both run the same number of replica-steps of SGD with momentum 0.9.
"""

from __future__ import annotations

import argparse
import copy

import torch

try:
    from benchmarks.common import machine, mlp, plain_loop, print_table, synthetic_data, timed
except ImportError:  # run as a script from benchmarks/
    from common import machine, mlp, plain_loop, print_table, synthetic_data, timed

from stabilitylab.config import load_config, validate
from stabilitylab.train.engine import GroupPlan, train_group
from stabilitylab.train.functional import StackedModel


def engine_run(stacked, models, data, resolved, seeds):
    params, buffers = stacked.stack(models)
    plan = GroupPlan(runs=list(range(len(models))), start_steps=[0] * len(models),
                     data_seeds=seeds, params=params, buffers=buffers)
    return train_group(stacked, plan, data, resolved)


def resolved_for(steps: int, batch: int, data_name="mnist1d"):
    # Evaluate and log only at the end so both sides do the same work.
    return validate(load_config(None, [
        f"training.steps='{steps}it'", f"training.batch_size={batch}",
        "study.rewinds=['0it']", f"training.eval_every='{steps}it'",
        f"training.log_every='{steps}it'", "data.train_eval_size=1",
    ]))


def measure(replicas: int, steps: int, widths=(40, 300, 100, 10), batch=100, shape=(1, 40)):
    torch.manual_seed(0)
    data = synthetic_data(4000, shape)
    data.test_x, data.test_y = data.test_x[:1], data.test_y[:1]
    models = [mlp(widths) for _ in range(replicas)]
    resolved = resolved_for(steps, batch)
    stacked = StackedModel(models[0])
    ours = timed(lambda: engine_run(stacked, models, data, resolved, list(range(replicas))))
    base = timed(lambda: plain_loop([copy.deepcopy(m) for m in models], data, steps, batch))
    return ours, base


def rows(replica_counts=(16, 64), steps=200) -> list[dict]:
    out = []
    for r, target in zip(replica_counts, (3.0, 4.0, 4.0, 4.0)):
        ours, base = measure(r, steps)
        rate = r * steps / ours
        out.append({
            "row": f"replicas R={r} (MLP 40-300-100-10, B=100)",
            "ours": f"{rate:,.0f} rep-steps/s",
            "baseline": f"{r * steps / base:,.0f} rep-steps/s",
            "ratio": f"{base / ours:.2f}x",
            "target": f">= {target:g}x",
            "met": "yes" if base / ours >= target else "no",
        })
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    print(machine())
    print_table(rows(tuple(args.replicas), args.steps))
