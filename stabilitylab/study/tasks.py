"""The tasks of ``record``: one unit of work each, shared by the local and the distributed path.

A study is trained as a fixed sequence of tasks (:func:`plan_tasks`):

1. ``dense``: the pretraining run from init to T under data order u_0; it writes
   W_k, the BN buffers and the optimizer state at every rewind point k;
2. one task per (level L, rewind point k): every run of level L rewound to k (the R
   IMP copies and, at control levels, the random-pruning and reinit controls),
   trained together as one batched group.

The split does not depend on the scheduler: ``record_study`` runs the tasks
in-process in this order, ``record_distributed`` runs the same tasks on a Dask
cluster. Both therefore train the same groups, and their stores are equal bit for
bit on CPU (the batched engine promises equal per-replica numbers across
*different* group compositions only up to float rounding). ``rewinds_per_task``
(default 0: a whole level per task) sets how many rewind points share a task: wider
groups batch better (the default study records in ~2.5 min on 2 cores as whole levels,
over 7 min as one task per rewind point), narrower ones spread over more workers; pass the same value
to both paths to compare stores bit for bit.

Every task is self-contained given the store: it reads W_k and the optimizer state
at k from the ``rewind_state_*`` / ``rewind_buffers`` arrays, and recomputes the
level-L masks at k from the stored (exact float32) final weights of IMP replica 0
at levels 0..L-1, rewind k. Dependencies are therefore per rewind point: (L, ks)
needs (L-1, ks) (and level 0 needs ``dense``), nothing else.

A task writes only its own runs' regions of the store (every per-run array has
one chunk per run; masks/density one chunk per (kind, level, k)), so tasks in
separate processes never write the same chunk. Rerunning a task (resume, or a
retry after a lost worker) skips it when all its runs are done, else resets the
runs it had finished and retrains all of them from the same stored inputs, which
rewrites them identically.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import platform
import threading
from dataclasses import dataclass

import numpy as np
import torch

from stabilitylab.config import config_from_dict, config_to_dict, study_id, validate
from stabilitylab.prune import density, prune, random_masks_like
from stabilitylab.study.plan import DENSE, Seeds, all_runs, level_runs
from stabilitylab.train.engine import GroupPlan, resolve_device, train_group
from stabilitylab.train.functional import StackedModel
from stabilitylab.train.optim import state_names
from stabilitylab.train.seeds import derive_seed, generator

log = logging.getLogger(__name__)


# -- the plan ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Task:
    """One unit of ``record``: the dense pretraining (``level is None``) or the runs of
    one level at the given rewind points."""

    level: int | None
    rewinds: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        if self.level is None:
            return "dense"
        return f"level{self.level}-k" + "_".join(str(k) for k in self.rewinds)

    def runs(self, resolved) -> list[tuple]:
        if self.level is None:
            return [DENSE]
        ks = set(self.rewinds)
        return [run for run in level_runs(resolved, self.level) if run[2] in ks]

    def replica_steps(self, resolved) -> int:
        """Training steps this task takes (progress totals)."""
        if self.level is None:
            return resolved.total_steps
        return sum(resolved.total_steps - run[2] for run in self.runs(resolved))


DENSE_TASK = Task(None)


def plan_tasks(resolved, rewinds_per_task: int | None = 0) -> list[Task]:
    """Every task of the study in an order that respects :func:`dependencies`: ``dense``,
    then level by level, one task per ``rewinds_per_task`` consecutive rewind points
    (default 0 or None: one task per level; 1: one task per rewind point)."""
    ks = list(resolved.rewinds)
    n = check_rewinds_per_task(rewinds_per_task) or len(ks)
    chunks = [tuple(ks[i:i + n]) for i in range(0, len(ks), n)]
    return [DENSE_TASK] + [Task(level, c) for level in resolved.levels for c in chunks]


def check_rewinds_per_task(value) -> int:
    """``value`` as an int >= 0 (0 = all rewind points in one task); ConfigError otherwise."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        from stabilitylab.errors import ConfigError

        raise ConfigError(f"rewinds_per_task: need an integer >= 0 (0 = one task per level), "
                          f"got {value!r}")
    return value


def dependencies(task: Task, resolved) -> list[Task]:
    """The tasks whose results ``task`` reads from the store."""
    if task.level is None:
        return []
    levels = list(resolved.levels)
    i = levels.index(task.level)
    return [DENSE_TASK] if i == 0 else [Task(levels[i - 1], task.rewinds)]


