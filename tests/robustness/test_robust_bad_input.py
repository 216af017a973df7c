"""Bad input through the CLI: one ``error:`` line on stderr, exit code 2, nothing written.

Config files, command-line arguments and damaged / foreign stores. Every case runs
``stabilitylab.cli.main.main`` in-process, from an empty working directory.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny import TINY
from stabilitylab.cli.main import main

import stabilitylab
from stabilitylab.core.errors import StoreError
from stabilitylab.store.testing import make_fake_store


def _sets(items):
    return [a for s in items for a in ("--set", s)]


def _tree(path: Path) -> dict[str, str]:
    """Every file under ``path`` with a hash of its bytes (empty if path is absent)."""
    if path.is_file():
        return {".": hashlib.sha1(path.read_bytes()).hexdigest()}
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _fails(argv, capsys, *, match: str | None = None) -> str:
    """Run the CLI; assert exit code 2 and exactly one ``error:`` line; return that line."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert rc == 2, (rc, out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    if match is not None:
        assert match in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def work(tmp_path, monkeypatch):
    """An empty working directory: anything written by default (runs/, reports/) lands here."""
    wd = tmp_path / "wd"
    wd.mkdir()
    monkeypatch.chdir(wd)
    return wd


def _nothing_written(wd: Path, *keep: Path) -> None:
    extra = sorted(str(p.relative_to(wd)) for p in wd.iterdir() if p not in keep)
    assert not extra, f"the failed command left {extra} behind"


# -- config files ---------------------------------------------------------------------

BAD_TOML = {
    "malformed": ("[training\nlr = 0.1\n", "malformed TOML"),
    "malformed-value": ("[training]\nlr = 0.1.2\n", "malformed TOML"),
    "duplicate-key": ("[training]\nlr = 0.1\nlr = 0.2\n", "malformed TOML"),
    "over-long-integer": ("[training]\nbatch_size = " + "9" * 5000 + "\n", "malformed TOML"),
    "unknown-section": ("[trainig]\nlr = 0.1\n", "unknown section 'trainig'"),
    "unknown-key": ("[training]\nlearning_rate = 0.1\n", "training.learning_rate: unknown key"),
    "section-not-table": ("training = 3\n", "[training] must be a table"),
    "wrong-type-str": ("[training]\nlr = 'fast'\n", "training.lr: expected a number"),
    "wrong-type-float": ("[study]\nreplicas = 2.5\n", "study.replicas: expected an integer"),
    "wrong-type-bool": ("[study]\nreplicas = true\n", "study.replicas: expected an integer"),
    "wrong-type-list": ("[model]\nhidden = 300\n", "model.hidden: expected a list"),
    "wrong-type-date": ("[training]\nlr = 1979-05-27\n", "training.lr: expected a number"),
    "wrong-item-type": ("[study]\nrewinds = ['0it', 1.5]\n", "study.rewinds[1]"),
    "float-overflow": ("[training]\nlr = 1" + "0" * 400 + "\n", "training.lr: number out of range"),
    "int-too-wide": ("[study]\nseed = 9223372036854775808\n", "study.seed: integer out of the 64-bit range"),
    "out-of-range-fraction": ("[pruning]\nfraction = 1.5\n", "pruning.fraction"),
    "out-of-range-replicas": ("[study]\nreplicas = 1\n", "study.replicas"),
    "out-of-range-momentum": ("[training]\nmomentum = -0.1\n", "training.momentum"),
    "nan-lr": ("[training]\nlr = nan\n", "training.lr"),
    "bad-samples": ("[data]\nnum_samples = 55\n", "data.num_samples"),
    "unknown-dataset": ("[data]\nname = 'imagenet'\n", "data.name"),
    "unknown-optimizer": ("[training]\noptimizer = 'lbfgs'\n", "training.optimizer"),
    "batch-too-big": ("[training]\nbatch_size = 100000\n", "training.batch_size"),
    "bad-step-string": ("[training]\nsteps = '10 epochs'\n", "training.steps: bad step string"),
    "unicode-digit-steps": ("[training]\nsteps = '\u00b2'\n", "training.steps"),
    "huge-steps": ("[training]\nsteps = '999999999999it'\n", "training.steps: at most"),
    "too-many-levels": ("[pruning]\nlevels = 100000\n", "pruning.levels"),
    "huge-record-points": ("[study]\nrecord_points = 100000000\n", "study.record_points"),
    "every-1-too-long": ("[training]\nsteps = '5000000it'\n[study]\nrecord = 'every:1'\n",
                         "study.record"),
    "bad-record": ("[study]\nrecord = 'sometimes'\n", "study.record: unknown schedule"),
    "rewind-past-T": ("[training]\nsteps = '100it'\n[study]\nrewinds = ['0it', '200it']\n",
                      "must be < training length T=100"),
    "rewind-at-T": ("[training]\nsteps = '100it'\n[study]\nrewinds = ['100it']\n",
                    "must be < training length T=100"),
    "no-rewinds": ("[study]\nrewinds = []\n", "study.rewinds"),
    "control-level-out-of-range": ("[study]\ncontrol_levels = [5]\n", "study.control_levels"),
}


