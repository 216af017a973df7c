"""A 21 × 21 error plane: every grid node as one stacked evaluation vs one network per node.

    python benchmarks/bench_plane.py [--grid 21] [--examples 1000]

Work: test error and loss at the 441 nodes of the plane through three networks of the
default study's model (conv1d on MNIST-1D shapes, ~5k parameters; Garipov et al. 2018,
Fig. 1), over 1000 synthetic examples of the same shapes. Ours:
``stabilitylab.analysis.planes.evaluate_plane`` (the nodes are stacked replicas of
``evaluate_points``, 128 at a time). Baseline: a per-node loop, one concrete module per node
(``evaluate_interpolation_loop`` at α = 1, the reference evaluator). Both return the same
numbers (checked here); ratio = baseline time / ours.
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

from stabilitylab.analysis.interpolate import evaluate_interpolation_loop
from stabilitylab.analysis.planes import evaluate_plane, plane_basis, plane_grid, plane_points
from stabilitylab.config import load_config
from stabilitylab.models import build_model
from stabilitylab.train.functional import StackedModel


def rows(quick: bool = False, grid: int = 21, examples: int = 1000) -> list[dict]:
    cfg = load_config(None)
    shape, classes = (1, 40), 10
    nets = [build_model(cfg.model, shape, classes, generator=torch.Generator().manual_seed(s))
            for s in (1, 2, 3)]
    stacked = StackedModel(nets[0])
    three = stacked.flatten(stacked.stack(nets)[0]).double().numpy()
    plane = plane_basis(*three)
    xs, ys = plane_grid(plane.anchors, grid)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(examples, *shape, generator=g)
    y = torch.randint(0, classes, (examples,), generator=g)
    points = plane_points(plane, xs, ys)

    def loop():
        err = [evaluate_interpolation_loop(stacked, p, p, [1.0], x, y)["error"][0] for p in points]
        return np.array(err).reshape(len(ys), len(xs))

    ours_res = evaluate_plane(stacked, plane, xs, ys, x, y)
    np.testing.assert_array_equal(ours_res["error"], loop())
    repeat = 1 if quick else 3
    ours = timed(lambda: evaluate_plane(stacked, plane, xs, ys, x, y), repeat=repeat)
    base = timed(loop, repeat=repeat)
    return [ratio_row(f"plane {grid}x{grid} x {examples} ex (conv1d)", f"{ours:.2f} s",
                      f"{base:.2f} s (per-node loop)", base / ours)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", type=int, default=21)
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(machine())
    print_table(rows(args.quick, args.grid, args.examples))
