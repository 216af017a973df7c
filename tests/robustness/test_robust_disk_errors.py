"""Disk full / permission denied while recording (in-process; the writes fail through a
monkeypatched zarr LocalStore file writer, as root cannot be stopped by chmod).

The CLI prints one line, ``error: cannot write store at <out>: [Errno N] ...``, exits 2,
and what was complete before the failure stays complete and readable. (``--resume``
after an ENOSPC, bit for bit equal to an uninterrupted run: test_robust_crash.py.)
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import numpy as np
import pytest
import zarr.storage._local as zarr_local
from _tiny import TINY
from stabilitylab.cli.main import main

from stabilitylab.core.errors import StoreError
from stabilitylab.store import validate

LEVEL1_WEIGHTS = re.compile(r"/weights/c/\d+/1/\d+/\d+/\d+/\d+$")
ANY_CHUNK = re.compile(r"/c/[\d/]+$")


def _argv(out: Path, *extra: str) -> list[str]:
    args = ["record", "--out", str(out), "--no-progress", "--device", "cpu", *extra]
    for s in TINY:
        args += ["--set", s]
    return args


def _failing_put(monkeypatch, pattern: re.Pattern, after: int, code: int) -> list[int]:
    """From the (after+1)-th matching file write on, the store raises OSError(code)."""
    real, hits = zarr_local._put, [0]

    def put(path, value, exclusive=False):
        if pattern.search(str(path).replace(os.sep, "/")):
            hits[0] += 1
            if hits[0] > after:
                raise OSError(code, os.strerror(code))
        return real(path, value, exclusive=exclusive)

    monkeypatch.setattr(zarr_local, "_put", put)
    return hits


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _complete_runs_intact(store: Path) -> tuple[int, str]:
    """validate (deep: every chunk decodes) and every complete run has finite data at T."""
    import zarr

    validate(store, deep=True)
    g = zarr.open_group(store, mode="r")
    status = np.asarray(g["status"][...])
    for idx in zip(*np.nonzero(status == 2)):
        idx = tuple(int(i) for i in idx)
        assert np.isfinite(g["weights"][idx + (-1, slice(None))]).all()
        assert np.isfinite(g["final_test_acc"][idx])
    dense = int(g["dense_status"][0])
    return int((status == 2).sum()), {0: "absent", 1: "incomplete", 2: "complete"}.get(dense, str(dense))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES])
def test_write_error_after_pretraining(code, tmp_path, monkeypatch, capsys):
    """The store refuses writes from the first rewind-point state on: one clean line."""
    out = tmp_path / "s.zarr"
    _failing_put(monkeypatch, re.compile(r"/rewind_state_weights/c/"), after=0, code=code)
    capsys.readouterr()
    assert main(_argv(out)) == 2
    line = _one_error_line(capsys)
    assert line == f"error: cannot write store at {out}: [Errno {code}] {os.strerror(code)}"
    monkeypatch.undo()
    assert _complete_runs_intact(out) == (0, "incomplete")


def test_write_error_after_n_chunk_writes_during_creation(tmp_path, monkeypatch, capsys):
    """After 12 chunk writes (the store is still being laid out): one line, and a store that
    says it is incomplete (record or record --resume replaces it)."""
    out = tmp_path / "s.zarr"
    _failing_put(monkeypatch, ANY_CHUNK, after=12, code=errno.ENOSPC)
    capsys.readouterr()
    assert main(_argv(out)) == 2
    assert _one_error_line(capsys) == f"error: cannot write store at {out}: [Errno 28] No space left on device"
    monkeypatch.undo()
    with pytest.raises(StoreError, match="incomplete store: its creation was interrupted"):
        validate(out)


def test_disk_full_in_level_1_keeps_finished_runs(tmp_path, monkeypatch, capsys):
    out = tmp_path / "s.zarr"
    hits = _failing_put(monkeypatch, LEVEL1_WEIGHTS, after=1, code=errno.ENOSPC)
    capsys.readouterr()
    assert main(_argv(out)) == 2
    assert hits[0] >= 2
    assert _one_error_line(capsys) == f"error: cannot write store at {out}: [Errno 28] No space left on device"
    monkeypatch.undo()
    n_complete, dense = _complete_runs_intact(out)
    assert dense == "complete" and n_complete == 4  # pretraining and all of level 0 survived


def test_store_cannot_be_created(tmp_path, monkeypatch, capsys):
    """The very first write (the root zarr.json) fails: one line, nothing claimed done."""
    out = tmp_path / "s.zarr"
    _failing_put(monkeypatch, re.compile(r"zarr\.json$"), after=0, code=errno.ENOSPC)
    capsys.readouterr()
    assert main(_argv(out)) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"error: cannot create store at {out}: [Errno 28]"), line
