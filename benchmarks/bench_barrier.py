"""Barrier evaluation: all α points of one pair as one stacked group vs one network per α.

    python benchmarks/bench_barrier.py [--alphas 30] [--examples 1000]

Work: error and loss at 30 α on the linear path between two networks of the default
study's model (conv1d on MNIST-1D shapes, ~5k parameters), over 1000 test examples
(synthetic, same shapes). Ours: ``evaluate_interpolation`` (one vmapped forward over
all α). Baseline: ``evaluate_interpolation_loop`` (a concrete module per α). Both
return the same numbers (checked here); ratio = baseline time / ours.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
for _p in (str(_ROOT), str(_ROOT / "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np
import torch
from common import machine, print_table, ratio_row, timed

from stabilitylab.analysis.interpolate import evaluate_interpolation, evaluate_interpolation_loop
from stabilitylab.config import load_config
from stabilitylab.models import build_model
from stabilitylab.train.functional import StackedModel


def rows(quick: bool = False, n_alpha: int = 30, examples: int = 1000) -> list[dict]:
    cfg = load_config(None)
    shape, classes = (1, 40), 10
    m1 = build_model(cfg.model, shape, classes, generator=torch.Generator().manual_seed(1))
    m2 = build_model(cfg.model, shape, classes, generator=torch.Generator().manual_seed(2))
    stacked = StackedModel(m1)
    w1 = stacked.flatten(stacked.stack([m1])[0])[0]
    w2 = stacked.flatten(stacked.stack([m2])[0])[0]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(examples, *shape, generator=g)
    y = torch.randint(0, classes, (examples,), generator=g)
    alphas = np.linspace(0.0, 1.0, n_alpha)
    repeat = 3 if quick else 5
    ours_res = evaluate_interpolation(stacked, w1, w2, alphas, x, y)
    base_res = evaluate_interpolation_loop(stacked, w1, w2, alphas, x, y)
    np.testing.assert_allclose(ours_res["loss"], base_res["loss"], rtol=1e-4)
    ours = timed(lambda: evaluate_interpolation(stacked, w1, w2, alphas, x, y), repeat=repeat)
    base = timed(lambda: evaluate_interpolation_loop(stacked, w1, w2, alphas, x, y), repeat=repeat)
    return [ratio_row(f"barrier {n_alpha} α x {examples} ex (conv1d)", f"{1e3 * ours:.1f} ms",
                      f"{1e3 * base:.1f} ms (per-α loop)", base / ours, target=5)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--alphas", type=int, default=30)
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(machine())
    print_table(rows(args.quick, args.alphas, args.examples))
