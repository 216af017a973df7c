"""docs/contributing.md's examples run as written: each section's file is written into a
scratch folder added to its package's path, registers itself under its new name, and is used
(built, loaded, recorded or analyzed); each section's command runs (``record`` as a dry run).

The examples must name new modules: following one verbatim must never collide with a
shipped one ("registered twice")."""

from __future__ import annotations

import importlib
import re
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from stabilitylab.cli.main import main

import stabilitylab
from stabilitylab.study.resolve import resolve_study

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "contributing.md"


def _section(title: str) -> str:
    return DOC.read_text().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _example(title: str) -> tuple[str, str]:
    """(the file's path, its code) of a section."""
    section = _section(title)
    path = re.search(r"\*\*File\*\*: `([^`]+)`", section).group(1)
    code = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)
    assert not (ROOT / path).exists(), f"{path} exists: the example must name a new module"
    return path, code


def _command(title: str) -> list[str]:
    """The section's command (``**Command**:`` then a code block), as ``main``'s argv."""
    section = _section(title)
    block = re.search(r"\*\*Command\*\*:\s*```\n(.*?)```", section, flags=re.DOTALL).group(1)
    argv = shlex.split(block.strip())
    assert argv[0] == "stabilitylab"
    return argv[1:]


def _install(package: str, path: str, code: str, tmp_path, monkeypatch) -> str:
    """Write the example as a module of ``package`` (a scratch folder on its path)."""
    folder = tmp_path / package.replace(".", "_")
    folder.mkdir()
    (folder / Path(path).name).write_text(code)
    pkg = importlib.import_module(package)
    monkeypatch.setattr(pkg, "__path__", [*pkg.__path__, str(folder)])
    module = f"{package}.{Path(path).stem}"
    monkeypatch.delitem(sys.modules, module, raising=False)
    return module


def _rediscover(registry, monkeypatch) -> None:
    """The registry finds the shipped names again (now with the example's), and forgets
    them after the test."""
    monkeypatch.setattr(registry, "_shipped", {})
    monkeypatch.setattr(registry, "_discover", registry._find)


def _dry_run(title: str, tmp_path, monkeypatch, capsys) -> str:
    monkeypatch.chdir(tmp_path)
    assert main([*_command(title), "--dry-run"]) == 0
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing
    return capsys.readouterr().out


def test_the_model_example(tmp_path, monkeypatch, capsys):
    from stabilitylab.models import build_model
    from stabilitylab.models import registry as models
    from stabilitylab.train.check import check_batched

    path, code = _example("A model")
    module = _install("stabilitylab.models", path, code, tmp_path, monkeypatch)
    _rediscover(models.MODELS, monkeypatch)
    assert models.shipped_models()["width_mlp"] == f"{module}:build_width_mlp"
    assert models.model_help()["width_mlp"].startswith("One hidden layer")
    study = resolve_study(tiny_config("model.name='width_mlp'", "model.options.width=8"))
    net = build_model(study.config.model, (1, 40), 10, generator=torch.Generator().manual_seed(0))
    assert net(torch.zeros(3, 1, 40)).shape == (3, 10)
    assert sum(p.numel() for p in net.parameters()) == 40 * 8 + 8 + 8 * 10 + 10
    check_batched(study.config.model, (1, 40), 10)  # the batched engine can train it
    assert "would record to runs/width.zarr" in _dry_run("A model", tmp_path, monkeypatch, capsys)


def test_the_dataset_example(tmp_path, monkeypatch, capsys):
    from stabilitylab.data import load_dataset
    from stabilitylab.data import registry as data

    path, code = _example("A dataset")
    _install("stabilitylab.data", path, code, tmp_path, monkeypatch)
    _rediscover(data.DATASET_NAMES, monkeypatch)
    assert "blobs8" not in data.downloadable()
    assert data.offline_notes()["blobs8"] == "generated from a fixed seed"
    study = resolve_study(tiny_config("data.name='blobs8'", "model.name='mlp'",
                                      "training.batch_size=20"))
    assert study.info.train_size(study.config.data) == 400
    ds = load_dataset(study.config.data)
    assert (ds.train_x.shape, ds.test_x.shape) == ((400, 1, 8), (100, 1, 8))
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert set(ds.train_y.tolist()) == {0, 1, 2, 3}
    assert "would record to runs/blobs.zarr" in _dry_run("A dataset", tmp_path, monkeypatch,
                                                          capsys)


