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

A second, lower bound: the matrix products alone of those forwards, with the shapes the
evaluator's block runs (traced from one stacked forward below vmap and replayed on fresh
tensors, on T threads as ``evaluate_points`` runs; :func:`gemm_bound`), the analogue of
``bench_replicas.py``'s GEMM ceiling for the training step.
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
    align = flat_aligner(ctx.stacked, "aligned barrier")
    if align is not None:  # the aligned paths of the pairs that weight matching moved
        cell_i, pair_i = np.nonzero(ok[:, a] & ok[:, b])
        moved = sum(not np.array_equal(align(w[c, a[p]], w[c, b[p]]), w[c, b[p]])
                    for c, p in zip(cell_i, pair_i))
        work += moved * (N_ALPHAS - 1) * n_test
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


GEMMS = ("mm", "bmm", "addmm", "baddbmm")


GEMM_LAYOUTS = ((30, 100), (10, 300), (4, 1000), (1, 1000))  # (points, examples) a forward


def gemm_bound(ctx, work: int, layouts=GEMM_LAYOUTS, *, swapped: bool = False
               ) -> tuple[float, str]:
    """Seconds of the matrix products alone of ``work`` network × example forward passes,
    in the fastest of ``layouts`` (points × examples per stacked forward; the evaluator's
    block is 30 × 100). ``swapped``: each product as its transpose, Cᵀ = Bᵀ·Aᵀ (the
    weights on the left, activations channels first: the same multiplications, the
    output laid out the other way)."""
    return min((_gemm_seconds(ctx, work, points, examples, swapped=swapped)
                for points, examples in layouts), key=lambda r: r[0])


def _swap(name: str, args: list) -> list:
    """Operands of the GEMM ``name`` whose product is the transpose of the traced one's,
    (A·B)ᵀ = Bᵀ·Aᵀ, the bias operand (of addmm, baddbmm) transposed too: fresh tensors of
    those shapes, as the replay uses."""
    def t(a):
        a = a.reshape((1,) * (2 - a.dim()) + tuple(a.shape)) if a.dim() < 2 else a
        return torch.empty(a.shape[:-2] + (a.shape[-1], a.shape[-2]), dtype=a.dtype,
                           device=a.device).normal_()
    if name in ("mm", "bmm"):
        return [t(args[1]), t(args[0]), *args[2:]]
    return [t(args[0]), t(args[2]), t(args[1]), *args[3:]]


@torch.no_grad()
def _gemm_seconds(ctx, work: int, points_per_block: int, examples: int,
                  repeat: int = 3, swapped: bool = False) -> tuple[float, str]:
    """One layout of :func:`gemm_bound`.

    One stacked forward of ``points_per_block`` points × ``examples`` examples is traced
    below vmap (a dispatch mode sees the batched kernels it runs) and its GEMMs (mm, bmm,
    addmm, baddbmm: shapes, dtypes and the bias operand) are replayed on fresh tensors of
    the same shapes, with nothing else: no im2col, activation, loss or bookkeeping, on T
    threads of one torch thread each as ``evaluate_points`` runs its blocks. Like
    ``bench_replicas.py``'s GEMM row for the training step, this is the floor of the
    forwards in that layout. ``swapped``: each GEMM replayed as its transpose (:func:`_swap`).
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    calls = []

    class Trace(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ in GEMMS:
                calls.append((func, [torch.empty_like(a) if isinstance(a, torch.Tensor) else a
                                     for a in args]))
            return func(*args, **(kwargs or {}))

    w = torch.from_numpy(ctx.load("final_weights").values.reshape(-1, ctx.stacked.num_params))
    w = w[torch.isfinite(w).all(1)][:points_per_block].to(ctx.device)
    params = ctx.stacked.unflatten(w)
    x = ctx.data.test_x[:examples].to(ctx.device)
    with Trace():
        ctx.stacked.forward(params, {}, x, train=False, shared_input=True)
    calls = [(f, [a.normal_() if isinstance(a, torch.Tensor) else a for a in args])
             for f, args in calls]
    if swapped:
        calls = [(f, _swap(f.overloadpacket.__name__, args)) for f, args in calls]
    threads = torch.get_num_threads()
    blocks = max(2, 120_000 // (points_per_block * examples))  # per worker, per timing

    def replay(_):
        torch.set_num_threads(1)
        for _ in range(blocks):
            for f, args in calls:
                f(*args)

    from concurrent.futures import ThreadPoolExecutor

    best = float("inf")
    try:
        for _ in range(repeat):
            started = time.perf_counter()
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(replay, range(threads)))
            best = min(best, time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    rate = threads * blocks * len(w) * len(x) / best  # network-examples per second
    shapes = "; ".join(f"{f.overloadpacket.__name__} " + " @ ".join(
        "x".join(map(str, a.shape)) for a in args if isinstance(a, torch.Tensor))
        for f, args in calls)
    return work / rate, f"{len(calls)} GEMMs per {len(w)} points x {len(x)} examples: {shapes}"


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
    gemms, traced = gemm_bound(ctx, work)
    return [{
        "row": f"interpolation group ({pairs} pairs, {N_ALPHAS} α, aligned; "
               f"{work / 1e6:.2f}M network-examples)",
        "ours": f"{group:.1f} s",
        "baseline": f"bound: forward passes alone {bound:.1f} s ({layout}); their matrix "
                    f"products alone {gemms:.1f} s ({traced})",
        "ratio": f"{group / bound:.2f}x of bound, {group / gemms:.2f}x of the GEMMs",
        "target": f"group <= {TARGET_S:g} s (forwards {'<=' if bound <= TARGET_S else '>'} "
                  f"{TARGET_S:g} s, GEMMs {'<=' if gemms <= TARGET_S else '>'} {TARGET_S:g} s)",
        "met": "yes" if group <= TARGET_S else "no",
    }]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", default="runs/mnist1d-default.zarr")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(machine())
    print_table(rows(args.quick, args.store))
