"""A study whose runs blow up (``training.lr=1e4``): diverged runs are marked (status 3,
with the step), the study goes on to the end, and the analysis skips them by name
without tripping over the NaNs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from _tiny import TINY as ROBUST_TINY
from stabilitylab.cli.main import main

import stabilitylab
from stabilitylab.core.keys import RunKey
from stabilitylab.store import validate

TINY = [*ROBUST_TINY, "training.lr=1e4"]


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    store = tmp_path_factory.mktemp("div") / "div.zarr"
    args = ["record", "--out", str(store), "--no-progress", "--device", "cpu"]
    for s in TINY:
        args += ["--set", s]
    assert main(args) == 0
    return store


def _runs(ds):
    for k in ds.kind.values:
        for lv in ds.level.values:
            for r in ds.rewind.values:
                for p in ds.replica.values:
                    sel = {"kind": k, "level": lv, "rewind": r, "replica": p}
                    yield RunKey(str(k), int(lv), int(r), int(p)), sel


def test_diverged_runs_are_marked_and_the_study_finishes(diverged):
    validate(diverged, deep=True)
    ds = stabilitylab.open_study(diverged)
    assert ds.attrs["complete"] is True  # the study went on to the end
    status = ds.status.values
    planned = status != 0
    assert np.isin(status[planned], (2, 3)).all(), "every planned run finished or diverged"
    assert (status == 3).sum() >= 1, "lr=1e4 makes some runs diverge"
    T = int(ds.step.values[-1])
    for key, sel in _runs(ds):
        s, d = int(ds.status.sel(**sel)), int(ds.diverged_step.sel(**sel))
        if s == 3:
            assert key.rewind <= d <= T, (key, d)  # between its start (rewind point) and T
            w = ds.weights.sel(**sel).values
            assert not np.isfinite(w[ds.step.values >= d]).all()  # it really blew up
        elif s == 2:
            assert d == -1
            assert np.isfinite(ds.weights.sel(**sel).values[-1]).all()
    assert int(ds.dense_status[0]) == 3, "lr=1e4 makes the dense run diverge too"
    d = int(ds.dense_diverged_step[0])
    assert 0 <= d <= T
    assert not np.isfinite(ds.dense_weights.values[ds.step.values >= d]).all()
    assert np.isfinite(ds.dense_weights.values[ds.step.values < d]).all()


def test_store_without_dense_diverged_step_still_valid(diverged, tmp_path):
    """Stores written before ``dense_diverged_step`` joined schema 1 stay readable."""
    import shutil

    import zarr

    store = tmp_path / "old.zarr"
    shutil.copytree(diverged, store)
    shutil.rmtree(store / "dense_diverged_step")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr: consolidated metadata is not in the v3 spec
        zarr.consolidate_metadata(str(store))
    validate(store, deep=True)
    ds = stabilitylab.open_study(store)
    assert "dense_diverged_step" not in ds and int(ds.dense_status[0]) == 3


def test_analysis_skips_diverged_runs_and_survives_nans(diverged, tmp_path):
    import shutil

    from stabilitylab.analysis.run import analyze_store

    store = tmp_path / "div.zarr"
    shutil.copytree(diverged, store)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN means are expected here
        result = analyze_store(str(store), progress=False, n_boot=50)
    lines = result["lines"]
    ds = stabilitylab.open_study(store)
    expected = [f"skipped {kind} level {lv} rewind {k} replica {r}: diverged at step "
                f"{int(ds.diverged_step.sel(**sel))}"
                for (kind, lv, k, r), sel in _runs(ds) if int(ds.status.sel(**sel)) == 3]
    assert expected
    for line in expected:
        assert line in lines, (line, lines)
    assert all(isinstance(x, str) and "\n" not in x for x in lines)
    validate(store)  # the analysis group it wrote keeps the store valid
    stabilitylab.open_analysis(store)
