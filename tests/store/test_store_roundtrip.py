"""Round trip, laziness and selection of a small fake study."""

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from zarr.storage import LocalStore, WrapperStore

from stabilitylab.core.errors import StoreError
from stabilitylab.store import open_analysis, open_study, validate, write_analysis
from stabilitylab.store.testing import make_fake_store


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("s") / "study.zarr")
    return make_fake_store(url, levels=1, rewinds=(0, 10), replicas=2, n_params=50,
                           controls=("random_prune",))


def _sel(ds, run):
    kind, level, rewind, replica = run
    return ds.sel(kind=kind, level=level, rewind=rewind, replica=replica)


def test_round_trip_exact(fake):
    ds = open_study(fake.url)
    # 2 kinds (imp, random_prune) x 2 levels x 2 rewinds x 2 replicas, planned as in the study
    assert len(fake.runs) == 2 * 2 * 2 + 1 * 1 * 2 * 2
    assert list(ds.kind.values) == ["imp", "random_prune", "reinit"]
    assert ds.kind.dtype.kind == "U"
    assert ds.sizes["param"] == 50 and list(ds.step.values) == [0, 10, 20, 30, 40]
    for run, traj in fake.weights.items():
        r = _sel(ds, run)
        np.testing.assert_array_equal(r.weights.values, traj)
        assert int(r.status) == 2
        for name, values in fake.metrics[run].items():
            np.testing.assert_array_equal(r[name].values, values)
    np.testing.assert_array_equal(ds.dense_weights.values, fake.dense_weights)
    for (kind, level, rewind), mask in fake.masks.items():
        np.testing.assert_array_equal(ds.masks.sel(kind=kind, level=level, rewind=rewind).values, mask)
    assert ds.masks.sel(kind="imp", level=0).values.all()
    absent = ds.status.sel(kind="reinit").values
    assert (absent == 0).all() and int(ds.dense_status[0]) == 2
    assert np.isnan(ds.final_test_acc.sel(kind="reinit").values).all()
    assert ds.attrs["complete"] is True and ds.attrs["schema_version"] == 1
    assert ds.attrs["config"]["study"]["replicas"] == 2
    assert ds.attrs["param_layout"][0]["name"] == "fc.weight"
    k10 = list(ds.step.values).index(10)
    np.testing.assert_array_equal(ds.rewind_state_weights.sel(rewind=10).values, fake.dense_weights[k10])
    assert "metadata consolidated" in validate(fake.url)


class LoggingStore(WrapperStore):
    """Appends every key read to a file (survives the store being pickled/copied by dask)."""

    def __init__(self, store, log_path):
        super().__init__(store)
        self.log_path = str(log_path)

    def _with_store(self, store):
        return type(self)(store, self.log_path)

    def _log(self, keys):
        with open(self.log_path, "a") as f:
            f.writelines(k + "\n" for k in keys)

    async def get(self, key, prototype=None, byte_range=None):
        self._log([key])
        return await self._store.get(key, prototype, byte_range)

    def get_sync(self, key, *args, **kwargs):  # sync fast path of newer zarr
        self._log([key])
        return self._store.get_sync(key, *args, **kwargs)

    async def get_partial_values(self, prototype, key_ranges):
        key_ranges = list(key_ranges)
        self._log(k for k, _ in key_ranges)
        return await self._store.get_partial_values(prototype, key_ranges)


def test_open_is_lazy_and_sel_reads_one_run(fake, tmp_path):
    log = tmp_path / "reads.txt"
    log.touch()
    ds = open_study(LoggingStore(LocalStore(fake.url, read_only=True), log))
    assert isinstance(ds.weights.data, da.Array)
    data_reads = [k for k in log.read_text().split() if "/c/" in k and k.split("/")[0] not in ds.dims]
    assert data_reads == []  # only coordinates (and tiny status arrays, if ever) are read
    log.write_text("")
    run = ("imp", 1, 10, 1)
    np.testing.assert_array_equal(_sel(ds, run).weights.values, fake.weights[run])
    chunks = {k for k in log.read_text().split() if k.startswith("weights/c/")}
    assert chunks and all(k.startswith("weights/c/0/1/1/1/") for k in chunks), chunks


