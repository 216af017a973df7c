"""Arithmetic efficiency: the batched engine's GFLOP/s on LeNet-300-100 vs the machine's sgemm peak.

    python benchmarks/bench_efficiency.py [--replicas 16] [--steps 100]

Ours: 16 replicas of LeNet-300-100 (784-300-100-10), batch 128, MNIST-shaped synthetic
data, trained by the batched engine (SGD, momentum 0.9). FLOPs are counted
analytically: 6 x (weights in matmuls) x batch per replica-step (2 for the forward
matmuls, 4 for the two backward ones); biases, ReLU, loss and the optimizer update are
not counted, so the figure is a slight underestimate of the work done.
Peak: fp32 matmul throughput of this process, 2048 x 2048 sgemm (``torch.mm``), timed here.
Ratio: ours / peak, for the compiled step (compiled before timing; target >= 70%) and
the eager reference step.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
for _p in (str(_ROOT), str(_ROOT / "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch
from bench_replicas import engine_run, resolved_for
from common import machine, mlp, print_table, synthetic_data, timed

from stabilitylab.train.functional import StackedModel

WIDTHS = (784, 300, 100, 10)
BATCH = 128


def matmul_weights(widths=WIDTHS) -> int:
    return sum(a * b for a, b in itertools.pairwise(widths))


def flops_per_replica_step(widths=WIDTHS, batch=BATCH) -> int:
    return 6 * matmul_weights(widths) * batch


def sgemm_peak(n: int = 2048, repeat: int = 5) -> float:
    """fp32 matmul FLOP/s: best of ``repeat`` timings of an n x n x n ``torch.mm``."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    t = timed(lambda: torch.mm(a, b, out=out), repeat=repeat)
    return 2 * n**3 / t


def rows(quick: bool = False, replicas: int = 16, steps: int | None = None) -> list[dict]:
    steps = steps or (30 if quick else 100)
    torch.manual_seed(0)
    data = synthetic_data(4000, (1, 28, 28))
    data.test_x, data.test_y = data.test_x[:1], data.test_y[:1]
    models = [mlp(WIDTHS) for _ in range(replicas)]
    resolved = resolved_for(steps, BATCH)
    stacked = StackedModel(models[0])
    peak = sgemm_peak()
    seeds = list(range(replicas))
    engine_run(stacked, models, data, resolved, seeds, "on")  # compile before timing
    times = {side: timed(lambda side=side: engine_run(stacked, models, data, resolved, seeds, side))
             for side in ("on", "off")}
    peak = max(peak, sgemm_peak())  # best of before and after: the machine may be shared
    out = []
    for side, t in times.items():
        ours = replicas * steps * flops_per_replica_step() / t
        out.append({
            "row": f"efficiency R={replicas} (LeNet-300-100, B={BATCH}), "
                   + ("compiled" if side == "on" else "eager"),
            "ours": f"{ours / 1e9:.1f} GFLOP/s",
            "baseline": f"{peak / 1e9:.1f} GFLOP/s (sgemm 2048²)",
            "ratio": f"{100 * ours / peak:.0f}% of peak",
            "target": ">= 70%" if side == "on" else "(reference)",
            "met": ("yes" if ours / peak >= 0.7 else "no") if side == "on" else "-",
        })
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, default=16)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(machine())
    print_table(rows(args.quick, args.replicas, args.steps))
