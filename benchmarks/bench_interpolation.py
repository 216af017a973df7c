"""The interpolation group of ``analyze`` against the forward passes it cannot avoid.

    python benchmarks/bench_interpolation.py [--store runs/mnist1d-default.zarr] [--quick]

Ours: the ``interpolation`` group as ``analyze`` runs it on the store (the default study:
record it first), with the ``aligned`` group in the same pass: every pair's 30-point
curves on the test set and the train subset, weight matching and the aligned curve,
every barrier form (``function_measures.interpolation_measures``).

Bound: the same number of network × example forward passes (the α = 0 and 1 endpoints
once per run on both sets, 28 interior α per pair on both, 29 aligned α per pair on the
test set), through the model's own forward alone: no interpolation, loss, argmax,
weight matching or bookkeeping. Each of a few layouts (stacked vmapped blocks of points ×
examples, on one thread with torch's T threads or on T threads of one torch thread each as
``evaluate_points`` runs them, or one network at a time over all examples) is probed; the
fastest is timed on the whole work. The group cannot run faster than its forward passes, so
``group / bound`` is how far it is from this machine's ceiling, and the bound itself says
whether a time target for the group is reachable at all.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
for _p in (str(_ROOT), str(_ROOT / "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np
import torch
from common import machine, print_table
from torch.func import functional_call

from stabilitylab.analysis.align import flat_aligner
from stabilitylab.analysis.cells import Cells
from stabilitylab.analysis.context import VIEWS, load_context
from stabilitylab.analysis.endpoints import finals
from stabilitylab.analysis.function_measures import interpolation_measures
from stabilitylab.analysis.interpolate import _map_blocks
from stabilitylab.models.common import materialize

TARGET_S = 10.0  # issue #26: the interpolation group on the default study, idle 2-core CPU
N_ALPHAS = 30


def network_examples(ctx) -> tuple[int, int]:
    """(pairs, network × example forward passes) the group makes on ``ctx``."""
    cells = Cells.of(ctx)
    w = finals(ctx, cells)
    ok = ctx.completed.values[cells.kind, cells.level, cells.rewind] & np.isfinite(w).all(-1)
    a, b = ctx.pair_sides
    pairs = int((ok[:, a] & ok[:, b]).sum())
    n_test, n_train = len(ctx.data.test_y), ctx.cfg.data.train_eval_size
    work = int(ok.sum()) * (n_test + n_train) + pairs * (N_ALPHAS - 2) * (n_test + n_train)
    if flat_aligner(ctx.stacked, "aligned barrier") is not None:
        work += pairs * (N_ALPHAS - 1) * n_test
    return pairs, work


def _layouts(ctx):
    """name -> fn(points (N, P), x) running the forward of every point over all of x."""
    stacked = ctx.stacked
    module = materialize(copy.deepcopy(stacked.template), ctx.device).eval()

    def stacked_blocks(points_per_block, examples_per_forward):
        def run(points, x):
            for p0 in range(0, len(points), points_per_block):
                params = stacked.unflatten(points[p0:p0 + points_per_block])
                for s in range(0, len(x), examples_per_forward):
                    stacked.forward(params, {}, x[s:s + examples_per_forward], train=False,
                                    shared_input=True)
        return run

    def one_at_a_time(points, x):
        params = stacked.unflatten(points)
        for i in range(len(points)):
            functional_call(module, {k: v[i] for k, v in params.items()}, (x,))

    def on_workers(points, x):  # the blocks of evaluate_points, T threads of one torch thread
        def block(model, i):
            params = model.unflatten(points[i:i + 30])
            for s in range(0, len(x), 100):
                model.forward(params, {}, x[s:s + 100], train=False, shared_input=True)
        _map_blocks(block, stacked, range(0, len(points), 30), points.device)

    return {"stacked 30 points x 100 examples, blocks on T threads": on_workers,
            "stacked 30 points x 100 examples": stacked_blocks(30, 100),
            "stacked 10 points x 300 examples": stacked_blocks(10, 300),
            "stacked 4 points x 1000 examples": stacked_blocks(4, 1000),
            "one network at a time x all examples": one_at_a_time}


@torch.no_grad()
def forward_bound(ctx, work: int, probe_networks: int = 60) -> tuple[float, str]:
    """Seconds of ``work`` network × example forward passes in the fastest layout."""
    w = torch.from_numpy(ctx.load("final_weights").values.reshape(-1, ctx.stacked.num_params))
    w = w[torch.isfinite(w).all(1)].to(ctx.device)
    x = ctx.data.test_x.to(ctx.device)
    n_networks = -(-work // len(x))
    points = w[torch.arange(n_networks) % len(w)].contiguous()
    layouts = _layouts(ctx)
    probe = {}
    for name, run in layouts.items():
        run(points[:probe_networks], x)  # warm-up
        started = time.perf_counter()
        run(points[:probe_networks], x)
        probe[name] = time.perf_counter() - started
    best = min(probe, key=probe.get)
    started = time.perf_counter()
    layouts[best](points, x)
    return time.perf_counter() - started, best


def rows(quick: bool = False, store: str = "runs/mnist1d-default.zarr") -> list[dict]:
    if not Path(store).exists():
        return [{"row": "interpolation", "ours": f"no store at {store}: record it first",
                 "baseline": "", "ratio": "", "target": "", "met": "—"}]
    ctx = load_context(store)
    ctx.prefetch(*VIEWS)
    pairs, work = network_examples(ctx)
    interpolation_measures(ctx, n_alphas=N_ALPHAS)  # warm-up (and the shared endpoints)
    timings = []
    for _ in range(1 if quick else 2):
        ctx.cache.pop(("endpoints", "test"), None)  # the group's own endpoint evaluation
        ctx.cache.pop(("endpoints", "train"), None)
        started = time.perf_counter()
        interpolation_measures(ctx, n_alphas=N_ALPHAS)
        timings.append(time.perf_counter() - started)
    group = min(timings)
    bound, layout = forward_bound(ctx, work)
    return [{
        "row": f"interpolation group ({pairs} pairs, {N_ALPHAS} α, aligned; "
               f"{work / 1e6:.2f}M network-examples)",
        "ours": f"{group:.1f} s",
        "baseline": f"bound: forward passes alone {bound:.1f} s ({layout})",
        "ratio": f"{group / bound:.2f}x of bound",
        "target": f"group <= {TARGET_S:g} s (bound {'<=' if bound <= TARGET_S else '>'} "
                  f"{TARGET_S:g} s)",
        "met": "yes" if group <= TARGET_S else "no",
    }]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", default="runs/mnist1d-default.zarr")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(machine())
    print_table(rows(args.quick, args.store))
