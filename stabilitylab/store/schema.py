"""The study-store schema (version 1): dims, arrays, chunking, codecs, storage.

``docs/store-schema.md`` is the human-readable form of this module; keep them in
step. The writer builds a store from :func:`array_specs`, and the validator
checks a store against the same list.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from stabilitylab.core.errors import StoreError

SCHEMA = "stabilitylab.study"
SCHEMA_VERSION = 1
CREATION_LIBRARY = "stabilitylab"

# The run kinds. Every store's ``kind`` coordinate begins with these three; a study that
# trains further kinds (the noise kinds, the pruning-at-init controls, ...) appends those it
# trains in the order of the run-kind registry (stabilitylab.study.kinds, where each kind is
# declared), so a store written before a kind existed is still valid and means the same.
KINDS: tuple[str, ...] = ("imp", "random_prune", "reinit")


def check_kinds(kinds) -> tuple[str, ...]:
    """``kinds`` as a store's ``kind`` coordinate: :data:`KINDS`, then distinct further
    names; ValueError otherwise."""
    kinds = tuple(str(k) for k in kinds)
    if kinds[:len(KINDS)] != KINDS or len(set(kinds)) != len(kinds) or not all(kinds):
        raise ValueError(f"kind coordinate {list(kinds)[:12]}: expected {list(KINDS)} followed "
                         "by distinct further kinds")
    return kinds


RUN_DIMS: tuple[str, ...] = ("kind", "level", "rewind", "replica")

REQUIRED_ATTRS = (
    "schema", "schema_version", "created_at", "creation_library", "versions", "device",
    "seed", "study_id", "config", "param_layout", "buffer_layout", "complete",
)

# Target size of one uncompressed trajectory chunk (c steps x P float32).
CHUNK_BYTES = 1 << 20

# Coordinates: name == dim, 1-D, one chunk.
COORD_DTYPES = {
    "kind": "string", "level": "int64", "rewind": "int64", "replica": "int64",
    "step": "int64", "param": "int64", "buffer": "int64",
    "log_step": "int64", "eval_step": "int64",
}

LOG_METRICS = ("train_loss", "train_acc")
EVAL_METRICS = ("test_loss", "test_acc", "train_eval_loss", "train_eval_acc")
FINAL_METRICS = ("test_acc", "test_loss", "train_eval_acc", "train_eval_loss")
STATE_PREFIX = "rewind_state_"

_RUN = RUN_DIMS
_NAN = float("nan")


@dataclass(frozen=True)
class ArraySpec:
    name: str
    dims: tuple[str, ...]
    dtype: str
    fill: Any


def array_specs(state_names: tuple[str, ...] | list[str] = ()) -> list[ArraySpec]:
    """Every data array of a schema-1 store (coordinates excluded)."""
    f32, nan = "float32", _NAN
    specs = [
        ArraySpec("weights", _RUN + ("step", "param"), f32, 0.0),
        ArraySpec("masks", ("kind", "level", "rewind", "param"), "bool", False),
        ArraySpec("replica_masks", _RUN + ("param",), "bool", False),
        ArraySpec("final_buffers", _RUN + ("buffer",), f32, 0.0),
        ArraySpec("status", _RUN, "int8", 0),
        ArraySpec("diverged_step", _RUN, "int64", -1),
        ArraySpec("density", ("kind", "level", "rewind"), f32, nan),
        ArraySpec("dense_weights", ("step", "param"), f32, 0.0),
        ArraySpec("dense_final_buffers", ("buffer",), f32, 0.0),
        ArraySpec("dense_status", ("dense",), "int8", 0),
        ArraySpec("dense_diverged_step", ("dense",), "int64", -1),
    ]
    for m in LOG_METRICS:
        specs.append(ArraySpec(m, _RUN + ("log_step",), f32, nan))
        specs.append(ArraySpec(f"dense_{m}", ("log_step",), f32, nan))
    for m in EVAL_METRICS:
        specs.append(ArraySpec(m, _RUN + ("eval_step",), f32, nan))
        specs.append(ArraySpec(f"dense_{m}", ("eval_step",), f32, nan))
    for m in FINAL_METRICS:
        specs.append(ArraySpec(f"final_{m}", _RUN, f32, nan))
        specs.append(ArraySpec(f"dense_final_{m}", ("dense",), f32, nan))
    specs.append(ArraySpec("rewind_buffers", ("rewind", "buffer"), f32, 0.0))
    for name in state_list(state_names):
        specs.append(ArraySpec(f"{STATE_PREFIX}{name}", ("rewind", "param"), f32, 0.0))
    return specs


# Arrays added to schema 1 after its first release. A store written before then lacks
# them and is still valid; readers treat the array as all fill values.
# ``replica_masks`` (each run's own mask) exists only in a store whose study trains a kind
# with per-copy masks (``Study.own_mask_kinds``); there ``masks`` holds the union of the
# copies' masks and ``density`` replica 0's density.
LATER_ARRAYS = frozenset({"dense_diverged_step", "replica_masks"})



def state_list(names) -> list[str]:
    """Rewind-state names of a store: always ``weights`` (W_k, exact), then the optimizer's."""
    return ["weights"] + [str(n) for n in names if n != "weights"]



