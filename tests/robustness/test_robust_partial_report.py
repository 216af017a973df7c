"""A partial analysis (made while ``record`` was still writing) says so everywhere it is shown:
the CLI summary's first line, the report's first line, and ``validate``; a density not yet
written prints as unknown, never as 100%."""

from __future__ import annotations

import shutil

import numpy as np
import zarr
from stabilitylab.cli.main import main

import stabilitylab
from stabilitylab.store.writer import write_analysis


def _while_recording(tiny_study, tmp_path):
    """A copy of the tiny study as it is while level 2 trains: incomplete, no mask yet."""
    store = tmp_path / "s.zarr"
    shutil.copytree(tiny_study, store)
    g = zarr.open_group(store, mode="r+", use_consolidated=False)
    status = g["status"][...]
    status[:, 2] = np.where(status[:, 2] != 0, 1, 0)
    g["status"][...] = status
    density = g["density"][...]
    density[:, 2] = np.nan
    g["density"][...] = density
    g.attrs["complete"] = False
    return store


def test_cli_summary_of_a_partial_analysis(tiny_study, tmp_path, capsys):
    store = _while_recording(tiny_study, tmp_path)
    capsys.readouterr()
    rc = main(["analyze", str(store), "--no-progress", "--no-report", "--device", "cpu",
               "--measures", "interpolation"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert out[0].startswith("PARTIAL analysis"), out
    level2 = [line for line in out if line.startswith("level 2 ")]
    assert level2 == ["level 2 (density unknown) instability: k=0: unknown, k=10: unknown"], out
    assert not any("100.0%" in line for line in out if line.startswith("level 2")), out
    assert stabilitylab.open_analysis(store).attrs["partial"] is True


def test_report_and_validate_say_partial(tiny_analyzed, tmp_path, capsys):
    src, _ = tiny_analyzed
    store = tmp_path / "s.zarr"
    shutil.copytree(src, store)
    an = stabilitylab.open_analysis(store).load()
    capsys.readouterr()
    assert main(["validate", str(store)]) == 0
    assert "partial" not in capsys.readouterr().out
    an.attrs["partial"] = True
    write_analysis(store, an)
    out = tmp_path / "report"
    assert main(["report", str(store), "--out", str(out)]) == 0
    first = (out / "report.md").read_text().splitlines()[0]
    assert first.startswith("# PARTIAL stabilitylab report"), first
    assert "the study has finished since" in (out / "report.md").read_text()
    assert "<h1>PARTIAL stabilitylab report" in (out / "index.html").read_text()
    capsys.readouterr()
    assert main(["validate", str(store)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("warning: the analysis is partial"), lines
