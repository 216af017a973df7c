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


def parent_problem(ctx: TaskContext, writer, level: int, rewind: int,
                   start: RewindPoint, kind: str = "imp", replica: int = 0) -> str | None:
    """Why the runs of (``level``, ``rewind``) must not be trained, or None: their start
    W_k is not finite (the dense run diverged before k), or the replica-0 IMP run (for an
    own-mask kind: the same kind and ``replica``) of an earlier level, whose final weights
    give their masks, diverged (or was itself never trained for that reason). A NaN weight
    sorts last in a magnitude ranking, so a mask taken from it would prune by position,
    not by magnitude."""
    for n, t in {**start.params, **start.buffers}.items():
        if not torch.isfinite(t).all():
            return f"its start W_{rewind} is not finite ({n}: the dense run diverged)"
    for previous in [lv for lv in ctx.resolved.levels if lv < level]:
        parent = RunKey(kind, previous, rewind, replica)
        if writer.status_of(parent) in ("diverged", "parent_diverged"):
            return (f"its mask's parent, {kind} level {previous} rewind {rewind} replica "
                    f"{replica}, diverged")
    return None


def imp_masks(ctx: TaskContext, writer, level: int, rewind: int, kind: str = "imp",
              replica: int = 0) -> dict[str, torch.Tensor]:
    """The IMP masks of ``level`` at ``rewind``: everything kept at the first level, then
    each level prunes the previous level's final weights (read from the store) of IMP
    replica 0, or, for an own-mask kind, of the same ``kind`` and ``replica``."""
    from stabilitylab.core.errors import StoreError

    T = ctx.resolved.total_steps
    masks = all_kept(ctx)
    for previous in [lv for lv in ctx.resolved.levels if lv < level]:
        parent = RunKey(kind, previous, rewind, replica)
        final = torch.from_numpy(np.asarray(writer.read_weights(parent, T)))
        if not torch.isfinite(final).all():  # never a mask from NaN (parent_problem says why)
            raise StoreError(f"the final weights of {parent} are not finite; its status is "
                             f"{writer.status_of(parent)!r}")
        weights = {n: t for n, t in ctx.unflat(final).items() if n in masks}
        masks = prune(weights, masks, ctx.cfg.pruning.fraction, ctx.cfg.pruning.strategy)
    return masks


def _own_masks(ctx: TaskContext, writer, runs, level: int, k: int, name: str, imp, point,
               run_masks: dict, orphan_runs: dict) -> None:
    """The masks of each replica of own-mask kind ``name`` at (``level``, ``k``), into
    ``run_masks``; a replica whose own parent diverged goes to ``orphan_runs`` instead.
    The store keeps each copy's mask (``replica_masks``) and, under ``masks``, their union
    (every weight some copy keeps) with replica 0's density (equal for all copies: each
    level prunes the same count)."""
    kind = kinds.get(name)
    own = {}
    for run in [r for r in runs if r.kind == name and r.rewind == k]:
        why = parent_problem(ctx, writer, level, k, point, name, run.replica)
        if why is not None:
            orphan_runs[run] = why
            continue
        inputs = kinds.MaskInputs(ctx, name, level, k, imp, point,
                                  generator(ctx.seeds.kind(name, level, k, run.replica)),
                                  replica=run.replica,
                                  own=imp_masks(ctx, writer, level, k, name, run.replica))
        own[run.replica] = run_masks[(name, k, run.replica)] = kind.mask(inputs)
        writer.write_replica_mask(run, ctx.mask_flat(own[run.replica]))
    if own:
        union = {n: torch.stack([m[n] for m in own.values()]).any(0) for n in ctx.prunable}
        writer.write_mask(name, level, k, ctx.mask_flat(union), density(own[min(own)]))


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
    # (kind, rewind) -> masks shared by the kind's replicas; (kind, rewind, replica) -> masks
    # of one copy of an own-mask kind
    run_masks: dict[tuple, dict[str, torch.Tensor]] = {}
    points: dict[int, RewindPoint] = {}
    orphaned: dict[int, str] = {}  # rewind -> why its runs are not trained
    orphan_runs: dict[RunKey, str] = {}  # own-mask runs whose own parent diverged
    for k in task.rewinds:
        points[k] = read_rewind(ctx, writer, k)
        why = parent_problem(ctx, writer, level, k, points[k])
        if why is not None:
            orphaned[k] = why
            continue
        imp = imp_masks(ctx, writer, level, k)
        for name in kinds_here:
            if kinds.get(name).own_masks:
                _own_masks(ctx, writer, runs, level, k, name, imp, points[k], run_masks,
                           orphan_runs)
                continue
            g = generator(ctx.seeds.kind(name, level, k))
            inputs = kinds.MaskInputs(ctx, name, level, k, imp, points[k], g)
            m = run_masks[(name, k)] = kinds.get(name).mask(inputs)
            writer.write_mask(name, level, k, ctx.mask_flat(m), density(m))
    for run in runs:
        if run in done:
            writer.reset_run(run)
    statuses = _skip_orphans(ctx, writer, level, runs, orphaned, progress, run_done)
    statuses.update(_skip_orphan_runs(ctx, writer, orphan_runs, progress, run_done))
    runs = [run for run in runs if run.rewind not in orphaned and run not in orphan_runs]
    if not runs:
        return statuses
    plan = group_plan(ctx, task, runs, points, run_masks)
    result = train_group(ctx.stacked, plan, ctx.data, ctx.resolved, recorder=writer,
                         on_progress=progress, augment=ctx.augment)
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


def _skip_orphans(ctx: TaskContext, writer, level: int, runs, orphaned: dict[int, str],
                  progress, run_done) -> dict:
    """Mark the runs of the rewind points in ``orphaned`` ``parent_diverged`` (untrained,
    done: a resume does not retry them), one warning per rewind point."""
    statuses = {}
    for k, why in orphaned.items():
        mine = [run for run in runs if run.rewind == k]
        log.warning("level %d rewind %d: not training its %d runs: %s", level, k, len(mine), why)
        for run in mine:
            writer.finish_run(run, "parent_diverged")
            statuses[run] = "parent_diverged"
            run_done(run, "parent_diverged")
        progress(sum(ctx.resolved.total_steps - run.rewind for run in mine))
    return statuses


def _skip_orphan_runs(ctx: TaskContext, writer, orphan_runs: dict, progress, run_done) -> dict:
    """Mark the own-mask runs in ``orphan_runs`` ``parent_diverged``, one warning each."""
    statuses = {}
    for run, why in orphan_runs.items():
        log.warning("%s: not training it: %s", run, why)
        writer.finish_run(run, "parent_diverged")
        statuses[run] = "parent_diverged"
        run_done(run, "parent_diverged")
        progress(ctx.resolved.total_steps - run.rewind)
    return statuses


def group_plan(ctx: TaskContext, task: Task, runs: list[RunKey], points, run_masks) -> GroupPlan:
    """Each run's start (its kind's start rule), mask and data order, stacked. ``run_masks``:
    ``{(kind, rewind): masks}`` shared by a kind's replicas, or ``{(kind, rewind, replica):
    masks}`` for one copy of an own-mask kind."""
    starts: list[kinds.Start] = []
    masks, seeds, rewinds = [], [], []
    for run in runs:
        kind = kinds.get(run.kind)
        own = (run.kind, run.rewind, run.replica)
        m = run_masks[own] if own in run_masks else run_masks[(run.kind, run.rewind)]
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