@pytest.mark.parametrize("case", sorted(BAD_TOML))
def test_bad_config_file(case, work, capsys):
    text, match = BAD_TOML[case]
    cfg = work / "study.toml"
    cfg.write_text(text, encoding="utf-8")
    out = work / "out.zarr"
    _fails(["record", cfg, "--out", out, "--no-progress"], capsys, match=match)
    assert not out.exists()
    _nothing_written(work, cfg)


def test_config_file_that_is_not_text_or_not_there(work, capsys):
    out = work / "out.zarr"
    binary = work / "binary.toml"
    binary.write_bytes(bytes(range(256)) * 4)
    _fails(["record", binary, "--out", out], capsys, match="malformed TOML")
    _fails(["record", work / "missing.toml", "--out", out], capsys, match="not found")
    folder = work / "folder.toml"
    folder.mkdir()
    _fails(["record", folder, "--out", out], capsys, match="not found")
    _fails(["record", "a\nb.toml", "--out", out], capsys, match="not found")  # stays one line
    _fails(["record", "x" * 5000, "--out", out], capsys, match="unknown preset")  # name too long
    assert not out.exists()
    _nothing_written(work, binary, folder)


# -- command-line arguments --------------------------------------------------------------

BAD_ARGS = {
    "unknown-preset": (["record", "no_such_preset"], "unknown preset 'no_such_preset'"),
    "set-without-equals": (["record", "--set", "training.lr"], "expected section.key=value"),
    "set-without-section": (["record", "--set", "lr=0.1"], "expected section.key=value"),
    "set-too-deep": (["record", "--set", "training.lr.x=0.1"], "expected section.key=value"),
    "set-empty-part": (["record", "--set", "training..lr=1"], "expected section.key=value"),
    "set-unknown-section": (["record", "--set", "foo.bar=1"], "unknown section 'foo'"),
    "set-unknown-key": (["record", "--set", "training.speed=1"], "training.speed: unknown key"),
    "set-bad-value": (["record", "--set", "training.lr=abc"], "training.lr: expected a number"),
    "set-empty-value": (["record", "--set", "training.lr="], "training.lr: expected a number"),
    "set-not-a-list": (["record", "--set", "study.rewinds=0it"], "study.rewinds: expected a list"),
    "set-out-of-range": (["record", "--set", "pruning.fraction=0"], "pruning.fraction"),
    "set-rewind-past-T": (["record", "--set", "training.steps='50it'", "--set", "study.rewinds=['60it']"],
                          "must be < training length T=50"),
    "set-newline": (["record", "--set", "training.l\nr=1"], "training.'l\\nr': unknown key"),
    "bad-device": (["record", "--device", "gpu"], "argument --device: invalid choice: 'gpu'"),
    "unknown-option": (["record", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    "negative-rewinds-per-task": (["record", "--rewinds-per-task", "-1"], "rewinds_per_task"),
    "bad-rewinds-per-task": (["record", "--rewinds-per-task", "two"], "argument --rewinds-per-task"),
    "unknown-command": (["frob"], "invalid choice: 'frob'"),
    "no-command": ([], "required: command"),
    "bad-alphas": (["analyze", "x.zarr", "--alphas", "many"], "argument --alphas"),
    "missing-store-arg": (["validate"], "required: store"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARGS))
def test_bad_arguments(case, work, capsys):
    argv, match = BAD_ARGS[case]
    out = work / "out.zarr"
    if argv and argv[0] == "record":
        argv = argv + ["--out", out, "--no-progress"]
    _fails(argv, capsys, match=match)
    assert not out.exists()
    _nothing_written(work)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda(work, capsys):
    out = work / "out.zarr"
    _fails(["record", "--out", out, "--device", "cuda", *_sets(TINY)], capsys,
           match="cuda requested but torch sees no CUDA device")
    assert not out.exists()
    _nothing_written(work)


def test_unknown_layer_in_pruning_ignore(work, capsys):
    out = work / "out.zarr"
    _fails(["record", "--out", out, "--no-progress", *_sets(TINY + ["pruning.ignore=['fc9']"])], capsys,
           match="pruning.ignore: no layer named 'fc9'")
    assert not out.exists()
    _nothing_written(work)


# -- stores that are not ours, newer, or damaged ---------------------------------------------

@pytest.fixture(scope="module")
def fake_stores(tmp_path_factory):
    """A consolidated and an unconsolidated tiny fake store (copy before damaging)."""
    base = tmp_path_factory.mktemp("fake")
    make_fake_store(base / "cons.zarr")
    make_fake_store(base / "plain.zarr", consolidate=False)
    return base


def _edit_json(path: Path, fn) -> None:
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _damage(case: str, store: Path) -> None:
    """Damage a copy of a fake store in one of the ways the tests below name."""
    root = store / "zarr.json"
    if case == "not-ours-attrs":
        _edit_json(root, lambda m: m["attributes"].update(schema="someone.else"))
    elif case == "no-attrs":
        _edit_json(root, lambda m: m.__setitem__("attributes", {}))
    elif case == "newer-schema":
        _edit_json(root, lambda m: m["attributes"].update(schema_version=2))
    elif case == "schema-version-string":
        _edit_json(root, lambda m: m["attributes"].update(schema_version="1"))
    elif case == "config-not-json":
        _edit_json(root, lambda m: m["attributes"].update(config="{not json"))
    elif case == "root-zarr-json-truncated":
        _truncate(root)
    elif case == "root-zarr-json-garbage":
        root.write_bytes(b"\x00\xff" * 100)
    elif case == "array-zarr-json-truncated":
        _truncate(store / "status" / "zarr.json")
    elif case == "array-missing":
        shutil.rmtree(store / "weights")
    elif case == "metric-array-missing":
        shutil.rmtree(store / "test_acc")
    elif case == "final-chunk-missing":
        for p in (store / "weights").rglob("c/0/1/0/0/*/*"):
            p.unlink()
    elif case == "coordinate-chunk-missing":
        (store / "step" / "c" / "0").unlink()
    elif case == "status-chunk-truncated":
        _truncate(store / "status" / "c" / "0" / "0" / "0" / "0")
    elif case == "dense-status-truncated":
        _truncate(store / "dense_status" / "c" / "0")
    elif case == "coordinate-chunk-truncated":
        _truncate(store / "kind" / "c" / "0")
    elif case == "status-out-of-range":
        import zarr

        zarr.open_array(store / "status", mode="r+")[0, 0, 0, 0] = 7
    else:  # pragma: no cover
        raise KeyError(case)


STORE_CASES = [
    "not-ours-attrs", "no-attrs", "newer-schema", "schema-version-string", "config-not-json",
    "root-zarr-json-truncated", "root-zarr-json-garbage", "array-zarr-json-truncated",
    "array-missing", "metric-array-missing", "final-chunk-missing", "coordinate-chunk-missing",
    "status-chunk-truncated", "dense-status-truncated", "coordinate-chunk-truncated",
    "status-out-of-range",
]
EXPECT = {
    "not-ours-attrs": "is not a stabilitylab study store",
    "no-attrs": "is not a stabilitylab study store",
    "newer-schema": "written by a newer stabilitylab (schema 2 > 1)",
    "schema-version-string": "bad schema_version '1'",
    "root-zarr-json-truncated": "cannot open store",
}


@pytest.mark.parametrize("consolidated", [True, False], ids=["consolidated", "plain"])
@pytest.mark.parametrize("case", STORE_CASES)
def test_damaged_or_foreign_store(case, consolidated, fake_stores, work, capsys):
    store = work / "s.zarr"
    shutil.copytree(fake_stores / ("cons.zarr" if consolidated else "plain.zarr"), store)
    _damage(case, store)
    before = _tree(store)
    line = _fails(["validate", store], capsys, match=EXPECT.get(case))
    # the same store through every command that reads it: refused, nothing written
    for argv in (["analyze", store, "--no-progress", "--alphas", "3"], ["report", store]):
        assert _fails(argv, capsys) .startswith("error: ")
    assert _tree(store) == before
    _nothing_written(work, store)
    assert str(store) in line or "s.zarr" in line


@pytest.mark.parametrize("case", ["not-ours-attrs", "newer-schema", "root-zarr-json-truncated",
                                  "status-chunk-truncated"])
def test_resume_refuses_foreign_or_damaged_store(case, fake_stores, work, capsys):
    store = work / "s.zarr"
    shutil.copytree(fake_stores / "plain.zarr", store)
    _damage(case, store)
    before = _tree(store)
    _fails(["record", "--resume", "--out", store, "--no-progress", *_sets(TINY)], capsys)
    assert _tree(store) == before
    _nothing_written(work, store)


def test_resume_of_missing_or_plain_folders(work, capsys):
    missing = work / "missing.zarr"
    _fails(["record", "--resume", "--out", missing, "--no-progress", *_sets(TINY)], capsys,
           match="no stabilitylab store")
    assert not missing.exists()
    plain = work / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("hello")
    _fails(["record", "--resume", "--out", plain, "--no-progress", *_sets(TINY)], capsys)
    _fails(["validate", plain], capsys, match="no stabilitylab store")
    _fails(["validate", plain / "notes.txt"], capsys)
    assert _tree(plain) == {"notes.txt": hashlib.sha1(b"hello").hexdigest()}
    _nothing_written(work, plain)


def test_record_refuses_existing_store_and_nonempty_folder(fake_stores, work, capsys):
    store = work / "s.zarr"
    shutil.copytree(fake_stores / "plain.zarr", store)
    before = _tree(store)
    _fails(["record", "--out", store, "--no-progress", *_sets(TINY)], capsys, match="already exists")
    assert _tree(store) == before


# -- truncated chunks surface as StoreError wherever they are read --------------------------

def test_truncated_weight_chunk_raises_store_error_on_read(fake_stores, work, capsys):
    store = work / "s.zarr"
    shutil.copytree(fake_stores / "cons.zarr", store)
    chunk = next(p for p in sorted((store / "weights").rglob("c/*/*/*/*/*/*")) if p.is_file())
    _truncate(chunk)
    ds = stabilitylab.open_study(store)  # metadata is fine: opening works, lazily
    with pytest.raises(StoreError, match="truncated or corrupt"):
        _ = ds.weights.values
    with pytest.raises(StoreError, match="truncated or corrupt"):
        float(ds.weights.sum())
    from stabilitylab.store import validate

    validate(store)  # the cheap check reads no trajectory chunk ...
    with pytest.raises(StoreError, match="truncated or corrupt"):
        validate(store, deep=True)  # ... the deep one does
    before = _tree(store)
    _fails(["validate", store, "--deep"], capsys, match="truncated or corrupt")
    _fails(["analyze", store, "--no-progress", "--alphas", "3"], capsys)
    assert _tree(store) == before
    _nothing_written(work, store)


def test_garbage_chunk_of_same_length_is_caught_by_checksum(fake_stores, tmp_path):
    store = tmp_path / "s.zarr"
    shutil.copytree(fake_stores / "cons.zarr", store)
    chunk = next(p for p in sorted((store / "masks").rglob("c/*/*/*/*")) if p.is_file())
    chunk.write_bytes(np.random.default_rng(0).bytes(chunk.stat().st_size))
    with pytest.raises(StoreError):
        _ = stabilitylab.open_study(store).masks.values
