"""Hostile or damaged store content: non-finite weights, bad coordinates and layouts,
symlinks and FIFOs in place of chunks, and a decompression bomb.

Each is refused with one line (or, for non-finite weights, analyzed with NaN and one
warning line), quickly and within bounded memory.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import zarr
from _tiny import TINY
from stabilitylab.cli.main import main

import stabilitylab
from stabilitylab.core.errors import StoreError
from stabilitylab.store import validate
from stabilitylab.store.testing import make_fake_store


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    base = tmp_path_factory.mktemp("fake") / "s.zarr"
    make_fake_store(base, consolidate=False)
    return base


@pytest.fixture
def store(fake, tmp_path):
    copy = tmp_path / "s.zarr"
    shutil.copytree(fake, copy)
    return copy


def _coord(store: Path, name: str, values) -> None:
    """Rewrite coordinate ``name`` in place (same length)."""
    arr = zarr.open_array(store / name, mode="r+")
    arr[:] = np.asarray(values, dtype=np.int64)


def _attrs(store: Path, fn) -> None:
    meta = json.loads((store / "zarr.json").read_text())
    fn(meta["attributes"])
    (store / "zarr.json").write_text(json.dumps(meta))


def _bounded(fn, seconds: float = 20.0):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it does not return."""
    result: dict = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001
            result["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s"
    if "error" in result:
        raise result["error"]
    return result.get("value")


# -- step coordinate and parameter layout ----------------------------------------------------

def test_step_coordinate_must_hold_T_sorted_and_unique(store):
    steps = zarr.open_array(store / "step")[:]  # 0, 10, 20, 30, 40 with T = 40
    _coord(store, "step", list(steps[:-1]) + [35])
    with pytest.raises(StoreError, match="step coordinate lacks T 40"):
        validate(store)
    _coord(store, "step", steps[::-1])
    with pytest.raises(StoreError, match="coordinate 'step' is not sorted and unique"):
        validate(store)
    _coord(store, "step", [0, 10, 10, 30, 40])
    with pytest.raises(StoreError, match="coordinate 'step' is not sorted and unique"):
        validate(store)
    with pytest.raises(StoreError, match="not sorted and unique"):
        stabilitylab.open_study(store)  # analyze opens it the same way


def test_step_coordinate_must_hold_every_rewind_point(store):
    _coord(store, "step", [0, 5, 20, 30, 40])  # rewind point 10 missing
    with pytest.raises(StoreError, match="step coordinate lacks rewind point 10"):
        validate(store)


@pytest.mark.parametrize("case", ["overlap", "gap", "out-of-range", "size-not-shape"])
def test_param_layout_must_tile_the_parameters(store, case):
    def edit(attrs):
        a, b = attrs["param_layout"]  # 40 + 10 = P = 50
        if case == "overlap":
            b["offset"] = 30
        elif case == "gap":
            b["offset"] = 45
        elif case == "out-of-range":
            b["offset"] = 50  # sizes still sum to P, but the entry ends at 60 > P
        else:
            a["size"] = 39
            b["offset"] = 39
            b.update(shape=[11], size=11)

    _attrs(store, edit)
    match = {"overlap": "starts at offset 30, expected 40", "gap": "starts at offset 45",
             "out-of-range": "starts at offset 50, expected 40",
             "size-not-shape": "size = prod\\(shape\\)"}[case]
    with pytest.raises(StoreError, match=match):
        validate(store)


# -- symlinks and special files ------------------------------------------------------------------

def _a_chunk(store: Path) -> Path:
    return next(p for p in sorted((store / "weights").rglob("c/*/*/*/*/*/*")) if p.is_file())


def test_symlink_to_dev_zero_is_refused(store, capsys):
    chunk = _a_chunk(store)
    chunk.unlink()
    os.symlink("/dev/zero", chunk)
    for fn in (lambda: stabilitylab.open_study(store), lambda: validate(store, deep=True)):
        with pytest.raises(StoreError, match="is a symbolic link"):
            _bounded(fn)
    capsys.readouterr()
    assert main(["validate", str(store)]) == 2
    assert "symbolic link" in capsys.readouterr().err


def test_fifo_chunk_is_refused_without_blocking(store):
    chunk = _a_chunk(store)
    chunk.unlink()
    os.mkfifo(chunk)
    for fn in (lambda: stabilitylab.open_study(store).weights.values, lambda: validate(store)):
        with pytest.raises(StoreError, match="is not a regular file"):
            _bounded(fn)


# -- decompression bomb ------------------------------------------------------------------------------

def test_decompression_bomb_is_refused_before_it_inflates(store):
    import google_crc32c
    from numcodecs import Blosc

    chunk = _a_chunk(store)  # declared chunk: 2 steps x 50 params x 4 bytes = 400 bytes
    bomb = Blosc(cname="zstd", clevel=9, shuffle=Blosc.SHUFFLE).encode(np.zeros(16 << 20, np.uint8))
    assert len(bomb) < 100_000
    bomb = bytes(bomb)
    chunk.write_bytes(bomb + google_crc32c.value(bomb).to_bytes(4, "little"))
    match = r"declares 16777216 decoded bytes, more than its chunk shape holds \(400\)"
    with pytest.raises(StoreError, match=match):
        validate(store, deep=True)
    with pytest.raises(StoreError, match=match):
        _ = stabilitylab.open_study(store).weights.values


# -- non-finite weights: analyze degrades ----------------------------------------------------------

def test_nan_weights_give_nan_measures_and_one_warning(tmp_path, caplog):
    from stabilitylab.analysis.run import analyze_store

    store = tmp_path / "study.zarr"
    argv = ["record", "--out", str(store), "--no-progress", "--device", "cpu"]
    for s in TINY + ["training.steps='20it'", "training.eval_every='10it'", "pruning.levels=0"]:
        argv += ["--set", s]
    assert main(argv) == 0
    w = zarr.open_array(store / "weights", mode="r+")
    row = w[0, 0, 1, 1, -1, :]  # imp, level 0, k=10, replica 1, at T
    row[:3] = [np.nan, np.inf, -np.inf]
    w[0, 0, 1, 1, -1, :] = row
    with caplog.at_level("WARNING"):
        result = analyze_store(store, measures=["interpolation", "aligned"], alphas=3,
                               progress=False, n_boot=20)
    warned = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert warned == [("run (imp, 0, 10, 1) has non-finite final weights: its interpolation and "
                       "aligned measures are NaN")]
    an = result["analysis"]
    for name in ("instability", "aligned_instability"):
        v = an[name].sel(kind="imp", level=0)
        assert np.isnan(v.sel(rewind=10, pair="0-1")) and np.isfinite(v.sel(rewind=0, pair="0-1"))
