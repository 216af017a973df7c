"""DirectReader (stabilitylab.store.chunks): chunk reads in the calling thread give what
zarr's read gives: the values, the fill value of a chunk never written, and the same
one-line errors on a damaged chunk."""

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stabilitylab.core.errors import StoreError
from stabilitylab.store.chunks import DirectReader
from stabilitylab.store.reader import open_array
from stabilitylab.store.schema import describe, reading
from stabilitylab.store.testing import make_fake_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("direct") / "s.zarr"
    # three step chunks, the last one partial; an incomplete run leaves chunks unwritten
    make_fake_store(str(path), levels=2, rewinds=(0, 10), replicas=3, total_steps=40,
                    record_every=5, step_chunk=4, complete=False, n_params=37)
    return path


def _pair(path):
    arr = open_array(str(path), "weights")
    return arr, DirectReader.of(arr, str(path), describe(str(path)))


def _selections(shape):
    def one(n):
        ints = st.integers(0, n - 1)
        return st.one_of(ints, st.tuples(ints, st.integers(0, n)).map(lambda t: slice(*t)))
    return st.tuples(*(one(n) for n in shape)).flatmap(
        lambda sel: st.integers(0, len(sel)).map(lambda k: sel[:k]))  # trailing dims left out


def test_reads_the_values_zarr_reads(store):
    arr, direct = _pair(store)
    assert direct is not None

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_selections(arr.shape))
    def check(sel):
        want = arr[sel]
        got = direct.read(sel)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)

    check()


def test_unwritten_chunks_read_as_the_fill_value(store):
    arr, direct = _pair(store)
    # the incomplete run (the last planned one) has chunks that were never written
    written = {p.relative_to(store / "weights") for p in (store / "weights").rglob("*")
               if p.is_file() and p.name != "zarr.json"}
    grid = [range(-(-n // c)) for n, c in zip(arr.shape, arr.chunks)]
    missing = [c for c in np.ndindex(*map(len, grid))
               if "c/" + "/".join(map(str, c)) not in {str(w) for w in written}]
    assert missing, "the fixture should leave a chunk unwritten"
    at = tuple(slice(i * c, (i + 1) * c) for i, c in zip(missing[0], arr.chunks))
    got = direct.read(at)
    np.testing.assert_array_equal(got, arr[at])
    assert (got == arr.metadata.fill_value).all()


def test_reads_into_a_view_and_checks_its_shape(store):
    arr, direct = _pair(store)
    buf = np.full((2, 3, 9, 37), -1.0, np.float32)
    direct.read((1, 0, 0, slice(None), slice(2, 9)), out=buf[0, :, 2:])
    np.testing.assert_array_equal(buf[0, :, 2:], arr[1, 0, 0, :, 2:9])
    assert (buf[0, :, :2] == -1).all() and (buf[1] == -1).all()
    with pytest.raises(ValueError, match="shape"):
        direct.read((1, 0, 0), out=buf[0, :, :5])
    with pytest.raises(ValueError, match="step 1"):
        direct.read((1, 0, 0, slice(None), slice(0, 9, 2)))
    with pytest.raises(IndexError):
        direct.read((5,))


def test_threads_read_at_once(store):
    arr, direct = _pair(store)
    cells = list(np.ndindex(*arr.shape[:3]))
    got, errors = {}, []

    def work(part):
        try:
            for _ in range(5):
                for c in part:
                    got[c] = direct.read(c).copy()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(cells[i::3],)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for c in cells:
        np.testing.assert_array_equal(got[c], arr[c])


def test_other_stores_and_codecs_go_through_zarr(tmp_path, store):
    rounded = tmp_path / "r.zarr"
    make_fake_store(str(rounded), precision_bits=10)  # a BitRound filter in the chain
    arr = open_array(str(rounded), "weights")
    assert DirectReader.of(arr, str(rounded), "r") is None
    masks = open_array(str(store), "masks")  # zstd alone, no blosc
    assert DirectReader.of(masks, str(store), "s") is None
    url = f"memory://stabilitylab-direct-{tmp_path.name}/m.zarr"
    make_fake_store(url)
    assert DirectReader.of(open_array(url, "weights"), url, url) is None


def test_without_a_piece_it_uses_zarr_reads(store, monkeypatch):
    import sys

    arr = open_array(str(store), "weights")
    monkeypatch.setitem(sys.modules, "google_crc32c", None)  # as on a zarr without it
    assert DirectReader.of(arr, str(store), "s") is None


def _damaged(tmp_path, damage):
    path = str(tmp_path / "d.zarr")
    make_fake_store(path, levels=1, rewinds=(0, 10), replicas=2, step_chunk=2)
    chunk = next(p for p in sorted((tmp_path / "d.zarr" / "weights").rglob("*"))
                 if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(damage(chunk.read_bytes()))
    arr, direct = _pair(path)
    messages = []
    for read in (direct.read, arr.__getitem__):  # as read_cells reads, with and without
        with pytest.raises(StoreError) as e, reading(describe(path)):
            read((0, 0, 0))
        messages.append(str(e.value))
    return messages


def _bomb(raw: bytes) -> bytes:
    body = bytearray(raw[:-4])
    body[4:8] = (1 << 30).to_bytes(4, "little")  # declares 1 GiB decoded
    import google_crc32c

    return bytes(body) + google_crc32c.value(bytes(body)).to_bytes(4, "little")


@pytest.mark.parametrize("damage", [
    lambda raw: b"not a chunk",  # no declared size
    lambda raw: raw[:-9] + bytes([raw[-9] ^ 1]) + raw[-8:],  # one bit flipped: checksum
    lambda raw: raw[: len(raw) // 2],  # truncated
    _bomb,
], ids=["garbage", "bit flip", "truncated", "bomb"])
def test_a_damaged_chunk_raises_as_through_zarr(tmp_path, damage):
    direct, through_zarr = _damaged(tmp_path, damage)
    assert direct == through_zarr
    assert "\n" not in direct


def test_an_oversized_chunk_file_is_refused_before_it_is_read(tmp_path):
    path = str(tmp_path / "d.zarr")
    make_fake_store(path, levels=1, rewinds=(0, 10), replicas=2, step_chunk=2)
    chunk = next(p for p in sorted((tmp_path / "d.zarr" / "weights").rglob("*"))
                 if p.is_file() and p.name != "zarr.json")
    with open(chunk, "r+b") as f:
        f.truncate(1 << 30)  # sparse: 1 GiB that a reader would have to hold
    _, direct = _pair(path)
    with pytest.raises(StoreError, match="more than a blosc stream"), reading(describe(path)):
        direct.read((0, 0, 0))

