"""What a study trains: run keys, tasks and their dependencies, and the seeds each run uses.

A run key is a :class:`~stabilitylab.core.keys.RunKey` ``(kind, level, rewind,
replica)``; see docs/store-schema.md. A study is trained as a fixed sequence of tasks
(:func:`plan_tasks`):

1. ``dense``: the pretraining run from init to T under data order u_0; it writes
   W_k, the BN buffers and the optimizer state at every rewind point k;
2. one task per (level L, rewind points ks): every run of level L rewound to a k in ks
   (the R IMP copies and, at control levels, the controls; see
   :mod:`stabilitylab.study.kinds`), trained together as one batched group.

Level L+1 needs level L's final weights for its masks, so levels are sequential, while
rewind points, replicas and controls of a level are independent: task (L, ks) depends on
(L-1, ks) only, and level 0 on ``dense`` (:func:`dependencies`).

``rewinds_per_task`` (default 0: a whole level per task) sets how many rewind points share
a task: wider groups batch better (the default study records in ~2.5 min on 2 cores as
whole levels, over 7 min as one task per rewind point), narrower ones spread over more
workers. The batched engine gives equal per-replica numbers across *different* group
compositions only up to float rounding, so pass the same value to the local and the
cluster path to compare stores bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

from stabilitylab.core.keys import RunKey
from stabilitylab.core.seeds import derive_seed

DENSE = RunKey("dense", 0, 0, 0)  # the pretraining run's key


@dataclass(frozen=True)
class Seeds:
    """Every seed of a study, derived from ``study.seed``."""

    master: int

    @property
    def init(self) -> int:
        return derive_seed(self.master, "init")

    @property
    def reinit(self) -> int:
        return derive_seed(self.master, "reinit")

    def data_order(self, replica: int) -> int:
        """Order u_replica; the pretraining run uses u_0."""
        return derive_seed(self.master, "order", replica)

    def kind(self, kind: str, level: int, rewind: int, *more) -> int:
        """The seed of kind ``kind``'s own random choices at (level, rewind[, more...])."""
        return derive_seed(self.master, kind, level, rewind, *more)

    def group(self, level: int) -> int:
        return derive_seed(self.master, "group", level)


def level_runs(resolved, level: int) -> list[RunKey]:
    """The run keys trained in ``level``'s group, in a fixed order: kinds in registry order
    (controls only at control levels, and only those in ``study.controls``), then rewind
    points, then replicas."""
    from stabilitylab.study.kinds import kinds_at

    s = resolved.config.study
    return [RunKey(kind, level, k, r) for kind in kinds_at(resolved, level)
            for k in resolved.rewinds for r in range(s.replicas)]


def all_runs(resolved) -> list[RunKey]:
    return [run for level in resolved.levels for run in level_runs(resolved, level)]


def replica_steps(resolved, runs: list[RunKey]) -> int:
    """Training steps the runs take (for progress totals)."""
    return sum(resolved.total_steps - RunKey(*run).rewind for run in runs)


# -- tasks ------------------------------------------------------------------------------

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

    def runs(self, resolved) -> list[RunKey]:
        if self.level is None:
            return [DENSE]
        ks = set(self.rewinds)
        return [run for run in level_runs(resolved, self.level) if run.rewind in ks]

    def replica_steps(self, resolved) -> int:
        """Training steps this task takes (progress totals)."""
        if self.level is None:
            return resolved.total_steps
        return replica_steps(resolved, self.runs(resolved))


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
        from stabilitylab.core.errors import ConfigError

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
