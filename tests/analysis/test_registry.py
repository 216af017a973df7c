"""The measure registry is the analysis schema: analyze writes exactly what it declares, the
schema doc is generated from it, and a measure added from one module reaches every output."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import stabilitylab
from stabilitylab.analysis import registry
from stabilitylab.analysis.barriers import LMC_THRESHOLD
from stabilitylab.analysis.run import analyze_store
from stabilitylab.core.errors import StabilityLabError

DOC = Path(__file__).resolve().parents[2] / "docs" / "analysis-schema.md"


@pytest.fixture(scope="module")
def analysis(tiny_analyzed):
    return stabilitylab.open_analysis(str(tiny_analyzed[0])).load()


def test_schema_doc_tables_match_the_registry():
    text = DOC.read_text(encoding="utf-8")
    assert registry.render_doc(text) == text, (
        "docs/analysis-schema.md is stale: run "
        "`python -m stabilitylab.analysis.registry --update docs/analysis-schema.md`")
    for name in registry.variables():
        assert f"| `{name}` |" in text, name


def test_every_variable_analyze_writes_is_declared_with_its_dims(analysis):
    declared = {n: v for n, v in registry.variables().items()  # opt-in groups: not by default
                if v.group is None or registry.GROUPS[v.group].default}
    assert set(analysis.data_vars) == set(declared)  # the full analysis: nothing extra or missing
    for name, var in declared.items():
        assert analysis[name].dims == var.dims, name
        kind = np.dtype(var.dtype).kind
        assert analysis[name].dtype.kind == kind, (name, analysis[name].dtype, var.dtype)


def test_measure_value_holds_every_registered_measure_in_order(analysis):
    table = registry.measures()
    default = [n for n, m in table.items() if registry.GROUPS[m.group].default]
    assert list(analysis.measure.values) == default  # an opt-in group's: only when named
    for name, m in table.items():
        assert m.source in registry.variables(), name
        assert registry.variables()[m.source].group == m.group, name
        if name not in default:
            continue
        src = analysis[m.source]
        if "kind" in src.dims:
            src = src.sel(kind="imp")
        if m.reduce is not None:
            with np.errstate(invalid="ignore"):
                src = src.mean(m.reduce, skipna=True)
        np.testing.assert_array_equal(
            analysis.measure_value.sel(measure=name).transpose("level", "rewind").values,
            src.transpose("level", "rewind").values, err_msg=name)


def test_attrs_and_pair_coordinates(analysis):
    assert analysis.attrs["measures"] == list(registry.select(None))  # default groups, in order
    assert analysis.attrs["alphas"] == analysis.sizes["alpha"] and isinstance(
        analysis.attrs["alphas"], int)
    assert analysis.attrs["threshold"] == LMC_THRESHOLD
    assert list(analysis.pair.values) == ["0-1"]
    assert analysis.pair_a.dims == ("pair",) and analysis.pair_a.values.tolist() == [0]
    assert analysis.pair_b.values.tolist() == [1]


def test_select_expands_measures_and_needs(monkeypatch):
    assert registry.select(["instability", "rhat"]) == ("interpolation", "replica")
    assert registry.select(["aligned_instability"]) == ("aligned",)
    assert registry.select(None) == tuple(g for g in registry.groups()
                                          if registry.GROUPS[g].default)
    monkeypatch.setitem(registry.GROUPS, "late", registry.Group(
        name="late", reads="trajectory", compute=lambda *a, **k: {}, variables=(),
        needs=("trajectory",), rank=99))
    assert registry.select(["late"]) == ("trajectory", "late")
    monkeypatch.setitem(registry.GROUPS, "early", registry.Group(
        name="early", reads="trajectory", compute=lambda *a, **k: {}, variables=(),
        needs=("late",), rank=1))
    with pytest.raises(ValueError, match="lower rank"):
        registry.select(["early"])
    with pytest.raises(StabilityLabError, match="unknown measure or group 'nope'.*sign_flips"):
        registry.select(["nope"])


def test_bad_declarations_are_refused():
    with pytest.raises(ValueError, match="unknown dims"):
        registry.register(registry.Group("bad", "trajectory", lambda *a: {}, (
            registry.Variable("bad_var", ("kind", "epoch"), "x"),)))
    with pytest.raises(ValueError, match="reads must be one of"):
        registry.register(registry.Group("bad", "weights", lambda *a: {}, ()))
    with pytest.raises(ValueError, match="declared twice"):
        registry.register(registry.Group("bad", "trajectory", lambda *a: {}, (
            registry.Variable("instability", ("level",), "clash"),)))
    assert "bad" not in registry.GROUPS and "bad_var" not in registry.VARIABLES


def test_allocate_uses_the_schema_dims(tiny_analyzed):
    from stabilitylab.analysis.context import load_context

    ctx = load_context(str(tiny_analyzed[0]))
    da = registry.allocate(ctx, "data_order_l2")
    assert da.dims == registry.variables()["data_order_l2"].dims and np.isnan(da).all()
    assert list(da.pair.values) == ctx.pair_labels
    with pytest.raises(ValueError, match="alpha"):
        registry.allocate(ctx, "interp_test_error")


@pytest.fixture
def scratch_registry():
    """Registry tables restored after the test (a measure registered here does not leak)."""
    saved = dict(registry.GROUPS), dict(registry.VARIABLES), dict(registry._MEASURES)
    yield registry
    for table, old in zip((registry.GROUPS, registry.VARIABLES, registry._MEASURES), saved):
        table.clear()
        table.update(old)


def test_a_measure_declared_in_one_place_reaches_every_output(scratch_registry, tiny_study,
                                                              tmp_path):
    """What docs/contributing.md "A measure" promises: a group function and its declaration
    are all analyze, measure_value, the correlations, summary.csv and the glossary need."""

    @registry.group("doubled", reads="trajectory", needs=("trajectory",), rank=15,
                    work=lambda ctx: 1,
                    variables=[registry.Variable("doubled_l2", ("kind", "level", "rewind", "pair"),
                                                 "twice the final data-order L2", "weight L2 norm")],
                    measures=[registry.Measure("doubled_l2", "doubled_l2", "pair", "weight L2 norm",
                                               False, "twice data_order_l2", rank=7)])
    def doubled(ctx, results, options, progress=None):
        out = registry.allocate(ctx, "doubled_l2")
        out[...] = 2 * results["data_order_l2_final"].values
        progress(1)
        return {"doubled_l2": out}

    store = tmp_path / "s.zarr"
    shutil.copytree(tiny_study, store)
    result = analyze_store(str(store), measures=["doubled", "interpolation"], progress=False,
                           n_boot=50, alphas=3)
    an = result["analysis"]
    assert an.attrs["measures"] == ["trajectory", "doubled", "interpolation"]
    names = list(an.measure.values)
    assert names.index("doubled_l2") == names.index("data_order_l2") + 1  # rank 7, after it
    xr.testing.assert_allclose(an.measure_value.sel(measure="doubled_l2", drop=True),
                               2 * an.measure_value.sel(measure="data_order_l2", drop=True))
    assert "doubled_l2" in an.spearman.measure.values
    summary = pd.read_csv(f"{result['csv']}/summary.csv")
    assert "doubled_l2" in summary
    assert "doubled_l2" in registry.measures_table() and "doubled_l2" in registry.variables_table()
    from stabilitylab.report import glossary

    assert glossary._info(registry.measures()["doubled_l2"]).unit == "weight L2 norm"