def chunks_for(dims: tuple[str, ...], shape: tuple[int, ...], step_chunk: int) -> tuple[int, ...]:
    """One chunk per run (run dims -> 1), ``step_chunk`` steps, everything else whole."""
    out = []
    for d, n in zip(dims, shape):
        if d in RUN_DIMS:
            out.append(1)
        elif d == "step":
            out.append(max(1, min(step_chunk, n)))
        else:
            out.append(max(1, n))
    return tuple(out)


def default_step_chunk(n_steps: int, n_params: int) -> int:
    """Steps per trajectory chunk: about CHUNK_BYTES uncompressed, at least 1."""
    return max(1, min(max(n_steps, 1), CHUNK_BYTES // max(4 * n_params, 1)))


def codecs_for(spec: ArraySpec, precision_bits: int | None) -> dict:
    """create_array keyword arguments (filters/compressors) for one array.

    Float arrays over ``param``: Blosc(zstd, level 3, byte shuffle). Trajectories are
    also transposed to param-major inside a chunk (each weight's steps adjacent),
    which measured best on pruned float32 trajectories (see docs/store-schema.md).
    Both are core zarr v3 codecs. ``precision_bits`` adds numcodecs BitRound to
    ``weights`` only: ``dense_weights`` (which supply every W_k) stay exact.
    """
    from zarr.codecs import BloscCodec, TransposeCodec, ZstdCodec

    if spec.dtype != "float32" or "param" not in spec.dims:
        return {"compressors": [ZstdCodec(level=3), checksum()]}
    filters: list = []
    if spec.name == "weights" and precision_bits is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "numcodecs codecs are not in the v3 spec"
            filters.append(_numcodec("BitRound")(keepbits=int(precision_bits)))
    if "step" in spec.dims:
        order = list(range(len(spec.dims)))
        order[-2], order[-1] = order[-1], order[-2]
        filters.append(TransposeCodec(order=tuple(order)))
    blosc = BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=4)
    return {"filters": filters, "compressors": [blosc, checksum()]}


def checksum():
    """The last codec of every array: a CRC32C of the stored chunk bytes.

    A truncated or damaged chunk then fails to decode with a checksum error instead of
    decoding to garbage (c-blosc does not bound-check a truncated buffer: it reads past
    its end). ``crc32c`` is a core zarr v3 codec.
    """
    from zarr.codecs import Crc32cCodec

    return Crc32cCodec()


def _numcodec(name: str):
    try:
        import zarr.codecs.numcodecs as zn  # zarr >= 3.1.3
    except ImportError:  # pragma: no cover - older zarr
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import numcodecs.zarr3 as zn
    return getattr(zn, name)


# -- storage -----------------------------------------------------------------

def local_path(url: Any) -> Path | None:
    """The filesystem path of a local store URL/path, or None for other URLs/stores."""
    if isinstance(url, os.PathLike):
        return Path(url)
    if not isinstance(url, str):
        return None
    if url.startswith("file://"):
        return Path(url[len("file://"):])
    if "://" in url:
        return None
    return Path(url)


def describe(url: Any) -> str:
    """How errors name a store: the path/URL the user gave, also when a Store is passed."""
    if isinstance(url, (str, os.PathLike)):
        return str(url)
    root = getattr(url, "root", None)  # LocalStore
    if root is not None:
        return str(root)
    fs, path = getattr(url, "fs", None), getattr(url, "path", None)  # FsspecStore
    if fs is not None and path is not None:
        with contextlib.suppress(Exception):  # any fsspec oddity: fall back to the type
            return fs.unstrip_protocol(path)
    return type(url).__name__


def check_writable(url: Any, *, storage_options: dict | None = None) -> None:
    """One-line StoreError unless a file can be created in the store (and is removed again).

    Called before long work whose result goes into the store (``analyze``), so a
    read-only location (HTTP, a read-only mount, an S3 bucket without write permission)
    fails in a second, not after the computation.
    """
    where = describe(url)
    if isinstance(url, zarr.abc.store.Store):
        if url.read_only:
            raise StoreError(f"cannot write the analysis into {where} (opened read-only)")
        return
    path = local_path(url)
    try:
        if path is not None:
            probe = path / ".stabilitylab-write-probe"
            probe.write_bytes(b"")
            probe.unlink()
            return
        import fsspec

        fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        probe = f"{root.rstrip('/')}/.stabilitylab-write-probe"
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except Exception as e:  # noqa: BLE001 - NotImplementedError (http), PermissionError, ...
        reason = "read-only over HTTP" if str(where).startswith(("http://", "https://")) else one_line(e)
        raise StoreError(f"cannot write the analysis into {where} ({reason}); copy the store "
                         "somewhere writable and analyze the copy") from None


def check_url(url: Any) -> None:
    """StoreError for a store location that cannot be meant: an empty path."""
    if isinstance(url, (str, os.PathLike)) and not os.fspath(url).strip():
        raise StoreError("store path is empty; give a folder or URL with --out")


def check_local_tree(url: Any) -> None:
    """Refuse a local store holding a symlink or a special file (FIFO, device, socket).

    zarr would follow a chunk that is a symlink to ``/dev/zero`` until memory runs out,
    and block forever on a FIFO. Only the store's own entries are checked: the store
    folder itself may be a symlink. A no-op for non-local stores.
    """
    path = local_path(url) if not isinstance(url, zarr.abc.store.Store) else \
        (Path(str(url.root)) if isinstance(url, zarr.storage.LocalStore) else None)
    if path is None or not path.is_dir():
        return
    stack = [str(path)]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as e:
            raise StoreError(f"cannot read store at {describe(url)}: {one_line(e)}") from None
        for entry in entries:
            if entry.is_symlink():
                raise StoreError(f"{describe(url)}: {os.path.relpath(entry.path, path)} is a "
                                 "symbolic link (refused: a store holds plain files only)")
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            elif entry.name == "zarr.json" and entry.stat().st_size > MAX_METADATA_BYTES:
                raise StoreError(f"{describe(url)}: {os.path.relpath(entry.path, path)} is "
                                 f"{entry.stat().st_size} bytes, more than the cap of "
                                 f"{MAX_METADATA_BYTES} for metadata; refused")
            elif not entry.is_file(follow_symlinks=False):
                raise StoreError(f"{describe(url)}: {os.path.relpath(entry.path, path)} is not a "
                                 "regular file (refused: FIFOs, devices and sockets are never read)")


# -- creation state ------------------------------------------------------------------

# zarr's LocalStore temporary file of one write: "<name>.<uuid4 hex>.partial"
PARTIAL_SUFFIX = ".partial"


def creation_state(url: Any, storage_options: dict | None = None) -> str:
    """``"none"`` (nothing there, or an empty folder), ``"half"`` (a stabilitylab store
    whose creation never finished: ``created`` is false, or only a temporary root
    metadata file), ``"created"`` (a finished creation, or a store from before the
    ``created`` marker) or ``"other"`` (something else: not ours, unreadable)."""
    path = local_path(url) if not isinstance(url, zarr.abc.store.Store) else None
    if path is not None:
        if not path.exists():
            return "none"
        if not path.is_dir():
            return "other"
        names = [p.name for p in path.iterdir()]
        if not names:
            return "none"
        if "zarr.json" not in names:
            from stabilitylab.store.lock import LOCK_NAME

            ours = [n for n in names if n == LOCK_NAME
                    or (n.startswith("zarr.json.") and n.endswith(PARTIAL_SUFFIX))]
            return "half" if len(ours) == len(names) else "other"
    try:
        with quiet():
            group = zarr.open_group(open_store(url, read_only=True, storage_options=storage_options),
                                    mode="r", use_consolidated=False)
        attrs = dict(group.attrs)
    except Exception:  # noqa: BLE001 - nothing there, not a group, unreadable
        return "none" if path is None else "other"
    if attrs.get("schema") != SCHEMA:
        return "other"
    return "half" if attrs.get("created") is False else "created"


# -- decoded-size bound ----------------------------------------------------------------

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def declared_size(codec: str, raw: bytes) -> int | None:
    """The decoded size a blosc or zstd stream declares in its header (None: unknown)."""
    if codec in ("blosc", "numcodecs.blosc"):
        return int.from_bytes(raw[4:8], "little") if len(raw) >= 16 else None
    if codec in ("zstd", "numcodecs.zstd"):
        if len(raw) < 5 or raw[:4] != _ZSTD_MAGIC:
            return None
        fhd = raw[4]
        fcs_flag, single, dict_flag = fhd >> 6, (fhd >> 5) & 1, fhd & 3
        pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag]
        size = (1 if single else 0, 2, 4, 8)[fcs_flag]
        if size == 0 or len(raw) < pos + size:
            return None
        value = int.from_bytes(raw[pos:pos + size], "little")
        return value + 256 if size == 2 else value
    return None


