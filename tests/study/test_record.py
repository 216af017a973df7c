"""`record` end to end on a tiny study: every run kind, masks, densities, starts, refusals, resume."""

import shutil

import numpy as np
import pytest
import zarr
from conftest import tiny_config

import stabilitylab
from stabilitylab.core.errors import StoreError
from stabilitylab.store import validate


@pytest.fixture(scope="module")
def ds(tiny_study):
    return stabilitylab.open_study(str(tiny_study))


def test_store_validates_and_every_planned_run_is_complete(tiny_study, ds):
    validate(str(tiny_study))
    status = ds.status
    assert int((status.sel(kind="imp") == 2).sum()) == 3 * 2 * 2  # levels x rewinds x replicas
    for kind in ("random_prune", "reinit"):  # controls at the last level only
        assert (status.sel(kind=kind, level=2) == 2).all()
        assert (status.sel(kind=kind, level=[0, 1]) == 0).all()
    assert ds.attrs["complete"] is True
    assert int(ds.dense_status.values.reshape(-1)[0]) == 2


def test_masks_and_densities(ds):
    masks = ds.masks.values
    density = ds.density
    levels = list(ds.level.values)
    prunable = np.zeros(ds.sizes["param"], bool)
    for slot in ds.attrs["param_layout"]:
        if slot["prunable"]:
            prunable[slot["offset"]:slot["offset"] + slot["size"]] = True
    imp = ds.masks.sel(kind="imp").values
    assert imp[levels.index(0)].all()
    for level in (1, 2):
        for k in ds.rewind.values:
            m = ds.masks.sel(kind="imp", level=level, rewind=k).values
            assert m[~prunable].all(), "biases are never pruned"
            assert abs(m[prunable].mean() - 0.5 ** level) < 2e-3 * level
            assert float(density.sel(kind="imp", level=level, rewind=k)) == pytest.approx(
                0.5 ** level, abs=2e-3 * level)
    # Levels nest: nothing pruned comes back.
    for k in ds.rewind.values:
        m1 = ds.masks.sel(kind="imp", level=1, rewind=k).values
        m2 = ds.masks.sel(kind="imp", level=2, rewind=k).values
        assert not (m2 & ~m1).any()
        rand = ds.masks.sel(kind="random_prune", level=2, rewind=k).values
        reinit = ds.masks.sel(kind="reinit", level=2, rewind=k).values
        assert np.array_equal(reinit, m2)
        assert not np.array_equal(rand, m2)
        for slot in ds.attrs["param_layout"]:  # same count in every layer
            s = slice(slot["offset"], slot["offset"] + slot["size"])
            assert rand[s].sum() == m2[s].sum()
    assert masks.dtype == bool


def test_pruned_weights_are_zero_along_the_whole_trajectory(ds):
    for kind in ("imp", "random_prune", "reinit"):
        mask = ds.masks.sel(kind=kind, level=2).values  # (rewind, param)
        w = ds.weights.sel(kind=kind, level=2).values  # (rewind, replica, step, param)
        for i, k in enumerate(ds.rewind.values):
            recorded = ds.step.values >= k
            assert np.all(w[i][:, recorded][..., ~mask[i]] == 0.0)


def test_data_order_copies_start_from_identical_weights(ds):
    dense = ds.dense_weights
    for kind, level in (("imp", 0), ("imp", 1), ("imp", 2), ("random_prune", 2), ("reinit", 2)):
        for k in ds.rewind.values:
            start = ds.weights.sel(kind=kind, level=level, rewind=k, step=k).values
            assert np.array_equal(start[0], start[1])
            if kind != "reinit":  # m * W_k, with W_k from the dense pretraining run
                mask = ds.masks.sel(kind=kind, level=level, rewind=k).values
                assert np.array_equal(start[0], dense.sel(step=k).values * mask)
    reinit = ds.weights.sel(kind="reinit", level=2, rewind=0, step=0).values[0]
    assert not np.allclose(reinit, ds.dense_weights.sel(step=0).values)


def test_replica_zero_copy_continues_the_dense_run(ds):
    """Restored optimizer state + the same data order: the copy retraces the dense run."""
    T = int(ds.step.values[-1])
    for k in ds.rewind.values:
        copy = ds.weights.sel(kind="imp", level=0, rewind=k, replica=0, step=T).values
        np.testing.assert_allclose(copy, ds.dense_weights.sel(step=T).values, rtol=1e-5, atol=1e-6)
        other = ds.weights.sel(kind="imp", level=0, rewind=k, replica=1, step=T).values
        assert not np.allclose(other, copy)


def test_metrics_and_provenance(ds):
    acc = ds.final_test_acc.where(ds.status == 2)
    finite = acc.values[np.isfinite(acc.values)]
    assert finite.size == 3 * 2 * 2 + 2 * 2 * 2 and ((finite >= 0) & (finite <= 1)).all()
    for key in ("created_at", "versions", "device", "seed", "study_id", "config"):
        assert key in ds.attrs
    assert {"stabilitylab", "torch", "zarr", "xarray"} <= set(ds.attrs["versions"])
    # the CPU that computed the weights: results differ between CPU models
    from stabilitylab.study.context import cpu_description
    assert ds.attrs["device"] == f"cpu ({cpu_description()})"
    assert len(cpu_description()) > 3


def test_refuses_to_write_into_another_study(tiny_study, tmp_path):
    out = tmp_path / "s.zarr"
    shutil.copytree(tiny_study, out)
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(StoreError):
        stabilitylab.record_study(tiny_config("training.lr=0.05"), str(out), progress=False)
    with pytest.raises(StoreError):  # same study, but no --resume: nothing is clobbered either
        stabilitylab.record_study(tiny_config(), str(out), progress=False)
    with pytest.raises(StoreError):
        stabilitylab.record_study(tiny_config("training.lr=0.05"), str(out), resume=True,
                                  progress=False)
    assert sorted(p.name for p in out.rglob("*")) == before


def test_unwritable_output_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError):
        stabilitylab.record_study(tiny_config(), str(blocker / "s.zarr"), progress=False)
    assert not (blocker / "s.zarr").exists()


def _arrays(path):
    group = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(arr[...]) for name, arr in group.arrays() if arr.dtype.kind != "T"}


def test_resume_after_interruption_is_bitwise_identical(tiny_study, tmp_path):
    """Knock the last level back to 'incomplete' (as a crash would leave it) and resume."""
    out = tmp_path / "resumed.zarr"
    shutil.copytree(tiny_study, out)
    group = zarr.open_group(str(out), mode="r+")
    status = group["status"]
    kinds = [str(k) for k in group["kind"][...]]
    for kind in kinds:
        s = np.asarray(status[kinds.index(kind), 2])
        status[kinds.index(kind), 2] = np.where(s == 2, 1, s)
    weights = group["weights"]
    weights[:, 2] = 0.0  # the interrupted level's trajectories are lost
    group.attrs["complete"] = False
    stabilitylab.record_study(tiny_config(), str(out), resume=True, progress=False)
    original, resumed = _arrays(tiny_study), _arrays(out)
    assert original.keys() == resumed.keys()
    for name in original:
        np.testing.assert_array_equal(resumed[name], original[name], err_msg=name)
