"""Measures read straight off the recorded trajectories (no forward passes).

- data-order distance curves between replica pairs (L2, angle);
- pruning-noise distance curves against the dense copy with the same data order
  (IMP and random-prune runs; NaN for reinit runs, which do not start from W_k);
- sign flips between W_k and W_T;
- early-bird mask distance along each trajectory;
- overlap of the masks IMP would draw from each replica.

Each function returns xarray DataArrays keyed by the store's dim names; entries
for runs that are not complete stay NaN. The arithmetic runs through the wrappers of
:mod:`stabilitylab.analysis.xr` on the dask-backed weights, block by block.
"""

from __future__ import annotations

import itertools
import queue
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import numpy as np
import torch
import xarray as xr

from stabilitylab.analysis import xr as sxr
from stabilitylab.analysis.cells import Cells
from stabilitylab.analysis.measures import (
    chance_jaccard,
    magnitude_mask,
    mask_jaccard,
    sign_flips,
)
from stabilitylab.analysis.registry import Measure, Variable, group
from stabilitylab.study import kinds

EARLY_WINDOW = 10  # recorded intervals after k averaged into the scalar early-bird measure

_PAIR_STEP = ("kind", "level", "rewind", "pair", "step")
_RUN_STEP = ("kind", "level", "rewind", "step")
VARIABLES = (
    Variable("data_order_l2", _PAIR_STEP, "L2 distance between the pair's weights at each "
             "recorded step ≥ rewind (NaN before)", "weight L2 norm"),
    Variable("data_order_angle", _PAIR_STEP, "angle between the pair's weight vectors, same",
             "radians"),
    Variable("data_order_l2_final", ("kind", "level", "rewind", "pair"),
             "`data_order_l2` at T", "weight L2 norm"),
    Variable("data_order_angle_final", ("kind", "level", "rewind", "pair"),
             "`data_order_angle` at T", "radians"),
    Variable("pruning_noise_l2", _RUN_STEP, "‖m⊙W_dense − m⊙W_sub‖ between replica 0 of (kind, "
             "level) and `imp` level 0 replica 0 (same k), over surviving weights; levels ≥ 1; "
             "NaN for `reinit` (it does not start from W_k, so the dense copy is no "
             "counterpart)", "weight L2 norm"),
    Variable("pruning_noise_angle", _RUN_STEP, "the angle between the same two", "radians"),
    Variable("random_imp_ratio_data_order", ("level", "rewind"), "Random/IMP ratio of the "
             "final-step data-order L2 distance (pair mean)", "ratio"),
    Variable("random_imp_ratio_pruning_noise", ("level", "rewind"), "Random/IMP ratio of the "
             "final-step pruning-noise L2 distance", "ratio"),
    Variable("mask_jaccard", ("level", "rewind", "pair"), "Jaccard overlap of the masks IMP "
             "would draw from each replica's final weights at the next level's density",
             "fraction"),
    Variable("mask_jaccard_chance", ("level", "rewind"), "p/(2−p) at density p", "fraction"),
    Variable("sign_flips", ("kind", "level", "rewind", "replica"), "fraction of surviving "
             "weights whose sign differs between W_k and W_T", "fraction"),
    Variable("early_bird", ("kind", "level", "rewind", "replica", "step"), "Hamming distance "
             "between magnitude masks of consecutive recorded steps", "fraction",
             needs_trajectory=True),
    Variable("early_bird_early", ("kind", "level", "rewind", "replica"), "`early_bird` "
             f"averaged over the first {EARLY_WINDOW} recorded intervals after k", "fraction",
             needs_trajectory=True),
)
MEASURES = (
    Measure("data_order_l2", "data_order_l2_final", "pair", "weight L2 norm", False,
            "L2 distance between the two replicas' final weights ‖W_a − W_b‖",
            "Frankle et al., arXiv 1903.01611", label="data-order L2 distance", rank=7),
    Measure("data_order_angle", "data_order_angle_final", "pair", "radians", False,
            "angle between the two replicas' final weight vectors",
            label="data-order angle", rank=8),
    Measure("mask_jaccard", "mask_jaccard", "pair", "fraction", True,
            "Jaccard overlap of the masks IMP would draw from each replica's final weights",
            label="mask Jaccard (replica masks)", rank=9),
    Measure("sign_flips", "sign_flips", "replica", "fraction", False,
            "share of surviving weights whose sign differs between W_k and W_T",
            label="sign flips since k", rank=10),
    Measure("early_bird", "early_bird_early", "replica", "fraction", False,
            "Hamming distance between magnitude masks of consecutive recorded steps, mean over "
            "the first steps after k, as a share of prunable weights", "You et al., ICLR 2020",
            label="early-bird mask distance", rank=11),
)


