"""validate(): cheap schema checks, one-line StoreErrors."""

import json
import shutil

import pytest
import zarr

from stabilitylab.core.errors import StoreError
from stabilitylab.store import open_study, validate
from stabilitylab.store.testing import make_fake_store


@pytest.fixture
def store(tmp_path):
    fake = make_fake_store(tmp_path / "v.zarr", levels=0, rewinds=(0, 10), consolidate=False)
    return fake.url


def _edit(path, fn):
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta))


def _fails(url, pattern):
    with pytest.raises(StoreError, match=pattern) as e:
        validate(url)
    assert "\n" not in str(e.value)


def test_valid_store_passes(store):
    notes = validate(store)
    assert any("runs: 4/4 finished" in n for n in notes)


def test_missing_array(store):
    shutil.rmtree(store / "density")
    _fails(store, "missing array 'density'")
    with pytest.raises(StoreError, match="missing array"):
        open_study(store)


def test_wrong_dims(store):
    _edit(store / "masks" / "zarr.json",
          lambda m: m.__setitem__("dimension_names", ["kind", "level", "replica", "param"]))
    _fails(store, r"array 'masks' has dims \('kind', 'level', 'replica', 'param'\)")


def test_wrong_shape(store):
    zarr.open_array(str(store / "density"), mode="r+").resize((3, 1, 3))
    _fails(store, r"array 'density' has shape \(3, 1, 3\), but its coordinates give \(3, 1, 2\)")


def test_status_out_of_range(store):
    zarr.open_array(str(store / "status"), mode="r+")[0, 0, 0, 0] = 9
    _fails(store, "status value 9 out of range")


def test_complete_run_without_final_chunk(store):
    # step chunk 2 over steps (0, 10, 20, 30, 40): step 40 is chunk 2
    (store / "weights" / "c" / "0" / "0" / "1" / "1" / "2" / "0").unlink()
    _fails(store, r"run \(imp, 0, 10, 1\) is marked complete but array .weights. lacks its chunk \[0, 0, 1, 1, 2, 0\]")


def test_complete_flag_with_unfinished_runs(tmp_path):
    fake = make_fake_store(tmp_path / "i.zarr", levels=0, rewinds=(0,), complete=False,
                           consolidate=False)
    validate(fake.url)
    _edit(fake.url / "zarr.json", lambda m: m["attributes"].__setitem__("complete", True))
    _fails(fake.url, "marked complete but 1 planned runs are unfinished")


def test_not_ours_newer_and_missing_attrs(store, tmp_path):
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w", attributes={"x": 1})
    _fails(tmp_path / "other.zarr", "is not a stabilitylab study store")
    _fails(tmp_path / "nothing", "no stabilitylab store at")
    _edit(store / "zarr.json", lambda m: m["attributes"].pop("param_layout"))
    _fails(store, "missing root attribute 'param_layout'")
    _edit(store / "zarr.json", lambda m: m["attributes"].__setitem__("schema_version", 3))
    _fails(store, r"written by a newer stabilitylab \(schema 3 > 1\)")


def test_pickles_and_objects_refused(store):
    def add_pickle(m):
        m["codecs"].insert(0, {"name": "numcodecs.pickle", "configuration": {}})

    _edit(store / "masks" / "zarr.json", add_pickle)
    _fails(store, "pickle")
    _edit(store / "masks" / "zarr.json", lambda m: (m["codecs"].pop(0), m.__setitem__("data_type", "object")))
    _fails(store, "object")
