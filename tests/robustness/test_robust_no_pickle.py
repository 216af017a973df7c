"""Nothing we read executes code: no pickle in the package, and crafted stores that would
unpickle (pickle codecs, object dtypes, pickled attributes) are refused with StoreError
before a single chunk is decoded."""

from __future__ import annotations

import base64
import json
import os
import pickle
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zarr
from _scan_source import ALLOWED_PICKLE, package_files, scan
from stabilitylab.cli.main import main
from zarr.abc.codec import ArrayBytesCodec

import stabilitylab
from stabilitylab.core.errors import StoreError
from stabilitylab.store import open_analysis, open_study, validate
from stabilitylab.store.testing import make_fake_store


def test_no_pickle_no_eval_in_the_package():
    # A fresh interpreter (see _scan_source.py), running only the stdlib scanner.
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("_scan_source.py"))],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["files"] == len(package_files()) > 50
    assert not result["problems"], result["problems"]
    assert result["allowed_seen"] == ALLOWED_PICKLE, result["allowed_seen"]


def test_the_scanner_finds_what_it_forbids(tmp_path):
    """The scanner itself flags each forbidden pattern (so a silent scanner cannot pass)."""
    bad = tmp_path / "probe.py"
    src = ("import pickle\nimport torch, numpy as np\npickle.loads(b'')\ntorch.load('x')\n"
           "np.load('x')\neval('1')\n")
    bad.write_text(src)
    res = scan([bad])
    text = " ".join(res["problems"])
    for needle in ("import pickle", "pickle.loads()", "torch.load without", "np.load without", "builtin eval"):
        assert needle in text, (needle, res)


# -- crafted stores ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _PickleCodec(ArrayBytesCodec):
    """What a zarr-v3 ``numcodecs.pickle`` codec does when installed: unpickles every chunk."""

    is_fixed_size = False

    @classmethod
    def from_dict(cls, data):
        return cls()

    def to_dict(self):
        return {"name": "numcodecs.pickle", "configuration": {}}

    async def _decode_single(self, chunk_bytes, chunk_spec):
        arr = np.asarray(pickle.loads(chunk_bytes.to_bytes()))
        return chunk_spec.prototype.nd_buffer.from_numpy_array(
            arr.astype(chunk_spec.dtype.to_native_dtype()).reshape(chunk_spec.shape))

    async def _encode_single(self, chunk_array, chunk_spec):
        return chunk_spec.prototype.buffer.from_bytes(pickle.dumps(chunk_array.as_numpy_array()))

    def compute_encoded_size(self, input_byte_length, chunk_spec):  # pragma: no cover
        raise NotImplementedError


class _Payload:
    """Unpickling this creates a folder: proof that code ran."""

    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (os.makedirs, (self.sentinel,))


@pytest.fixture
def pickle_codec():
    """Register an unpickling codec under the name numcodecs.pickle (as an older numcodecs
    did), so the stores below would really run code if anything decoded them."""
    zarr.registry.register_codec("numcodecs.pickle", _PickleCodec)
    yield
    getattr(zarr.registry, "__codec_registries").pop("numcodecs.pickle", None)


@pytest.fixture(scope="module")
def base_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("pk") / "s.zarr"
    make_fake_store(path, consolidate=False)
    return path


def _armed_array(group_path: Path, name: str, sentinel: Path) -> None:
    """Add ``name``: an int64 array whose only chunk is a malicious pickle."""
    g = zarr.open_group(group_path, mode="a")
    a = g.create_array(name, shape=(2,), dtype="int64", serializer=_PickleCodec(), compressors=None,
                       fill_value=0)
    a[:] = [1, 2]
    (group_path / name / "c" / "0").write_bytes(pickle.dumps(_Payload(sentinel)))


def _refused_everywhere(store: Path, sentinel: Path, capsys, *, analysis: bool = False,
                        match: str | None = "pickle") -> None:
    with pytest.raises(StoreError, match=match):
        validate(store)
    with pytest.raises(StoreError):
        open_study(store)
    if analysis:
        with pytest.raises(StoreError):
            open_analysis(store)
    for argv in (["validate", str(store)], ["report", str(store), "--out", str(store.parent / "rep")],
                 ["analyze", str(store), "--no-progress", "--no-report"]):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err
    assert not sentinel.exists(), "a pickle in the store was executed"
    assert not (store.parent / "rep").exists()


def test_armed_pickle_array_is_live_but_never_decoded(base_store, tmp_path, pickle_codec, capsys):
    store, sentinel = tmp_path / "s.zarr", tmp_path / "PWNED"
    shutil.copytree(base_store, store)
    _armed_array(store, "evil", sentinel)
    # sanity: the payload is live -- plain zarr runs it
    with pytest.raises(Exception):  # noqa: B017 - decoding "succeeds" in running the payload
        zarr.open_array(store / "evil")[:]
    assert sentinel.exists()
    os.rmdir(sentinel)
    _refused_everywhere(store, sentinel, capsys)


