"""``record``: train a whole instability study and write every trajectory to the store.

The work is a fixed sequence of tasks (see :mod:`stabilitylab.study.tasks`):

1. dense pretraining from init to T under data order u_0, snapshotting W_k, the
   BN buffers and the optimizer state at every rewind point k;
2. for each level L (0 = dense copies) and each rewind point k, one batched group
   (``rewinds_per_task`` puts several rewind points in one group):
   the R IMP copies rewound to k (masks from level L-1's replica-0 final weights at
   k, read back from the store) and, at control levels, the random-pruning and
   reinit controls.

:func:`record_study` runs these tasks in this process, in order;
:func:`stabilitylab.distributed.record_distributed` runs the very same tasks on a
Dask cluster, so both write the same store (bit for bit on CPU).

Resume works per task: a task whose runs are all done is skipped, an unfinished
one is retrained from its (stored, exact) inputs, so a resumed store equals an
uninterrupted one bit for bit on CPU.
"""

from __future__ import annotations

from stabilitylab.config import study_id
from stabilitylab.study.plan import all_runs
from stabilitylab.study.tasks import (  # noqa: F401 - re-exported for callers of the old API
    RewindPoint,
    TaskContext,
    plan_tasks,
    provenance,
    run_task,
)


class StudyRunner:
    """Trains one study into one store. Use :func:`record_study`."""

    def __init__(self, cfg, out, *, resume=False, device=None, progress=None,
                 storage_options=None, rewinds_per_task: int | None = 0):
        from stabilitylab.store import StudyWriter
        from stabilitylab.study.tasks import check_rewinds_per_task

        self.rewinds_per_task = check_rewinds_per_task(rewinds_per_task)
        # Data first (read-only): a missing dataset must stop us before anything is written.
        self.ctx = TaskContext(cfg, device)
        self.cfg = cfg
        self.resolved = self.ctx.resolved
        self.device = self.ctx.device
        self.seeds = self.ctx.seeds
        self.stacked = self.ctx.stacked
        self.prunable = self.ctx.prunable
        self.runs = all_runs(self.resolved)
        if resume:
            self.writer = StudyWriter.resume(out, self.resolved, study_id=study_id(cfg),
                                             storage_options=storage_options)
        else:
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
                 rewinds_per_task: int | None = 0) -> str:
    """Train and record the study ``cfg`` into the store at ``out``; return ``out``.

    ``rewinds_per_task``: rewind points trained as one batched group per level (default
    0 = the whole level, the widest groups: fastest on one machine). See
    :mod:`stabilitylab.study.tasks`.
    """
    StudyRunner(cfg, out, resume=resume, device=device, progress=progress,
                storage_options=storage_options, rewinds_per_task=rewinds_per_task).run()
    return str(out)
