"""StudyWriter: refusing bad targets, resume, buffering, crash-safe ordering, errors."""

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

from stabilitylab.core.errors import StoreError
from stabilitylab.store import StudyWriter, open_study
from stabilitylab.store.testing import fake_layout, fake_resolved, make_fake_store, planned_runs

P = 20


def _create(url, res=None, **kw):
    res = res or fake_resolved(levels=1, rewinds=(0, 10), replicas=2, total_steps=40, record_every=10)
    kw.setdefault("step_chunk", 2)
    return StudyWriter.create(
        url, res, param_layout=fake_layout((("w", (P,), True),)), buffer_layout=[],
        provenance={"study_id": kw.pop("study_id", "abc123"), "device": "cpu"},
        runs=planned_runs(res), optimizer_state_names=["momentum"], **kw)


def _chunk_files(root: Path, *run_idx) -> list[str]:
    d = root.joinpath("weights", "c", *map(str, run_idx))
    """Step-chunk indices of the stored chunk files of one run."""
    return sorted(p.relative_to(d).parts[0] for p in d.rglob("*") if p.is_file()) if d.exists() else []


def test_refuses_existing_store(tmp_path):
    url = tmp_path / "s.zarr"
    _create(url).close(consolidate=False)
    with pytest.raises(StoreError, match="already exists"):
        _create(url)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "f").write_text("x")
    with pytest.raises(StoreError, match="not an empty directory"):
        _create(tmp_path / "junk")


def test_missing_parent_folders_are_created(tmp_path):
    target = tmp_path / "missing" / "deeper" / "s.zarr"
    _create(target)
    assert (target / "zarr.json").exists()


def test_unwritable_target_fails_before_creating_anything(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    target = tmp_path / "file" / "sub" / "s.zarr"
    with pytest.raises(StoreError, match="is not a directory") as e:
        _create(target)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "file" / "sub").exists()
    if os.geteuid() == 0:
        return  # root ignores directory permissions
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(StoreError, match="not writable"):
            _create(ro / "s.zarr")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_resume_checks_identity(tmp_path):
    url = tmp_path / "s.zarr"
    res = fake_resolved(levels=1, rewinds=(0, 10), replicas=2, total_steps=40, record_every=10)
    w = _create(url, res)
    run = ("imp", 0, 0, 0)
    for s in res.record_steps:
        w.record([run], s, np.full((1, P), s, np.float32))
    w.finish_run(run, "complete")
    w.finish_run(("imp", 0, 0, 1), "diverged", diverged_step=7)
    w.close(consolidate=True)
    assert open_study(url).attrs["complete"] is False

    with pytest.raises(StoreError, match=r"holds study abc123, not zzz; use another --out"):
        StudyWriter.resume(url, res, study_id="zzz")
    other = fake_resolved(levels=1, rewinds=(0, 10), replicas=2, total_steps=40, record_every=20)
    with pytest.raises(StoreError, match="different schedule"):
        StudyWriter.resume(url, other, study_id="abc123")
    w = StudyWriter.resume(url, res, study_id="abc123")
    assert w.completed_runs() == {run, ("imp", 0, 0, 1)}
    np.testing.assert_array_equal(w.read_weights(run, 20), np.full(P, 20, np.float32))
    w.reset_run(run)
    assert w.completed_runs() == {("imp", 0, 0, 1)}
    assert _chunk_files(url, 0, 0, 0, 0) == []  # stale trajectory dropped
    w.close(consolidate=False)

    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="no stabilitylab store"):
        StudyWriter.resume(tmp_path / "plain", res, study_id="abc123")
    import zarr
    zarr.open_group(str(tmp_path / "foreign.zarr"), mode="w", attributes={"hello": 1})
    with pytest.raises(StoreError, match="not a stabilitylab study store"):
        StudyWriter.resume(tmp_path / "foreign.zarr", res, study_id="abc123")


def test_newer_schema_refused(tmp_path):
    url = tmp_path / "s.zarr"
    _create(url).close(consolidate=False)
    meta = json.loads((url / "zarr.json").read_text())
    meta["attributes"]["schema_version"] = 2
    (url / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match=r"newer stabilitylab \(schema 2 > 1\)"):
        StudyWriter.resume(url, fake_resolved(), study_id="abc123")
    with pytest.raises(StoreError, match="newer stabilitylab"):
        open_study(url)


