"""The report's summary table (index.html) agrees with summary.csv written by analyze."""

import csv
import html.parser
import math

import pytest

import stabilitylab
from stabilitylab.report import write_report
from stabilitylab.report.glossary import MEASURES


class _Tables(html.parser.HTMLParser):
    """Every <table> as (id, header cells, body rows), and the order of tables and figures."""

    def __init__(self):
        super().__init__()
        self.tables, self.order = [], []
        self._cell = None
        self._row = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append({"id": attrs.get("id"), "head": [], "rows": []})
            self.order.append(("table", attrs.get("id")))
        elif tag == "figure":
            self.order.append(("figure", None))
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            table = self.tables[-1]
            if table["head"]:
                table["rows"].append(self._row)
            else:
                table["head"] = self._row
            self._row = None


@pytest.fixture(scope="module")
def parsed(tiny_analyzed, tmp_path_factory):
    store, _ = tiny_analyzed
    out = write_report(store, out=tmp_path_factory.mktemp("rep") / "r")
    parser = _Tables()
    parser.feed((out / "index.html").read_text(encoding="utf-8"))
    with open(f"{store}.analysis/summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return parser, rows


def _pct(text: str) -> float:
    return float(text.rstrip("%"))


def _bounds(cell: str) -> tuple[float, float]:
    """(low, high) of ``"range [0.20, 1.55], n = 3 replicas (3 pairs)"``; the n is required."""
    assert cell.startswith(("range [", "95% CI [")) and ", n = " in cell, cell
    lo, hi = cell[cell.index("[") + 1:cell.index("]")].split(",")
    return float(lo), float(hi)


def test_summary_table_matches_summary_csv(parsed):
    parser, csv_rows = parsed
    table = next(t for t in parser.tables if t["id"] == "summary")
    head = table["head"]
    col = {name: head.index(name) for name in head}
    for want in ("density", "final test acc. (%)", "acc. interval (%), n", "instability (pp)",
                 "instability interval (pp), n", "stable", "matching"):
        assert want in col, head
    shown = {(r[col["kind"]], int(r[col["level"]]), int(r[col["k"]])): r for r in table["rows"]}
    checked = matched = 0
    for row in csv_rows:
        acc = float(row["final_test_acc"]) if row["final_test_acc"] else math.nan
        key = (row["kind"], int(row["level"]), int(row["rewind"]))
        if not math.isfinite(acc):
            assert key not in shown
            continue
        cells = shown[key]
        assert _pct(cells[col["final test acc. (%)"]]) == pytest.approx(100 * acc, abs=0.006)
        assert _pct(cells[col["density"]]) == pytest.approx(100 * float(row["density"]), rel=2e-3)
        inst = float(row["instability"])
        assert float(cells[col["instability (pp)"]]) == pytest.approx(100 * inst, abs=0.006)
        lo, hi = _bounds(cells[col["instability interval (pp), n"]])
        assert 0 <= lo <= 100 * inst + 0.006 and 100 * inst - 0.006 <= hi  # range-respecting
        lo, hi = _bounds(cells[col["acc. interval (%), n"]])
        assert lo - 0.006 <= 100 * acc <= hi + 0.006 and 0 <= lo and hi <= 100
        assert cells[col["stable"]] == ("yes" if row["stable"] == "True" else "no"), key
        want = ("yes" if row["matching"] == "True" else "no") if row["matching_low"] \
            else "undefined (fewer than 2 replicas)"
        assert cells[col["matching"]] == want, key
        diff = cells[col["acc. − dense copies (pp), one-sided 95% bound"]]
        assert diff.startswith(f"{100 * float(row['matching_difference']):+.2f} ("), (key, diff)
        if row["matching_low"]:
            assert f"≥ {100 * float(row['matching_low']):+.2f})" in diff
        assert diff.endswith(f"n = {row['matching_pairs']}")
        matched += row["matching"] == "True"
        shown_barrier = cells[col["train-loss barrier (nats)"]]
        if row["loss_barrier_train"]:
            assert float(shown_barrier) == pytest.approx(float(row["loss_barrier_train"]),
                                                         rel=1e-3, abs=1e-9), key
        checked += 1
    assert checked == len(table["rows"]) and checked >= 10
    assert matched >= 3  # at least the dense copies match themselves (level 0, every k)


def test_summary_comes_first_and_glossary_lists_every_measure(parsed, tiny_analyzed):
    parser, _ = parsed
    assert parser.order[0] == ("table", "summary")  # the first table, before any figure
    assert ("figure", None) in parser.order
    glossary = next(t for t in parser.tables if t["head"][:1] == ["measure"])
    # every measure the analysis holds, and none of an opt-in group it did not compute
    an = stabilitylab.open_analysis(tiny_analyzed[0])
    held = set(an.measure.values) | set(an.data_vars)
    assert [r[0] for r in glossary["rows"]] == [m for m in MEASURES if m in held]
    assert "repaired_instability" in MEASURES and "repaired_instability" not in held
    assert len(glossary["rows"]) >= 15
    units = {r[0]: r[2] for r in glossary["rows"]}
    assert units["instability"] == units["disagreement"] == "percentage points"
    assert all(r[3] for r in glossary["rows"])  # which way is more stable, for each
