"""The command line: thin, one-line errors, nothing written on bad input."""

import shutil

import pytest

from stabilitylab.cli.main import main


def test_presets(capsys):
    assert main(["presets"]) == 0
    assert "mnist1d_default" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["record", "no_such_preset"],
    ["record", "--set", "training.lr=-1"],
    ["record", "--set", "pruning.fraction=2"],
    ["record", "--set", "nonsense"],
    ["validate", "/nonexistent/store.zarr"],
    ["analyze", "/nonexistent/store.zarr"],
])
def test_bad_input_is_one_line_and_writes_nothing(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv + (["--out", "x.zarr"] if argv[0] == "record" else [])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert list(tmp_path.iterdir()) == []


def test_validate_and_report(tiny_study, tmp_path, capsys):
    store = tmp_path / "s.zarr"
    shutil.copytree(tiny_study, store)
    assert main(["validate", str(store)]) == 0
    assert "valid" in capsys.readouterr().out
    assert main(["report", str(store), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "index.html").exists()
