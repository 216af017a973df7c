"""The report folder: files, sizes, embedded images, tables, atomic replacement, degraded data."""

import json
import re

import numpy as np
import pytest
from _studies import DIVERGED_STEP, study_and_analysis

import stabilitylab.store
from stabilitylab.core.errors import StoreError
from stabilitylab.report import document as D
from stabilitylab.report import prediction_table, provenance_rows, write_report, write_report_from


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A real tiny study and the analysis the real analyze wrote for it."""
    return study_and_analysis(tmp_path_factory, "full")


@pytest.fixture(scope="module")
def report(data, tmp_path_factory):
    return write_report_from(*data, tmp_path_factory.mktemp("r") / "synthetic")


@pytest.fixture
def cheap_figures(monkeypatch):
    """Only the headline figure: for tests about the folder, not the plots."""
    specs = D._figure_specs
    monkeypatch.setattr(D, "_figure_specs", lambda s, a: specs(s, a)[:1])


def test_report_files_and_sizes(report):
    names = {p.name for p in report.iterdir()}
    pngs = sorted(p for p in report.iterdir() if p.suffix == ".png")
    assert {"index.html", "report.md", "instability.png", "interpolation.png",
            "distances_data_order.png", "distances_pruning_noise.png", "accuracy_density.png",
            "measure_correlations.png", "instability_random_prune.png"} <= names
    for p in pngs:
        assert p.read_bytes().startswith(b"\x89PNG") and p.stat().st_size < 200_000
    assert sum(p.stat().st_size for p in report.iterdir()) < 2_000_000
    assert not [p for p in report.parent.iterdir() if p.name.startswith(".")]  # no temp dirs


def test_html_embeds_every_figure_headline_first(report):
    text = (report / "index.html").read_text()
    uris = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    pngs = [p for p in report.iterdir() if p.suffix == ".png"]
    assert len(uris) == len(pngs)
    assert "Instability (test-error barrier" in text.split("<figure>")[1]  # the headline
    assert "<table>" in text and "Rewind-point prediction" in text
    assert f"diverged at step {DIVERGED_STEP}" in text and "<style>" in text
    assert "src='instability.png'" not in text  # self-contained


def test_markdown_references_pngs(report):
    md = (report / "report.md").read_text()
    for p in report.iterdir():
        if p.suffix == ".png":
            assert f"]({p.name})" in md
    assert md.index("(instability.png)") < md.index("(interpolation.png)")
    assert "| level | density | rule |" in md


def test_prediction_table(data):
    _, analysis = data
    rows = prediction_table(analysis)
    lmc = [r for r in rows if r["rule"].startswith("LMC")]
    assert [r["level"] for r in lmc] == [0, 1, 2]
    assert [r["predicted_rewind"] for r in lmc] == analysis.predicted_rewind_lmc.values.tolist()
    assert [r["oracle_rewind"] for r in lmc] == analysis.oracle_rewind.values.tolist()
    np.testing.assert_allclose([r["gap"] for r in lmc], analysis.gap_lmc.values)
    assert lmc[1]["accuracy_oracle"] == pytest.approx(
        float(analysis.final_test_acc.sel(kind="imp", level=1, rewind=lmc[1]["oracle_rewind"])))
    assert [r for r in rows if r["level"] == 0 and r["rule"] == "measure: mask_jaccard"]
    # a measure that is NaN at a level gets no row there
    nan0 = analysis.copy()
    nan0["measure_value"] = analysis.measure_value.where(
        (analysis.measure != "mask_jaccard") | (analysis.level != 0))
    rows = prediction_table(nan0)
    assert not [r for r in rows if r["level"] == 0 and r["rule"] == "measure: mask_jaccard"]
    assert [r for r in rows if r["level"] == 1 and r["rule"] == "measure: mask_jaccard"]


def test_prediction_table_none_when_no_rewind_is_stable(data):
    analysis = data[1].copy()
    analysis["predicted_rewind_lmc"] = analysis.predicted_rewind_lmc * 0 - 1
    analysis["gap_lmc"] = analysis.gap_lmc * np.nan
    lmc = [r for r in prediction_table(analysis) if r["rule"].startswith("LMC")]
    assert all(r["predicted_rewind"] is None and r["gap"] is None for r in lmc)
    assert prediction_table(analysis.drop_vars("oracle_rewind")) == []


@pytest.mark.parametrize("as_json", [True, False])
def test_provenance_rows(as_json, data):
    import torch

    study = data[0].copy()
    cfg = study.attrs["config"]
    if isinstance(cfg, str) != as_json:  # the store's JSON text, or the dict open_study gives
        study.attrs["config"] = json.dumps(cfg) if as_json else json.loads(cfg)
    rows = provenance_rows(study, data[1])
    get = {(r["section"], r["key"]): r["value"] for r in rows}
    assert get[("provenance", "study_id")] == study.attrs["study_id"]
    assert get[("provenance", "versions.torch")] == torch.__version__
    name = json.loads(cfg)["study"]["name"] if isinstance(cfg, str) else cfg["study"]["name"]
    assert get[("config", "study.name")] == name
    # resolved values that apply (the tiny study: conv1d, SGD, controls, 2 levels)
    assert get[("config", "study.rewinds")] == "k = 0, 10, 20 (iterations)"
    assert get[("config", "study.control_levels")].startswith("2 ")  # not the stored []
    assert get[("config", "model.options.channels")] == 4
    for absent in ("model.hidden", "model.width", "training.beta1", "data.root",
                   "training.lookahead_alpha", "training.gamma"):
        assert ("config", absent) not in get, absent
    assert get[("runs", "reinit")] == "8 complete, 1 diverged"
    assert get[("issues", "reinit level 2 k=0 replica 2")] == f"diverged at step {DIVERGED_STEP}"
    assert get[("issues", "imp level 2 k=20 replica 2")] == "incomplete"
    assert ("analysis", "skipped") in get
    assert D.study_name(study) == name == "tiny-report"


def test_degraded_inputs_still_make_a_report(tmp_path, tmp_path_factory):
    """No controls, one pair, no alignment, variables missing, all-NaN barriers."""
    study, analysis = study_and_analysis(tmp_path_factory, "small")
    assert np.isnan(analysis.aligned_instability).all()  # analysed without weight matching
    analysis["instability"] = analysis.instability * np.nan
    analysis = analysis.drop_vars(["pruning_noise_l2", "spearman_low", "gap_measure", "density"])
    analysis.attrs["skipped"] = "one\ntwo"
    out = write_report_from(study, analysis, tmp_path / "r")
    names = {p.name for p in out.iterdir()}
    assert "instability.png" in names and "distances_pruning_noise.png" not in names
    assert "instability_random_prune.png" not in names
    html = (out / "index.html").read_text()
    assert "measure: aligned_instability" not in html


def test_study_only_or_analysis_only(data, tmp_path, cheap_figures):
    study, analysis = data
    out = write_report_from(study, None, tmp_path / "s")  # not analysed yet
    assert {p.name for p in out.iterdir()} == {"index.html", "report.md", "accuracy_density.png"}
    out = write_report_from(None, analysis, tmp_path / "a")
    assert "instability.png" in {p.name for p in out.iterdir()}


def test_failed_figure_is_logged_and_skipped(data, tmp_path, monkeypatch, caplog):
    def boom(*a, **k):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(D, "_figure_specs", lambda s, a: [("bad.png", "bad", boom)])
    out = write_report_from(*data, tmp_path / "r")
    assert not (out / "bad.png").exists()
    assert "kaboom" in (out / "report.md").read_text() and "kaboom" in caplog.text


def test_atomic_replacement(data, tmp_path, monkeypatch, cheap_figures):
    out = tmp_path / "r"
    write_report_from(*data, out)
    (out / "stale.txt").write_text("old")
    write_report_from(*data, out)  # replaced wholesale
    assert not (out / "stale.txt").exists() and (out / "index.html").exists()
    before = (out / "index.html").read_bytes()

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(D, "_write_documents", crash)
    with pytest.raises(OSError):
        write_report_from(*data, out)
    assert (out / "index.html").read_bytes() == before  # the old report is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # no temp leftovers


def test_write_report_opens_the_store(data, tmp_path, monkeypatch, cheap_figures):
    study, analysis = data
    opened = []
    monkeypatch.setattr(stabilitylab.store, "open_study", lambda url: opened.append(url) or study)
    monkeypatch.setattr(stabilitylab.store, "open_analysis", lambda url: analysis)
    monkeypatch.chdir(tmp_path)
    out = write_report("runs/x.zarr")
    assert opened == ["runs/x.zarr"]
    assert out == tmp_path.joinpath("reports", "tiny-report").relative_to(tmp_path)
    assert (tmp_path / out / "index.html").exists()

    def missing(url):
        raise StoreError("no analysis group")

    monkeypatch.setattr(stabilitylab.store, "open_analysis", missing)
    out = write_report("runs/x.zarr", out=tmp_path / "only-study")
    assert (out / "report.md").exists()