def test_unconsolidated_and_urls(tmp_path):
    url = "file://" + str(tmp_path / "u.zarr")
    fake = make_fake_store(url, levels=0, rewinds=(0,), consolidate=False, complete=False)
    ds = open_study(url)
    assert ds.attrs["complete"] is False
    run = fake.runs[0]
    np.testing.assert_array_equal(_sel(ds, run).weights.values, fake.weights[run])
    assert int(_sel(ds, fake.runs[-1]).status) == 1
    assert "metadata not consolidated" in validate(url)


def test_memory_url(tmp_path):
    pytest.importorskip("fsspec")
    url = f"memory://stabilitylab-test-{tmp_path.name}/m.zarr"
    fake = make_fake_store(url, levels=0, rewinds=(0,))
    ds = open_study(url)
    run = fake.runs[-1]
    np.testing.assert_array_equal(_sel(ds, run).weights.values, fake.weights[run])


def test_precision_bits_lossy_weights_exact_dense(tmp_path):
    fake = make_fake_store(tmp_path / "p.zarr", levels=0, rewinds=(0,), precision_bits=8)
    ds = open_study(tmp_path / "p.zarr")
    run = fake.runs[0]
    got, want = _sel(ds, run).weights.values, fake.weights[run]
    assert not np.array_equal(got, want)
    np.testing.assert_allclose(got, want, rtol=2.0 ** -8)
    np.testing.assert_array_equal(ds.dense_weights.values, fake.dense_weights)
    assert ds.attrs["precision_bits"] == 8


@pytest.mark.filterwarnings("ignore:Consolidated metadata")
def test_open_analysis(fake, tmp_path):
    with pytest.raises(StoreError, match="no 'analysis' group"):
        open_analysis(fake.url)
    fake2 = make_fake_store(tmp_path / "a.zarr", levels=0, rewinds=(0,))
    for n in (2, 4):  # written twice: the second replaces the first
        write_analysis(fake2.url, xr.Dataset(
            {"barrier": (("pair", "alpha"), np.ones((n, 3), np.float32))},
            coords={"alpha": np.linspace(0, 1, 3)}, attrs={"threshold": 0.02}))
    an = open_analysis(fake2.url)
    assert an.barrier.shape == (4, 3) and an.attrs["threshold"] == 0.02
    assert isinstance(an.barrier.data, da.Array)
    ds = open_study(fake2.url)  # the sub-group does not disturb the study
    assert "barrier" not in ds
    assert "analysis group present" in validate(fake2.url)
    with pytest.raises(StoreError, match="no stabilitylab store"):
        write_analysis(tmp_path / "nope.zarr", an)


def test_per_run_arrays_are_read_whole_and_still_guarded(fake, tmp_path):
    """The small per-run arrays (one store chunk per run) are one dask chunk, read by one zarr
    call; the weights keep their per-run chunks; a damaged chunk still raises StoreError."""
    import shutil
    from pathlib import Path

    ds = open_study(fake.url)
    for name in ("status", "final_test_acc", "diverged_step", "density"):
        assert isinstance(ds[name].data, da.Array) and ds[name].data.npartitions == 1, name
    assert ds.weights.data.npartitions > 1
    copy = tmp_path / "damaged.zarr"
    shutil.copytree(Path(fake.url.removeprefix("file://")), copy)
    chunk = next(p for p in (copy / "status" / "c").rglob("*") if p.is_file())
    chunk.write_bytes(b"\x00not a chunk\xff" * 3)
    with pytest.raises(StoreError):
        _ = open_study(str(copy)).status.values
