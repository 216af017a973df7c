"""stabilitylab.testing: the public test helpers plan runs as the trainer does."""

import pytest

import stabilitylab.testing as T
from stabilitylab.store import testing as store_testing
from stabilitylab.study.plan import all_runs


@pytest.mark.parametrize("controls", [(), ("random_prune",), ("random_prune", "reinit")])
@pytest.mark.parametrize("levels", [0, 2])
def test_planned_runs_are_the_planners(controls, levels):
    res = T.fake_resolved(levels=levels, rewinds=(0, 10, 20), replicas=3, controls=controls)
    assert T.planned_runs is all_runs
    # the fake store writes the same set of runs as the trainer plans (in its own order)
    assert sorted(store_testing.planned_runs(res)) == sorted(all_runs(res))


def test_public_names():
    assert T.make_fake_store is store_testing.make_fake_store
    cfg = T.tiny_config("study.replicas=3")
    assert cfg.study.replicas == 3 and cfg.training.steps == "60it"
    assert set(T.__all__) <= set(dir(T))
