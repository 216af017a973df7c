"""Check a study store against schema 1 (docs/store-schema.md), cheaply.

Only metadata, coordinates and the tiny status arrays are read; trajectory chunks
are checked for presence (final step of each complete run), never loaded.
"""

from __future__ import annotations

import json

import numpy as np
import zarr

from stabilitylab.errors import StoreError
from stabilitylab.store import schema as S

# zarr v3 data type names we accept anywhere in a store (no objects, no pickles).
_SAFE_DTYPES = {
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128", "string", "fixed_length_utf32",
}
_STRING_DTYPES = {"string", "fixed_length_utf32"}


def _meta(arr) -> dict:
    return arr.metadata.to_dict()


def _dtype_name(meta: dict) -> str:
    dt = meta.get("data_type")
    return dt.get("name", "?") if isinstance(dt, dict) else str(dt)


def _check_safe(group: zarr.Group, where: str, prefix: str = "") -> None:
    """No object dtypes, no pickle codecs, JSON-only attributes, anywhere below ``group``."""
    S.check_json(dict(group.attrs), f"{where}: attributes of group {prefix or '/'!r}", allow_nan=True)
    for name, arr in group.arrays():
        meta = _meta(arr)
        if meta.get("zarr_format") != 3:
            raise StoreError(f"{where}: array {prefix + name!r} is not zarr v3")
        dtype = _dtype_name(meta)
        if dtype not in _SAFE_DTYPES:
            raise StoreError(f"{where}: array {prefix + name!r} has unsupported dtype {dtype!r} (objects refused)")
        for codec in meta.get("codecs", ()):
            cname = codec.get("name", "") if isinstance(codec, dict) else str(codec)
            if "pickle" in cname.lower() or "object" in cname.lower():
                raise StoreError(f"{where}: array {prefix + name!r} uses codec {cname!r} (pickles refused)")
        S.check_json(dict(arr.attrs), f"{where}: attributes of array {prefix + name!r}", allow_nan=True)
    for name, sub in group.groups():
        _check_safe(sub, where, f"{prefix}{name}/")


def check_attrs(attrs: dict, where: str) -> None:
    missing = [a for a in S.REQUIRED_ATTRS if a not in attrs]
    if missing:
        raise StoreError(f"{where}: missing root attribute {missing[0]!r}")
    if not isinstance(attrs["config"], str):
        raise StoreError(f"{where}: attribute 'config' must be a JSON string")
    try:
        config = json.loads(attrs["config"])
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
    arrays = dict(group.arrays())
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
        sizes[dim] = int(arr.shape[0])
    kinds = tuple(str(k) for k in arrays["kind"][:])
    if kinds != S.KINDS:
        raise StoreError(f"{where}: kind coordinate is {list(kinds)}, expected {list(S.KINDS)}")
    states = sorted(n[len(S.STATE_PREFIX):] for n in arrays if n.startswith(S.STATE_PREFIX))
    for spec in S.array_specs(states):
        arr = arrays.get(spec.name)
        if arr is None:
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
        total = sum(int(e["size"]) for e in attrs[name])
        if total != sizes[dim]:
            raise StoreError(f"{where}: {name} covers {total} values but dim {dim!r} has {sizes[dim]}")
    return sizes


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


def validate(url, *, storage_options: dict | None = None) -> list[str]:
    """Check a store; raise StoreError naming the first problem, else return summary lines."""
    where = S.describe(url)
    group = S.open_root(url, mode="r", storage_options=storage_options)
    attrs = dict(group.attrs)
    S.check_ours(attrs, where)
    sizes = check_structure(group, where, attrs)
    with S.quiet():
        return _check_contents(group, where, attrs, sizes)


def _check_contents(group: zarr.Group, where: str, attrs: dict, sizes: dict[str, int]) -> list[str]:
    status = np.asarray(group["status"][...])
    dense = int(group["dense_status"][0])
    bad = status[(status < 0) | (status > 3)]
    if bad.size or not 0 <= dense <= 3:
        value = int(bad.flat[0]) if bad.size else dense
        raise StoreError(f"{where}: status value {value} out of range (0 absent .. 3 diverged)")

    n_steps = sizes["step"]
    if n_steps:
        weights, last = group["weights"], n_steps - 1
        for idx in zip(*np.nonzero(status == S.STATUS_COMPLETE)):
            if _chunk_exists(weights, tuple(int(i) for i in idx) + (last, 0)) is False:
                kind, level, rewind, replica = (group[d][int(i)] for d, i in zip(S.RUN_DIMS, idx))
                raise StoreError(
                    f"{where}: run ({kind}, {level}, {rewind}, {replica}) is marked complete "
                    "but its final-step weights were never written"
                )
        if dense == S.STATUS_COMPLETE and _chunk_exists(group["dense_weights"], (last, 0)) is False:
            raise StoreError(f"{where}: the dense run is marked complete but its final-step weights are missing")

    planned = int((status != S.STATUS_ABSENT).sum())
    done = int(np.isin(status, S.DONE).sum())
    diverged = int((status == S.STATUS_DIVERGED).sum())
    if attrs["complete"] and (done < planned or dense not in S.DONE):
        raise StoreError(f"{where}: marked complete but {planned - done} planned runs are unfinished")
    consolidated = group.metadata.consolidated_metadata is not None
    notes = [
        f"schema {attrs['schema_version']}, study {attrs['study_id']}",
        f"runs: {done}/{planned} finished ({diverged} diverged); dense run "
        + {0: "absent", 1: "incomplete", 2: "complete", 3: "diverged"}[dense],
        "dims: " + ", ".join(f"{d}={n}" for d, n in sizes.items() if d != "dense"),
        "metadata consolidated" if consolidated else "metadata not consolidated",
    ]
    if "analysis" in dict(group.groups()):
        notes.append("analysis group present")
    return notes
