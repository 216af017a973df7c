"""Real tiny studies for the report tests, recorded and analysed once per test session.

``full``: levels 0-2 with both controls at level 2, rewinds 0/10/20, 3 replicas (3 pairs),
one diverged control run and one incomplete IMP run (both skipped by analyze).
``small``: one level, no controls, 2 replicas (a single pair), rewinds 0/10/40, analysed
without weight matching or gradient noise (so ``aligned_instability`` is all NaN).
"""

from stabilitylab.testing import make_analyzed_study

DIVERGED = ("reinit", 2, 0, 2)
DIVERGED_STEP = 34
INCOMPLETE = ("imp", 2, 20, 2)
SPECS = {
    "full": {"extra": ("study.rewinds=['0it','10it','20it']", "study.replicas=3",
                       "study.name='tiny-report'"),
             "diverged": [DIVERGED], "incomplete": [INCOMPLETE], "diverged_step": DIVERGED_STEP,
             "alphas": 11},
    "small": {"extra": ("pruning.levels=1", "study.rewinds=['0it','10it','40it']",
                        "study.controls=[]"),
              "measures": ["trajectory", "interpolation", "replica"], "alphas": 5},
}
_made: dict[str, object] = {}


def study_path(tmp_path_factory, name: str):
    """The store of study ``name`` (read-only: copy it before changing it)."""
    if name not in _made:
        spec = dict(SPECS[name])
        path = tmp_path_factory.mktemp(f"report-{name}") / f"{name}.zarr"
        make_analyzed_study(path, *spec.pop("extra"), **spec)
        _made[name] = path
    return _made[name]


def study_and_analysis(tmp_path_factory, name: str):
    """(study, analysis) Datasets of study ``name``, loaded into memory."""
    import stabilitylab

    path = study_path(tmp_path_factory, name)
    return stabilitylab.open_study(path), stabilitylab.open_analysis(path).load()