class BoundedStore(zarr.storage.WrapperStore):
    """A read-only view that refuses a chunk whose compressed stream declares a decoded
    size beyond what the array's chunk shape and dtype can hold, before anything is
    decompressed (a decompression bomb: a few KB that inflate to GiB)."""

    def __init__(self, store, limits: dict | None = None, where: str = ""):
        super().__init__(store)
        self._limits = limits or {}
        self._where = where

    def _with_store(self, store):
        return type(self)(store, self._limits, self._where)

    async def get(self, key, prototype, byte_range=None):
        buf = await self._store.get(key, prototype, byte_range)
        if buf is not None and byte_range is None and "/c/" in "/" + key:
            name, _, chunk = ("/" + key).rpartition("/c/")
            limit = self._limits.get(name.strip("/"))
            if limit is not None:
                self._check(name.strip("/"), chunk, buf, *limit)
        return buf

    def _check(self, name: str, chunk: str, buf, nbytes: int, codec: str, tail: int) -> None:
        n = len(buf)
        try:  # the header only: no copy of the whole chunk
            head = bytes(buf.as_numpy_array()[:min(32, max(n - tail, 0))])
        except Exception:  # noqa: BLE001 - a buffer type without a host view
            head = buf.to_bytes()[:min(32, max(n - tail, 0))]
        check_declared_size(self._where, name, chunk, declared_size(codec, head), nbytes)


