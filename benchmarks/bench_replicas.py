"""Replica batching: R copies of the MNIST-1D MLP (40-300-100-10, batch 100).

    python benchmarks/bench_replicas.py [--replicas 16 64] [--steps 200]

Ours: the batched engine (one vmapped model, one stacked optimizer update per step),
both through its compiled fused step (``training.compile = "on"``, the graph compiled
once before timing; the compilation time is reported beside the row) and through the
eager reference step (``"off"``).
Baseline: a plain PyTorch loop, nn.Linear + torch.optim.SGD, one replica at a time.
All run the same number of replica-steps of SGD with momentum 0.9. The memory column is
the peak resident set size during the timed runs of ours, above the resident size before
them, per replica.

Bound: the step's matrix products alone, as batched GEMMs of the same shapes (per layer
``x @ W`` forward, ``x^T @ dy`` and ``dy @ W^T`` backward; the first layer's input gradient
is not needed), with no activation, loss, optimizer or bookkeeping. No formulation of the
step that keeps these products does better on this machine, so ``baseline / bound`` is the
highest ratio the replica-batched design can print here.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import sys
import time
from pathlib import Path

import torch

_ROOT = Path(__file__).resolve().parents[1]
for _p in (str(_ROOT), str(_ROOT / "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from common import (
    machine,
    mlp,
    peak_rss_mb,
    plain_loop,
    print_table,
    reset_peak_rss,
    rss_mb,
    synthetic_data,
    timed,
)

from stabilitylab.config import load_config
from stabilitylab.study.resolve import resolve_study
from stabilitylab.train.engine import GroupPlan, train_group
from stabilitylab.train.functional import StackedModel


def engine_run(stacked, models, data, resolved, seeds, compile="off"):
    params, buffers = stacked.stack(models)
    plan = GroupPlan(runs=list(range(len(models))), start_steps=[0] * len(models),
                     data_seeds=seeds, params=params, buffers=buffers)
    return train_group(stacked, plan, data, resolved, compile=compile)


def resolved_for(steps: int, batch: int, data_name="mnist1d"):
    # Evaluate and log only at the end so both sides do the same work.
    return resolve_study(load_config(None, [
        f"training.steps='{steps}it'", f"training.batch_size={batch}",
        "study.rewinds=['0it']", f"training.eval_every='{steps}it'",
        f"training.log_every='{steps}it'", "data.train_eval_size=1",
    ]))


def matmuls_alone(replicas: int, steps: int, widths=(40, 300, 100, 10), batch=100) -> float:
    """Seconds for the ``steps`` iterations' batched GEMMs of ``replicas`` MLPs (see Bound)."""
    xs = [torch.randn(replicas, batch, w) for w in widths[:-1]]
    ws = [torch.randn(replicas, a, b) for a, b in itertools.pairwise(widths)]
    dys = [torch.randn(replicas, batch, w) for w in widths[1:]]

    def run():
        for _ in range(steps):
            for i, (x, w, dy) in enumerate(zip(xs, ws, dys)):
                torch.bmm(x, w)
                torch.bmm(x.transpose(1, 2), dy)
                if i:
                    torch.bmm(dy, w.transpose(1, 2))

    return timed(run)


def measure(replicas: int, steps: int, widths=(40, 300, 100, 10), batch=100, shape=(1, 40)):
    """Seconds for ``replicas * steps`` replica-steps: compiled, eager, plain loop; plus
    the compilation seconds and the compiled side's peak memory per replica (MiB)."""
    torch.manual_seed(0)
    data = synthetic_data(4000, shape)
    data.test_x, data.test_y = data.test_x[:1], data.test_y[:1]
    models = [mlp(widths) for _ in range(replicas)]
    resolved = resolved_for(steps, batch)
    stacked = StackedModel(models[0])
    seeds = list(range(replicas))
    start = time.perf_counter()
    engine_run(stacked, models, data, resolved, seeds, "on")  # compiles the graph for R
    compile_s = time.perf_counter() - start
    before = rss_mb()
    reset_peak_rss()
    compiled = timed(lambda: engine_run(stacked, models, data, resolved, seeds, "on"))
    mem = max(0.0, peak_rss_mb() - before) / replicas
    eager = timed(lambda: engine_run(stacked, models, data, resolved, seeds, "off"))
    base = timed(lambda: plain_loop([copy.deepcopy(m) for m in models], data, steps, batch))
    bound = matmuls_alone(replicas, steps, widths, batch)
    return {"compiled": compiled, "eager": eager, "base": base, "bound": bound,
            "compile_s": compile_s, "mem_mb": mem}


def rows(replica_counts=(16, 64), steps=200) -> list[dict]:
    out = []
    for r, target in zip(replica_counts, (4.0, 4.5, 4.5, 4.5)):
        m = measure(r, steps)
        work = r * steps
        for side in ("compiled", "eager"):
            ratio = m["base"] / m[side]
            extra = (f"; compile {m['compile_s']:.0f} s; {m['mem_mb']:.1f} MiB/replica"
                     if side == "compiled" else "")
            out.append({
                "row": f"replicas R={r} {side} (MLP 40-300-100-10, B=100)",
                "ours": f"{work / m[side]:,.0f} rep-steps/s{extra}",
                "baseline": f"{work / m['base']:,.0f} rep-steps/s",
                "ratio": f"{ratio:.2f}x",
                "target": f">= {target:g}x" if side == "compiled" else "(reference)",
                "met": ("yes" if ratio >= target else "no") if side == "compiled" else "-",
            })
        out.append({
            "row": f"replicas R={r} bound: the step's matmuls alone",
            "ours": f"{work / m['bound']:,.0f} rep-steps/s",
            "baseline": f"{work / m['base']:,.0f} rep-steps/s",
            "ratio": f"{m['base'] / m['bound']:.2f}x",
            "target": "(ceiling)", "met": "-",
        })
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    print(machine())
    print_table(rows(tuple(args.replicas), args.steps))
