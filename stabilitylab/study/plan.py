"""What a study trains: run keys, groups, and the seeds each run uses.

A run key is ``(kind, level, rewind, replica)``; see docs/store-schema.md. All
runs of one level train together as one group (one vectorized model): level L+1
needs level L's final weights for its masks, so levels are sequential, while
rewind points, replicas and controls of a level are independent.
"""

from __future__ import annotations

from dataclasses import dataclass

from stabilitylab.train.seeds import derive_seed

KINDS = ("imp", "random_prune", "reinit")
DENSE = ("dense", 0, 0, 0)  # the pretraining run's key


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

    def random_prune(self, level: int, rewind: int) -> int:
        return derive_seed(self.master, "random_prune", level, rewind)

    def group(self, level: int) -> int:
        return derive_seed(self.master, "group", level)


def level_runs(resolved, level: int) -> list[tuple]:
    """The run keys trained in ``level``'s group, in a fixed order."""
    s = resolved.config.study
    kinds = ["imp"]
    if level in resolved.control_levels:
        kinds += [k for k in KINDS[1:] if k in s.controls]
    return [(kind, level, k, r) for kind in kinds for k in resolved.rewinds for r in range(s.replicas)]


def all_runs(resolved) -> list[tuple]:
    return [run for level in resolved.levels for run in level_runs(resolved, level)]


def replica_steps(resolved, runs: list[tuple]) -> int:
    """Training steps the runs take (for progress totals)."""
    return sum(resolved.total_steps - run[2] for run in runs)
