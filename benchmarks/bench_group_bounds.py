"""Measured floors of analyze's measure groups (issue #26: every group but interpolation <= 1 s).

    python benchmarks/bench_group_bounds.py [STORE]   # default runs/mnist1d-default.zarr

For each group but interpolation, on a recorded store, in this process: the group's own
seconds (the store's shared views read first, so reading is not in them; but the trajectory
group reads its weight blocks as it computes them, and that reading is in its seconds), and
two floors
that no rewrite of the group's Python can go below:

- **forwards**: the network-examples the group pushes through the model (counted while it
  runs; the shared evaluation of the final networks is made first, as the interpolation
  group makes it in ``analyze``, and counted with that group) divided by the best
  throughput of the compiled stacked forward on this machine (measured here:
  ``evaluate_points`` on 900 networks x the test set, 30 networks x 100 examples per call,
  the evaluator's block). The groups run with the compiled forward, as
  ``analyze`` runs them on the default study (``--compile auto``);
- **read**: the seconds to read every recorded weight of the store once (one pass over
  its chunks, through zarr as analyze reads them), the floor of a group that reads whole
  trajectories (trajectory, trajectory_map).

A group whose floor is above 1 s cannot meet the target on this machine without a faster
forward, or less arithmetic (fewer points, examples or steps, which would change its
numbers).

Each row also gives a lower floor: the same network-examples at the rate of the forward's
matrix products alone (``bench_interpolation.gemm_bound``: the GEMMs of one stacked forward
traced and replayed, the fastest of a few layouts), and at the rate of the same products
each replayed as its transpose, (A·B)ᵀ = Bᵀ·Aᵀ: the weights on the left and the activations
channels first, a layout the forward could take. A last row adds the floors of the whole
analysis: the interpolation group's network-examples and every other group's at the faster
of those two GEMM rates (and at the compiled forward's), plus one read of every recorded
weight, against the 15 s target for ``analyze``; another adds what the analysis cannot do
without before its first group, measured in a fresh interpreter: the imports (as the
``analyze`` command makes them) and the build of the compiled forward from torch's warm
cache.
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
    """Best network-examples per second of the compiled stacked forward through
    ``evaluate_points`` (900 networks x the test set, in blocks of 30 networks x 100
    examples, as the groups evaluate them); compiled before timing."""
    import numpy as np
    import torch
    from common import timed

    from stabilitylab.analysis.interpolate import compile_policy, evaluate_points

    w = ctx.load("last_weights").transpose(..., "param").values.reshape(-1, ctx.stacked.num_params)
    w = np.ascontiguousarray(w[np.isfinite(w).all(-1)][:900])
    points = torch.from_numpy(w).to(ctx.device)
    x, y = ctx.data.test_x, ctx.data.test_y
    with compile_policy("on"):
        evaluate_points(ctx.stacked, points[:30], x, y)  # the compilation, not timed
        return len(points) * len(x) / timed(lambda: evaluate_points(ctx.stacked, points, x, y),
                                            repeat=3)


def _read_seconds(ctx) -> float:
    """Seconds to read every recorded weight once, a (kind, level, rewind) cell at a time,
    as analyze reads them (``StudyContext.read_cells``, in this one thread; through the
    dask arrays, one task per chunk, it took 1.6-2.9x as long as through zarr)."""
    import numpy as np

    cells = [a.reshape(-1, 1) for a in np.indices((len(ctx.kinds), len(ctx.levels),
                                                    len(ctx.rewinds)))]
    started = time.perf_counter()
    for k, lv, r in zip(*cells):
        ctx.read_cells(k, lv, r)
    return time.perf_counter() - started


_START = r"""
import gc, json, sys, time
from stabilitylab.core.memory import collector_paused
with collector_paused():  # as the analyze command imports (cli/main.py)
    import stabilitylab.analysis.run
    import torch._dynamo  # the groups' first-use import (registry preload)
    gc.freeze()
imported = time.time()
import numpy as np, torch
from stabilitylab.analysis import interpolate
from stabilitylab.analysis.context import load_context
ctx = load_context(sys.argv[1])
w = ctx.load("final_weights").transpose(..., "param").values.reshape(-1, ctx.stacked.num_params)
points = torch.from_numpy(np.ascontiguousarray(w[np.isfinite(w).all(-1)][:30]))
started = time.perf_counter()
built = interpolate._build_checked(ctx.stacked, points, ctx.data.test_x, 30, 100)
print(json.dumps({"imported": imported, "build": time.perf_counter() - started,
                  "compiled": bool(built)}))
