"""Noise kinds (perturb copies) and pruning-at-init controls, recorded end to end."""

import numpy as np
import pytest
from conftest import tiny_config

import stabilitylab
from stabilitylab.core import keys as K
from stabilitylab.core.errors import ConfigError
from stabilitylab.store import schema as S
from stabilitylab.study.plan import all_runs, level_runs
from stabilitylab.study.resolve import resolve_study

NOISE = "study.noise=['data_order','perturb','data_order+perturb']"
PAI_KINDS = ("magnitude_init", "snip", "grasp", "synflow", "shuffle")
PAI = "study.controls=['random_prune','magnitude_init','snip','grasp','synflow','shuffle']"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("noise") / "s.zarr"
    cfg = tiny_config(NOISE, "study.noise_levels=[0]", PAI)
    stabilitylab.record_study(cfg, str(out), progress=False)
    return stabilitylab.open_study(out)


def test_the_store_lists_the_kinds_it_trains_after_the_three_it_always_has(study):
    assert tuple(study.kind.values) == (*S.KINDS, "perturb", "data_order+perturb", *PAI_KINDS)
    done = (study.status == K.STATUS_COMPLETE)
    assert bool(done.sel(kind="perturb", level=0).all())
    assert not bool(done.sel(kind="perturb", level=[1, 2]).any())  # noise_levels = [0]
    for kind in PAI_KINDS:
        assert bool(done.sel(kind=kind, level=2).all())
        assert not bool(done.sel(kind=kind, level=[0, 1]).any())


def test_default_study_keeps_the_three_kind_coordinate():
    resolved = resolve_study(tiny_config())
    assert resolved.kinds == S.KINDS and resolved.noise_levels == ()
    assert {r.kind for r in all_runs(resolved)} == {"imp", "random_prune", "reinit"}


def test_noise_levels_default_to_every_level():
    resolved = resolve_study(tiny_config("study.noise=['data_order','perturb']"))
    assert resolved.noise_levels == (0, 1, 2)
    assert {r.kind for r in level_runs(resolved, 1)} == {"imp", "perturb"}


def test_perturb_copies_start_epsilon_away_from_w_k_with_replica_0s_data_order(study):
    k = 10
    at = {"level": 0, "rewind": k, "step": k}
    w_k = study.weights.sel(kind="imp", replica=0, **at).values.astype(np.float64)
    for kind in ("perturb", "data_order+perturb"):
        starts = study.weights.sel(kind=kind, **at).values.astype(np.float64)
        rel = np.linalg.norm(starts - w_k, axis=-1) / np.linalg.norm(w_k)
        assert np.allclose(rel, 1e-6, rtol=0.1), (kind, rel)
        assert not np.array_equal(starts[0], starts[1])  # each replica its own perturbation
    # perturb: every copy under u_0, so its first logged loss equals imp replica 0's to
    # rounding; data_order+perturb copy 1 follows u_1 like imp replica 1
    loss = study.train_loss.sel(level=0, rewind=k)
    first = loss.log_step >= k
    p = loss.sel(kind="perturb").isel(log_step=np.flatnonzero(first)[0]).values
    i = loss.sel(kind="imp").isel(log_step=np.flatnonzero(first)[0]).values
    assert np.allclose(p, i[0], rtol=1e-4) and not np.isclose(i[0], i[1], rtol=1e-4)


def test_pai_masks_keep_the_imp_density_and_differ_from_it(study):
    sel = {"level": 2}
    imp = study.masks.sel(kind="imp", **sel).values
    dens = study.density.sel(**sel)
    for kind in PAI_KINDS:
        np.testing.assert_allclose(dens.sel(kind=kind).values, dens.sel(kind="imp").values,
                                   atol=1e-3)
        assert not np.array_equal(study.masks.sel(kind=kind, **sel).values, imp), kind


def test_shuffle_keeps_each_layers_count(study):
    layout = {e["name"]: e for e in study.attrs["param_layout"]} \
        if "param_layout" in study.attrs else None
    imp = study.masks.sel(kind="imp", level=2, rewind=0).values
    shuf = study.masks.sel(kind="shuffle", level=2, rewind=0).values
    assert imp.sum() == shuf.sum()
    if layout:
        for e in layout.values():
            sl = slice(e["offset"], e["offset"] + int(np.prod(e["shape"])))
            assert imp[sl].sum() == shuf[sl].sum(), e["name"]


def test_pruned_weights_stay_zero_in_the_controls(study):
    for kind in PAI_KINDS:
        m = study.masks.sel(kind=kind, level=2, rewind=0).values
        w = study.weights.sel(kind=kind, level=2, rewind=0, step=60).values
        assert np.all(w[:, ~m] == 0), kind


@pytest.mark.parametrize("override, field", [
    ("study.noise=['perturb']", "study.noise"),
    ("study.noise=['data_order','chaos']", "study.noise"),
    ("study.perturbation='flip'", "study.perturbation"),
    ("study.epsilon=0", "study.epsilon"),
    ("study.noise_levels=[5]", "study.noise_levels"),
    ("pruning.pai_from='later'", "pruning.pai_from"),
])
def test_bad_noise_settings_are_one_line_errors(override, field):
    with pytest.raises(ConfigError) as err:
        resolve_study(tiny_config(override))
    assert "\n" not in str(err.value) and field in str(err.value)


def test_bit_flip_perturbation_moves_one_weight_by_one_ulp(tmp_path):
    out = tmp_path / "b.zarr"
    cfg = tiny_config("study.noise=['data_order','perturb']", "study.noise_levels=[0]",
                      "study.perturbation='bit_flip'", "pruning.levels=0", "study.controls=[]",
                      "study.rewinds=['10it']")
    stabilitylab.record_study(cfg, str(out), progress=False)
    ds = stabilitylab.open_study(out)
    at = {"level": 0, "rewind": 10, "step": 10}
    w_k = ds.weights.sel(kind="imp", replica=0, **at).values
    for r in (0, 1):
        w = ds.weights.sel(kind="perturb", replica=r, **at).values
        diff = np.flatnonzero(w != w_k)
        assert diff.size == 1
        j = diff[0]
        assert abs(int(w_k[j:j + 1].view(np.int32)[0]) - int(w[j:j + 1].view(np.int32)[0])) == 1
