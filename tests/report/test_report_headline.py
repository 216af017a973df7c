"""Issue 27: the report opens with its answer, every interval states its n, tables hold no
Python reprs, every caption names its replicas; the PDF; the CLI summary's units."""

import html
import re

import numpy as np
import pytest
from _studies import DIVERGED_STEP, study_and_analysis

from stabilitylab.report import write_report_from
from stabilitylab.report.headline import headline

REPR = re.compile(r"\('|,\)|^\(\)$|^\[\]$|\{|\}|\bNone\b|\bTrue\b|\bFalse\b|\bnan\b|array\(|"
                  r"object at|^\[.*\]$")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return study_and_analysis(tmp_path_factory, "full")


@pytest.fixture(scope="module")
def report(data, tmp_path_factory):
    out = write_report_from(*data, tmp_path_factory.mktemp("h") / "r", pdf=True)
    return out, (out / "index.html").read_text(encoding="utf-8")


def _cells(text: str) -> list[str]:
    return [html.unescape(re.sub(r"<[^>]+>", "", c)).strip()
            for c in re.findall(r"<td>(.*?)</td>", text, flags=re.DOTALL)]


def test_headline_comes_first_and_names_the_stability_point(data, report):
    study, analysis = data
    _, text = report
    body = text[text.index("<body>"):]
    assert body.index("id='headline'") < body.index("<table") < body.index("<figure>")
    items = dict(headline(study, analysis))
    points = next(v for k, v in items.items() if k.startswith("Stability point"))
    for level, k, point in zip(analysis.level.values, analysis.predicted_rewind_lmc.values, points):
        assert point.startswith(f"level {int(level)} (density "), point
        assert (f"stable from k = {int(k)};" in point if k >= 0 else "no k is stable" in point)
        assert "n = 3 replicas (3 pairs)" in point
        assert html.escape(point) in text
    assert items["Study"].startswith("tiny-report: conv1d on mnist1d")
    assert "Recommended rewind point" in items
    assert "at level 2" in items["Recommended rewind point"]
    controls = items["IMP vs the controls at the sparsest level"]
    assert "random pruning" in controls and "random reinit" in controls and " pp" in controls
    runs = items["Diverged or missing runs"]
    assert f"reinit level 2 k = 0 replica 2 diverged at step {DIVERGED_STEP}" in runs
    assert "imp level 2 k = 20 replica 2 incomplete" in runs and "left out" in runs
    for label in items:
        assert f"<b>{html.escape(label)}:</b>" in text


def test_every_interval_states_its_n(report):
    _, text = report
    cells = _cells(text)
    intervals = [c for c in cells if re.search(r"\[-?\d", c)]
    assert len(intervals) >= 20
    for cell in intervals:
        assert re.search(r"(range|95% CI) \[.*\], n = \d+ replicas?", cell), cell
    head = text[text.index("id='headline'"):text.index("</section>")]
    for span in re.findall(r"\[[^\]]*\][^;.<]*", html.unescape(head)):
        assert "n = " in span, span


def test_no_table_cell_holds_a_python_repr(report):
    _, text = report
    cells = _cells(text)
    assert len(cells) > 100
    bad = [c for c in cells if REPR.search(c)
           and not re.match(r"(range|95% CI) \[", c)]  # an interval's brackets are not a repr
    assert not bad, bad[:5]
    assert "data_order" in cells  # study.noise, a one-element list, written plainly


def test_every_caption_names_its_replicas(report):
    _, text = report
    captions = [html.unescape(c) for c in re.findall(r"<figcaption>(.*?)</figcaption>", text)]
    assert len(captions) >= 7
    for caption in captions:
        assert re.search(r"n = \d+ (replicas?|run)", caption), caption


def test_settings_are_in_percentage_points(report):
    _, text = report
    cells = _cells(text)
    row = {cells[i]: cells[i + 1] for i in range(len(cells) - 1)}
    assert row["threshold"].startswith("2 pp") and row["matching_tolerance"].startswith("0.2 pp")


def test_pdf_is_written_and_small(report):
    out, _ = report
    pdf = (out / "report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and len(pdf) < 3_000_000
    assert pdf.count(b"/Type /Page\n") + pdf.count(b"/Type /Page ") + \
        pdf.count(b"/Type/Page") >= 8 or b"/Count" in pdf


NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
LABELS = ("k=", "level ", "k≈", "replica ", "step ")


def test_cli_summary_states_the_unit_of_every_number(tiny_analyzed):
    """Every number analyze prints is a percentage (%), percentage points (pp), or a label
    (k=, level): never a bare fraction like 0.9290 next to 20.80%."""
    _, result = tiny_analyzed
    lines = result["lines"]
    assert lines[0].startswith("dense test accuracy: ") and lines[0].endswith("%")
    checked = 0
    for line in lines:
        for m in NUMBER.finditer(line):
            before, after = line[:m.start()], line[m.end():]
            labelled = before.endswith(LABELS)
            unit = after.startswith(("%", " pp"))
            assert labelled or unit, (m.group(), line)
            checked += 1
    assert checked >= 10
    assert not any(re.search(r"\b0\.\d{4}\b", ln) for ln in lines)


def test_counts_follow_the_analysis(data):
    """With every pair NaN at a level the headline still renders (no k is stable there)."""
    study, analysis = data
    nan = analysis.copy()
    nan["instability"] = nan.instability.where(nan.level != 0)
    items = dict(headline(study, nan))
    points = next(v for k, v in items.items() if k.startswith("Stability point"))
    assert points[0].startswith("level 0 (density 100%): no k is stable")
    assert np.isfinite(analysis.instability.sel(level=1)).any()
