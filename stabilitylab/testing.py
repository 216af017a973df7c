"""Public helpers for testing code built on stabilitylab (in the spirit of ``xarray.testing``).

Two kinds of study, both small enough for a unit test:

- :func:`make_fake_store`: a valid, complete store written directly (no model, no data, no
  training) in well under a second; it returns the exact values it wrote, for tests of
  readers and writers. Its parameter layout belongs to no model, so it cannot be analysed.
- :func:`make_analyzed_study`: a real tiny study (MNIST-1D, a 4-channel conv net, 60
  iterations) recorded by :func:`stabilitylab.record_study` and analysed by the real
  ``analyze``, so an analysis in a test has exactly the shape ``analyze`` writes. A few
  seconds on one core.

    from stabilitylab.testing import make_analyzed_study
    path = make_analyzed_study(tmp_path / "tiny.zarr", diverged=[("reinit", 2, 0, 2)])
    study, analysis = stabilitylab.open_study(path), stabilitylab.open_analysis(path)

The dataset is generated offline into ``$STABILITYLAB_DATA`` (or the default data root).
"""

from __future__ import annotations

from stabilitylab.store.testing import FakeStudy, fake_layout, fake_resolved, make_fake_store
from stabilitylab.study.plan import all_runs

__all__ = ["TINY", "FakeStudy", "fake_layout", "fake_resolved", "make_analyzed_study",
           "make_fake_store", "planned_runs", "tiny_config"]

#: Config overrides of the tiny study: levels 0-2 (controls at level 2), rewinds 0 and 10,
#: 2 replicas, T = 60 iterations recorded every 5.
TINY = (
    "training.steps='60it'", "study.rewinds=['0it','10it']", "study.replicas=2",
    "pruning.levels=2", "data.num_samples=500", "model.channels=4",
    "training.eval_every='30it'", "training.log_every='5it'", "study.record='every:5'",
)

#: The runs a study trains (the planner's own list: every level's group, in order).
planned_runs = all_runs


def tiny_config(*extra: str):
    """The tiny study's config, with further ``section.key=value`` overrides."""
    import stabilitylab

    return stabilitylab.load_config(None, [*TINY, *extra])


def make_analyzed_study(path, *extra: str, measures=None, alphas: int = 30, n_boot: int = 200,
                        diverged=(), incomplete=(), diverged_step: int | None = None):
    """Record the tiny study (``extra`` overrides on top of :data:`TINY`) at ``path``, mark
    some runs, and analyse it with the real ``analyze``; returns ``path``.

    ``diverged`` / ``incomplete``: run keys ``(kind, level, rewind, replica)`` whose status is
    set to diverged (at ``diverged_step``, default the last rewind point + 1) or incomplete
    after recording, as a crash or a NaN loss would leave them; ``analyze`` then skips them.
    ``measures`` and ``alphas`` are passed to ``analyze`` (a subset or a coarse grid keeps a
    test fast).
    """
    import numpy as np
    import zarr

    import stabilitylab
    from stabilitylab.analysis.run import analyze_store
    from stabilitylab.core.keys import STATUS_DIVERGED, STATUS_INCOMPLETE

    path = str(path)
    stabilitylab.record_study(tiny_config(*extra), path, progress=False)
    if diverged or incomplete:
        root = zarr.open_group(path, mode="r+")
        coords = {d: [v.item() if hasattr(v, "item") else v for v in np.asarray(root[d][:])]
                  for d in ("kind", "level", "rewind", "replica")}
        status, when = root["status"], root["diverged_step"]
        for runs, code in ((diverged, STATUS_DIVERGED), (incomplete, STATUS_INCOMPLETE)):
            for run in runs:
                idx = tuple(coords[d].index(v) for d, v in zip(coords, run))
                status[idx] = code
                if code == STATUS_DIVERGED:
                    when[idx] = diverged_step if diverged_step is not None else run[2] + 1
    analyze_store(path, measures=measures, alphas=alphas, n_boot=n_boot, progress=False)
    return path