def check_declared_size(where: str, name: str, chunk: str, size: int | None,
                        nbytes: int) -> None:
    """StoreError unless a chunk's stream declares its decoded ``size``, and it is at most
    the ``nbytes`` its chunk shape holds (:class:`BoundedStore`)."""
    if size is None:
        raise StoreError(f"{where}: array {name!r} chunk {chunk} does not declare its "
                         "decoded size (refused: it could inflate without bound)")
    if size > nbytes:
        raise StoreError(f"{where}: array {name!r} chunk {chunk} declares {size} decoded "
                         f"bytes, more than its chunk shape holds ({nbytes}); refused")


def chunk_limits(group: zarr.Group, prefix: str = "") -> dict:
    """``{array path: (max decoded bytes, compressor, checksum bytes)}`` for every array
    below ``group`` whose chain ends in blosc or zstd (optionally then crc32c)."""
    out = {}
    for name, arr in group.arrays():
        meta = arr.metadata.to_dict()
        dt = meta.get("data_type")
        try:
            itemsize = np.dtype(str(dt if not isinstance(dt, dict) else dt.get("name"))).itemsize
        except TypeError:
            continue  # strings: variable length, no fixed bound
        if not itemsize:
            continue
        names = [str(c.get("name", "")) if isinstance(c, dict) else "" for c in meta.get("codecs", ())]
        tail = 0
        if names and names[-1] == "crc32c":
            names, tail = names[:-1], 4
        if not names or names[-1] not in ("blosc", "zstd", "numcodecs.blosc", "numcodecs.zstd"):
            continue
        shape = arr.chunks
        out[prefix + name] = (int(np.prod(shape, dtype=np.int64)) * itemsize, names[-1], tail)
    for name, sub in group.groups():
        out.update(chunk_limits(sub, f"{prefix}{name}/"))
    return out