def task_seed(master: int, task: Task) -> int:
    """The group seed (dropout) of a task's batched group."""
    if task.level is None:
        return Seeds(master).group(-1)
    return derive_seed(master, "group", task.level, "rewinds", *task.rewinds)


# -- what every task of a study needs (built once per process) ----------------------------

@dataclass
class RewindPoint:
    """The dense run's state at step k: what every run rewound to k starts from."""

    params: dict[str, torch.Tensor]  # unstacked
    buffers: dict[str, torch.Tensor]
    opt_state: dict[str, dict[str, torch.Tensor]]


class TaskContext:
    """The model template, the data on the device and the study's seeds.

    Building it loads the dataset, so a missing dataset stops ``record`` before
    anything is written; it also checks ``pruning.ignore`` against the model.
    """

    def __init__(self, cfg, device: str | torch.device | None = None):
        from stabilitylab.data import load_dataset
        from stabilitylab.data.registry import DATASETS
        from stabilitylab.models import build_model, output_layer_name

        self.cfg = cfg
        self.resolved = validate(cfg)
        self.device = resolve_device(str(device or cfg.study.device))
        self.seeds = Seeds(cfg.study.seed)
        info = DATASETS[cfg.data.name]
        self.build = lambda seed: build_model(cfg.model, info.input_shape, info.num_classes,
                                               generator=generator(seed))
        init_model = self.build(self.seeds.init)
        self.stacked = StackedModel(init_model)
        self.init_params, self.init_buffers = self.stacked.stack([init_model])
        ignored = {output_layer_name(init_model) if n == "output" else n for n in cfg.pruning.ignore}
        unknown = ignored - set(self.stacked.param_names) - {
            n.rsplit(".", 1)[0] for n in self.stacked.param_names}
        if unknown:
            from stabilitylab.errors import ConfigError

            raise ConfigError(f"pruning.ignore: no layer named {min(unknown)!r}; layers: "
                              + ", ".join(self.stacked.prunable_names))
        self.prunable = [n for n in self.stacked.prunable_names
                         if n not in ignored and n.rsplit(".", 1)[0] not in ignored]
        self.data = load_dataset(cfg.data, self.device)
        self.augment = None
        if cfg.data.augment:
            from stabilitylab.data.augment import random_flip_crop_replicas

            self.augment = random_flip_crop_replicas
        self.opt_state_names = list(state_names(cfg.training))

    # -- what a new store is created with -----------------------------------------------
    def store_spec(self) -> dict:
        """Keyword arguments of ``StudyWriter.create`` (besides url/resolved/storage)."""
        return {"param_layout": self.stacked.layout(), "buffer_layout": self.stacked.buffer_layout(),
                "provenance": provenance(self.device, self.cfg), "runs": all_runs(self.resolved),
                "optimizer_state_names": list(self.opt_state_names)}

    # -- flat <-> named ------------------------------------------------------------------
    def slot(self, name):
        return self.stacked.param_slots[self.stacked.param_names.index(name)]

    def unflat(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: t[0] for n, t in self.stacked.unflatten(flat[None]).items()}

    def flat(self, tensors: dict) -> np.ndarray:
        return self.stacked.flatten({n: t[None] for n, t in tensors.items()})[0].cpu().numpy()

    def flat_buffers(self, tensors: dict) -> np.ndarray:
        if not self.stacked.buffer_slots:
            return np.zeros(0, np.float32)
        return self.stacked.flatten_buffers({n: t[None] for n, t in tensors.items()})[0].cpu().numpy()

    def mask_flat(self, masks: dict[str, torch.Tensor]) -> np.ndarray:
        ones = {n: torch.ones(s.shape, dtype=torch.float32) for n, s in
                zip(self.stacked.param_names, self.stacked.param_slots)}
        for n, m in masks.items():
            ones[n] = m.float()
        return self.flat(ones) > 0.5


