"""Check a study store against schema 1 (docs/store-schema.md), cheaply.

Only metadata, coordinates and the tiny status arrays are read; trajectory chunks
are checked for presence (final step of each complete run), never loaded.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass

import numpy as np
import zarr

from stabilitylab.core import keys as K
from stabilitylab.core.errors import StoreError
from stabilitylab.core.registry import check_trusted, untrusted
from stabilitylab.store import schema as S

# zarr v3 data type names we accept anywhere in a store (no objects, no pickles).
_SAFE_DTYPES = {
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128", "string", "fixed_length_utf32",
}
_STRING_DTYPES = {"string", "fixed_length_utf32"}

# Codecs we decode: the core zarr v3 ones and numcodecs' numeric ones. Anything else
# (numcodecs.pickle, msgpack/json object codecs, codecs from unknown plugins) is refused
# before a single chunk is read: decoding a pickle executes code.
_SAFE_CODECS = {
    "bytes", "transpose", "blosc", "zstd", "gzip", "crc32c", "sharding_indexed",
    "vlen-utf8", "vlen-bytes", "endian",
} | {f"numcodecs.{n}" for n in (
    "bitround", "blosc", "zstd", "zlib", "gzip", "bz2", "lzma", "lz4", "delta", "shuffle",
    "fixedscaleoffset", "quantize", "packbits", "astype", "crc32", "crc32c", "adler32",
    "fletcher32", "jenkins_lookup3", "pcodec", "zfpy",
)}

# validate(deep=True) reads arrays up to this size in one go, bigger ones chunk by chunk.
_WHOLE_READ_BYTES = 64 << 20

# Coordinates are read whole; a length beyond this is a damaged (or hostile) shape.
_MAX_COORD = 10**8


def _meta(arr) -> dict:
    return arr.metadata.to_dict()


def _dtype_name(meta: dict) -> str:
    dt = meta.get("data_type")
    return dt.get("name", "?") if isinstance(dt, dict) else str(dt)


_PICKLE_GLOBAL = re.compile(rb"(?:^|[\n(}\]])c[\w.]+\n[\w.]+\n")


def _looks_pickled(text: str) -> bool:
    """Whether a string attribute is a pickle (raw, or base64): protocol 2+ starts with
    PROTO (0x80, 2..5); protocols 0/1 import with GLOBAL (``c<module>\\n<name>\\n``) and
    end with STOP (``.``). We never unpickle attributes; such a store is refused outright."""
    if len(text) < 4:
        return False
    candidates = []
    try:
        candidates.append(text.encode("latin-1"))
    except UnicodeEncodeError:
        pass
    if len(text) % 4 == 0:
        try:
            candidates.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            pass
    for raw in candidates:
        if len(raw) >= 2 and raw[0] == 0x80 and 2 <= raw[1] <= 5:
            return True
        if raw.rstrip().endswith(b".") and _PICKLE_GLOBAL.search(raw):
            return True
    return False


def _check_no_pickles(value, what: str) -> None:
    if isinstance(value, str):
        if _looks_pickled(value):
            raise StoreError(f"{what} holds a pickled object (refused: pickles can run code)")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_no_pickles(k, what)
            _check_no_pickles(v, what)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_no_pickles(v, what)


def _codec_names(codecs) -> list[str]:
    """Names of a codec chain, including the inner chains of sharding codecs."""
    names = []
    for codec in codecs or ():
        if isinstance(codec, dict):
            names.append(str(codec.get("name", "?")))
            config = codec.get("configuration")
            if isinstance(config, dict):
                for key in ("codecs", "index_codecs"):
                    if isinstance(config.get(key), (list, tuple)):
                        names += _codec_names(config[key])
        else:  # a codec object: its JSON form
            to_dict = getattr(codec, "to_dict", None)
            names += _codec_names([to_dict()]) if callable(to_dict) else [type(codec).__name__]
    return names


def check_safe(group: zarr.Group, where: str) -> None:
    """StoreError unless every array below ``group`` has a plain dtype and only known,
    code-free codecs (no pickles, no objects) and every attribute is plain JSON."""
    with S.quiet():
        try:
            _check_safe(group, where)
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001 - unknown codec/dtype in the metadata itself
            raise StoreError(f"{where}: unreadable array metadata: {S.one_line(e)}") from None


def _check_safe(group: zarr.Group, where: str, prefix: str = "") -> None:
    """No object dtypes, no pickle codecs, JSON-only attributes, anywhere below ``group``."""
    attrs = dict(group.attrs)
    S.check_json(attrs, f"{where}: attributes of group {prefix or '/'!r}", allow_nan=True,
                 max_chars=S.MAX_ATTRS_CHARS)
    _check_no_pickles(attrs, f"{where}: an attribute of group {prefix or '/'!r}")
    for name, arr in group.arrays():
        meta = _meta(arr)
        if meta.get("zarr_format") != 3:
            raise StoreError(f"{where}: array {prefix + name!r} is not zarr v3")
        dtype = _dtype_name(meta)
        if dtype not in _SAFE_DTYPES:
            raise StoreError(f"{where}: array {prefix + name!r} has unsupported dtype {dtype!r} (objects refused)")
        for cname in _codec_names(meta.get("codecs", ())):
            if cname.lower() not in _SAFE_CODECS:
                raise StoreError(f"{where}: array {prefix + name!r} uses codec {cname!r} "
                                 "(only numeric codecs are read; pickles refused)")
        S.check_json(dict(arr.attrs), f"{where}: attributes of array {prefix + name!r}",
                     allow_nan=True, max_chars=S.MAX_ATTRS_CHARS)
        _check_no_pickles(dict(arr.attrs), f"{where}: an attribute of array {prefix + name!r}")
    for name, sub in group.groups():
        _check_safe(sub, where, f"{prefix}{name}/")


def check_attrs(attrs: dict, where: str) -> None:
    missing = [a for a in S.REQUIRED_ATTRS if a not in attrs]
    if missing:
        raise StoreError(f"{where}: missing root attribute {missing[0]!r}")
    if not isinstance(attrs["config"], str):
        raise StoreError(f"{where}: attribute 'config' must be a JSON string")
    if len(attrs["config"]) > S.MAX_CONFIG_CHARS:  # a real config is a few KB
        raise StoreError(f"{where}: attribute 'config' is {len(attrs['config'])} characters, "
                         f"more than the {S.MAX_CONFIG_CHARS} a study config can have; refused")
    try:
        config = json.loads(attrs["config"])
    except RecursionError:
        raise StoreError(f"{where}: attribute 'config' is nested too deeply to be a study "
                         "config; refused") from None
    except ValueError:
        raise StoreError(f"{where}: attribute 'config' is not valid JSON") from None
    if not isinstance(config, dict):
        raise StoreError(f"{where}: attribute 'config' is not a JSON object")
    for name in ("param_layout", "buffer_layout"):
        layout = attrs[name]
        if not isinstance(layout, list) or not all(isinstance(e, dict) and "size" in e for e in layout):
            raise StoreError(f"{where}: attribute {name!r} must be a list of {{name, shape, offset, size}}")
    if not isinstance(attrs["complete"], bool):
        raise StoreError(f"{where}: attribute 'complete' must be true or false")


def check_structure(group: zarr.Group, where: str, attrs: dict) -> dict[str, int]:
    """Every coordinate and required array present with the right dims, dtype and shape.

    Returns the dim sizes. Metadata only, plus a read of the tiny ``kind`` coordinate.
    """
    with S.quiet():
        try:
            return _check_structure(group, where, attrs)
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001 - unknown codec (e.g. a pickle), unknown dtype, ...
            raise StoreError(f"{where}: unreadable array metadata: {S.one_line(e)}") from None


def _check_structure(group: zarr.Group, where: str, attrs: dict) -> dict[str, int]:
    check_attrs(attrs, where)
    _check_safe(group, where)
    _check_originals(group, where)
    arrays = dict(group.arrays())
    if not arrays and group.metadata.consolidated_metadata is None:
        # a store that lists nothing: typically an unconsolidated store over HTTP, which
        # cannot list folders (zarr needs listings or consolidated metadata to find arrays)
        raise StoreError(f"{where}: no arrays found and no consolidated metadata; a server that "
                         "cannot list folders (HTTP, most static hosting) needs the consolidated "
                         "metadata `record` writes at the end: run zarr.consolidate_metadata on "
                         "the original store and serve it again")
    sizes: dict[str, int] = {"dense": 1}
    for dim, dtype in S.COORD_DTYPES.items():
        arr = arrays.get(dim)
        if arr is None:
            raise StoreError(f"{where}: missing coordinate array {dim!r}")
        meta = _meta(arr)
        dims = tuple(meta.get("dimension_names") or ())
        if dims != (dim,):
            raise StoreError(f"{where}: coordinate {dim!r} has dims {dims}, expected ({dim!r},)")
        got = _dtype_name(meta)
        if not (got == dtype or (dtype == "string" and got in _STRING_DTYPES)):
            raise StoreError(f"{where}: coordinate {dim!r} has dtype {got}, expected {dtype}")
        if len(arr.chunks) != 1 or arr.chunks[0] < arr.shape[0]:
            raise StoreError(f"{where}: coordinate {dim!r} must be one chunk")
        if arr.shape[0] > _MAX_COORD:
            raise StoreError(f"{where}: coordinate {dim!r} has implausible length {arr.shape[0]}")
        sizes[dim] = int(arr.shape[0])
    try:
        S.check_kinds(arrays["kind"][:])
    except ValueError as exc:
        raise StoreError(f"{where}: {exc}") from None
    states = sorted(n[len(S.STATE_PREFIX):] for n in arrays if n.startswith(S.STATE_PREFIX))
    for spec in S.array_specs(states):
        arr = arrays.get(spec.name)
        if arr is None:
            if spec.name in S.LATER_ARRAYS:
                continue
            raise StoreError(f"{where}: missing array {spec.name!r}")
        meta = _meta(arr)
        dims = tuple(meta.get("dimension_names") or ())
        if dims != spec.dims:
            raise StoreError(f"{where}: array {spec.name!r} has dims {dims}, expected {spec.dims}")
        got = _dtype_name(meta)
        if got != spec.dtype:
            raise StoreError(f"{where}: array {spec.name!r} has dtype {got}, expected {spec.dtype}")
        shape = tuple(sizes[d] for d in spec.dims)
        if tuple(arr.shape) != shape:
            raise StoreError(
                f"{where}: array {spec.name!r} has shape {tuple(arr.shape)}, but its coordinates give {shape}"
            )
    for name, dim in (("param_layout", "param"), ("buffer_layout", "buffer")):
        _check_layout(attrs[name], name, sizes[dim], dim, where)
    _check_coordinates(group, where, attrs, sizes)
    return sizes


def _check_layout(layout: list, name: str, n: int, dim: str, where: str) -> None:
    """Entries back to back from offset 0, each ``size`` = prod(``shape``), summing to ``n``."""
    offset = 0
    for i, e in enumerate(layout):
        shape, size, at = e.get("shape"), e.get("size"), e.get("offset")
        ints = isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool)
                                               and d >= 0 for d in shape)
        if not (ints and isinstance(size, int) and isinstance(at, int)) \
                or size != int(np.prod(shape, dtype=object)):
            raise StoreError(f"{where}: {name}[{i}] needs an integer shape, offset and size = "
                             "prod(shape)")
        if at != offset:
            raise StoreError(f"{where}: {name}[{i}] starts at offset {at}, expected {offset} "
                             "(entries must be contiguous, in order, without overlap)")
        offset += size
    if offset != n:
        raise StoreError(f"{where}: {name} covers {offset} values but dim {dim!r} has {n}")


def _study_T(attrs: dict) -> int | None:
    """The training length T the store's config resolves to, or None if it does not resolve
    (or names a plugin module: resolving would import it, and a store must not choose
    what code runs; see :func:`stabilitylab.core.registry.untrusted`)."""
    try:
        from stabilitylab.config import config_from_dict
        from stabilitylab.config.schedule import schedule
        from stabilitylab.data.registry import dataset_info

        config = json.loads(attrs["config"])
        check_trusted(config, "store")
        with untrusted("store"):
            cfg = config_from_dict(config)
            train_size = dataset_info(cfg.data).train_size(cfg.data)
            return int(schedule(cfg, train_size, kinds_of=tuple).total_steps)
    except Exception:  # noqa: BLE001 - a config of another version / damaged: checked elsewhere
        return None


def _check_coordinates(group: zarr.Group, where: str, attrs: dict, sizes: dict[str, int]) -> None:
    """Integer coordinates in strictly increasing order; ``level`` 0..L, ``replica`` 0..R-1;
    ``step`` holds 0, every rewind point and T."""
    coords = {}
    with S.reading(where):
        for dim in ("level", "rewind", "replica", "step", "log_step", "eval_step"):
            coords[dim] = np.asarray(group[dim][:], dtype=np.int64)
    for dim, v in coords.items():
        if v.size > 1 and not (np.diff(v) > 0).all():
            raise StoreError(f"{where}: coordinate {dim!r} is not sorted and unique")
    for dim in ("level", "replica"):
        if not np.array_equal(coords[dim], np.arange(coords[dim].size)):
            raise StoreError(f"{where}: coordinate {dim!r} must be 0..{coords[dim].size - 1}")
    steps = coords["step"]
    if steps.size == 0:
        return
    T = _study_T(attrs)
    need = [0, *coords["rewind"].tolist()] + ([T] if T is not None else [])
    present = np.isin(need, steps)
    if not present.all():
        first = need[int(np.argmin(present))]
        what = "0" if first == 0 else ("T" if T is not None and first == T and first not in
                                       coords["rewind"] else "rewind point")
        raise StoreError(f"{where}: step coordinate lacks {what} {first} (it must hold 0, every "
                         "rewind point and T)")
    if T is not None and int(steps[-1]) != T:
        raise StoreError(f"{where}: step coordinate runs to {int(steps[-1])}, past T={T}")


def _chunk_exists(arr, index: tuple[int, ...]) -> bool | None:
    """Whether the chunk holding ``index`` is stored; None if that can't be asked cheaply."""
    meta = _meta(arr)
    enc = meta.get("chunk_key_encoding", {})
    if enc.get("name") != "default" or enc.get("configuration", {}).get("separator", "/") != "/":
        return None
    chunk = [i // c for i, c in zip(index, arr.chunks)]
    key = "/".join(["c", *map(str, chunk)])
    path = arr.path.strip("/")
    try:
        from zarr.core.sync import sync
        return bool(sync(arr.store.exists(f"{path}/{key}" if path else key)))
    except Exception:  # noqa: BLE001 - internal API moved: skip the check
        return None


def check_store(group: zarr.Group, where: str, attrs: dict) -> dict[str, int]:
    """:func:`check_structure` plus the cheap content checks of :func:`validate`
    (status values, final chunks of complete runs); returns the dim sizes."""
    sizes = check_structure(group, where, attrs)
    with S.quiet(), S.reading(where):
        check_contents(group, where, attrs, sizes)
    return sizes


def validate(url, *, storage_options: dict | None = None, deep: bool = False) -> list[str]:
    """Check a store; raise StoreError naming the first problem, else return summary lines.

    ``deep=True`` also reads and decodes every stored chunk of every array (checksums
    included): slow on a big store, but it finds truncated or corrupt chunks.
    """
    where = S.describe(url)
    S.check_url(url)
    S.check_local_tree(url)  # no symlinks, FIFOs or devices: before zarr reads a byte
    group = S.open_root(url, mode="r", storage_options=storage_options)
    attrs = dict(group.attrs)
    S.check_ours(attrs, where)
    sizes = check_structure(group, where, attrs)
    with S.quiet(), S.reading(where):
        notes = check_contents(group, where, attrs, sizes)
        if deep:  # every chunk through a view that bounds its decoded size first
            store = S.BoundedStore(S.open_store(url, read_only=True, storage_options=storage_options),
                                   S.chunk_limits(group), where)
            bounded = S.open_root(store, mode="r")
            notes.append(f"{_check_chunks(bounded, where)} chunks decoded")
    return notes + _analysis_notes(url, group)


def _analysis_notes(url, group: zarr.Group) -> list[str]:
    """What an interrupted analyze left behind, and whether the analysis is partial."""
    from stabilitylab.store import analysis_group

    path = S.local_path(url)
    notes = [] if path is None else [f"warning: {x}" for x in analysis_group.leftovers(path)]
    name = analysis_group.LIVE if path is None else analysis_group.readable(path)
    with S.quiet():
        try:
            attrs = dict(zarr.open_group(group.store, mode="r", path=name).attrs)
        except Exception:  # noqa: BLE001 - no analysis (or none readable): nothing to say
            return notes
    if attrs.get("partial"):
        notes.append("warning: the analysis is partial: it was made before every run had finished; "
                     "analyze again to replace it")
    return notes


def require_chunks(url, *, storage_options: dict | None = None) -> None:
    """StoreError (one line naming the array and the run) unless every chunk a finished run
    needs is stored; what ``analyze`` checks before it reads anything."""
    where = S.describe(url)
    S.check_local_tree(url)
    group = S.open_root(url, mode="r", storage_options=storage_options)
    attrs = dict(group.attrs)
    S.check_ours(attrs, where)
    sizes = check_structure(group, where, attrs)
    with S.quiet(), S.reading(where):
        missing = missing_chunks(group, attrs, sizes)
    if missing:
        more = f" ({len(missing) - 1} more missing chunks)" if len(missing) > 1 else ""
        raise StoreError(f"{where}: {missing[0].text}{more}")


def _check_chunks(group: zarr.Group, where: str, prefix: str = "") -> int:
    """Decode every chunk below ``group`` (one at a time); return how many were read."""
    import itertools

    n = 0
    for name, arr in group.arrays():
        grid = [range(-(-s // c)) for s, c in zip(arr.shape, arr.chunks)]
        if arr.nbytes <= _WHOLE_READ_BYTES:
            try:  # small array: one concurrent read; only on failure look for the chunk
                arr[...]
                n += int(np.prod([len(g) for g in grid]))
                continue
            except StoreError:
                S.settle_zarr_tasks()
                raise
            except Exception:  # noqa: BLE001
                S.settle_zarr_tasks()
        for block in itertools.product(*grid):
            try:
                arr.get_block_selection(block)
            except StoreError:
                S.settle_zarr_tasks()
                raise
            except Exception as e:  # noqa: BLE001 - checksum, codec, truncation, I/O
                S.settle_zarr_tasks()
                raise StoreError(f"{where}: array {prefix + name!r} chunk {list(block)} is unreadable: "
                                 f"{S.read_error_text(e)}") from None
            n += 1
    for name, sub in group.groups():
        n += _check_chunks(sub, where, f"{prefix}{name}/")
    return n


def _read_key(group: zarr.Group, key: str) -> bytes | bool | None:
    """The bytes stored at ``key`` (relative to the group), False if absent, None if
    that can't be asked."""
    path = group.path.strip("/")
    try:
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        buf = sync(group.store.get(f"{path}/{key}" if path else key, default_buffer_prototype()))
    except Exception:  # noqa: BLE001 - internal API moved: skip the check
        return None
    return False if buf is None else buf.to_bytes()


def _check_originals(group: zarr.Group, where: str) -> None:
    """With consolidated metadata, every listed array's own zarr.json must still be there
    and parse: the consolidated copy would otherwise hide a deleted or damaged folder."""
    if group.metadata.consolidated_metadata is None:
        return
    for name in [n for n, _ in group.arrays()]:
        text = _read_key(group, f"{name}/zarr.json")
        if text is False:
            raise StoreError(f"{where}: array {name!r} is listed in the consolidated metadata "
                             "but missing from the store")
        if text is not None:
            try:
                ok = isinstance(json.loads(text), dict)
            except ValueError:
                ok = False
            if not ok:
                raise StoreError(f"{where}: metadata of array {name!r} (zarr.json) is damaged")


def check_contents(group: zarr.Group, where: str, attrs: dict, sizes: dict[str, int], *,
                   chunks: bool = True) -> list[str]:
    """Coordinates stored, status values in range, ``created`` / ``complete`` consistent and
    (``chunks``) every chunk a finished run needs present. Returns the summary lines."""
    if attrs.get("created") is False:
        raise StoreError(f"{where}: incomplete store: its creation was interrupted (record or "
                         "record --resume replaces it)")
    for dim in S.COORD_DTYPES:  # (a length-1 coordinate [0] equals the fill value: not stored)
        if sizes[dim] > 1 and _chunk_exists(group[dim], (0,)) is False:
            raise StoreError(f"{where}: coordinate {dim!r} has no data (its chunk is missing)")
    status = np.asarray(group["status"][...])
    dense = int(group["dense_status"][0])
    bad = status[(status < 0) | (status > K.STATUS_PARENT_DIVERGED)]
    if bad.size or not 0 <= dense <= 3:
        value = int(bad.flat[0]) if bad.size else dense
        raise StoreError(f"{where}: status value {value} out of range (0 absent .. 3 diverged, "
                         "4 parent diverged)")
    if chunks:
        missing = missing_chunks(group, attrs, sizes)
        if missing:
            more = f" ({len(missing) - 1} more missing chunks)" if len(missing) > 1 else ""
            raise StoreError(f"{where}: {missing[0].text}{more}")

    planned = int((status != K.STATUS_ABSENT).sum())
    done = int(np.isin(status, K.DONE).sum())
    diverged = int((status == K.STATUS_DIVERGED).sum())
    orphans = int((status == K.STATUS_PARENT_DIVERGED).sum())
    if attrs["complete"] and (done < planned or dense not in K.DONE):
        raise StoreError(f"{where}: marked complete but {planned - done} planned runs are unfinished")
    consolidated = group.metadata.consolidated_metadata is not None
    notes = [
        f"schema {attrs['schema_version']}, study {attrs['study_id']}",
        f"runs: {done}/{planned} finished ({diverged} diverged"
        + (f", {orphans} not trained as their parent diverged" if orphans else "") + "); dense run "
        + {0: "absent", 1: "incomplete", 2: "complete", 3: "diverged"}[dense],
        "dims: " + ", ".join(f"{d}={n}" for d, n in sizes.items() if d != "dense"),
        "metadata consolidated" if consolidated else "metadata not consolidated",
    ]
    if "analysis" in dict(group.groups()):
        notes.append("analysis group present")
    return notes


# -- which chunks a finished run must have ---------------------------------------------------

@dataclass(frozen=True)
class Missing:
    """A chunk that must be stored but is not."""

    array: str
    chunk: tuple[int, ...]
    index: tuple | None  # (kind, level, rewind, replica) positions; replica None: a mask; None: dense
    text: str  # one line naming the array and the run

    @property
    def run(self):
        return self.index


def _stored_chunks(arr) -> set[tuple[int, ...]] | None:
    """Chunk indices stored for ``arr`` (one listing of a local store), or None: then each
    needed chunk is asked for by key."""
    meta = _meta(arr)
    enc = meta.get("chunk_key_encoding", {})
    if enc.get("name") != "default" or enc.get("configuration", {}).get("separator", "/") != "/":
        return None
    store = arr.store
    while isinstance(store, zarr.storage.WrapperStore):
        store = store._store
    if not isinstance(store, zarr.storage.LocalStore):
        return None  # listings over HTTP (and some object stores) can be partial: ask per key
    path = arr.path.strip("/")
    prefix = f"{path}/c/" if path else "c/"
    try:
        from zarr.core.sync import sync

        async def collect():
            return [k async for k in arr.store.list_prefix(prefix)]

        keys = sync(collect())
    except Exception:  # noqa: BLE001 - HTTP cannot list; internal API moved
        return None
    out = set()
    for key in keys:
        try:
            out.add(tuple(int(i) for i in key[len(prefix):].split("/")))
        except ValueError:
            continue  # a temporary file, not a chunk
    return out


def missing_chunks(group: zarr.Group, attrs: dict, sizes: dict[str, int]) -> list[Missing]:
    """Every chunk a complete run (status 2) or the complete dense run must have, and lacks.

    The set is fixed by the schema: a complete run wrote its ``weights`` chunks from the one
    holding its rewind step to the last, its final buffers and its (kind, level, rewind)
    mask; the complete dense run wrote every ``dense_weights`` chunk, the ``rewind_state_*``
    and ``rewind_buffers`` chunks. (Metrics are NaN-filled, so a lost metric chunk reads as
    NaN, never as a plausible number; they are not in the set.) The status is written only after all of them, so it commits
    this set. Writers store a chunk even when it equals the fill value; stores from before
    that (no ``created`` attribute) are checked on the arrays that are never all-fill.
    """
    status = np.asarray(group["status"][...])
    dense = int(group["dense_status"][0])
    marker = "created" in attrs
    arrays = dict(group.arrays())
    coord = {d: [int(v) for v in group[d][:]] if sizes[d] else [] for d in
             ("level", "rewind", "replica", "step")}
    kinds = [str(v) for v in group["kind"][:]]
    out: list[Missing] = []
    listed: dict[str, set | None] = {}

    def have(name: str, chunk: tuple[int, ...]) -> bool:
        if name not in listed:
            listed[name] = _stored_chunks(arrays[name])
        chunks = listed[name]
        if chunks is None:
            arr = arrays[name]
            if _chunk_exists(arr, tuple(c * n for c, n in zip(chunk, arr.chunks))) is not False:
                return True
            # some filesystems answer "no" on any error (fsspec's HTTP exists): confirm by a read
            path = arr.path.strip("/")
            key = "/".join([path, "c", *map(str, chunk)]) if path else "/".join(["c", *map(str, chunk)])
            return _read_key(group, key) is not False
        return chunk in chunks

    def label(idx) -> str:
        k, lv, r, p = idx
        return (f"run ({kinds[k]}, {coord['level'][lv]}, {coord['rewind'][r]}, "
                f"{coord['replica'][p]})")

    n_steps = sizes["step"]
    # (metrics are NaN-filled: a lost metric chunk reads as NaN, never as a wrong number)
    per_run = ["final_buffers"] if sizes["buffer"] and marker else []
    if n_steps:
        c = int(arrays["weights"].chunks[4])
        steps = np.asarray(coord["step"])
        first = {r: int(np.searchsorted(steps, k)) // c for r, k in enumerate(coord["rewind"])}
        last = (n_steps - 1) // c
    masks_seen: set = set()
    for idx in zip(*np.nonzero(status == K.STATUS_COMPLETE)):
        idx = tuple(int(i) for i in idx)
        if n_steps:
            for j in range(first[idx[2]], last + 1):
                if not have("weights", idx + (j, 0)):
                    out.append(Missing("weights", idx + (j, 0), idx,
                                       f"{label(idx)} is marked complete but array 'weights' "
                                       f"lacks its chunk {list(idx + (j, 0))}"))
                    break
        if sizes["param"] and idx[:3] not in masks_seen:
            masks_seen.add(idx[:3])
            if not have("masks", idx[:3] + (0,)):
                k, lv, r = idx[:3]
                out.append(Missing("masks", idx[:3] + (0,), idx[:3] + (None,),
                                   f"{label(idx)} is marked complete but array 'masks' lacks the "
                                   f"chunk of ({kinds[k]}, level {coord['level'][lv]}, rewind "
                                   f"{coord['rewind'][r]})"))
        if marker:
            for name in per_run:
                chunk = idx + (0,) * (arrays[name].ndim - 4)
                if not have(name, chunk):
                    out.append(Missing(name, chunk, idx, f"{label(idx)} is marked complete but "
                                       f"array {name!r} lacks its chunk {list(chunk)}"))
                    break
    if dense == K.STATUS_COMPLETE:
        names = ["dense_weights"] if n_steps else []
        names += [n for n in arrays if n.startswith(S.STATE_PREFIX)
                  and (marker or n == S.STATE_PREFIX + "weights")]
        if marker and sizes["buffer"]:
            names += ["rewind_buffers", "dense_final_buffers"]
        for name in names:
            arr = arrays[name]
            if 0 in arr.shape:
                continue
            grid = [range(-(-s // ch)) for s, ch in zip(arr.shape, arr.chunks)]
            import itertools

            for chunk in itertools.product(*grid):
                if not have(name, chunk):
                    out.append(Missing(name, chunk, None, f"the dense run is marked complete but "
                                       f"array {name!r} lacks its chunk {list(chunk)}"))
                    break
    return out
