"""What every study-level measure needs: the opened store, the model, the data, which runs exist.

:class:`StudyContext` is built once per ``analyze`` and passed to the measure
modules (:mod:`trajectory_measures`, :mod:`function_measures`).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import xarray as xr

from stabilitylab.core.keys import (
    STATUS_COMPLETE,
    STATUS_DIVERGED,
    STATUS_INCOMPLETE,
    STATUS_PARENT_DIVERGED,
)
from stabilitylab.core.registry import check_trusted, untrusted
from stabilitylab.study.resolve import study_from_dict
from stabilitylab.train.functional import StackedModel

log = logging.getLogger(__name__)


@dataclass
class StudyContext:
    url: str
    ds: xr.Dataset
    cfg: object
    resolved: object
    stacked: StackedModel
    data: object  # Dataset on device
    device: torch.device
    status: np.ndarray  # (kind, level, rewind, replica)
    kinds: list[str]
    levels: list[int]
    rewinds: list[int]
    replicas: list[int]
    steps: np.ndarray
    prunable: np.ndarray  # (P,) bool: conv/linear weights
    skipped: list[str] = field(default_factory=list)
    #: Arrays read from the store, each once (:meth:`load`), and the seconds spent reading.
    cache: dict = field(default_factory=dict, repr=False)
    load_seconds: float = 0.0
    storage_options: dict | None = field(default=None, repr=False)
    _arrays: dict = field(default_factory=dict, repr=False)

    @property
    def pairs(self) -> list[tuple[int, int]]:
        return list(itertools.combinations(range(len(self.replicas)), 2))

    @property
    def pair_sides(self) -> tuple[np.ndarray, np.ndarray]:
        """The replica positions of each pair's two sides, two (pair,) int64 arrays (empty
        with one replica)."""
        return (np.array([p[0] for p in self.pairs], np.int64),
                np.array([p[1] for p in self.pairs], np.int64))

    @property
    def pair_labels(self) -> list[str]:
        return [f"{a}-{b}" for a, b in self.pairs]

    def complete(self, kind: str, level: int, rewind: int, replica: int) -> bool:
        return self.status[self._idx(kind, level, rewind, replica)] == STATUS_COMPLETE

    def complete_replicas(self, kind, level, rewind) -> list[int]:
        return [r for r in range(len(self.replicas)) if self.complete(kind, level, rewind, r)]

    def combos(self):
        """(kind, level, rewind) with at least one complete run."""
        for kind in self.kinds:
            for level in self.levels:
                for k in self.rewinds:
                    if self.complete_replicas(kind, level, k):
                        yield kind, level, k

    def _idx(self, kind, level, rewind, replica):
        return (self.kinds.index(kind), self.levels.index(level), self.rewinds.index(rewind), replica)

    # -- shared reads: every group reads the store through these, each array once -----------
    def load(self, name: str) -> xr.DataArray:
        """A numpy-backed view of the store, read on first use and kept (see :data:`VIEWS`):
        ``final_weights`` (kind, level, rewind, replica, param) at T, ``start_weights`` the
        same at step = rewind, ``last_weights`` at the last :data:`LAST_STEPS` recorded steps,
        ``masks`` (kind, level, rewind, param), ``final_buffers``."""
        if name not in self.cache:
            self.prefetch(name)
        return self.cache[name]

    def prefetch(self, *names: str) -> None:
        """Read the views ``names`` (those not read yet) in one pass over their chunks."""
        import dask

        todo = [n for n in names if n not in self.cache]
        if not todo:
            return
        started = time.perf_counter()
        self.cache.update(_weight_views(self, todo))
        todo = [n for n in todo if n not in self.cache]
        lazy = [VIEWS[n](self) for n in todo]
        for name, value in zip(todo, dask.compute(*lazy)):
            self.cache[name] = value
        self.load_seconds += time.perf_counter() - started

    def read_ahead(self, items):
        """``dask.compute(*item)`` for each tuple of lazy arrays in ``items`` (or ``item()``
        for a callable item, e.g. one of :meth:`read_cells`), in order, each read on a
        background thread while the caller works on the one before (double buffering: at
        most two items in memory). Only the time the caller waits for a read counts as
        loading; the values are those of reading each item alone."""
        from concurrent.futures import ThreadPoolExecutor

        import dask

        def _read(item):
            if callable(item):
                return item()
            # on this one thread (scheduler "sync"): read by dask's pool threads as well,
            # the default study's analysis peaked 0.5 GB higher (glibc malloc arenas:
            # MALLOC_ARENA_MAX=2 removed it); read here, it peaked lower than reading inline
            return dask.compute(*item, scheduler="sync")

        items = iter(items)
        with ThreadPoolExecutor(1, thread_name_prefix="read-ahead") as pool:
            item = next(items, None)
            pending = None if item is None else pool.submit(_read, item)
            while pending is not None:
                started = time.perf_counter()
                value = pending.result()
                self.load_seconds += time.perf_counter() - started
                item = next(items, None)
                pending = None if item is None else pool.submit(_read, item)
                yield value

    def read_cells(self, kind, level, rewind, replica=slice(None), step=slice(None),
                   name: str = "weights", out: np.ndarray | None = None) -> np.ndarray:
        """The store's ``name`` (kind, level, rewind, replica, step, param) at the cells
        (``kind[i]``, ``level[i]``, ``rewind[i]``) (position arrays), ``replica`` and
        ``step`` (an int or a slice each), as float32 (cell, ...), with no dask graph: in
        the calling thread, chunk by chunk (:class:`~stabilitylab.store.chunks.DirectReader`:
        a local store with the study store's codecs), else one zarr call per cell, which
        reads that cell's chunks concurrently. The values are those of the dask-backed
        ``ds[name]`` (the raw stored values: a never-written chunk reads as the fill value
        there too); a chunk that cannot be read raises
        :class:`~stabilitylab.core.errors.StoreError`. ``out``: a float32 array of the
        result's shape (a view will do) that the chunks are decoded into, in place of a new
        array per cell and their stack (each trajectory pipeline reuses one such buffer)."""
        from stabilitylab.store.schema import describe, reading

        if name not in self._arrays:
            from stabilitylab.store.chunks import DirectReader
            from stabilitylab.store.reader import open_array

            arr = open_array(self.url, name, storage_options=self.storage_options)
            self._arrays[name] = arr, DirectReader.of(arr, self.url, describe(self.url))
        arr, direct = self._arrays[name]
        if out is not None and (out.dtype != np.float32 or out.shape[0] != len(kind)):
            raise ValueError(f"out must be float32 with {len(kind)} cells, not "
                             f"{out.dtype} {out.shape}")
        with reading(describe(self.url)):
            if direct is not None and direct.dtype == np.float32:
                if out is None:
                    out = np.empty((len(kind), *direct.selection_shape(
                        (0, 0, 0, replica, step))), np.float32)
                for i, (k, lv, r) in enumerate(zip(kind, level, rewind)):
                    direct.read((int(k), int(lv), int(r), replica, step), out[i])
                return out
            if out is not None:
                from zarr.core.buffer.cpu import NDBuffer

                for i, (k, lv, r) in enumerate(zip(kind, level, rewind)):
                    arr.get_orthogonal_selection((int(k), int(lv), int(r), replica, step),
                                                 out=NDBuffer.from_numpy_array(out[i]))
                return out
            parts = [np.asarray(arr[int(k), int(lv), int(r), replica, step])
                     for k, lv, r in zip(kind, level, rewind)]
        return np.stack(parts).astype(np.float32, copy=False)

    def timed_compute(self, *lazy):
        """``dask.compute(*lazy)``, the seconds counted as loading (a group's own read of
        the weights at a few steps, e.g. R-hat's last steps)."""
        import dask

        started = time.perf_counter()
        out = dask.compute(*lazy)
        self.load_seconds += time.perf_counter() - started
        return out

    @property
    def completed(self) -> xr.DataArray:
        """(kind, level, rewind, replica) bool: the run is complete."""
        return xr.DataArray(self.status == STATUS_COMPLETE, dims=RUN_DIMS,
                            coords={"kind": self.kinds, "level": self.levels,
                                    "rewind": self.rewinds, "replica": self.replicas})

    def pair_completed(self) -> xr.DataArray:
        """(kind, level, rewind, pair) bool: both replicas of the pair are complete."""
        c = self.completed.values
        a, b = self.pair_sides
        return xr.DataArray(c[..., a] & c[..., b], dims=("kind", "level", "rewind", "pair"),
                            coords={"kind": self.kinds, "level": self.levels,
                                    "rewind": self.rewinds, "pair": self.pair_labels})

    def cells(self) -> xr.DataArray:
        """(kind, level, rewind) bool: at least one complete run (:meth:`combos` as an array)."""
        return self.completed.any("replica")

    # -- per-cell accessors (kept for callers; they read the shared views) -------------------
    def trajectory(self, kind, level, rewind) -> np.ndarray:
        """(R, S, P) float32 weights of every replica; steps before the rewind point are NaN."""
        w = self.ds.weights.sel(kind=kind, level=level, rewind=rewind).values.astype(np.float32)
        w[:, self.steps < rewind, :] = np.nan
        return w

    def final_weights(self, kind, level, rewind) -> np.ndarray:
        """(R, P) weights at T."""
        return self.load("final_weights").sel(kind=kind, level=level, rewind=rewind).values

    def final_buffers(self, kind, level, rewind) -> np.ndarray:
        return self.load("final_buffers").sel(kind=kind, level=level, rewind=rewind).values

    def mask(self, kind, level, rewind) -> np.ndarray:
        return self.load("masks").sel(kind=kind, level=level, rewind=rewind).values


RUN_DIMS = ("kind", "level", "rewind", "replica")


def _final_weights(ctx) -> xr.DataArray:
    return ctx.ds.weights.sel(step=ctx.resolved.total_steps, drop=True).astype(np.float32)


def _start_weights(ctx) -> xr.DataArray:
    """Weights at step = rewind for every rewind (one vectorised selection)."""
    at = xr.DataArray(ctx.rewinds, dims="rewind", coords={"rewind": ctx.rewinds})
    return ctx.ds.weights.sel(step=at, drop=True).astype(np.float32)


#: Recorded steps at the end of every run kept by the ``last_weights`` view (R-hat's draws).
LAST_STEPS = 10


def _last_weights(ctx) -> xr.DataArray:
    return ctx.ds.weights.isel(step=slice(-LAST_STEPS, None)).astype(np.float32)


def _masks(ctx) -> xr.DataArray:
    return ctx.ds.masks.astype(bool)


def _final_buffers(ctx) -> xr.DataArray:
    return ctx.ds.final_buffers


#: The shared views of the store, built lazily and read once by :meth:`StudyContext.load`.
VIEWS = {"final_weights": _final_weights, "start_weights": _start_weights, "masks": _masks,
         "final_buffers": _final_buffers, "last_weights": _last_weights}


def _weight_views(ctx, names) -> dict:
    """The weight views among ``names`` (``final_weights``, ``last_weights``,
    ``start_weights``) read with :meth:`StudyContext.read_cells` (no dask graph), every
    (kind, level, rewind) cell's last :data:`LAST_STEPS` steps in one call (T the last of
    them) and its W_k in another: the values, dims and coords of the lazy :data:`VIEWS`.
    Empty unless the last recorded step is T (then the dask views are read)."""
    wanted = [n for n in ("final_weights", "last_weights", "start_weights") if n in names]
    if not wanted or int(ctx.steps[-1]) != ctx.resolved.total_steps:
        return {}
    shape = (len(ctx.kinds), len(ctx.levels), len(ctx.rewinds))
    k, lv, r = (a.reshape(-1) for a in np.indices(shape))
    out = {}
    if "final_weights" in wanted or "last_weights" in wanted:
        n_last = min(LAST_STEPS, len(ctx.steps))
        last = ctx.read_cells(k, lv, r, step=slice(len(ctx.steps) - n_last, None))
        last = last.reshape(*shape, *last.shape[1:])  # (kind, level, rewind, replica, step, P)
        if "last_weights" in wanted:
            out["last_weights"] = _last_weights(ctx).copy(data=last)
        if "final_weights" in wanted:
            out["final_weights"] = _final_weights(ctx).copy(data=last[..., -1, :].copy())
    if "start_weights" in wanted:
        at = np.searchsorted(ctx.steps, ctx.rewinds)  # W_k: the step index of each rewind
        if (np.asarray(ctx.steps)[np.minimum(at, len(ctx.steps) - 1)] != ctx.rewinds).any():
            return out  # a rewind point not recorded: the dask view says so
        parts = [ctx.read_cells(k[r == i], lv[r == i], r[r == i], step=int(at[i]))
                 for i in range(len(ctx.rewinds))]
        start = np.empty((*shape, *parts[0].shape[1:]), np.float32)
        for i, part in enumerate(parts):
            start[:, :, i] = part.reshape(shape[0], shape[1], *part.shape[1:])
        out["start_weights"] = _start_weights(ctx).copy(data=start)
    return out


def _skipped_lines(ds, status, kinds, levels, rewinds) -> list[str]:
    lines = []
    diverged = ds.diverged_step.values
    for idx in zip(*np.nonzero((status == STATUS_INCOMPLETE) | (status == STATUS_DIVERGED))):
        kind, level, k, r = kinds[idx[0]], levels[idx[1]], rewinds[idx[2]], int(idx[3])
        if status[idx] == STATUS_DIVERGED:
            lines.append(f"skipped {kind} level {level} rewind {k} replica {r}: diverged at step "
                         f"{int(diverged[idx])}")
        else:
            lines.append(f"skipped {kind} level {level} rewind {k} replica {r}: incomplete")
    return lines + [f"skipped {kind} level {level} rewind {k} replica {r}: never trained, its "
                    "parent diverged" for kind, level, k, r in orphaned_runs(status, kinds, levels,
                                                                            rewinds)]


def orphaned_runs(status, kinds, levels, rewinds) -> list[tuple[str, int, int, int]]:
    """(kind, level, rewind, replica) of each run never trained because its parent diverged."""
    return [(kinds[i[0]], levels[i[1]], rewinds[i[2]], int(i[3]))
            for i in zip(*np.nonzero(status == STATUS_PARENT_DIVERGED))]


def load_context(url, *, device=None, storage_options=None, data_root=None,
                 trust_plugins: bool = False) -> StudyContext:
    """Open the store, rebuild the model and data it was trained with.

    ``data_root``: where the dataset is (None: ``$STABILITYLAB_DATA`` or the default; see
    :func:`stabilitylab.data.data_root`). The ``data.root`` saved in the store is ignored:
    nothing read from a store chooses a path outside it. Nor does it choose code: a
    ``module:function`` model or dataset named by the store is imported only with
    ``trust_plugins`` (:func:`stabilitylab.core.registry.untrusted`).
    """
    from stabilitylab.core.device import resolve_device
    from stabilitylab.store import open_study
    from stabilitylab.store.schema import describe
    from stabilitylab.study.context import build_model_and_data

    ds = open_study(url, storage_options=storage_options)
    where = describe(url)
    check_trusted(ds.attrs["config"], where, trust_plugins)
    with untrusted(where, trust_plugins):
        resolved = study_from_dict(ds.attrs["config"])  # one imported replicate: pairs absent
    cfg = resolved.config
    dev = resolve_device(device or "auto")
    layout = ds.attrs["param_layout"]
    if isinstance(layout, str):
        layout = json.loads(layout)

    def check_layout(stacked, _template):  # before any data is read
        if [tuple(s["shape"]) for s in layout] != [s.shape for s in stacked.param_slots]:
            from stabilitylab.core.errors import StoreError

            raise StoreError(f"{url}: parameter layout does not match model {cfg.model.name!r}")

    with untrusted(where, trust_plugins):
        parts = build_model_and_data(cfg, dev, template_seed=0, check=check_layout,
                                     info=resolved.info,
                                     data_root=data_root if data_root is not None else "")
    stacked, data = parts.stacked, parts.data
    prunable = np.zeros(stacked.num_params, bool)
    for s in stacked.param_slots:
        if s.prunable:
            prunable[s.offset:s.offset + s.size] = True
    kinds = [str(k) for k in ds.kind.values]
    levels = [int(v) for v in ds.level.values]
    rewinds = [int(v) for v in ds.rewind.values]
    status = ds.status.values
    return StudyContext(
        url=str(url), ds=ds, cfg=cfg, resolved=resolved, stacked=stacked, data=data, device=dev,
        status=status, kinds=kinds, levels=levels, rewinds=rewinds,
        replicas=[int(v) for v in ds.replica.values], steps=ds.step.values, prunable=prunable,
        skipped=_skipped_lines(ds, status, kinds, levels, rewinds),
        storage_options=storage_options,
    )