@group("trajectory", reads="trajectory", variables=VARIABLES, measures=MEASURES,
       phase="trajectory measures", rank=10)
def compute(ctx, results, options, progress=None) -> dict[str, xr.DataArray]:
    """The trajectory group: every variable above, in one pass over the runs."""
    out = trajectory_measures(ctx, progress=progress)
    out.update(random_imp_ratios(ctx, out))
    T = ctx.resolved.total_steps
    out["data_order_l2_final"] = out["data_order_l2"].sel(step=T, drop=True)
    out["data_order_angle_final"] = out["data_order_angle"].sel(step=T, drop=True)
    return out


#: Weights (float32 bytes) of the (cells × replicas × steps) blocks held at once, by all
#: the pipelines of :func:`_curves` together.
BLOCK_BYTES = 64 * 2**20


def trajectory_measures(ctx, progress=None) -> dict[str, xr.DataArray]:
    """Every trajectory measure for every complete (kind, level, rewind), out of core.

    The (kind, level, rewind) cells with a complete run become one ``cell`` dim of the
    dask-backed weights. The curves over step are computed block by block: the store's
    step chunks, for as many cells as :data:`BLOCK_BYTES` holds, each block read once
    (plus one step of overlap for the early-bird distance), by one pipeline per thread
    that reads a block and computes it, and passed whole through the
    :mod:`stabilitylab.analysis.xr` wrappers. Memory is that of the blocks, however many
    steps are recorded; their reading counts in this group's time, not as loading. The
    endpoint measures use the context's shared final and start weights.
    """
    cells = Cells.of(ctx)
    next_density = 1.0 - ctx.cfg.pruning.fraction
    masks = cells.take(ctx.load("masks"))  # (cell, param)
    survivors = masks & xr.DataArray(ctx.prunable, dims="param")
    valid = ctx.steps >= cells.coord("rewind").values[:, None]  # (cell, step): NaN before k
    complete = cells.take(ctx.completed).values  # (cell, replica)
    pairs_ok = cells.take(ctx.pair_completed()).values  # (cell, pair)
    # Pruning noise: replica 0 of a pruned run vs the dense copy from W_k under u_0
    # (Frankle et al. 2019, arXiv 1903.01611). Not for a kind whose copies do not start from
    # W_k (starts_at_rewind=False: reinit, init, init_imp): the dense copy is not their
    # counterpart and the distance would mix the re-initialization into the pruning noise;
    # it stays NaN.
    dense_ok = ctx.completed.sel(kind="imp", level=0, replica=0, drop=True)
    compared = [k not in kinds.REGISTRY or kinds.REGISTRY[k].starts_at_rewind
                for k in map(str, cells.coord("kind").values)]
    noise_ok = (np.array(compared, bool) & (cells.coord("level") > 0).values
                & complete[:, 0] & dense_ok.sel(rewind=cells.coord("rewind")).values)
    curves = _curves(ctx, cells, masks, survivors, next_density, noise_ok, progress)
    out = {}
    for name in ("data_order_l2", "data_order_angle"):
        out[name] = np.where(pairs_ok[:, :, None] & valid[:, None, :], curves[name], np.nan)
    for name in ("pruning_noise_l2", "pruning_noise_angle"):
        out[name] = np.where(noise_ok[:, None] & valid, curves[name], np.nan)
    # Early-bird: masks at the next level's density over this run's survivors; the distance
    # of a step to the one before it counts from the step after k on.
    after = np.concatenate([np.zeros((len(valid), 1), bool), valid[:, :-1]], 1)  # t-1 >= k
    curve = curves["early_bird"]
    out["early_bird"] = np.where(complete[:, :, None] & after[:, None, :], curve, np.nan)
    out["early_bird_early"] = np.where(complete, _first_mean(curve, after, EARLY_WINDOW), np.nan)
    # Sign flips between the run's start (step k) and its end (T).
    start = cells.take(ctx.load("start_weights")).transpose("cell", "replica", "param")
    final = cells.take(ctx.load("final_weights")).transpose("cell", "replica", "param")
    surv = survivors.transpose("cell", "param").values[:, None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        flips = sign_flips(start.values, final.values, surv)
    out["sign_flips"] = np.where(complete, flips, np.nan)
    result = {name: cells.scatter(ctx, name, v) for name, v in out.items()}
    if not ctx.pairs:  # one replica: no pairs, so no mask overlap (listed absent)
        return result
    # Mask overlap: the masks IMP would draw from each replica's final weights.
    imp = (cells.coord("kind") == "imp").values
    drawn = magnitude_mask(final.values[imp], next_density, surv[imp])  # (imp cell, R, P)
    a, b = ctx.pair_sides
    with np.errstate(invalid="ignore", divide="ignore"):
        jac = mask_jaccard(drawn[:, a], drawn[:, b])  # (imp cell, pair)
    imp_cells = cells.subset(imp)
    result["mask_jaccard"] = imp_cells.scatter(ctx, "mask_jaccard", np.where(
        pairs_ok[imp], jac, np.nan), drop="kind")
    result["mask_jaccard_chance"] = imp_cells.scatter(
        ctx, "mask_jaccard_chance", np.full(imp.sum(), chance_jaccard(next_density)),
        drop="kind")
    return result


def _curves(ctx, cells, masks, survivors, density, noise_ok, progress) -> dict[str, np.ndarray]:
    """The curves over step, block by block: data-order L2 and angle (cell, pair, step),
    pruning-noise L2 and angle (cell, step; the cells ``noise_ok`` only), early-bird
    distance (cell, replica, step).

    One pipeline per thread (``torch.get_num_threads()``): each takes the cells of some
    rewind points (:func:`_pipeline_cells`; the pipelines' work is alike) and, block after
    block, reads the block (decoded in its own thread, straight into the pipeline's
    buffer: :meth:`StudyContext.read_cells`) and computes it while it is still in the
    cache. While one pipeline decodes, the other computes, and they do not wait for each
    other: no core idles on a block boundary. Only steps whose values are kept are read
    and computed: a block leaves out the cells, and the steps, that lie wholly before k (no
    curve keeps a value there; the default study has 17% of its cell-steps before k)."""
    weights = ctx.ds.weights
    n_cell, n_rep, n_step = len(cells), len(ctx.replicas), len(ctx.steps)
    n_param = len(ctx.prunable)
    out = {name: np.full((n_cell, len(ctx.pairs), n_step), np.nan)
           for name in ("data_order_l2", "data_order_angle")}
    out.update({name: np.full((n_cell, n_step), np.nan)
                for name in ("pruning_noise_l2", "pruning_noise_angle")})
    out["early_bird"] = np.full((n_cell, n_rep, n_step), np.nan)
    bounds = np.cumsum((0, *weights.chunks[weights.dims.index("step")]))
    rewinds = cells.coord("rewind").values
    first = np.searchsorted(ctx.steps, rewinds)  # each cell's first step >= k (steps ascend)
    threads = max(1, min(torch.get_num_threads(), n_cell))
    per_cell = n_rep * (bounds[1] - bounds[0] + 1) * n_param * 4
    group = max(1, BLOCK_BYTES // threads // max(per_cell, 1))
    plans = [[] for _ in range(threads)]  # per pipeline: (cells, first row, s0, s1, finished)
    for t, members in _pipeline_cells(cells.rewind, first, n_step, threads, group):
        for s0, s1 in itertools.pairwise(bounds):
            live = members[first[members] < s1]  # a prefix: they come in order of k
            finished = len(members) * (s1 == bounds[-1])
            if len(live):  # the early-bird distance needs the step before s0 (if after k)
                plans[t].append((live, max(s0 - 1, int(first[live[0]])), s0, s1, finished))
    imp, level0 = ctx.kinds.index("imp"), ctx.levels.index(0)
    shared = (ctx, rewinds, masks, survivors, noise_ok, density)
    finished_cells: queue.SimpleQueue = queue.SimpleQueue()
    stop = threading.Event()

    def pipeline(blocks):
        size = max((len(b[0]) * n_rep * (b[3] - b[1]) * n_param for b in blocks), default=0)
        buffer, carry = np.empty(size, np.float32), None
        for live, lo, s0, s1, finished in blocks:
            if stop.is_set():
                return
            w, d, which = _read_block(ctx, cells, buffer, carry, live, lo, s0, s1, noise_ok,
                                      imp, level0)
            # The blocks of a group of cells come in step order, so the step of overlap
            # is the last one the block before read, for the cells it held: reading it
            # again would decompress a whole chunk of steps for one step.
            carry = w[:, :, -1].copy() if s1 < n_step else None
            _block_curves(out, w, d, which, live, lo, s0, *shared)
            if finished:
                finished_cells.put(finished)

    done = 0
    with ThreadPoolExecutor(threads, thread_name_prefix="curves") as pool:
        running = {pool.submit(pipeline, blocks) for blocks in plans}
        try:
            while running:
                ended, running = wait(running, timeout=0.05, return_when=FIRST_COMPLETED)
                for future in ended:
                    future.result()  # a pipeline's error, raised here
                while not finished_cells.empty():  # one unit per cell, as its last block ends
                    n = finished_cells.get()
                    done += n
                    if progress is not None:
                        progress(n)
        finally:
            stop.set()  # on an error or an interrupt the other pipelines end at their block
    if progress is not None and done < n_cell:
        progress(n_cell - done)
    return out


def _pipeline_cells(rewind: np.ndarray, first: np.ndarray, n_step: int, threads: int,
                    group: int) -> list[tuple[int, np.ndarray]]:
    """(pipeline, cell positions in order of k) of each group of blocks. The cells of one
    k go to one pipeline, and into one group when they fit in ``group`` cells: the dense
    run of that k, which the pruning noise compares with, is then in the block, not read a
    second time. The pipelines get about as many cell-steps to compute as one another
    (the k with the most first, each to the pipeline with the fewest so far)."""
    ks = np.unique(rewind)
    by_k = {k: np.flatnonzero(rewind == k) for k in ks}
    work = {k: len(by_k[k]) * (n_step - int(first[by_k[k][0]])) for k in ks}
    load, mine = np.zeros(threads), [[] for _ in range(threads)]
    for k in sorted(ks, key=lambda k: -work[k]):
        t = int(np.argmin(load))
        load[t] += work[k]
        mine[t].append(k)
    out = []
    for t, own in enumerate(mine):
        pending: list = []
        for k in sorted(own, key=lambda k: first[by_k[k][0]]):
            members = list(by_k[k])
            if pending and len(pending) + len(members) > group:
                out.append((t, np.array(pending)))
                pending = []
            while len(members) > group:
                out.append((t, np.array(members[:group])))
                members = members[group:]
            pending += members
        if pending:
            out.append((t, np.array(pending)))
    return out


def _read_block(ctx, cells, buffer, carry, live, lo, s0, s1, noise_ok, imp, level0):
    """One block, read with :meth:`StudyContext.read_cells`: the trajectories
    (cell, replica, step, param) of the cells ``live`` from step ``lo`` to ``s1``, decoded
    into ``buffer``; the step ``lo`` from ``carry`` (the block before's last step, for its
    cells: the first ones of ``live``) when ``lo == s0 - 1``. Cells new to the block have
    that step before k (it is refilled in :func:`_block_curves`). With them, the dense runs'
    weights (run, step, param) from ``max(lo, s0)`` on, one per k of the cells whose pruning
    noise is defined (replica 0 of the block's own ``imp`` level-0 cell of that k where it
    holds one, else read once per block, not once per cell), and each cell's run."""
    n_rep, n_param = len(ctx.replicas), len(ctx.prunable)
    k, lv, r = cells.kind[live], cells.level[live], cells.rewind[live]
    w = buffer[:len(live) * n_rep * (s1 - lo) * n_param]
    w = w.reshape(len(live), n_rep, s1 - lo, n_param)
    if carry is not None and lo == s0 - 1:
        w[:len(carry), :, 0] = carry
        w[len(carry):, :, 0] = np.nan
        ctx.read_cells(k, lv, r, step=slice(s0, s1), out=w[:, :, 1:])
    else:
        ctx.read_cells(k, lv, r, step=slice(lo, s1), out=w)
    a = max(lo, s0)
    runs, which = np.unique(r, return_inverse=True)
    d = np.zeros((len(runs), s1 - a, n_param), np.float32)
    read = []
    for i in np.unique(which[noise_ok[live]]):
        held = np.flatnonzero((k == imp) & (lv == level0) & (r == runs[i]))
        if len(held):  # the dense run is a cell of the block: its replica 0
            d[i] = w[held[0], 0, a - lo:]
        else:
            read.append(i)
    if read:
        d[read] = ctx.read_cells(np.full(len(read), imp), np.full(len(read), level0),
                                 runs[read], 0, slice(a, s1))
    return w, d, which


def _block_curves(out, w, d, which, idx, lo, s0, ctx, rewinds, masks, survivors, noise_ok,
                  density) -> None:
    """:func:`_curves` on one block of a pipeline: ``w`` (cell, replica, step,
    param) the trajectories of the cells ``idx`` from step ``lo`` (one before ``s0``
    where the early-bird distance needs it) on, ``d`` the dense runs' (run, step, param)
    from ``max(lo, s0)`` on, ``which`` each cell's run; written into ``out``."""
    steps = ctx.steps
    s1 = lo + w.shape[2]
    a = max(lo, s0)  # the first step whose distances this block gives
    # Steps before k are not recorded (NaN). Every value they reach is set to NaN by the
    # caller; their rows are filled in place (the block's cells) with
    # distinct magnitudes 1..P: NaN rows would send the early-bird masks to a slow sort,
    # and rows of equal values (zeros) to its slow path for ties.
    before = steps[lo:s1][None, :] < rewinds[idx, None]  # (cell, step)
    cell, step = np.nonzero(before)
    if len(cell):
        w[cell, :, step] = np.arange(1, w.shape[-1] + 1, dtype=w.dtype)
    part = xr.DataArray(w, dims=("cell", "replica", "step", "param"),
                        coords={"replica": ctx.replicas})
    here = part.isel(step=slice(a - lo, None))
    m = masks.isel(cell=idx)
    surv = survivors.isel(cell=idx)
    with np.errstate(invalid="ignore", divide="ignore"):  # per thread: set here
        # float32 in: pairwise widens it to float64 (exactly) and masks it chunk by chunk,
        # once for both metrics
        both = sxr.pairwise(here, "replica", metric=("l2", "angle"), mask=m)
        for metric in ("l2", "angle"):
            out[f"data_order_{metric}"][idx, :, a:s1] = both.sel(metric=metric).transpose(
                "cell", "pair", "step").values
        rows = np.flatnonzero(noise_ok[idx])  # only where it is defined
        if len(rows):
            first = here.isel(replica=0, drop=True).isel(cell=rows)
            dense = xr.DataArray(d[which[rows]], dims=("cell", "step", "param"))
            mm = m.isel(cell=rows)
            out["pruning_noise_l2"][idx[rows], a:s1] = sxr.l2_distance(
                dense, first, mask=mm).transpose("cell", "step").values
            out["pruning_noise_angle"][idx[rows], a:s1] = sxr.angle(
                dense, first, mask=mm).transpose("cell", "step").values
        eb = sxr.early_bird_curve(part, density, surv).transpose("cell", "replica", "step")
        out["early_bird"][idx, :, lo + 1:s1] = eb.values[..., 1:]


def _first_mean(curve: np.ndarray, use: np.ndarray, n: int) -> np.ndarray:
    """(cell, replica): mean of the first ``n`` entries of ``curve`` (cell, replica, step)
    where ``use`` (cell, step), in step order (NaN where there are none)."""
    order = np.argsort(~use, axis=1, kind="stable")[:, :n]  # the used steps come first
    count = np.minimum(use.sum(1), n)
    picked = np.take_along_axis(curve, order[:, None, :], axis=2)
    out = np.full(curve.shape[:2], np.nan)
    for c in np.unique(count):  # rows of equal length: np.mean as on the row alone
        if c > 0:
            rows = count == c
            out[rows] = picked[rows][..., :c].mean(-1)
    return out


def random_imp_ratios(ctx, measures: dict[str, xr.DataArray]) -> dict[str, xr.DataArray]:
    """Random/IMP ratios of the final-step distances (Frankle et al. 2019, arXiv 1903.01611, §4:
    "a randomly pruned network ... is less stable"; LeNet data order 58.6/20.7 = 2.8x)."""
    T = ctx.resolved.total_steps
    out = {}
    for name, source in (("random_imp_ratio_data_order", "data_order_l2"),
                         ("random_imp_ratio_pruning_noise", "pruning_noise_l2")):
        final = measures[source].sel(step=T)
        if "pair" in final.dims:
            final = final.mean("pair", skipna=True)
        out[name] = final.sel(kind="random_prune") / final.sel(kind="imp")
    return out
