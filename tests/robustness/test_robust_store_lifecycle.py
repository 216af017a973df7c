"""Store lifecycle under faults: interrupted creation, missing chunks, two writers, analyze
during record, and what ``record --resume`` says on a finished store.

One tiny study (20 steps, levels 0-1) is recorded in-process as the baseline; the tests
damage copies of it, or of a fake store, and check that every path ends valid, with one
line where the user must act.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from _tiny import TINY
from stabilitylab.cli.main import main

from stabilitylab.core.errors import StoreError
from stabilitylab.store import StudyWriter, validate
from stabilitylab.store.lock import LOCK_NAME
from stabilitylab.store.testing import fake_resolved, make_fake_store

SMALL = TINY + ["training.steps='20it'", "training.eval_every='10it'"]


def _args(store, *extra):
    argv = ["record", "--out", str(store), "--no-progress", "--device", "cpu", *extra]
    for s in SMALL:
        argv += ["--set", s]
    return argv


def _run(argv, capsys):
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _tree(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _same_arrays(a: Path, b: Path) -> None:
    ga, gb = zarr.open_group(a, mode="r"), zarr.open_group(b, mode="r")
    names = sorted(n for n, _ in ga.arrays())
    assert names == sorted(n for n, _ in gb.arrays())
    for name in names:
        x, y = np.asarray(ga[name][...]), np.asarray(gb[name][...])
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), f"{name} differs"


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    store = tmp_path_factory.mktemp("base") / "study.zarr"
    assert main([str(a) for a in _args(store)]) == 0
    validate(store, deep=True)
    return store


# -- 1. creation is recognisable until it has finished ------------------------------------------

def test_interrupted_creation_is_incomplete_and_resume_completes_it(baseline, tmp_path, capsys,
                                                                     monkeypatch):
    """ENOSPC after ``rewind_state_weights`` was created, before ``rewind_state_momentum``."""
    store = tmp_path / "study.zarr"
    original = zarr.Group.create_array

    def create_array(self, name, *a, **kw):
        if name == "rewind_state_momentum":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, name, *a, **kw)

    monkeypatch.setattr(zarr.Group, "create_array", create_array)
    rc, _, err = _run(_args(store), capsys)
    assert rc == 2 and err.count("\n") == 1 and "No space left on device" in err, err
    monkeypatch.undo()
    assert (store / "rewind_state_weights").is_dir()  # the half store the issue describes
    with pytest.raises(StoreError, match="incomplete store: its creation was interrupted"):
        validate(store)
    rc, _, err = _run(["validate", store], capsys)
    assert rc == 2 and "incomplete store" in err
    rc, _out, err = _run(_args(store, "--resume"), capsys)  # completes it: no dead end
    assert rc == 0, err
    validate(store)
    _same_arrays(baseline, store)


def test_fresh_record_replaces_a_half_created_store(tmp_path):
    url = tmp_path / "s.zarr"
    res = fake_resolved()
    layout = [{"name": "w", "shape": [10], "offset": 0, "size": 10, "prunable": True}]
    kw = {"param_layout": layout, "buffer_layout": [], "provenance": {"study_id": "x"},
          "runs": [("imp", 0, 0, 0)], "optimizer_state_names": []}
    w = StudyWriter.create(url, res, **kw)
    w.close(consolidate=True)
    with pytest.raises(StoreError, match=r"already exists .*; use --resume or another --out"):
        StudyWriter.create(url, res, **kw)
    root = json.loads((url / "zarr.json").read_text())
    root["attributes"]["created"] = False  # as a kill before the last step leaves it
    (url / "zarr.json").write_text(json.dumps(root))
    (url / "masks").rename(url / "masks-gone")  # ... with an array missing
    shutil.rmtree(url / "masks-gone")
    StudyWriter.create(url, res, **kw).close(consolidate=True)  # replaced, no error
    validate(url)
    assert not (url / LOCK_NAME).exists()


def test_resume_of_a_complete_store_has_nothing_to_do(baseline, tmp_path, capsys):
    store = tmp_path / "study.zarr"
    shutil.copytree(baseline, store)
    before = _tree(store)
    rc, out, err = _run(_args(store, "--resume"), capsys)
    assert rc == 0 and not err, err
    lines = out.splitlines()
    assert len(lines) == 1, out
    assert lines[0].startswith(f"{store} already holds the complete study mnist1d-default")
    assert lines[0].endswith(": nothing to do")
    assert _tree(store) == before


# -- 2. missing chunks ---------------------------------------------------------------------------

def test_missing_chunks_are_named_by_validate_and_analyze(tmp_path, capsys):
    base = tmp_path / "base.zarr"
    make_fake_store(base)
    state = tmp_path / "state.zarr"
    shutil.copytree(base, state)
    for p in (state / "rewind_state_weights" / "c").rglob("*"):
        if p.is_file():
            p.unlink()
    for deep in (False, True):
        with pytest.raises(StoreError, match="array 'rewind_state_weights' lacks its chunk"):
            validate(state, deep=deep)
    masks = tmp_path / "masks.zarr"
    shutil.copytree(base, masks)
    (masks / "masks" / "c" / "1" / "1" / "0" / "0").unlink()  # random_prune, level 1, k=0
    rc, _, err = _run(["analyze", masks, "--no-progress", "--alphas", "3"], capsys)
    assert rc == 2 and err.count("\n") == 1, err
    assert "run (random_prune, 1, 0, 0) is marked complete but array 'masks' lacks" in err


def test_resume_marks_runs_with_missing_chunks_and_their_dependents(tmp_path, caplog):
    url = tmp_path / "s.zarr"
    study = make_fake_store(url, levels=2, controls=("random_prune",))
    # the final weights of the IMP iterate at level 0, k=10: level 1 and 2 masks at k=10 need them
    for p in (url / "weights" / "c" / "0" / "0" / "1" / "0").rglob("*"):
        if p.is_file():
            p.unlink()
    w = StudyWriter.resume(url, study.resolved, study_id="fake00000000")
    try:
        left = set(study.runs) - w.completed_runs()
    finally:
        w.close(consolidate=False)
    expect = {r for r in study.runs if r == ("imp", 0, 10, 0) or (r.level >= 1 and r.rewind == 10)}
    assert left == expect
    assert any("retraining" in r.getMessage() and "weights" in r.getMessage() for r in caplog.records)


def test_resume_retrains_from_a_deleted_rewind_state(baseline, tmp_path, capsys, caplog):
    store = tmp_path / "study.zarr"
    shutil.copytree(baseline, store)
    for p in (store / "rewind_state_weights" / "c").rglob("*"):
        if p.is_file():
            p.unlink()
    rc, _, err = _run(_args(store, "--resume"), capsys)
    assert rc == 0, err
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1, warned
    assert "array 'rewind_state_weights' lacks its chunk" in warned[0]
    assert warned[0].endswith("retraining 16 runs and the dense run")
    validate(store, deep=True)
    _same_arrays(baseline, store)  # W_k was recomputed, not read as zeros


# -- 4. one writer at a time ---------------------------------------------------------------------

HOLD = r'''
import sys, time
from stabilitylab.store.lock import acquire
lock = acquire(sys.argv[1], sys.argv[1])
print("locked", flush=True)
time.sleep(120)
'''


def test_second_writer_is_refused_and_a_dead_writers_lock_is_taken_over(baseline, tmp_path, capsys):
    url = tmp_path / "s.zarr"
    shutil.copytree(baseline, url)
    g = zarr.open_group(url, mode="r+", use_consolidated=False)
    g.attrs["complete"] = False  # as while a writer works on it
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(url)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        partial = url / "status" / "c" / ("0." + "ab" * 16 + ".partial")
        partial.write_bytes(b"half")  # a live writer's temporary file
        before = _tree(url)
        rc, _, err = _run(_args(url, "--resume"), capsys)
        assert rc == 2 and err.count("\n") == 1, err
        assert f"error: store is being written by pid {proc.pid} on " in err and " since 20" in err
        assert _tree(url) == before  # nothing deleted, nothing written
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert json.loads((url / LOCK_NAME).read_text())["pid"] == proc.pid  # left behind: stale
    rc, _, err = _run(_args(url, "--resume"), capsys)  # the dead writer's lock is taken over
    assert rc == 0, err
    assert not partial.exists()  # older than our lock and its writer is dead: provably stale
    assert not (url / LOCK_NAME).exists()
    validate(url)


def test_resume_keeps_temporary_files_newer_than_its_lock(tmp_path):
    from stabilitylab.store.writer import _remove_partial_files

    old = tmp_path / ("a." + "0" * 32 + ".partial")
    new = tmp_path / ("b." + "1" * 32 + ".partial")
    old.write_bytes(b"")
    os.utime(old, (time.time() - 100, time.time() - 100))
    t = time.time() - 10
    new.write_bytes(b"")
    _remove_partial_files(tmp_path, before=t)
    assert not old.exists() and new.exists()


# -- 7. analyze during record ------------------------------------------------------------------------

def test_analyze_during_record_is_partial_and_replaced_later(baseline, tmp_path, caplog):
    from stabilitylab.analysis.run import analyze_store
    from stabilitylab.store import open_analysis
    from stabilitylab.store.lock import acquire

    store = tmp_path / "study.zarr"
    shutil.copytree(baseline, store)
    g = zarr.open_group(store, mode="r+", use_consolidated=False)
    status = g["status"][...]
    g["status"][0, 1] = 1  # level 1 of imp: still training
    g.attrs["complete"] = False
    lock = acquire(store, str(store))  # the recording writer
    try:
        with caplog.at_level("WARNING"):
            analyze_store(store, measures=["trajectory"], progress=False, n_boot=20)
    finally:
        lock.release()
    lines = [r.getMessage() for r in caplog.records if "partial analysis" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "skipped 4 of 16 runs as incomplete (the store is still being written by pid " \
        f"{os.getpid()}" in lines[0]
    assert open_analysis(store).attrs["partial"] is True
    g["status"][...] = status  # record finished
    g.attrs["complete"] = True
    caplog.clear()
    analyze_store(store, measures=["trajectory"], progress=False, n_boot=20)
    assert not [r for r in caplog.records if "partial" in r.getMessage()]
    assert open_analysis(store).attrs["partial"] is False
