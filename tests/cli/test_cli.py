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


def test_help_says_what_the_tool_does_with_examples(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "weight-space stability of lottery tickets" in out
    assert out.count("  stabilitylab ") >= 3  # example commands
    assert "parses arguments" not in out


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"stabilitylab {version('stabilitylab')}"


@pytest.mark.parametrize("command", ["record", "analyze", "report", "validate"])
def test_every_option_and_positional_has_help(command, capsys):
    import argparse

    from stabilitylab.cli.main import _parser

    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    for action in sub.choices[command]._actions:
        assert action.help, f"{command} {action.dest} has no help text"
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    if command == "analyze":
        for name in ("instability", "gradient_noise_scale", "trajectory", "aligned"):
            assert name in out


def test_unknown_option_points_to_the_subcommand_help(capsys):
    assert main(["record", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert "--bogus" in err and "`stabilitylab record --help`" in err


def test_measures_accept_measure_and_group_names():
    from stabilitylab.analysis.run import measure_groups
    from stabilitylab.core.errors import StabilityLabError

    assert measure_groups(["instability", "rhat"]) == ("interpolation", "replica")
    assert measure_groups(["trajectory", "sign_flips"]) == ("trajectory",)
    assert measure_groups(None)[0] == "trajectory"
    with pytest.raises(StabilityLabError, match="aligned_instability"):  # lists valid names
        measure_groups(["nonsense"])


def test_study_name_reflects_overrides():
    from stabilitylab.cli.main import _default_out, _named_for_overrides

    from stabilitylab.config import load_config, study_id

    def named(overrides):
        return _named_for_overrides(load_config(None, overrides), None, overrides)

    plain = named([])
    assert plain.study.name == "mnist1d-default"
    changed = named(["pruning.levels=0"])
    assert changed.study.name == f"mnist1d-default-{study_id(changed)}" != plain.study.name
    assert _default_out(changed) == f"runs/mnist1d-default-{study_id(changed)}.zarr"
    assert named(["study.device='cpu'"]).study.name == "mnist1d-default"  # places, not changes
    assert named(["pruning.levels=0", "study.name='which-k'"]).study.name == "which-k"