def test_buffering_and_finish_run_ordering(tmp_path):
    url = tmp_path / "s.zarr"
    res = fake_resolved(levels=1, rewinds=(0, 10), replicas=2, total_steps=40, record_every=10)
    assert res.record_steps == (0, 10, 20, 30, 40)
    w = _create(url, res, step_chunk=2)
    a, b = ("imp", 1, 10, 0), ("imp", 1, 10, 1)
    rows = {s: np.stack([np.full(P, s + 0.5, np.float32), np.full(P, -s, np.float32)])
            for s in res.record_steps}
    w.record([a, b], 10, rows[10][:, :])  # chunk 0 = steps (0, 10): full -> written
    w.record([a, b], 20, rows[20])        # chunk 1 = (20, 30): pending
    np.testing.assert_array_equal(w.read_weights(a, 20), rows[20][0])  # served from the buffer
    np.testing.assert_array_equal(w.read_weights(a, 10), rows[10][0])  # from the store
    np.testing.assert_array_equal(w.read_weights(a, 0), np.zeros(P))   # before k: fill
    assert _chunk_files(url, 0, 1, 1, 0) == ["0"]
    with pytest.raises(ValueError, match="must increase"):
        w.record([a], 20, rows[20][:1])
    with pytest.raises(ValueError, match="never recorded"):
        w.finish_run(a, "complete")
    for s in (30, 40):
        w.record([a, b], s, rows[s])
    w.finish_run(a, "complete")
    # right after finish_run('complete') every chunk of the run is on disk
    assert _chunk_files(url, 0, 1, 1, 0) == ["0", "1", "2"]
    status = json.loads((url / "status" / "zarr.json").read_text())
    assert status["dimension_names"] == ["kind", "level", "rewind", "replica"]
    w.finish_run(b, "diverged", diverged_step=35)
    assert not w.close(consolidate=True)  # other runs unfinished
    ds = open_study(url)
    traj = ds.weights.sel(kind="imp", level=1, rewind=10, replica=0).values
    np.testing.assert_array_equal(traj[1:], np.stack([rows[s][0] for s in (10, 20, 30, 40)]))
    assert int(ds.diverged_step.sel(kind="imp", level=1, rewind=10, replica=1)) == 35
    assert int(ds.status.sel(kind="imp", level=1, rewind=10, replica=1)) == 3


def test_flush_writes_partial_chunks(tmp_path):
    url = tmp_path / "s.zarr"
    w = _create(url, step_chunk=4)
    w.record_dense(0, np.ones(P, np.float32))
    assert not (url / "dense_weights" / "c").exists()
    w.flush()
    assert (url / "dense_weights" / "c" / "0" / "0").exists()
    w.write_rewind_state("weights", 10, np.ones(P, np.float32))  # W_k: always available
    np.testing.assert_array_equal(w.read_rewind_state("weights", 10), np.ones(P))
    with pytest.raises(ValueError, match="unknown optimizer state 'exp_avg'"):
        w.write_rewind_state("exp_avg", 10, np.ones(P, np.float32))
    w.write_rewind_state("momentum", 10, np.arange(P, dtype=np.float32))
    np.testing.assert_array_equal(w.read_rewind_state("momentum", 10), np.arange(P))
    np.testing.assert_array_equal(w.read_dense_weights(0), np.ones(P))
    with pytest.raises(ValueError, match="not a recorded step"):
        w.record_dense(5, np.ones(P, np.float32))
    w.close(consolidate=False)


def test_rewind_buffers(tmp_path):
    res = fake_resolved(levels=0, rewinds=(0, 10))
    w = StudyWriter.create(
        tmp_path / "b.zarr", res, param_layout=fake_layout((("w", (P,), True),)),
        buffer_layout=fake_layout((("bn.running_mean", (3,), False), ("bn.running_var", (3,), False))),
        provenance={"device": "cpu"}, runs=planned_runs(res), optimizer_state_names=[])
    w.write_rewind_buffers(10, np.arange(6, dtype=np.float32))
    np.testing.assert_array_equal(w.read_rewind_buffers(10), np.arange(6))
    np.testing.assert_array_equal(w.read_rewind_buffers(0), np.zeros(6))
    w.write_final(("imp", 0, 10, 1), buffers=np.full(6, 2.0), test_acc=0.5, test_loss=1.0,
                  train_eval_acc=0.5, train_eval_loss=1.0)
    w.close(consolidate=False)
    ds = open_study(tmp_path / "b.zarr")
    assert ds.sizes["buffer"] == 6
    np.testing.assert_array_equal(
        ds.final_buffers.sel(kind="imp", level=0, rewind=10, replica=1).values, np.full(6, 2.0))
    assert float(ds.final_test_acc.sel(kind="imp", level=0, rewind=10, replica=1)) == 0.5
    assert len(ds.attrs["study_id"]) == 12  # computed from the config when not given


def test_background_error_surfaces(tmp_path):
    url = tmp_path / "s.zarr"
    w = _create(url, step_chunk=1)

    class Full:
        def __setitem__(self, key, value):
            raise OSError(errno.ENOSPC, "No space left on device")

    w._a["weights"] = Full()
    run = ("imp", 0, 0, 0)
    w.record([run], 0, np.ones((1, P), np.float32))  # chunk full -> queued -> fails in the thread
    with pytest.raises(StoreError, match=r"cannot write store at .*: \[Errno 28\] No space left on device"):
        w.flush()
    with pytest.raises(StoreError, match="Errno 28"):  # and keeps failing, status never written
        w.finish_run(run, "incomplete")
    with pytest.raises(StoreError):
        w.close(consolidate=True)
    assert int(open_study(url).status.sel(kind="imp", level=0, rewind=0, replica=0)) == 1


def test_fake_store_helper(tmp_path):
    fake = make_fake_store(tmp_path / "f.zarr", levels=2, rewinds=(0, 10), replicas=3,
                           controls=("random_prune", "reinit"))
    ds = open_study(fake.url)
    assert ds.sizes["level"] == 3 and ds.sizes["replica"] == 3
    assert (ds.status.sel(kind="reinit", level=2).values == 2).all()
    assert (ds.status.sel(kind="reinit", level=1).values == 0).all()
