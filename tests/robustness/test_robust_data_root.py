"""A store's content never decides where files go: the data root comes from the user.

A store whose saved ``config`` attribute sets ``data.root`` to some folder must not make
``analyze`` read or write there (it once wrote the mnist1d cache to ``/etc``). The data root
is ``--data-root``, else ``$STABILITYLAB_DATA``, else the documented default.
"""

from __future__ import annotations

import json
import warnings

import pytest
import zarr
from _tiny import TINY
from stabilitylab.cli.main import main

import stabilitylab
from stabilitylab.data import DATA_ENV

CACHE = "mnist1d_n500_seed42.npz"  # the tiny study's data.num_samples = 500


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    store = tmp_path_factory.mktemp("dataroot") / "tiny.zarr"
    cheap = TINY + ["pruning.levels=0", "training.steps='20it'"]  # dense copies only: seconds
    stabilitylab.record_study(stabilitylab.load_config(None, cheap), str(store), progress=False)
    return store


def _plant_root(src, dst, root: str):
    """Copy the store and make its saved config say ``data.root = root``."""
    import shutil

    shutil.copytree(src, dst)
    group = zarr.open_group(str(dst), mode="r+", use_consolidated=False)
    config = json.loads(group.attrs["config"])  # stored as a JSON string
    config["data"] = {**config["data"], "root": root}
    group.attrs["config"] = json.dumps(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr: consolidated metadata is not in the v3 spec
        zarr.consolidate_metadata(str(dst))
    assert stabilitylab.open_study(dst).attrs["config"]["data"]["root"] == root


def _tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def test_store_data_root_is_ignored_env_decides(recorded, tmp_path, monkeypatch, capsys):
    trap = tmp_path / "trap"  # what the store asks for: must stay empty
    trap.mkdir()
    user = tmp_path / "user-data"
    store = tmp_path / "s.zarr"
    _plant_root(recorded, store, str(trap))
    monkeypatch.setenv(DATA_ENV, str(user))
    monkeypatch.chdir(tmp_path)
    rc = main(["analyze", str(store), "--no-report", "--no-progress", "--alphas", "3"])
    assert rc == 0, capsys.readouterr().err
    assert _tree(trap) == []
    assert (user / CACHE).is_file()  # the cache went where the user said


def test_store_relative_data_root_is_ignored_flag_decides(recorded, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    store = tmp_path / "s.zarr"
    _plant_root(recorded, store, "../escaped")  # relative to wherever analyze runs
    flag = tmp_path / "flag-data"
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "env-data"))
    monkeypatch.chdir(work)
    rc = main(["analyze", str(store), "--no-report", "--no-progress", "--alphas", "3",
               "--data-root", str(flag)])
    assert rc == 0, capsys.readouterr().err
    assert not (tmp_path / "escaped").exists() and _tree(work) == []
    assert (flag / CACHE).is_file() and not (tmp_path / "env-data").exists()