"""


def _start_seconds(store: str) -> tuple[float, float]:
    """(seconds from starting a fresh interpreter to the end of the imports that analyze
    needs before its first group, seconds to build the compiled forward there from torch's
    warm on-disk cache): the part of ``analyze`` that no group's arithmetic can remove."""
    import json
    import subprocess

    spawned = time.time()
    done = subprocess.run([sys.executable, "-c", _START, store], capture_output=True,
                          text=True, check=True, cwd=str(_ROOT))
    out = json.loads(done.stdout.strip().splitlines()[-1])
    if not out["compiled"]:
        raise RuntimeError("the compiled forward could not be built: no start-up bound")
    return out["imported"] - spawned, out["build"]


def rows(store: str = "runs/mnist1d-default.zarr", quick: bool = False) -> list[dict]:
    from common import recorded_store

    from stabilitylab.analysis import registry
    from stabilitylab.analysis.context import VIEWS, load_context
    from stabilitylab.analysis.inputs import exclude_nonfinite_inputs

    store = recorded_store(store)  # absolute: the start is measured in another directory
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
    swapped_rate = 1e6 / gemm_bound(ctx, 10**6, swapped=True)[0]  # each as its transpose
    interpolation = network_examples(ctx)[1]  # the interpolation group's network-examples
    import threading

    from stabilitylab.analysis import interpolate

    counted, lock = {"n": 0}, threading.Lock()
    block = interpolate._evaluate_block

    def counting(stacked, points, x, *args, **kwargs):  # every evaluated point, compiled or not
        with lock:  # evaluate_points' eager workers run blocks on threads of their own
            counted["n"] += points.shape[0] * len(x)  # networks x examples (padding not counted)
        return block(stacked, points, x, *args, **kwargs)

    interpolate._evaluate_block = counting
    from stabilitylab.core.memory import small_pages

    start = _start_seconds(store)  # after _forward_rate: torch's cache holds the forward
    try:  # as analyze runs the default study: compiled forward, NumPy on ordinary pages
        with interpolate.compile_policy("on"), small_pages():
            return _group_rows(ctx, groups, options, counted, rate, read,
                               (gemm_rate, swapped_rate), interpolation, start)
    finally:
        interpolate._evaluate_block = block


def _group_rows(ctx, groups, options, counted, rate, read, gemm_rates, interpolation, start):
    gemm_rate, swapped_rate = gemm_rates
    fastest = max(gemm_rates)  # the floors below take the faster GEMM layout
    from stabilitylab.analysis import registry

    results, out = {}, []
    examples = interpolation  # every group's network-examples, interpolation included
    # The shared evaluation of the final networks: in analyze the interpolation group makes
    # it (and its count above includes it) before the groups that read it run.
    from stabilitylab.analysis.endpoints import endpoint_eval, splits

    for split in splits(ctx):
        endpoint_eval(ctx, split)
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
                         f"{counted['n'] / gemm_rate:.2f} s; transposed, weights on the "
                         f"left, at {swapped_rate / 1e6:.3f} M/s: "
                         f"{counted['n'] / swapped_rate:.2f} s)")
        examples += counted["n"]
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
    gemm_total, forward_total = examples / fastest, examples / rate
    imports, build = start
    total = gemm_total + read
    with_start = total + imports
    compiled = forward_total + read + imports + build
    out.append({
        "row": "analyze, every group (floor)",
        "ours": "see `analyze --profile`",
        "baseline": f"floor {total:.2f} s: every group's network-examples "
                    f"({examples / 1e6:.2f} M, interpolation included) at the faster GEMM "
                    f"rate ({gemm_total:.2f} s) + reading every weight once ({read:.2f} s); at the "
                    f"compiled forward's rate {forward_total + read:.2f} s",
        "ratio": "-",
        "target": "<= 15 s",
        "met": "no (floor > 15 s)" if total > 15.0 else "floor <= 15 s",
    })
    out.append({
        "row": "analyze, with its start (floor)",
        "ours": "see `analyze --profile`",
        "baseline": f"{with_start:.2f} s: the floor above + a fresh interpreter's imports "
                    f"({imports:.2f} s); with the compiled forward, its build from the warm "
                    f"cache ({build:.2f} s) and its rate: {compiled:.2f} s",
        "ratio": "-",
        "target": "<= 15 s",
        "met": ("no (floor > 15 s)" if with_start > 15.0 else
                "only with a forward at the GEMM rate" if compiled > 15.0 else "floor <= 15 s"),
    })
    return out


def main(argv=None) -> int:
    from common import store_main

    return store_main(rows, argv)


if __name__ == "__main__":
    raise SystemExit(main())
