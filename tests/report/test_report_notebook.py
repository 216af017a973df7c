"""reports/explore.ipynb runs top to bottom (nbclient) against a store; so does write_report.

Both run against the tiny recorded study analysed by the real analyze (tests/conftest.py).
"""

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "reports" / "explore.ipynb"

pytestmark = pytest.mark.slow


def run_notebook(store, workdir, monkeypatch, notebook=NOTEBOOK):
    """Execute the notebook with the kernel in ``workdir``; ``store=None`` leaves
    ``STABILITYLAB_STORE`` unset, so the notebook finds its default store itself."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    if store is None:
        monkeypatch.delenv("STABILITYLAB_STORE", raising=False)
    else:
        monkeypatch.setenv("STABILITYLAB_STORE", str(store))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(notebook, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}}).execute()
    return nb


def outputs(nb, kind):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == kind]


def check(nb):
    assert not outputs(nb, "error")
    tables = [o for o in outputs(nb, "execute_result") if "instability" in o.data.get("text/plain", "")]
    assert tables, "the joined instability/accuracy table is missing"
    # a person reads percent / percentage points, and the columns say so (issue 27)
    assert "instability (pp)" in tables[0].data["text/plain"]
    assert "final acc. (%)" in tables[0].data["text/plain"]


def test_notebook_as_shipped_finds_the_default_store_from_reports(tiny_analyzed, tmp_path,
                                                                  monkeypatch):
    """As `jupyter nbconvert --execute reports/explore.ipynb` runs it: the kernel starts in
    reports/ and no STABILITYLAB_STORE is set; runs/mnist1d-default.zarr is found under the
    repository root (here a copy of the layout: reports/ with the notebook, runs/ with a store)."""
    import shutil

    repo = tmp_path / "repo"
    (repo / "reports").mkdir(parents=True)
    for name in ("explore.ipynb", "make_notebook.py"):
        shutil.copy(NOTEBOOK.with_name(name), repo / "reports" / name)
    shutil.copytree(tiny_analyzed[0], repo / "runs" / "mnist1d-default.zarr")
    check(run_notebook(None, repo / "reports", monkeypatch,
                       notebook=repo / "reports" / "explore.ipynb"))


def test_notebook_and_report_on_tiny_study(tiny_analyzed, tmp_path, monkeypatch):
    """A real recorded and analyzed study (tests/conftest.py); failures here are real."""
    from stabilitylab.report import write_report

    store = tiny_analyzed[0]
    check(run_notebook(store, tmp_path, monkeypatch))
    out = write_report(store, out=tmp_path / "report")
    assert (out / "index.html").exists() and (out / "instability.png").exists()
    assert sum(p.stat().st_size for p in out.iterdir()) < 2_000_000
