"""The ``init_imp`` noise kind: copies from independently seeded W_0 that each run IMP on
their own earlier levels (each copy its own lottery ticket), recorded with one mask per
copy, analyzed and labelled as different-init pairs end to end."""

import numpy as np
import pytest
import torch
from conftest import tiny_config

import stabilitylab
from stabilitylab.analysis.run import analyze_store
from stabilitylab.core import keys as K
from stabilitylab.core.errors import ConfigError
from stabilitylab.prune import prune
from stabilitylab.store import schema as S
from stabilitylab.study import kinds
from stabilitylab.study.resolve import resolve_study


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("init_imp") / "s.zarr"
    cfg = tiny_config("study.noise=['data_order','init_imp']", "pruning.levels=2")
    stabilitylab.record_study(cfg, str(out), progress=False)
    return out


def test_own_mask_kinds_are_resolved_from_the_registry():
    assert [n for n in kinds.names() if kinds.get(n).own_masks] == ["init_imp"]
    study = resolve_study(tiny_config("study.noise=['data_order','init_imp']", "pruning.levels=1"))
    assert study.own_mask_kinds == ("init_imp",)
    assert resolve_study(tiny_config("pruning.levels=1")).own_mask_kinds == ()


def test_each_copy_prunes_its_own_earlier_level(store):
    ds = stabilitylab.open_study(store)
    assert tuple(ds.kind.values) == S.KINDS + ("init_imp",)
    assert bool((ds.status.sel(kind="init_imp") == K.STATUS_COMPLETE).all())
    layout = ds.attrs["param_layout"]
    prunable = [e["name"] for e in layout if e.get("prunable")]
    T = int(ds.step.values[-1])
    cfg = ds.attrs["config"]["pruning"]
    for k in (0, 10):
        starts = ds.weights.sel(kind="init_imp", level=0, rewind=k, step=k).values
        assert not np.array_equal(starts[0], starts[1])  # independent W_0
        own = ds.replica_masks.sel(kind="init_imp", level=0, rewind=k).values
        assert own.all()  # level 0: everything kept
        for level in (1, 2):
            m = ds.replica_masks.sel(kind="init_imp", level=level, rewind=k).values  # (R, P)
            assert not np.array_equal(m[0], m[1])  # each copy its own mask
            for r in range(m.shape[0]):
                # the mask is the one IMP gives from the copy's own previous level
                prev = ds.replica_masks.sel(kind="init_imp", level=level - 1, rewind=k,
                                            replica=r).values
                final = ds.weights.sel(kind="init_imp", level=level - 1, rewind=k,
                                       replica=r, step=T).values
                w = {e["name"]: torch.from_numpy(final[e["offset"]:e["offset"] + e["size"]]
                                                 .reshape(e["shape"])) for e in layout
                     if e["name"] in prunable}
                pm = {e["name"]: torch.from_numpy(prev[e["offset"]:e["offset"] + e["size"]]
                                                  .reshape(e["shape"])) for e in layout
                      if e["name"] in prunable}
                want = prune(w, pm, cfg["fraction"], cfg["strategy"])
                assert want
                for e in layout:
                    if e["name"] in want:
                        np.testing.assert_array_equal(
                            m[r, e["offset"]:e["offset"] + e["size"]],
                            want[e["name"]].numpy().ravel())
                # pruned weights stay exactly 0 for the whole run
                w_run = ds.weights.sel(kind="init_imp", level=level, rewind=k, replica=r)
                steps = ds.step.values >= k
                assert (w_run.values[steps][:, ~m[r]] == 0).all()
            # ``masks`` holds the union of the copies' masks, ``density`` replica 0's
            np.testing.assert_array_equal(
                ds.masks.sel(kind="init_imp", level=level, rewind=k).values, m.any(0))
            assert np.isclose(float(ds.density.sel(kind="init_imp", level=level, rewind=k)),
                              float(ds.density.sel(kind="imp", level=level, rewind=k)))


def test_a_study_without_own_mask_kinds_has_no_replica_masks(tmp_path):
    out = tmp_path / "plain.zarr"
    stabilitylab.record_study(tiny_config("pruning.levels=1"), str(out), progress=False)
    assert "replica_masks" not in stabilitylab.open_study(out)


def test_init_imp_pairs_are_analyzed_and_labelled_init(store):
    result = analyze_store(str(store), measures=["interpolation", "trajectory"], alphas=5,
                           progress=False)
    analysis = result["analysis"]
    # no pruning noise: the copies do not start from W_k, so the dense copy from W_k is not
    # their counterpart
    assert np.isnan(analysis.pruning_noise_l2.sel(kind="init_imp")).all()
    assert np.isfinite(analysis.pruning_noise_l2.sel(kind="imp", level=1, rewind=10)
                       .isel(step=-1))
    assert analysis.attrs["pair_noise"]["init_imp"] == "init"
    assert str(analysis.pair_noise.sel(kind="init_imp").values) == "init"
    assert np.isfinite(analysis.instability.sel(kind="init_imp").values).all()
    lines = [t for t in result["lines"] if t.startswith("init_imp copies")]
    assert [t.split(", barrier")[0] for t in lines] == [
        f"init_imp copies (different-init pairs), level {lv}" for lv in (0, 1, 2)]


def test_init_imp_needs_every_level_below_its_noise_levels():
    with pytest.raises(ConfigError, match="init_imp copies prune their own earlier levels"):
        resolve_study(tiny_config("study.noise=['data_order','init_imp']",
                                         "study.noise_levels=[2]", "pruning.levels=2"))
