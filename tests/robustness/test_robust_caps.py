"""The cheaper reliability cases: levels that can prune nothing more are announced before
training; what is read from store attributes and OpenLTH text files is capped (one line);
a config nested 200k deep is named as such (not as "array metadata")."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import zarr
from stabilitylab.cli.main import main

from stabilitylab.core.errors import CheckpointError
from stabilitylab.prune.masks import first_idle_level
from stabilitylab.testing import tiny_config


def test_first_idle_level_counts_what_the_rule_prunes():
    # global 20%: 10 -> 8 -> 6 -> 5 -> 4 -> 3 -> 2 -> 2 (round(0.4) == 0): level 7 is idle
    assert first_idle_level([4, 6], 0.2, "global", range(20)) == 7
    assert first_idle_level([4, 6], 0.2, "global", range(7)) is None
    # layerwise: idle only when no tensor loses a weight
    assert first_idle_level([1, 100], 0.5, "layerwise", range(20)) == 7  # 100 -> ... -> 1
    assert first_idle_level([4, 6], 0.5, "global", range(3)) is None


def test_record_warns_before_training_idle_levels(caplog):
    from stabilitylab.study.context import TaskContext
    from stabilitylab.study.runner import _warn_idle_levels

    ctx = TaskContext(tiny_config("pruning.levels=50"), "cpu")
    with caplog.at_level(logging.WARNING):
        _warn_idle_levels(ctx)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "prune nothing more" in lines[0], lines
    ctx = TaskContext(tiny_config("pruning.levels=3"), "cpu")
    caplog.clear()
    _warn_idle_levels(ctx)
    assert not caplog.records


def test_openlth_text_files_are_capped(tmp_path):
    from stabilitylab.interop.openlth import MAX_HPARAMS_BYTES, read_capped

    path = tmp_path / "hparams.log"
    path.write_bytes(b"x" * (MAX_HPARAMS_BYTES + 1))
    with pytest.raises(CheckpointError, match=r"hparams.log: 1048577 bytes, more than the 1048576"):
        read_capped(path, MAX_HPARAMS_BYTES)
    path.write_text("ok")
    assert read_capped(path, MAX_HPARAMS_BYTES) == "ok"


def _with_config(tiny_study, tmp_path, text: str):
    store = tmp_path / "s.zarr"
    shutil.copytree(tiny_study, store)
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["config"] = text
    (store / "zarr.json").write_text(json.dumps(meta))
    return store


@pytest.mark.parametrize("case", ["huge", "deep"])
def test_a_hostile_config_attribute_is_one_line(tiny_study, tmp_path, capsys, case):
    config = dict(zarr.open_group(tiny_study, mode="r").attrs)["config"]
    text = config + " " * (2 << 20) if case == "huge" else "[" * 200_000 + "]" * 200_000
    store = _with_config(tiny_study, tmp_path, text)
    capsys.readouterr()
    assert main(["report", str(store), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "attribute 'config'" in err, err
    assert "array metadata" not in err
    assert ("more than the 1048576" if case == "huge" else "nested too deeply") in err
    assert not (tmp_path / "r").exists()


def test_huge_analysis_attributes_are_refused(tiny_analyzed, tmp_path):
    import stabilitylab
    from stabilitylab.core.errors import StoreError

    src, _ = tiny_analyzed
    store = tmp_path / "s.zarr"
    shutil.copytree(src, store)
    meta_path = store / "analysis" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["skipped"] = ["x" * 1000] * 20_000  # 20 MB of "skipped" lines
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="more than the cap of"):
        stabilitylab.open_analysis(store)