def open_store(url: Any, *, read_only: bool, storage_options: dict | None = None):
    """A zarr Store for a local path, ``file://`` / fsspec URL, or a Store passed through."""
    if isinstance(url, zarr.abc.store.Store):
        return url
    check_url(url)
    path = local_path(url)
    if path is not None:
        if storage_options:
            raise StoreError(f"storage_options given for local store {url}; they apply to URLs only")
        return zarr.storage.LocalStore(str(path), read_only=read_only)
    try:
        return zarr.storage.FsspecStore.from_url(
            url, storage_options=storage_options or None, read_only=read_only
        )
    except Exception as e:  # noqa: BLE001 - unknown protocol, missing fsspec backend, ...
        raise StoreError(f"cannot open store URL {url}: {one_line(e)}") from None


def open_root(url: Any, *, mode: str, storage_options: dict | None = None,
              use_consolidated: bool | None = None) -> zarr.Group:
    """Open the root group; a missing store or a non-group gives one-line StoreError."""
    store = open_store(url, read_only=(mode == "r"), storage_options=storage_options)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return zarr.open_group(store, mode=mode, use_consolidated=use_consolidated)
    except (FileNotFoundError, KeyError) as e:
        raise StoreError(f"no stabilitylab store at {describe(url)}") from e
    except Exception as e:  # noqa: BLE001 - zarr raises many kinds on foreign data
        if type(e).__name__ in ("GroupNotFoundError", "NodeTypeValidationError"):
            raise StoreError(f"no stabilitylab store at {describe(url)}") from None
        raise StoreError(f"cannot open store at {describe(url)}: {one_line(e)}") from None


def check_ours(attrs: dict, where: str) -> None:
    """StoreError unless attrs say this is a schema-1 (or older) stabilitylab study."""
    if attrs.get("schema") != SCHEMA:
        raise StoreError(f"{where} is not a stabilitylab study store (no schema={SCHEMA!r} attr)")
    version = attrs.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise StoreError(f"{where}: bad schema_version {version!r}")
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{where} was written by a newer stabilitylab (schema {version} > {SCHEMA_VERSION}); upgrade"
        )


