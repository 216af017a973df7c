"""study.perturb_reference and the init-scale perturbation modes, recorded end to end."""

import numpy as np
import pytest
from conftest import tiny_config

import stabilitylab
from stabilitylab.core.errors import ConfigError
from stabilitylab.study.resolve import resolve_study
from stabilitylab.train.perturb import init_scales

BASE = ("study.noise=['data_order','perturb']", "study.noise_levels=[0]", "pruning.levels=0",
        "study.controls=[]", "study.rewinds=['10it']")


def _record(tmp_path, *extra):
    out = tmp_path / "p.zarr"
    stabilitylab.record_study(tiny_config(*BASE, *extra), str(out), progress=False)
    return stabilitylab.open_study(out)


def _starts(ds):
    at = {"level": 0, "rewind": 10, "step": 10}
    w_k = ds.weights.sel(kind="imp", replica=0, **at).values
    return w_k, [ds.weights.sel(kind="perturb", replica=r, **at).values
                 for r in ds.replica.values]


def test_reference_replica_starts_at_w_k_and_the_others_do_not(tmp_path):
    ds = _record(tmp_path, "study.perturb_reference=true", "study.perturbation='batch'",
                 "study.epsilon=1e-3")
    w_k, starts = _starts(ds)
    assert np.array_equal(starts[0], w_k)  # the unperturbed copy
    for w in starts[1:]:
        assert not np.array_equal(w, w_k)
        # a batch step as large as init-scale noise of epsilon: far below |W_k|, above 0
        assert 0 < np.linalg.norm(w - w_k) < 1e-2 * np.linalg.norm(w_k)


def test_default_perturbs_every_replica(tmp_path):
    ds = _record(tmp_path)
    w_k, starts = _starts(ds)
    assert all(not np.array_equal(w, w_k) for w in starts)


def test_single_weight_in_a_chosen_module_moves_one_weight_of_it(tmp_path):
    import torch

    from stabilitylab.study.context import TaskContext

    ds = _record(tmp_path, "study.perturbation='single_weight'", "study.perturb_modules=['fc']",
                 "study.epsilon=0.01")
    w_k, starts = _starts(ds)
    ctx = TaskContext(resolve_study(tiny_config(*BASE)), device="cpu")
    names = ctx.unflat(torch.from_numpy(np.arange(w_k.size, dtype=np.float64)))
    name_of = {int(i): n for n, t in names.items() for i in t.flatten().tolist()}
    sigma = init_scales(ctx.init_weights)
    for w in starts:
        diff = np.flatnonzero(w != w_k)
        assert diff.size == 1 and name_of[int(diff[0])].startswith("fc.")
        step = abs(float(w[diff[0]]) - float(w_k[diff[0]]))
        assert step == pytest.approx(0.01 * sigma[name_of[int(diff[0])]], rel=1e-3)


@pytest.mark.parametrize("override, field", [
    ("study.perturbation='wiggle'", "study.perturbation"),
    ("study.perturb_fraction=0", "study.perturb_fraction"),
    ("study.perturb_fraction=0.5", "study.perturb_fraction"),  # gaussian: not applicable
    ("study.perturb_modules=['nope']", "study.perturb_modules"),
])
def test_bad_perturbation_settings_are_one_line_errors(override, field):
    with pytest.raises(ConfigError) as err:
        resolve_study(tiny_config(override))
    assert "\n" not in str(err.value) and field in str(err.value)


def test_init_scales_of_the_tiny_model_are_positive():
    from stabilitylab.study.context import TaskContext

    ctx = TaskContext(resolve_study(tiny_config()), device="cpu")
    scales = init_scales(ctx.init_weights)
    assert all(v > 0 for v in scales.values())
