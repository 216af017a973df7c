"""Trajectory-map PCA of a whole store: seconds and peak memory, out of core vs in memory.

    python benchmarks/bench_pca.py [--store runs/mnist1d-default.zarr]

Work: the PCA of every (kind, level, rewind k) of the study (Li et al. 2018, §7: all
replicas' recorded weights from k to T, centred at their mean, 2 components), as the
``trajectory_map`` group computes it. Ours: ``trajectory_map_measures.map_pca`` (exact PCA
through the Gram matrix, accumulated by dask over the store's chunks). Baseline: each
(kind, level, k) loaded into memory as one float64 (N, P) matrix, then
``numpy.linalg.svd``. Peak memory is the Python-traced peak (``tracemalloc``: numpy
buffers included) above the start, per (kind, level, k) at most; both give the same
explained variance (checked). Record the default study first (README's first command).
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
for _p in (str(_ROOT), str(_ROOT / "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np
from common import machine, print_table

from stabilitylab.analysis import pca
from stabilitylab.analysis.context import load_context
from stabilitylab.analysis.trajectory_map_measures import map_pca


def _in_memory(ctx, kind, level, k):
    reps = ctx.complete_replicas(kind, level, k)
    steps = np.nonzero(np.asarray(ctx.steps) >= k)[0]
    w = ctx.ds.weights.sel(kind=kind, level=level, rewind=k).values[reps][:, steps]
    x = w.reshape(-1, w.shape[-1]).astype(np.float64)
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    return (s[:2] ** 2) / (s ** 2).sum()


def _measure(fn, combos):
    peak, out = 0, []
    start = time.perf_counter()
    for combo in combos:
        tracemalloc.start()
        out.append(fn(*combo))
        peak = max(peak, tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return time.perf_counter() - start, peak, out


DEFAULT_STORE = str(_ROOT / "runs" / "mnist1d-default.zarr")


def rows(quick: bool = False, store: str = DEFAULT_STORE) -> list[dict]:
    ctx = load_context(store)
    combos = list(ctx.combos())
    base_t, base_peak, base = _measure(lambda *c: _in_memory(ctx, *c), combos)
    n = max(len(ctx.complete_replicas(*c)) * int((np.asarray(ctx.steps) >= c[2]).sum())
            for c in combos)
    mib = 2 ** 20
    out = []
    # The default block (64 MiB) holds a default-store map whole; 2^18 values (2 MiB) shows
    # the out-of-core pass that a larger store gets.
    for block in (pca.BLOCK_VALUES, 1 << 18):
        pca.BLOCK_VALUES, default = block, pca.BLOCK_VALUES
        try:
            ours_t, ours_peak, ours = _measure(lambda *c: map_pca(ctx, *c)[0].explained, combos)
        finally:
            pca.BLOCK_VALUES = default
        np.testing.assert_allclose(np.array(ours), np.array(base), rtol=1e-6, atol=1e-9)
        out.append({
            "row": f"PCA of {len(combos)} (kind, level, k), N ≤ {n} x P = "
                   f"{ctx.stacked.num_params}, blocks of {block * 8 / mib:g} MiB",
            "ours": f"{ours_t:.1f} s, peak {ours_peak / mib:.1f} MiB (Gram, dask)",
            "baseline": f"{base_t:.1f} s, peak {base_peak / mib:.1f} MiB (in memory, SVD)",
            "ratio": f"time {base_t / ours_t:.2f}x, memory {base_peak / max(ours_peak, 1):.2f}x",
            "target": "reported",
            "met": "—",
        })
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", default=DEFAULT_STORE)
    args = parser.parse_args()
    print(machine())
    print_table(rows(store=args.store))