def test_the_run_kind_example(tmp_path, monkeypatch, capsys):
    from stabilitylab.study import kinds

    path, code = _example("A run kind")
    module = _install("stabilitylab.study.kinds", path, code, tmp_path, monkeypatch)
    saved = dict(kinds.REGISTRY)
    try:
        importlib.import_module(module)  # registers the kind
        assert kinds.names()[-1] == "random_global" and "random_global" in kinds.control_names()
        from stabilitylab.report.figures import KIND_LABELS

        assert KIND_LABELS["random_global"] == "global random pruning"
        out = tmp_path / "global.zarr"
        cfg = tiny_config("study.controls=['random_global']", "pruning.levels=1",
                          "training.steps='20it'", "study.rewinds=['0it']",
                          "training.eval_every='10it'")
        stabilitylab.record_study(cfg, str(out), progress=False)
        study = stabilitylab.open_study(out)
        assert tuple(study.kind.values) == ("imp", "random_prune", "reinit", "random_global")
        masks = study.masks.sel(level=1, rewind=0)
        kept = masks.sum("param").values  # one mask per (kind, level, k)
        got = dict(zip(study.kind.values, kept))
        assert got["random_global"] == got["imp"]  # the IMP mask's overall density
        assert not (masks.sel(kind="random_global") == masks.sel(kind="imp")).all()
        assert (study.status.sel(kind="random_global", level=1) > 0).all()
        assert "would record to runs/global.zarr" in _dry_run("A run kind", tmp_path,
                                                              monkeypatch, capsys)
    finally:
        kinds.REGISTRY.clear()
        kinds.REGISTRY.update(saved)


@pytest.fixture
def scratch_measures(monkeypatch):
    from stabilitylab.analysis import registry

    registry.load()  # the shipped modules are imported
    for table in ("GROUPS", "VARIABLES", "_MEASURES"):  # restored after the test
        monkeypatch.setattr(registry, table, dict(getattr(registry, table)))
    return registry


def test_the_measure_example(scratch_measures, tiny_study, tmp_path):
    from stabilitylab.analysis.run import analyze_store

    path, code = _example("A measure")
    exec(compile(code, path, "exec"), {"__name__": "growth_measures"})  # noqa: S102
    assert "growth" in scratch_measures.GROUPS
    store = tmp_path / "s.zarr"
    shutil.copytree(tiny_study, store)
    an = analyze_store(str(store), measures=["growth"], progress=False)["analysis"]
    rate = an.l2_growth_rate.sel(kind="imp", level=1, rewind=0).isel(pair=0)
    curve = an.data_order_l2.sel(kind="imp", level=1, rewind=0).isel(pair=0)
    steps = curve.step.values[curve.step.values > 0][:5]
    expected = np.polyfit(steps, np.log(curve.sel(step=steps).values), 1)[0]
    assert np.isclose(float(rate), expected)


def test_the_optimizer_example(tmp_path, monkeypatch, capsys):
    """The example optimizer registers from its own file, trains on the eager and the compiled
    path, and both reproduce torch.optim.Adamax; the section's command accepts it."""
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "train"))
    from engine_helpers import make_data, tiny_mlp
    from test_engine import resolved_for, run_both

    from stabilitylab.train import optim

    path, code = _example("An optimizer")
    module = _install("stabilitylab.train.optimizers", path, code, tmp_path, monkeypatch)
    saved = dict(optim.OPTIMIZERS)
    try:
        importlib.import_module(module)  # registers "adamax"
        entry = optim.OPTIMIZERS["adamax"]
        assert entry.update.__module__ == module and entry.fields == ("beta1", "beta2", "eps")
        for compiled in ("off", "on"):
            resolved = resolved_for("training.optimizer='adamax'", "training.lr=0.01",
                                    "training.weight_decay=0.001",
                                    f"training.compile='{compiled}'")
            _, result, refs = run_both(tiny_mlp(), make_data(), resolved, seeds=[3, 4])
            for r, ref in enumerate(refs):
                for n, p in ref.named_parameters():
                    torch.testing.assert_close(result.params[n][r], p.detach(), rtol=1e-4,
                                               atol=1e-5)
        assert "would record to runs/adamax.zarr" in _dry_run("An optimizer", tmp_path,
                                                              monkeypatch, capsys)
    finally:
        optim.OPTIMIZERS.clear()
        optim.OPTIMIZERS.update(saved)
