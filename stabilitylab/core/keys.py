"""Typed keys of a study: one run, and the status codes a store keeps per run."""

from __future__ import annotations

from typing import NamedTuple

STATUS_ABSENT, STATUS_INCOMPLETE, STATUS_COMPLETE, STATUS_DIVERGED = 0, 1, 2, 3
STATUS_CODES = {"absent": STATUS_ABSENT, "incomplete": STATUS_INCOMPLETE,
                "complete": STATUS_COMPLETE, "diverged": STATUS_DIVERGED}
DONE = (STATUS_COMPLETE, STATUS_DIVERGED)


class RunKey(NamedTuple):
    """One run of a study: its kind, IMP level, rewind point (a step) and replica.

    A tuple subclass, so it compares and hashes like ``(kind, level, rewind, replica)`` and
    plain tuples work wherever a run key is expected.
    """

    kind: str
    level: int
    rewind: int
    replica: int
