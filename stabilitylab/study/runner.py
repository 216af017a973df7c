"""``record``: train a whole instability study and write every trajectory to the store.

The work is a fixed sequence of tasks (:mod:`stabilitylab.study.plan`), each run by
:func:`~stabilitylab.study.execution.run_task` in a
:class:`~stabilitylab.study.context.TaskContext`:

1. dense pretraining from init to T under data order u_0, snapshotting W_k, the
   BN buffers and the optimizer state at every rewind point k;
2. for each level L (0 = dense copies) and each rewind point k, one batched group
   (``rewinds_per_task`` puts several rewind points in one group):
   the R IMP copies rewound to k (masks from level L-1's replica-0 final weights at
   k, read back from the store) and, at control levels, the controls
   (:mod:`stabilitylab.study.kinds`).

:func:`record_study` runs these tasks in this process, in order;
:func:`stabilitylab.study.cluster.record_distributed` runs the very same tasks on a
Dask cluster, so both write the same store (bit for bit on CPU).

Resume works per task: a task whose runs are all done is skipped, an unfinished
one is retrained from its (stored, exact) inputs, so a resumed store equals an
uninterrupted one bit for bit on CPU.
"""

from __future__ import annotations

from stabilitylab.config import study_id
from stabilitylab.study.context import TaskContext
from stabilitylab.study.execution import run_task
from stabilitylab.study.plan import all_runs, check_rewinds_per_task, plan_tasks


class StudyRunner:
    """Trains one study into one store. Use :func:`record_study`."""

    def __init__(self, cfg, out, *, resume=False, device=None, progress=None,
                 storage_options=None, rewinds_per_task: int | None = 0,
                 max_store_gb: float | None = None):
        from stabilitylab.store import StudyWriter

        self.rewinds_per_task = check_rewinds_per_task(rewinds_per_task)
        # Sizes first (from the config alone), then the data (read-only): a study that
        # cannot fit, or a missing dataset, stops us before anything is written.
        half = check_resources(cfg, out, resume=resume, device=device,
                               storage_options=storage_options,
                               rewinds_per_task=self.rewinds_per_task, max_store_gb=max_store_gb)
        self.ctx = TaskContext(cfg, device)
        self.resolved = self.ctx.resolved
        self.device = self.ctx.device
        self.runs = all_runs(self.resolved)
        if resume and not half:
            self.writer = StudyWriter.resume(out, self.resolved, study_id=study_id(cfg),
                                             storage_options=storage_options,
                                             optimizer_state_names=self.ctx.opt_state_names)
        else:  # new, or completing a half-created store (which creation replaces)
            self.writer = StudyWriter.create(out, self.resolved, storage_options=storage_options,
                                             **self.ctx.store_spec())
        self.progress = progress

    def run(self) -> None:
        try:
            from stabilitylab.progress import Progress

            tasks = plan_tasks(self.resolved, self.rewinds_per_task)
            bar = Progress(sum(t.replica_steps(self.resolved) for t in tasks), desc="record",
                           unit="replica-steps", enabled=self.progress)
            total_runs = 1 + len(self.runs)  # the dense pretraining run counts too
            done_runs = 0

            def run_done(run, status):  # counted as each run's status is committed
                nonlocal done_runs
                done_runs += 1
                bar.set(runs=f"{done_runs}/{total_runs}")

            for task in tasks:
                bar.set(level="dense" if task.level is None else task.level,
                        runs=f"{done_runs}/{total_runs}")
                run_task(self.ctx, self.writer, task, on_progress=bar.update,
                         on_run_done=run_done)
            bar.close()
        finally:
            self.writer.close(consolidate=True)


def record_study(cfg, out, *, resume: bool = False, device: str | None = None,
                 progress: bool | None = None, storage_options: dict | None = None,
                 rewinds_per_task: int | None = 0, max_store_gb: float | None = None) -> str:
    """Train and record the study ``cfg`` into the store at ``out``; return ``out``.

    ``rewinds_per_task``: rewind points trained as one batched group per level (default
    0 = the whole level, the widest groups: fastest on one machine). See
    :mod:`stabilitylab.study.plan`. ``max_store_gb``: refuse a study whose estimated
    (uncompressed) store is larger (default
    :data:`stabilitylab.study.estimate.DEFAULT_MAX_STORE_GB`).
    """
    StudyRunner(cfg, out, resume=resume, device=device, progress=progress,
                storage_options=storage_options, rewinds_per_task=rewinds_per_task,
                max_store_gb=max_store_gb).run()
    return str(out)


def check_resources(cfg, out, *, resume: bool, device=None, storage_options=None,
                    rewinds_per_task: int | None = 0, max_store_gb: float | None = None) -> bool:
    """Estimate the study from its config and refuse (one line) what cannot fit; return
    whether ``out`` holds a half-created store (which ``record`` and ``--resume`` replace).
    Nothing is written."""
    from stabilitylab.config import validate
    from stabilitylab.store.schema import creation_state
    from stabilitylab.study.estimate import check_limits, estimate

    resolved = validate(cfg)
    est = estimate(resolved, rewinds_per_task)
    half = creation_state(out, storage_options) == "half"
    dev = str(device or cfg.study.device)
    if dev == "auto":
        import torch

        dev = "cuda" if torch.cuda.is_available() else "cpu"
    check_limits(est, out, device=dev, max_store_gb=max_store_gb, new_store=not resume or half)
    if not resume:
        from stabilitylab.store.create import check_target

        check_target(out, storage_options)  # a taken or unusable --out: before loading data
    return half


def nothing_to_resume(cfg, out, *, storage_options=None) -> bool:
    """Whether ``out`` already holds this study, complete and valid: ``--resume`` has
    nothing to do. False for anything else (resume then says what is wrong, or repairs)."""
    from stabilitylab.core.errors import StabilityLabError
    from stabilitylab.store import schema as S
    from stabilitylab.store import validate

    try:
        with S.quiet():
            group = S.open_root(out, mode="r", storage_options=storage_options)
        attrs = dict(group.attrs)
        if attrs.get("study_id") != study_id(cfg) or attrs.get("complete") is not True \
                or group.metadata.consolidated_metadata is None:  # (killed while consolidating)
            return False
        validate(out, storage_options=storage_options)
    except StabilityLabError:
        return False
    return True
