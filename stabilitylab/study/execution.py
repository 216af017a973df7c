"""Running one task of a study: the dense pretraining, or the runs of one level.

Every task is self-contained given the store: it reads W_k and the optimizer state
at k from the ``rewind_state_*`` / ``rewind_buffers`` arrays, and recomputes the
level-L IMP masks at k from the stored (exact float32) final weights of IMP replica 0
at levels 0..L-1, rewind k (Frankle et al. 2020, "Linear Mode Connectivity and the
Lottery Ticket Hypothesis", Sec. 4: IMP with rewinding). What each kind of run does
with those inputs (its masks, start and data order) is looked up in
:mod:`stabilitylab.study.kinds`.

A task writes only its own runs' regions of the store (every per-run array has
one chunk per run; masks/density one chunk per (kind, level, k)), so tasks in
separate processes never write the same chunk. Rerunning a task (resume, or a
retry after a lost worker) skips it when all its runs are done, else resets the
runs it had finished and retrains all of them from the same stored inputs, which
rewrites them identically.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from stabilitylab.core.keys import RunKey
from stabilitylab.core.seeds import generator
from stabilitylab.prune import density, prune
from stabilitylab.study import kinds
from stabilitylab.study.context import RewindPoint, TaskContext
from stabilitylab.study.plan import DENSE, DENSE_TASK, Task, task_seed
from stabilitylab.train.engine import GroupPlan, train_group

log = logging.getLogger(__name__)


class _DenseRecorder:
    def __init__(self, writer):
        self.writer = writer

    def record(self, runs, step, weights):
        self.writer.record_dense(step, weights[0])


def run_task(ctx: TaskContext, writer, task: Task, *, on_progress=None, on_run_done=None) -> dict:
    """Train ``task`` into the store behind ``writer``; returns ``{run: status}``.

    Everything the task starts from is read from the store through ``writer``.
    ``on_progress(n)``: replica-steps done since the last call. ``on_run_done(run, status)``:
    called once per run as its status is committed (or found done on resume).
    """
    progress = on_progress or (lambda n: None)
    run_done = on_run_done or (lambda run, status: None)
    if task.level is None:
        return _pretrain(ctx, writer, progress, run_done)
    return _train_level(ctx, writer, task, progress, run_done)


def dense_plan(ctx: TaskContext, snapshot_steps) -> GroupPlan:
    """The dense run from W_0 (data order u_0), keeping its state at ``snapshot_steps``."""
    return GroupPlan(runs=[DENSE], start_steps=[0], data_seeds=[ctx.seeds.data_order(0)],
                     params=ctx.init_params, buffers=ctx.init_buffers,
                     snapshot_steps=tuple(snapshot_steps),
                     seed=task_seed(ctx.seeds.master, DENSE_TASK))


def all_kept(ctx: TaskContext) -> dict[str, torch.Tensor]:
    """Masks keeping every prunable weight (the first level)."""
    return {n: torch.ones(ctx.slot(n).shape, dtype=torch.bool) for n in ctx.prunable}


def _pretrain(ctx: TaskContext, writer, progress, run_done) -> dict:
    rewinds = ctx.resolved.rewinds
    if writer.dense_complete():
        progress(ctx.resolved.total_steps)
        run_done(DENSE, "done")
        return {DENSE: "done"}
    points: dict[int, RewindPoint] = {}
    on_snapshot = keep_snapshots(points)
    result = train_group(ctx.stacked, dense_plan(ctx, rewinds), ctx.data, ctx.resolved,
                         recorder=_DenseRecorder(writer), on_snapshot=on_snapshot,
                         on_progress=progress, augment=ctx.augment)
    for k, point in points.items():
        writer.write_rewind_state("weights", k, ctx.flat(point.params))
        for s in ctx.opt_state_names:
            writer.write_rewind_state(s, k, ctx.flat(point.opt_state[s]))
        if ctx.stacked.buffer_slots:
            writer.write_rewind_buffers(k, ctx.flat_buffers(point.buffers))
    writer.write_dense_metrics(**_metrics(result, 0))
    writer.write_dense_final(buffers=ctx.flat_buffers(
        {n: t[0] for n, t in result.buffers.items()}), **_finals(result, 0))
    div = int(result.diverged_step[0])
    status = "diverged" if div >= 0 else "complete"
    if div >= 0:
        log.warning("the dense run diverged at step %d", div)
    writer.finish_dense(status, diverged_step=div)
    run_done(DENSE, status)
    return {DENSE: status}


def keep_snapshots(points: dict) -> Callable:
    """An ``on_snapshot`` callback for ``train_group`` that keeps the dense run's state at each
    snapshot step in ``points`` (step -> :class:`RewindPoint`, on the host)."""

    def on_snapshot(step, params, buffers, optimizer):
        points[step] = RewindPoint(
            {n: t[0].detach().cpu().clone() for n, t in params.items()},
            {n: t[0].detach().cpu().clone() for n, t in buffers.items()},
            {s: {n: t.cpu() for n, t in d.items()} for s, d in optimizer.state_of(0).items()},
        )

    return on_snapshot


def read_rewind(ctx: TaskContext, writer, rewind: int) -> RewindPoint:
    """The dense run's stored state at step ``rewind``."""
    params = ctx.unflat(torch.from_numpy(np.asarray(writer.read_rewind_state("weights", rewind))))
    state = {s: ctx.unflat(torch.from_numpy(np.asarray(writer.read_rewind_state(s, rewind))))
             for s in ctx.opt_state_names}
    buffers = {}
    if ctx.stacked.buffer_slots:
        flat = torch.from_numpy(np.asarray(writer.read_rewind_buffers(rewind)))[None]
        buffers = {n: t[0] for n, t in ctx.stacked.unflatten_buffers(flat).items()}
    return RewindPoint(params, buffers, state)


