"""Measured floors of analyze's measure groups (issue #26: every group but interpolation <= 1 s).

    python benchmarks/bench_group_bounds.py [STORE]   # default runs/mnist1d-default.zarr

For each group but interpolation, on a recorded store, in this process: the group's own
seconds (the store's shared views read first, so reading is not in them), and two floors
that no rewrite of the group's Python can go below:

- **forwards**: the network-examples the group pushes through the model (counted while it
  runs) divided by the best throughput of the stacked forward on this machine (measured
  here: 30 networks x 100 test examples per call, the evaluator's block);
- **read**: the seconds to read every recorded weight of the store once (one pass over
  its chunks, through zarr as analyze reads them), the floor of a group that reads whole
  trajectories (trajectory, trajectory_map).

A group whose floor is above 1 s cannot meet the target on this machine without doing
less arithmetic (fewer points, examples or steps), which would change its numbers.

Each row also gives a lower floor: the same network-examples at the rate of the forward's
matrix products alone (``bench_interpolation.gemm_bound``: the GEMMs of one stacked forward
traced and replayed, the fastest of a few layouts). A last row adds the floors of the whole
analysis: the interpolation group's network-examples and every other group's at that GEMM
rate, plus one read of every recorded weight, against the 15 s target for ``analyze``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
for _p in (str(_ROOT), str(_ROOT / "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

READS_TRAJECTORY = ("trajectory", "trajectory_map")


def _forward_rate(ctx) -> float:
    """Best network-examples per second of the stacked forward (30 networks x 100
    examples per call, as the evaluator stacks them)."""
    import torch
    from common import timed

    w = ctx.load("final_weights").values.reshape(-1, ctx.stacked.num_params)[:30]
    params = ctx.stacked.unflatten(torch.from_numpy(w.copy()).to(ctx.device))
    x = ctx.data.test_x[:100]

    def run():
        with torch.no_grad():
            for _ in range(10):
                ctx.stacked.forward(params, {}, x, train=False, shared_input=True)

    return 10 * len(w) * len(x) / timed(run, repeat=3)


def _read_seconds(ctx) -> float:
    """Seconds to read every recorded weight once, a (kind, level, rewind) cell at a time
    straight through zarr, as analyze reads them (``StudyContext.read_cells``; through the
    dask arrays, one task per chunk, it took 1.6-2.9x as long)."""
    import numpy as np

    cells = [a.reshape(-1, 1) for a in np.indices((len(ctx.kinds), len(ctx.levels),
                                                    len(ctx.rewinds)))]
    started = time.perf_counter()
    for k, lv, r in zip(*cells):
        ctx.read_cells(k, lv, r)
    return time.perf_counter() - started


def rows(store: str = "runs/mnist1d-default.zarr", quick: bool = False) -> list[dict]:
    from stabilitylab.analysis import registry
    from stabilitylab.analysis.context import VIEWS, load_context
    from stabilitylab.analysis.inputs import exclude_nonfinite_inputs

    if not Path(store).exists():
        raise FileNotFoundError(f"{store}: record the default study first (README's first "
                                "command), or pass a store")
    ctx = load_context(store)
    ctx.prefetch(*VIEWS)
    exclude_nonfinite_inputs(ctx)
    groups = registry.select(None)
    options = registry.Options(groups=groups, alphas=30)
    for g in groups:  # first-use imports, as analyze does while loading
        for module in registry.GROUPS[g].preload:
            __import__(module)
    rate = _forward_rate(ctx)
    read = _read_seconds(ctx)
    from bench_interpolation import gemm_bound, network_examples

    gemm_rate = 1e6 / gemm_bound(ctx, 10**6)[0]  # network-examples/s of the GEMMs alone
    gemm_total = network_examples(ctx)[1] / gemm_rate  # the interpolation group's
    import threading

    from stabilitylab.train.functional import StackedModel

    counted, lock = {"n": 0}, threading.Lock()
    forward = StackedModel.forward

    def counting(self, params, buffers, x, *, train, shared_input=False):
        out = forward(self, params, buffers, x, train=train, shared_input=shared_input)
        with lock:  # evaluate_points' workers each forward through their own StackedModel
            counted["n"] += out.shape[0] * out.shape[1]  # networks x examples
        return out

    StackedModel.forward = counting
    try:
        return _group_rows(ctx, groups, options, counted, rate, read, gemm_rate, gemm_total)
    finally:
        StackedModel.forward = forward


def _group_rows(ctx, groups, options, counted, rate, read, gemm_rate, gemm_total):
    from stabilitylab.analysis import registry

    results, out = {}, []
    for name in registry.groups():
        g = registry.GROUPS[name]
        if name not in groups or g.compute is None:
            continue
        if name == "interpolation" or "interpolation" in g.needs:  # not measured here
            continue
        counted["n"] = 0
        loaded, started = ctx.load_seconds, time.perf_counter()
        results.update(g.compute(ctx, results, options))
        own = time.perf_counter() - started - (ctx.load_seconds - loaded)
        floor_fwd = counted["n"] / rate
        floor_read = read if name in READS_TRAJECTORY else 0.0
        floor = max(floor_fwd, floor_read)
        parts = []
        if counted["n"]:
            parts.append(f"{counted['n'] / 1e6:.2f} M network-examples at {rate / 1e6:.3f} M/s "
                         f"= {floor_fwd:.2f} s (GEMMs alone at {gemm_rate / 1e6:.3f} M/s: "
                         f"{counted['n'] / gemm_rate:.2f} s)")
        gemm_total += counted["n"] / gemm_rate
        if floor_read:
            parts.append(f"reading every weight once {read:.2f} s")
        out.append({
            "row": f"group {name}",
            "ours": f"{own:.2f} s (+{ctx.load_seconds - loaded:.2f} s reading)",
            "baseline": f"floor {floor:.2f} s: " + "; ".join(parts) if parts else
                        "no floor measured (its gradients do not go through the stacked forward)",
            "ratio": f"{own / floor:.1f}x the floor" if floor > 0 else "-",
            "target": "<= 1 s",
            "met": "yes" if own <= 1.0 else ("no (floor > 1 s)" if floor > 1.0 else "no"),
        })
    total = gemm_total + read
    out.append({
        "row": "analyze, every group (floor)",
        "ours": "see `analyze --profile`",
        "baseline": f"floor {total:.2f} s: every group's network-examples at the GEMM rate "
                    f"({gemm_total:.2f} s, interpolation included) + reading every weight "
                    f"once ({read:.2f} s)",
        "ratio": "-",
        "target": "<= 15 s",
        "met": "no (floor > 15 s)" if total > 15.0 else "floor <= 15 s",
    })
    return out


def main(argv=None) -> int:
    from common import machine, print_table

    argv = sys.argv[1:] if argv is None else argv
    print(f"machine: {machine()}")
    print_table(rows(argv[0] if argv else "runs/mnist1d-default.zarr"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
