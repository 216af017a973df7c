"""Curve training: all pairs of a level as one replica-batched run vs one pair at a time.

    python benchmarks/bench_curve.py [--steps 100] [--quick]

Work: what ``analyze --measures curve`` trains for one (kind, level) of the default study:
3 rewind points × 3 pairs × 2 curve families (Bézier, one-bend chain) = 18 curves between
default conv1d nets (~5k parameters) on MNIST-1D-shaped synthetic data (4000 examples),
batch 100, SGD momentum 0.9, ``--steps`` steps each. Ours: one
:func:`~stabilitylab.analysis.curves.train_curves` call with the 18 curves as replicas.
Baseline: the same function called once per curve (R = 1), the loop a user of a
single-pair tool would write. Ratio = baseline time / ours.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
for _p in (str(_ROOT), str(_ROOT / "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch
from common import machine, print_table, ratio_row, timed

from stabilitylab.analysis.curves import train_curves
from stabilitylab.config import load_config
from stabilitylab.models import build_model
from stabilitylab.train.functional import StackedModel

CURVES_PER_LEVEL = 18  # 3 rewind points x 3 pairs x 2 families


def rows(quick: bool = False, steps: int | None = None) -> list[dict]:
    steps = steps or (30 if quick else 100)
    cfg = load_config(None)
    shape, classes = (1, 40), 10
    nets = [build_model(cfg.model, shape, classes, generator=torch.Generator().manual_seed(s))
            for s in range(2 * CURVES_PER_LEVEL)]
    stacked = StackedModel(nets[0])
    flat = stacked.flatten(stacked.stack(nets)[0])
    starts, ends = flat[:CURVES_PER_LEVEL], flat[CURVES_PER_LEVEL:]
    shapes = ["bezier", "polychain"] * (CURVES_PER_LEVEL // 2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, *shape, generator=g)
    y = torch.randint(0, classes, (4000,), generator=g)

    def batched():
        train_curves(stacked, starts, ends, shapes, x, y, cfg.training, steps=steps)

    def one_at_a_time():
        for r in range(CURVES_PER_LEVEL):
            train_curves(stacked, starts[r:r + 1], ends[r:r + 1], shapes[r:r + 1], x, y,
                         cfg.training, steps=steps)

    repeat = 2 if quick else 3
    ours = timed(batched, repeat=repeat)
    base = timed(one_at_a_time, repeat=repeat)
    return [ratio_row(f"curve training {CURVES_PER_LEVEL} curves x {steps} steps (conv1d)",
                      f"{ours:.2f} s (one batched run)", f"{base:.2f} s (one curve at a time)",
                      base / ours, target=3)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(machine())
    print_table(rows(args.quick, args.steps))