def imp_masks(ctx: TaskContext, writer, level: int, rewind: int) -> dict[str, torch.Tensor]:
    """The IMP masks of ``level`` at ``rewind``: everything kept at the first level, then
    each level prunes the previous level's replica-0 final weights (read from the store)."""
    T = ctx.resolved.total_steps
    masks = all_kept(ctx)
    for previous in [lv for lv in ctx.resolved.levels if lv < level]:
        final = torch.from_numpy(np.asarray(writer.read_weights(RunKey("imp", previous, rewind, 0), T)))
        weights = {n: t for n, t in ctx.unflat(final).items() if n in masks}
        masks = prune(weights, masks, ctx.cfg.pruning.fraction, ctx.cfg.pruning.strategy)
    return masks


def _train_level(ctx: TaskContext, writer, task: Task, progress, run_done) -> dict:
    level = task.level
    runs = task.runs(ctx.resolved)
    done = writer.completed_runs()
    if all(run in done for run in runs):
        progress(task.replica_steps(ctx.resolved))
        for run in runs:
            run_done(run, "done")
        return {run: "done" for run in runs}
    kinds_here = [name for name in kinds.names() if any(run.kind == name for run in runs)]
    run_masks: dict[tuple[str, int], dict[str, torch.Tensor]] = {}  # (kind, rewind) -> masks
    points: dict[int, RewindPoint] = {}
    for k in task.rewinds:
        imp = imp_masks(ctx, writer, level, k)
        points[k] = read_rewind(ctx, writer, k)
        for name in kinds_here:
            g = generator(ctx.seeds.kind(name, level, k))
            inputs = kinds.MaskInputs(ctx, name, level, k, imp, points[k], g)
            run_masks[(name, k)] = kinds.get(name).mask(inputs)
    for name in kinds_here:
        for k in task.rewinds:
            m = run_masks[(name, k)]
            writer.write_mask(name, level, k, ctx.mask_flat(m), density(m))
    plan = group_plan(ctx, task, runs, points, run_masks)
    for run in runs:
        if run in done:
            writer.reset_run(run)
    result = train_group(ctx.stacked, plan, ctx.data, ctx.resolved, recorder=writer,
                         on_progress=progress, augment=ctx.augment)
    statuses = {}
    for r, run in enumerate(runs):
        writer.write_metrics(run, **_metrics(result, r))
        writer.write_final(run, buffers=ctx.flat_buffers(
            {n: t[r] for n, t in result.buffers.items()}), **_finals(result, r))
        div = result.diverged_step[r]
        statuses[run] = "diverged" if div >= 0 else "complete"
        writer.finish_run(run, statuses[run], div)
        run_done(run, statuses[run])
        if div >= 0:
            log.warning("run %s diverged at step %d", run, div)
    return statuses


def group_plan(ctx: TaskContext, task: Task, runs: list[RunKey], points, run_masks) -> GroupPlan:
    """Each run's start (its kind's start rule), mask and data order, stacked."""
    starts: list[kinds.Start] = []
    masks, seeds, rewinds = [], [], []
    for run in runs:
        kind = kinds.get(run.kind)
        m = run_masks[(run.kind, run.rewind)]
        starts.append(kind.start(kinds.StartInputs(ctx, run.kind, run.level, run.rewind,
                                                   run.replica, points[run.rewind], m)))
        masks.append(m)
        seeds.append(ctx.seeds.data_order(kind.data_order(run.replica)))
        rewinds.append(run.rewind)
    names = ctx.stacked.param_names
    stacked_params = {n: torch.stack([s.params[n] for s in starts]) for n in names}
    stacked_buffers = {n: torch.stack([s.buffers[n] for s in starts])
                       for n in ctx.stacked.buffer_names}
    stacked_masks = {n: torch.stack([m[n] for m in masks]).float() for n in ctx.prunable} \
        if task.level > 0 else {}
    opt_state = None
    if ctx.opt_state_names and any(s.opt_state is not None for s in starts):
        opt_state = {}
        for name in ctx.opt_state_names:
            opt_state[name] = {}
            for n in names:
                rows = []
                for s in starts:
                    if s.opt_state is not None:
                        rows.append(s.opt_state[name][n])
                    elif name == "slow":  # a fresh Lookahead starts at the weights
                        rows.append(s.params[n])
                    else:
                        rows.append(torch.zeros_like(s.params[n]))
                opt_state[name][n] = torch.stack(rows)
    return GroupPlan(runs=runs, start_steps=rewinds, data_seeds=seeds, params=stacked_params,
                     buffers=stacked_buffers, masks=stacked_masks, opt_state=opt_state,
                     opt_steps=[s.opt_step for s in starts],
                     seed=task_seed(ctx.seeds.master, task))


def _metrics(result, r) -> dict:
    return {name: getattr(result, name)[r] for name in (
        "train_loss", "train_acc", "test_loss", "test_acc", "train_eval_loss", "train_eval_acc")}


def _finals(result, r) -> dict:
    return {"test_acc": float(result.test_acc[r, -1]), "test_loss": float(result.test_loss[r, -1]),
            "train_eval_acc": float(result.train_eval_acc[r, -1]),
            "train_eval_loss": float(result.train_eval_loss[r, -1])}
