"""Creating a study store: checks first, then a fully pre-sized, empty schema-1 layout."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

import numpy as np
import zarr

from stabilitylab.core import keys as K
from stabilitylab.core.errors import StoreError
from stabilitylab.store import schema as S


def build_store(url, resolved, *, param_layout: list[dict], buffer_layout: list[dict],
                provenance: dict, runs: list, optimizer_state_names: list[str],
                step_chunk: int | None, precision_bits: int | None,
                storage_options: dict | None):
    """Check the arguments and the target, then create every array.

    Returns ``(root group, writer lock or None)``. Creation is recognisable until it
    has finished: the root metadata is written first with ``created: false`` and set
    to true only after the last array exists. A store left half-created (a kill or a
    full disk during creation) is replaced here, by ``record`` as by ``record --resume``.
    """
    where = S.describe(url)
    S.check_url(url)
    P = _layout_size(param_layout, "param_layout")
    Q = _layout_size(buffer_layout, "buffer_layout")
    if P < 1:
        raise ValueError("param_layout: need at least one parameter")
    if precision_bits is not None and not 1 <= int(precision_bits) <= 23:
        raise ValueError(f"precision_bits: must be in 1..23 (float32 mantissa) or None, got {precision_bits}")
    for name in optimizer_state_names:
        if not name or not str(name).replace("_", "").isalnum():
            raise ValueError(f"optimizer_state_names: bad name {name!r}")
    cfg = resolved.config
    levels, rewinds = tuple(resolved.levels), tuple(resolved.rewinds)
    R = int(cfg.study.replicas)
    level_idx, rewind_idx = _positions(levels), _positions(rewinds)
    kinds = S.check_kinds(getattr(resolved, "kinds", S.KINDS))
    for run in runs:
        check_key(run, level_idx, rewind_idx, R, kinds)
    if step_chunk is not None and int(step_chunk) < 1:
        raise ValueError(f"step_chunk: must be >= 1, got {step_chunk}")
    c = int(step_chunk) if step_chunk else S.default_step_chunk(len(resolved.record_steps), P)
    state = S.creation_state(url, storage_options)
    _precheck_location(url, state)

    attrs = _root_attrs(resolved, provenance, param_layout, buffer_layout, precision_bits)
    attrs["created"] = False
    store = S.open_store(url, read_only=False, storage_options=storage_options)
    path = S.local_path(url) if not isinstance(url, zarr.abc.store.Store) else None
    lock = None
    try:
        if path is not None:
            from stabilitylab.store.lock import acquire

            path.mkdir(parents=True, exist_ok=True)
            lock = acquire(path, where)
            if S.creation_state(url) == "half":  # (again, now that we hold the lock)
                _remove_half_store(path)
            elif S.creation_state(url) != "none" or (path / "zarr.json").exists():
                raise StoreError(f"a store already exists at {where}; use --resume or another --out")
        elif state == "half":
            from zarr.core.sync import sync

            sync(store.delete_dir(""))
        with S.quiet():
            group = zarr.open_group(store, mode="a" if path is not None else "w-",
                                    use_consolidated=False, attributes=attrs)
    except FileExistsError:
        _release(lock)
        raise StoreError(f"a store already exists at {where}; use --resume or another --out") from None
    except OSError as e:
        _release(lock)
        raise StoreError(f"cannot create store at {where}: {S.one_line(e)}") from None
    except BaseException:
        _release(lock)
        raise

    coords = {
        "kind": np.array(kinds, dtype=str),
        "level": np.array(levels, dtype=np.int64),
        "rewind": np.array(rewinds, dtype=np.int64),
        "replica": np.arange(R, dtype=np.int64),
        "step": np.array(resolved.record_steps, dtype=np.int64),
        "param": np.arange(P, dtype=np.int64),
        "buffer": np.arange(Q, dtype=np.int64),
        "log_step": np.array(resolved.log_steps, dtype=np.int64),
        "eval_step": np.array(resolved.eval_steps, dtype=np.int64),
    }
    sizes = {d: len(v) for d, v in coords.items()} | {"dense": 1}
    try:
        with S.quiet():
            for name, values in coords.items():
                dtype = str if name == "kind" else "int64"
                arr = group.create_array(
                    name, shape=values.shape, chunks=(max(1, len(values)),), dtype=dtype,
                    fill_value="" if name == "kind" else 0, dimension_names=(name,),
                    compressors=[zarr.codecs.ZstdCodec(level=3), S.checksum()],
                    chunk_key_encoding=_KEYS,
                )
                if len(values):
                    arr[:] = values
            for spec in S.array_specs(list(optimizer_state_names)):
                if spec.name == "replica_masks" and not getattr(resolved, "own_mask_kinds", ()):
                    continue  # only a study with own-mask kinds has per-run masks
                shape = tuple(sizes[d] for d in spec.dims)
                group.create_array(
                    spec.name, shape=shape, chunks=S.chunks_for(spec.dims, shape, c),
                    dtype=spec.dtype, fill_value=spec.fill, dimension_names=spec.dims,
                    chunk_key_encoding=_KEYS, **S.codecs_for(spec, precision_bits),
                )
            status = np.zeros([sizes[d] for d in S.RUN_DIMS], dtype=np.int8)
            for run in runs:
                status[run_index(run, level_idx, rewind_idx, kinds)] = K.STATUS_INCOMPLETE
            group["status"][...] = status
            group["dense_status"][...] = np.array([K.STATUS_INCOMPLETE], dtype=np.int8)
            if 0 in level_idx:  # level-0 masks: everything kept
                group["masks"][0, level_idx[0]] = True
                group["density"][0, level_idx[0]] = 1.0
            group.attrs.update({"created": True})  # last: the store now exists
    except OSError as e:
        _release(lock)
        raise StoreError(f"cannot write store at {where}: {S.one_line(e)}") from None
    except BaseException:
        _release(lock)
        raise
    return group, lock


def check_target(url, storage_options: dict | None = None) -> str:
    """The checks :func:`build_store` makes on its target before writing anything, for
    callers that want them before slow work (loading data); returns the creation state."""
    S.check_url(url)
    state = S.creation_state(url, storage_options)
    _precheck_location(url, state)
    return state


def _release(lock) -> None:
    if lock is not None:
        lock.release()


def _remove_half_store(path) -> None:
    """Delete what an interrupted creation wrote in ``path`` (which we hold the lock of):
    our root metadata and temporary files, and the folders of our own arrays."""
    import shutil

    from stabilitylab.store.lock import LOCK_NAME

    names = set(S.COORD_DTYPES) | {spec.name for spec in S.array_specs()}
    for entry in path.iterdir():
        name = entry.name
        if name == LOCK_NAME:
            continue
        if name == "zarr.json" or (name.startswith("zarr.json.") and name.endswith(S.PARTIAL_SUFFIX)):
            entry.unlink()
        elif entry.is_dir() and not entry.is_symlink() and (
                name in names or name.startswith(S.STATE_PREFIX)):
            shutil.rmtree(entry)
    left = [p.name for p in path.iterdir() if p.name != LOCK_NAME]
    if left:
        raise StoreError(f"cannot replace the half-created store at {path}: it also holds "
                         f"{min(left)!r}, which stabilitylab did not write")


def _positions(values) -> dict[int, int]:
    return {int(v): i for i, v in enumerate(values)}


_KEYS = {"name": "default", "configuration": {"separator": "/"}}


def check_key(run, levels, rewinds, n_replicas: int, kinds=S.KINDS) -> None:
    """ValueError unless ``run`` is a key of this study. ``levels`` / ``rewinds`` are
    dicts or sets (constant-time membership: a check over every run stays linear)."""
    try:
        kind, level, rewind, replica = run
    except (TypeError, ValueError):
        raise ValueError(f"run key must be (kind, level, rewind, replica), got {run!r}") from None
    if kind not in kinds or int(level) not in levels or int(rewind) not in rewinds \
            or not 0 <= int(replica) < n_replicas:
        def listed(values):
            values = sorted(values)
            return str(values) if len(values) <= 10 else f"[{values[0]}, ..., {values[-1]}]"

        raise ValueError(f"run {tuple(run)} is not in this study (kinds {tuple(kinds)}, levels "
                         f"{listed(levels)}, rewinds {listed(rewinds)}, replicas 0..{n_replicas - 1})")


def run_index(run, level_idx: dict, rewind_idx: dict, kinds=S.KINDS) -> tuple[int, int, int, int]:
    kind, level, rewind, replica = run
    return kinds.index(kind), level_idx[int(level)], rewind_idx[int(rewind)], int(replica)


def _layout_size(layout: list[dict], what: str) -> int:
    S.check_json(layout, what)
    offset = 0
    for i, entry in enumerate(layout):
        if not isinstance(entry, dict) or not {"name", "shape", "offset", "size"} <= set(entry):
            raise ValueError(f"{what}[{i}]: need name, shape, offset, size (and prunable)")
        if entry["offset"] != offset or entry["size"] != int(np.prod(entry["shape"], dtype=np.int64)):
            raise ValueError(f"{what}[{i}] ({entry['name']}): offset/size do not follow the previous entry")
        offset += int(entry["size"])
    return offset


def _precheck_location(url, state: str) -> None:
    """Fail before creating anything when a local target is unusable or already taken."""
    where = S.describe(url)
    if state == "created":
        raise StoreError(f"a store already exists at {where}; use --resume or another --out")
    path = S.local_path(url) if not isinstance(url, zarr.abc.store.Store) else None
    if path is None:
        return  # remote: zarr's mode='w-' refuses an existing store
    if state == "half":
        return  # an interrupted creation of ours: replaced
    if (path / "zarr.json").exists() or (path / ".zgroup").exists():
        raise StoreError(f"a store already exists at {where}; use --resume or another --out")
    _check_dotdot(path, where)
    if path.exists():
        if not path.is_dir() or any(path.iterdir()):
            raise StoreError(f"cannot create store at {where}: path exists and is not an empty directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise StoreError(f"cannot create store at {where}: directory is not writable")
        return
    # Missing parent folders are created (like `mkdir -p`), so the nearest existing
    # ancestor must be a writable directory.
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise StoreError(f"cannot create store at {where}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise StoreError(f"cannot create store at {where}: {ancestor} is not writable")


def _check_dotdot(path, where: str) -> None:
    """A path like ``a/nosuch/../x.zarr``: ``nosuch`` does not exist, so the operating
    system cannot resolve it, and creating folders along it would leave ``nosuch`` behind."""
    parts = path.parts
    for i, part in enumerate(parts):
        if part == ".." and i > 0:
            before = type(path)(*parts[:i])
            if not before.exists():
                raise StoreError(f"cannot create store at {where}: {before} does not exist "
                                 "(a path cannot go through a missing folder and '..')")


def _root_attrs(resolved, provenance: dict, param_layout, buffer_layout, precision_bits) -> dict:
    from stabilitylab.config.loader import config_to_dict

    cfg = resolved.config
    config = provenance.get("config")
    if config is None:
        config = config_to_dict(cfg)
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except ValueError:
            raise ValueError("provenance['config']: not a JSON string") from None
    attrs = {
        "schema": S.SCHEMA,
        "schema_version": S.SCHEMA_VERSION,
        "created_at": str(provenance.get("created_at")
                          or datetime.now(timezone.utc).isoformat(timespec="seconds")),
        "creation_library": S.CREATION_LIBRARY,
        "versions": {**S.library_versions(), **provenance.get("versions", {})},
        "device": str(provenance.get("device", "cpu")),
        "seed": int(provenance.get("seed", cfg.study.seed)),
        "study_id": str(provenance.get("study_id") or resolved.id),
        "config": json.dumps(config, sort_keys=True),
        "param_layout": list(param_layout),
        "buffer_layout": list(buffer_layout),
        "precision_bits": None if precision_bits is None else int(precision_bits),
        "complete": False,
    }
    return S.check_json(attrs, "store attributes")