def provenance(device: torch.device, cfg) -> dict:
    import xarray
    import zarr

    import stabilitylab

    name = str(device)
    if device.type == "cuda":
        name += f" ({torch.cuda.get_device_name(device)})"
    return {
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {
            "stabilitylab": stabilitylab.__version__, "torch": torch.__version__,
            "zarr": zarr.__version__, "xarray": xarray.__version__, "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "device": name,
        "seed": cfg.study.seed,
        "study_id": study_id(cfg),
        "config": config_to_dict(cfg),
    }


# -- running one task -----------------------------------------------------------------------

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


def _pretrain(ctx: TaskContext, writer, progress, run_done) -> dict:
    rewinds = ctx.resolved.rewinds
    if writer.dense_complete():
        progress(ctx.resolved.total_steps)
        run_done(DENSE, "done")
        return {DENSE: "done"}
    points: dict[int, RewindPoint] = {}

    def on_snapshot(step, params, buffers, optimizer):
        points[step] = RewindPoint(
            {n: t[0].detach().cpu().clone() for n, t in params.items()},
            {n: t[0].detach().cpu().clone() for n, t in buffers.items()},
            {s: {n: t.cpu() for n, t in d.items()} for s, d in optimizer.state_of(0).items()},
        )

    plan = GroupPlan(runs=[DENSE], start_steps=[0], data_seeds=[ctx.seeds.data_order(0)],
                     params=ctx.init_params, buffers=ctx.init_buffers,
                     snapshot_steps=rewinds, seed=task_seed(ctx.seeds.master, DENSE_TASK))
    result = train_group(ctx.stacked, plan, ctx.data, ctx.resolved,
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


def read_rewind(ctx: TaskContext, writer, k: int) -> RewindPoint:
    params = ctx.unflat(torch.from_numpy(np.asarray(writer.read_rewind_state("weights", k))))
    state = {s: ctx.unflat(torch.from_numpy(np.asarray(writer.read_rewind_state(s, k))))
             for s in ctx.opt_state_names}
    buffers = {}
    if ctx.stacked.buffer_slots:
        flat = torch.from_numpy(np.asarray(writer.read_rewind_buffers(k)))[None]
        buffers = {n: t[0] for n, t in ctx.stacked.unflatten_buffers(flat).items()}
    return RewindPoint(params, buffers, state)


def imp_masks(ctx: TaskContext, writer, level: int, k: int) -> dict[str, torch.Tensor]:
    """The IMP masks of ``level`` at rewind ``k``: everything kept at the first level, then
    each level prunes the previous level's replica-0 final weights (read from the store)."""
    T = ctx.resolved.total_steps
    masks = {n: torch.ones(ctx.slot(n).shape, dtype=torch.bool) for n in ctx.prunable}
    for previous in [lv for lv in ctx.resolved.levels if lv < level]:
        final = torch.from_numpy(np.asarray(writer.read_weights(("imp", previous, k, 0), T)))
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
    run_masks: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
    rewind: dict[int, RewindPoint] = {}
    for k in task.rewinds:
        m = imp_masks(ctx, writer, level, k)
        rewind[k] = read_rewind(ctx, writer, k)
        run_masks[("imp", k)] = m
        run_masks[("reinit", k)] = m
        g = generator(ctx.seeds.random_prune(level, k))
        run_masks[("random_prune", k)] = random_masks_like(m, g) if level > 0 else m
    kinds_here = sorted({r[0] for r in runs})
    for kind in kinds_here:
        for k in task.rewinds:
            m = run_masks[(kind, k)]
            writer.write_mask(kind, level, k, ctx.mask_flat(m), density(m))
    reinit_model = ctx.build(ctx.seeds.reinit) if "reinit" in kinds_here else None
    plan = _group_plan(ctx, task, runs, rewind, run_masks, reinit_model)
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


def _group_plan(ctx: TaskContext, task: Task, runs, rewind, run_masks, reinit_model) -> GroupPlan:
    restore = ctx.cfg.training.restore_optimizer
    params, buffers, masks, states, opt_steps, seeds, starts = [], [], [], [], [], [], []
    if reinit_model is not None:
        rp, rb = ctx.stacked.stack([reinit_model])
    for kind, _level, k, replica in runs:
        point = rewind[k]
        m = run_masks[(kind, k)]
        if kind == "reinit":
            params.append({n: t[0] for n, t in rp.items()})
            buffers.append({n: t[0] for n, t in rb.items()})
            states.append(None)
            opt_steps.append(0)
        else:
            params.append(point.params)
            buffers.append(point.buffers)
            states.append(point.opt_state if restore else None)
            opt_steps.append(k if restore else 0)
        masks.append(m)
        seeds.append(ctx.seeds.data_order(replica))
        starts.append(k)
    names = ctx.stacked.param_names
    stacked_params = {n: torch.stack([p[n] for p in params]) for n in names}
    stacked_buffers = {n: torch.stack([b[n] for b in buffers]) for n in ctx.stacked.buffer_names}
    stacked_masks = {n: torch.stack([m[n] for m in masks]).float() for n in ctx.prunable} \
        if task.level > 0 else {}
    opt_state = None
    if ctx.opt_state_names and any(s is not None for s in states):
        opt_state = {}
        for s in ctx.opt_state_names:
            opt_state[s] = {}
            for n in names:
                rows = []
                for r, st in enumerate(states):
                    if st is not None:
                        rows.append(st[s][n])
                    elif s == "slow":
                        rows.append(params[r][n])
                    else:
                        rows.append(torch.zeros_like(params[r][n]))
                opt_state[s][n] = torch.stack(rows)
    return GroupPlan(runs=runs, start_steps=starts, data_seeds=seeds, params=stacked_params,
                     buffers=stacked_buffers, masks=stacked_masks, opt_state=opt_state,
                     opt_steps=opt_steps, seed=task_seed(ctx.seeds.master, task))


def _metrics(result, r) -> dict:
    return {name: getattr(result, name)[r] for name in (
        "train_loss", "train_acc", "test_loss", "test_acc", "train_eval_loss", "train_eval_acc")}


def _finals(result, r) -> dict:
    return {"test_acc": float(result.test_acc[r, -1]), "test_loss": float(result.test_loss[r, -1]),
            "train_eval_acc": float(result.train_eval_acc[r, -1]),
            "train_eval_loss": float(result.train_eval_loss[r, -1])}


# -- the task as a cluster sees it ----------------------------------------------------------

_CONTEXTS: dict[tuple[str, str], TaskContext] = {}
_CONTEXT_LOCK = threading.Lock()
_RUN_LOCK = threading.Lock()  # one task at a time per process (global torch RNG, one device)


def context_for(cfg_dict: dict, device: str | None) -> TaskContext:
    """A :class:`TaskContext` for this study, reused by later tasks in this process."""
    key = (json.dumps(cfg_dict, sort_keys=True), str(device))
    with _CONTEXT_LOCK:
        ctx = _CONTEXTS.get(key)
        if ctx is None:
            _CONTEXTS.clear()  # keep one study's data on the device, not every study's
            ctx = _CONTEXTS[key] = TaskContext(config_from_dict(cfg_dict), device)
        return ctx


def open_task_writer(url, cfg, *, storage_options: dict | None = None):
    """A writer on an existing store for one task: no attribute writes, no structure checks
    (the driver did those), so concurrent tasks touch only their own chunks."""
    from stabilitylab.errors import StoreError
    from stabilitylab.store import StudyWriter
    from stabilitylab.store import schema as S

    where = S.describe(url)
    group = S.open_root(url, mode="r+", storage_options=storage_options, use_consolidated=False)
    attrs = dict(group.attrs)
    S.check_ours(attrs, where)
    if attrs.get("study_id") != study_id(cfg):
        raise StoreError(f"store at {where} holds study {attrs.get('study_id')}, not {study_id(cfg)}")
    return StudyWriter(group, where)


def train_task(url, cfg_dict: dict, level: int | None, rewinds=(), *, device: str | None = None,
               storage_options: dict | None = None, after=None) -> dict:
    """Run one task against the store at ``url`` (which must exist): open it, train, close.

    This is what ``record_distributed`` submits. ``cfg_dict`` is ``config_to_dict(cfg)``;
    ``after`` is ignored (it carries the futures of the tasks this one depends on).
    Returns ``{"task": name, "statuses": {run: status}}``.
    """
    task = Task(None if level is None else int(level), tuple(int(k) for k in rewinds))
    ctx = context_for(cfg_dict, device)
    with _RUN_LOCK:
        writer = open_task_writer(url, ctx.cfg, storage_options=storage_options)
        try:
            statuses = run_task(ctx, writer, task)
        except BaseException:
            with contextlib.suppress(Exception):  # the task's own error is the one to report
                writer.close(consolidate=False)
            raise
        writer.close(consolidate=False)
    return {"task": task.name, "statuses": {"/".join(map(str, r)): s for r, s in statuses.items()}}


def probe_task(cfg_dict: dict, device: str | None = None) -> dict:
    """Build the study's context where tasks will run (data, model, device) and return what
    a new store is created with: ``StudyWriter.create`` keyword arguments."""
    return context_for(cfg_dict, device).store_spec()
