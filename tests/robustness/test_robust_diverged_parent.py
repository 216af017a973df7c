"""A diverged run is never a parent (``record --set training.lr=1e8``).

At lr=1e8 the dense run blows up within the first steps, so W_10 is NaN, and every IMP run
from W_0 diverges too. Level 1 must then not be trained: not from a NaN start, and not from
a mask computed out of NaN final weights (NaN sorts last, so such a "magnitude" mask prunes
by position). Its runs are marked ``parent_diverged``, never trained, never retried by
``--resume``, and the analysis reports them as absent, never as 0.00% instability.
"""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
from _tiny import TINY
from stabilitylab.cli.main import main

import stabilitylab
from stabilitylab.core.keys import STATUS_PARENT_DIVERGED
from stabilitylab.store import validate

# seed 3: the dense run and IMP replica 0 from W_0 both blow up (at other seeds some runs
# stay finite: ReLUs die before the weights overflow). At lr = 1e6 the dense run's blow-up
# step differs between CPU models (on some it comes at step 15, after W_10); at 1e8 it
# overflows at step 5, well before the rewind point 10
LR = [*TINY, "training.lr=1e8", "study.seed=3"]


def _record(store, *extra):
    args = ["record", "--out", str(store), "--no-progress", "--device", "cpu", *extra]
    for s in LR:
        args += ["--set", s]
    return main(args)


@pytest.fixture(scope="module")
def blown_up(tmp_path_factory):
    store = tmp_path_factory.mktemp("lr") / "lr.zarr"
    assert _record(store) == 0
    return store


def test_dependants_of_a_diverged_parent_are_never_trained(blown_up):
    ds = stabilitylab.open_study(blown_up)
    level0 = ds.status.sel(kind="imp", level=0).values
    assert level0[0, 0] == 3, "lr=1e8: IMP replica 0 from W_0 diverges"
    assert int(ds.dense_status[0]) == 3 and int(ds.dense_diverged_step[0]) < 10  # W_10 is NaN
    planned = ds.status.sel(level=1).values != 0
    assert planned.sum() >= 4  # imp and the controls at level 1
    assert (ds.status.sel(level=1).values[planned] == STATUS_PARENT_DIVERGED).all()
    # never trained: no mask from NaN weights, no trajectory, no metrics
    assert np.isnan(ds.density.sel(level=1).values).all()
    assert not ds.masks.sel(level=1).values.any()
    w = ds.weights.sel(level=1).values[planned]
    assert (w == 0).all()  # the fill value: nothing was written
    assert np.isnan(ds.final_test_acc.sel(level=1).values[planned]).all()
    # level 0 from W_10: its start is NaN, so not trained either
    assert (ds.status.sel(level=0, rewind=10).values[ds.status.sel(level=0, rewind=10).values != 0]
            == STATUS_PARENT_DIVERGED).all()
    assert ds.attrs["complete"] is True
    notes = validate(blown_up)
    assert any("not trained as their parent diverged" in n for n in notes), notes


def test_resume_does_not_retry_them(blown_up, tmp_path, capsys):
    store = tmp_path / "lr.zarr"
    shutil.copytree(blown_up, store)
    before = stabilitylab.open_study(store).status.values.copy()
    capsys.readouterr()
    assert _record(store, "--resume") == 0
    assert "already holds the complete study" in capsys.readouterr().out
    np.testing.assert_array_equal(stabilitylab.open_study(store).status.values, before)


def test_analysis_reports_them_absent_never_as_numbers(blown_up, tmp_path, capsys):
    store = tmp_path / "lr.zarr"
    shutil.copytree(blown_up, store)
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rc = main(["analyze", str(store), "--no-progress", "--no-report", "--device", "cpu",
                   "--measures", "interpolation"])
    out = capsys.readouterr().out
    assert rc == 0
    an = stabilitylab.open_analysis(store)
    assert np.isnan(an.instability.sel(level=1).values).all()
    absent = an.attrs["absent"]
    ds = stabilitylab.open_study(store)
    n = int((ds.status.values == STATUS_PARENT_DIVERGED).sum())
    orphans = [a for a in absent if a.endswith("(parent diverged)")]
    assert len(orphans) == n and "imp level 1 rewind 0 replica 0 (parent diverged)" in orphans
    level1 = [line for line in out.splitlines() if line.startswith("level 1 ")]
    assert level1 == ["level 1 (density unknown) instability: k=0: unknown, k=10: unknown"], out
    assert "accuracy gap 0.00" not in out and "nan" not in out.lower(), out
    assert "never trained, its parent diverged" in out