def test_pickle_array_in_the_analysis_group(base_store, tmp_path, pickle_codec, capsys):
    """open_analysis decodes the analysis group's index coordinates eagerly: it must check first."""
    store, sentinel = tmp_path / "s.zarr", tmp_path / "PWNED"
    shutil.copytree(base_store, store)
    analysis = zarr.open_group(store / "analysis", mode="w")
    _armed_array(store / "analysis", "alpha", sentinel)
    meta_path = store / "analysis" / "alpha" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["dimension_names"] = ["alpha"]
    meta_path.write_text(json.dumps(meta))
    del analysis
    _refused_everywhere(store, sentinel, capsys, analysis=True)


def test_pickle_codec_inside_a_sharding_codec(base_store, tmp_path, pickle_codec, capsys):
    store, sentinel = tmp_path / "s.zarr", tmp_path / "PWNED"
    shutil.copytree(base_store, store)
    g = zarr.open_group(store, mode="a")
    from zarr.codecs import ShardingCodec

    a = g.create_array("evil", shape=(2,), dtype="int64", compressors=None, fill_value=0,
                       serializer=ShardingCodec(chunk_shape=(2,), codecs=[_PickleCodec()]))
    a[:] = [1, 2]
    _refused_everywhere(store, sentinel, capsys)
    assert zarr.open_array(store / "evil")[:].tolist() == [1, 2]  # (it is a working array)


def test_pickle_codec_without_the_codec_installed(base_store, tmp_path, capsys):
    """Without an unpickling codec zarr cannot even parse the metadata: still one StoreError."""
    store, sentinel = tmp_path / "s.zarr", tmp_path / "PWNED"
    shutil.copytree(base_store, store)
    meta_path = store / "masks" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["codecs"] = [{"name": "numcodecs.pickle", "configuration": {}}]
    meta_path.write_text(json.dumps(meta))
    _refused_everywhere(store, sentinel, capsys, match=None)  # zarr: unknown codec


@pytest.mark.parametrize("dtype", ["object", "numcodecs.object", {"name": "object"}, "|O"])
def test_object_dtype_array_refused(base_store, tmp_path, capsys, dtype):
    store, sentinel = tmp_path / "s.zarr", tmp_path / "PWNED"
    shutil.copytree(base_store, store)
    meta_path = store / "density" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["data_type"] = dtype
    meta_path.write_text(json.dumps(meta))
    _refused_everywhere(store, sentinel, capsys, match="object|data type")


def _pickle_b64(sentinel: Path, protocol: int) -> str:
    return base64.b64encode(pickle.dumps(_Payload(sentinel), protocol=protocol)).decode()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("where", ["config", "versions", "extra", "nested", "array"])
def test_pickled_attribute_refused(base_store, tmp_path, capsys, protocol, where):
    store, sentinel = tmp_path / "s.zarr", tmp_path / "PWNED"
    shutil.copytree(base_store, store)
    blob = _pickle_b64(sentinel, protocol)
    path = store / ("status" if where == "array" else "") / "zarr.json"
    meta = json.loads(path.read_text())
    attrs = meta.setdefault("attributes", {})
    if where == "versions":
        attrs["versions"]["torch"] = blob
    elif where == "nested":
        attrs["param_layout"][0]["note"] = [{"x": blob}]
    elif where in ("extra", "array"):
        attrs["payload"] = blob
    else:
        attrs["config"] = blob
    path.write_text(json.dumps(meta))
    _refused_everywhere(store, sentinel, capsys)


def test_raw_protocol0_pickle_attribute_refused(base_store, tmp_path, capsys):
    store, sentinel = tmp_path / "s.zarr", tmp_path / "PWNED"
    shutil.copytree(base_store, store)
    path = store / "zarr.json"
    meta = json.loads(path.read_text())
    meta["attributes"]["payload"] = pickle.dumps(_Payload(sentinel), protocol=0).decode("latin-1")
    path.write_text(json.dumps(meta))
    _refused_everywhere(store, sentinel, capsys)


def test_reading_never_unpickles_store_bytes(base_store, monkeypatch):
    """A normal store is read (opened, validated, every array computed) without any of its
    bytes reaching pickle. (dask round-trips its *own* pickles when tokenizing; those are
    recorded and ignored.)"""
    seen: list[bytes] = []
    real_loads = pickle.loads

    def spy_loads(data, *a, **k):
        seen.append(bytes(data))
        return real_loads(data, *a, **k)

    def no_load(*a, **k):
        raise AssertionError("pickle.load called while reading a store")

    monkeypatch.setattr(pickle, "loads", spy_loads)
    monkeypatch.setattr(pickle, "load", no_load)
    validate(base_store, deep=True)
    ds = stabilitylab.open_study(base_store)
    for name in ds.data_vars:
        np.asarray(ds[name].values)
    stored = {p.read_bytes() for p in base_store.rglob("*") if p.is_file()}
    assert not any(s in stored for s in seen)