@contextlib.contextmanager
def quiet():
    """Silence zarr's notices about non-spec codecs (BitRound) and consolidated metadata."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


@contextlib.contextmanager
def reading(where: str):
    """Turn any failure to read or decode store data into a one-line StoreError."""
    from stabilitylab.core.errors import StabilityLabError

    try:
        yield
    except StabilityLabError:
        raise
    except Exception as e:  # noqa: BLE001 - zarr/numcodecs/OS errors on damaged data
        settle_zarr_tasks()
        raise StoreError(f"cannot read store at {where}: {read_error_text(e)}") from None


def read_error_text(e: BaseException) -> str:
    """One line for a failed chunk read; checksum mismatches get a plain explanation."""
    text = one_line(e)
    if "checksum" in text.lower():
        return "a chunk is truncated or corrupt (checksum mismatch)"
    return text


def settle_zarr_tasks(timeout: float = 10.0) -> None:
    """Let zarr's other chunk tasks of a failed read finish.

    When one chunk of a multi-chunk read fails, zarr abandons the sibling tasks on its
    event loop; if the process then exits they are destroyed mid-flight and asyncio
    prints a page of "Task was destroyed but it is pending!" under our one-line error.
    Best effort: never raises.
    """
    import asyncio

    async def settle():
        me = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    try:
        from zarr.core.sync import sync

        sync(settle(), timeout=timeout + 1)
    except Exception:  # noqa: BLE001, S110 - internal API moved, or called from the loop itself
        pass


class GuardedGetter:
    """A dask ``getitem`` for lazily read store arrays: a chunk that cannot be read or
    decoded (truncated, corrupt, missing metadata) raises :class:`StoreError`, not the
    zarr/numcodecs exception, wherever the array is finally computed."""

    def __init__(self, where: str):
        self.where = where

    def __call__(self, a, b, asarray=True, lock=None):
        from dask.array.core import getter

        with reading(self.where):
            return getter(a, b, asarray=asarray, lock=lock)

    def __dask_tokenize__(self):
        return ("stabilitylab.GuardedGetter", self.where)


def one_line(e: BaseException | str) -> str:
    text = str(e) if str(e) else type(e).__name__
    return " ".join(text.split())


# Caps on what is read from a store's metadata (real values are kilobytes): a hostile
# 100 MB attribute would otherwise be parsed, copied into every report and printed.
MAX_CONFIG_CHARS = 1 << 20  # the root 'config' attribute
MAX_ATTRS_CHARS = 16 << 20  # all attributes of one group or array, as JSON
MAX_METADATA_BYTES = 64 << 20  # one zarr.json file (the root's holds every array's metadata)


def check_json(value: Any, what: str, *, allow_nan: bool = False,
               max_chars: int | None = None) -> Any:
    """Return value if it is plain JSON (str keys; no NaN/inf unless allowed; at most
    ``max_chars`` characters as JSON), else StoreError."""
    try:
        text = json.dumps(value, allow_nan=allow_nan)
    except (TypeError, ValueError) as e:
        raise StoreError(f"{what} is not plain JSON: {one_line(e)}") from None
    except RecursionError:
        raise StoreError(f"{what} is nested too deeply; refused") from None
    if max_chars is not None and len(text) > max_chars:
        raise StoreError(f"{what} are {len(text)} characters as JSON, more than the cap of "
                         f"{max_chars}; refused")
    return value


def library_versions() -> dict[str, str]:
    def v(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "unknown"

    return {
        "stabilitylab": v("stabilitylab"), "torch": v("torch"), "zarr": zarr.__version__,
        "xarray": v("xarray"), "numpy": np.__version__, "python": sys.version.split()[0],
    }
