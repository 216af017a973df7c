"""The report's Geometry section (issue 20): figures with captions and citations, the
cross-level column, and a section that shrinks with the data."""

import numpy as np
import pytest

import stabilitylab
from stabilitylab.report import geometry as G
from stabilitylab.report.document import summary_table, write_report_from
from stabilitylab.testing import make_analyzed_study


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory):
    path = tmp_path_factory.mktemp("geo") / "tiny.zarr"
    make_analyzed_study(path, measures=["interpolation", "trajectory_map", "layerwise",
                                        "cross_level", "plane"], alphas=5)
    return stabilitylab.open_study(str(path)), stabilitylab.open_analysis(str(path)).load()


def test_geometry_section_has_every_figure_with_caption_and_citation(analyzed, tmp_path):
    study, an = analyzed
    names = [name for name, _, _ in G.geometry_specs(study, an)]
    assert names[0] == "trajectory_map.png" and "layerwise_barrier.png" in names
    assert any(n.startswith("planes_level") for n in names)
    out = write_report_from(study, an, tmp_path / "report", dpi=50)
    md = (out / "report.md").read_text()
    section = md.split("## Geometry", 1)[1].split("\n## ", 1)[0]
    for name in names:
        assert (out / name).stat().st_size > 0 and f"]({name})" in section
    for cite in ("Li et al., NeurIPS 2018", "Garipov et al., NeurIPS 2018",
                 "Adilova et al., ICLR 2024"):
        assert cite in section
    assert "<h2>Geometry</h2>" in (out / "index.html").read_text()
    assert "failed:" not in md  # no figure fell back to a failure note


def test_summary_rows_carry_the_cross_level_barrier_beside_matching(analyzed):
    study, an = analyzed
    rows = summary_table(study, an)
    imp = {(r["level"], r["rewind"]): r["cross_level"] for r in rows if r["kind"] == "imp"}
    assert imp[(0, 0)] is None  # level 0 has no parent level
    expected = float(np.nanmean(an.cross_level_barrier.sel(level=2, rewind=10).values))
    assert imp[(2, 10)] == pytest.approx(expected)
    assert all(r["cross_level"] is None for r in rows if r["kind"] != "imp")


def test_a_section_figure_can_be_added_by_one_function(analyzed, monkeypatch):
    study, an = analyzed
    monkeypatch.setattr(G, "SECTION_FIGURES", list(G.SECTION_FIGURES))
    G.section_figures(lambda s, a: [("extra.png", "an extra figure", lambda: None)])
    assert G.geometry_specs(study, an)[-1][0] == "extra.png"


def test_without_geometry_variables_the_section_is_empty(analyzed):
    study, an = analyzed
    bare = an.drop_vars([v for v in an.data_vars if v.startswith(
        ("trajectory_map", "plane_", "map_", "layerwise", "cross_level"))])
    assert G.geometry_specs(study, bare) == []
    assert all(r["cross_level"] is None for r in summary_table(study, bare))
