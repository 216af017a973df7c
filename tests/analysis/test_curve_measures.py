"""The ``curve`` measure group on a real (tiny) recorded study."""

import shutil

import numpy as np
import pytest
import zarr

from stabilitylab.analysis.curve_measures import NAMES
from stabilitylab.analysis.run import analyze_store


@pytest.fixture(scope="module")
def curved(tiny_study, tmp_path_factory):
    out = tmp_path_factory.mktemp("curve") / "tiny.zarr"
    shutil.copytree(tiny_study, out)
    return analyze_store(str(out), measures=["curve"], alphas=11, progress=False, n_boot=50)


def test_curve_group_writes_its_variables(curved):
    a = curved["analysis"]
    assert a.attrs["measures"] == ["interpolation", "curve"]  # it needs the linear barrier
    assert a.attrs["absent"] == []
    for name in NAMES:
        assert name in a
    assert a.curve_test_error.dims == ("kind", "level", "rewind", "pair", "curve", "alpha")
    assert list(a.curve.values) == ["bezier", "polychain"]
    # the tiny study has two rewind points (first = last k's two ends): all get curves
    # ... for IMP and the noise kinds; the controls get none (analyze's time budget)
    from stabilitylab.study.kinds import control_names

    control = a.kind.isin(list(control_names()))
    assert control.any() and not control.all()
    has_pair = (np.isfinite(a.instability) & ~control).broadcast_like(a.curve_barrier)
    assert has_pair.sum() > 0
    np.testing.assert_array_equal(np.isfinite(a.curve_barrier), has_pair)
    assert (a.curve_length.where(has_pair, 1.0) > 0).all()
    # t = 0 and t = 1 are the pair's own networks, bit for bit the linear path's ends
    for t in (0, -1):
        np.testing.assert_array_equal(
            a.curve_test_error.isel(alpha=t).sel(curve="bezier").where(~control).values,
            a.interp_test_error.isel(alpha=t).where(~control).values)
    diff = a.instability - a.curve_barrier
    np.testing.assert_allclose(a.linear_minus_curve.values,
                               diff.transpose(*a.linear_minus_curve.dims).values)
    # a curve never beats the endpoints: its barrier is at least half their error gap
    ends = a.curve_test_error.isel(alpha=[0, -1])
    floor = abs(ends.isel(alpha=0) - ends.isel(alpha=1)) / 2
    ok = has_pair.values
    assert (a.curve_barrier.values[ok] >= floor.values[ok] - 1e-12).all()


def test_curves_only_at_the_first_last_and_lmc_rule_rewinds():
    from stabilitylab.analysis.curve_measures import curve_rewinds

    class Ctx:
        levels, rewinds = [0, 1], [0, 10, 20, 40, 80]

    import xarray as xr

    inst = xr.DataArray([[0.3, 0.1, 0.01, 0.0, 0.0], [0.3, 0.3, 0.3, 0.3, 0.3]],
                        dims=("level", "rewind"), coords={"level": [0, 1], "rewind": Ctx.rewinds})
    assert curve_rewinds(Ctx, inst) == {0: [0, 20, 80], 1: [0, 80]}


def test_identical_copies_give_absent_curves_not_a_traceback(tiny_study, tmp_path):
    out = tmp_path / "same.zarr"
    shutil.copytree(tiny_study, out)
    weights = zarr.open_array(out / "weights", mode="r+")
    weights[:, :, :, 1, -1, :] = weights[:, :, :, 0, -1, :]  # replica 1 ends where 0 does
    result = analyze_store(str(out), measures=["curve"], alphas=5, progress=False, n_boot=50)
    a = result["analysis"]
    assert set(NAMES) <= set(a.attrs["absent"])
    assert np.isnan(a.curve_barrier).all()
    assert any(line.startswith("absent (no pair of distinct") for line in result["lines"])


def test_report_pieces_show_the_curves(curved):
    from stabilitylab.report.curves import curve_rows, curve_specs

    a = curved["analysis"]
    rows = curve_rows(a)
    assert rows and {r["rewind"] for r in rows} == {0, 10}
    for r in rows:
        at = {"kind": "imp", "level": r["level"], "rewind": r["rewind"]}
        assert r["bezier"] == pytest.approx(float(a.curve_barrier.sel(**at, curve="bezier")
                                                  .mean("pair")))
        assert r["linear"] - r["bezier"] == pytest.approx(r["linear_minus_curve"])
    (name, caption, build), = curve_specs(a)
    assert name == "curves.png" and "Garipov" in caption
    fig = build()
    assert len(fig.axes) == 2  # earliest and latest rewind point
    assert curve_specs(a.drop_vars([n for n in a.data_vars if n.startswith("curve")])) == []
