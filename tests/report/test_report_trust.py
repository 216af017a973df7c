"""`stabilitylab report STORE` must not import a plugin module a store names unless the user
trusts the store (`--trust-plugins`): importing a module runs its code."""

import sys
import textwrap

import pytest
from stabilitylab.cli.main import main

TINY = ["training.steps='20it'", "study.rewinds=['0it','10it']", "study.replicas=2",
        "pruning.levels=1", "data.num_samples=500", "training.eval_every='10it'",
        "training.log_every='5it'", "study.record='endpoints'"]

MODULE = "slab_marker_plugin"
PLUGIN = '''
import os
import pathlib

pathlib.Path(os.environ["SLAB_MARKER"]).write_text("imported")

from torch import nn


def tiny(cfg, input_shape, num_classes):
    n = 1
    for s in input_shape:
        n *= s
    return nn.Sequential(nn.Flatten(), nn.Linear(n, 8), nn.ReLU(), nn.Linear(8, num_classes))
'''


@pytest.fixture
def marker_plugin(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / f"{MODULE}.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(folder))
    marker = tmp_path / "marker"
    monkeypatch.setenv("SLAB_MARKER", str(marker))
    monkeypatch.delenv("STABILITYLAB_TRUST_PLUGINS", raising=False)
    yield marker
    sys.modules.pop(MODULE, None)


def test_report_refuses_a_stores_plugin_without_trust(tmp_path, capsys, marker_plugin):
    out = tmp_path / "s.zarr"
    args = ["record", "--out", str(out), "--no-progress"]
    for s in (*TINY, f"model.name='{MODULE}:tiny'"):
        args += ["--set", s]
    assert main(args) == 0, capsys.readouterr().err
    assert marker_plugin.exists()  # the user's own record imports it
    marker_plugin.unlink()
    sys.modules.pop(MODULE, None)
    capsys.readouterr()

    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--trust-plugins" in err[0] and f"{MODULE}:tiny" in err[0]
    assert not marker_plugin.exists()  # the module's import-time code did not run
    assert MODULE not in sys.modules
    assert not (tmp_path / "rep").exists()  # nothing half-written

    assert main(["report", str(out), "--out", str(tmp_path / "rep"), "--trust-plugins"]) == 0
    assert (tmp_path / "rep").is_dir()
