"""StudyWriter: create or resume a study store and fill it while training runs.

Trajectory rows are buffered per run until a step-chunk is full; whole chunks go
to one background thread through a bounded queue, so the training thread blocks
on I/O only when that queue is full. Every other write goes through the same
queue, in order. An error in the writer thread is re-raised as a one-line
:class:`StoreError` at the next call. ``finish_run`` writes a run's status only
after its data is on the store (crash safety), and every chunk written is stored (also
an all-fill one), so the chunks a finished run has are fixed by the chunk grid and a
lost one is found (:func:`stabilitylab.store.validate.missing_chunks`). ``create`` and
``resume`` take the store's single-writer lock (:mod:`stabilitylab.store.lock`) on a
local store; ``close`` releases it.
"""

from __future__ import annotations

import queue
import re
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from stabilitylab.core import keys as K
from stabilitylab.core.errors import StoreError
from stabilitylab.core.keys import RunKey
from stabilitylab.store import schema as S
from stabilitylab.store.create import build_store, check_key, run_index

_DENSE = "dense"  # buffer key of the dense pretraining run


@dataclass
class _Buf:
    s0: int
    s1: int
    data: np.ndarray  # (s1 - s0, P) float32


class _Worker:
    """One background thread running queued writes in order."""

    def __init__(self, maxsize: int = 32):
        self.q: queue.Queue = queue.Queue(maxsize=maxsize)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="stabilitylab-store-writer", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            item = self.q.get()
            try:
                if item is None:
                    return
                fn, always = item
                if always or self.error is None:
                    try:
                        fn()
                    except BaseException as e:  # noqa: BLE001 - surfaced in the training thread
                        if self.error is None:
                            self.error = e
            finally:
                self.q.task_done()

    def submit(self, fn: Callable[[], Any]) -> None:
        self.q.put((fn, False))

    def barrier(self) -> None:
        """Wait until everything queued so far has run (or been skipped after an error)."""
        done = threading.Event()
        self.q.put((done.set, True))
        done.wait()

    def stop(self, timeout: float | None = None) -> None:
        if self.thread.is_alive():
            self.q.put(None)
            self.thread.join(timeout)


class StudyWriter:
    """Writes one study store. Use :meth:`create` or :meth:`resume`, not the constructor."""

    def __init__(self, group: zarr.Group, where: str, lock=None):
        self._g = group
        self._where = where
        self._lock = lock
        with S.quiet(), S.reading(where):
            names = [n for n, _ in group.arrays()]
            self._state_names = sorted(
                n[len(S.STATE_PREFIX):] for n in names if n.startswith(S.STATE_PREFIX))
            # Every chunk a run writes is stored, fill-valued or not (zarr skips all-fill
            # chunks by default): the chunks a finished run must have are then fixed by the
            # chunk grid, and validate / resume / analyze can tell a deleted one from one
            # never written. Only reset_run drops chunks (through the plain views).
            self._plain = {spec.name: group[spec.name] for spec in S.array_specs(self._state_names)
                           if spec.name in names or spec.name not in S.LATER_ARRAYS}
            self._a = {n: a.with_config({"write_empty_chunks": True}) for n, a in self._plain.items()}
            coord = {d: group[d][:] for d in ("level", "rewind", "replica", "step", "log_step", "eval_step")}
            self.kinds = tuple(str(k) for k in group["kind"][:])
        self._level_idx = {int(v): i for i, v in enumerate(coord["level"])}
        self._rewind_idx = {int(v): i for i, v in enumerate(coord["rewind"])}
        self._step_idx = {int(v): i for i, v in enumerate(coord["step"])}
        self.steps = tuple(int(s) for s in coord["step"])
        self.n_replicas = len(coord["replica"])
        self.n_log = len(coord["log_step"])
        self.n_eval = len(coord["eval_step"])
        self.n_params = int(group["param"].shape[0])
        self.n_buffers = int(group["buffer"].shape[0])
        self.step_chunk = int(self._a["weights"].chunks[4])
        self._bufs: dict[Any, _Buf] = {}
        self._last: dict[Any, int] = {}
        self._worker = _Worker()
        self._closed = False
        # a writer dropped without close() (or alive at exit): finish what is queued, then stop
        weakref.finalize(self, _stop, self._worker, lock)

    # -- opening ---------------------------------------------------------------

    @classmethod
    def create(cls, url, resolved, *, param_layout: list[dict], buffer_layout: list[dict],
               provenance: dict, runs: list[RunKey], optimizer_state_names: list[str],
               step_chunk: int | None = None, precision_bits: int | None = None,
               storage_options: dict | None = None) -> StudyWriter:
        """Create a new, pre-sized store. StoreError if one exists or url is not writable."""
        group, lock = build_store(
            url, resolved, param_layout=param_layout, buffer_layout=buffer_layout,
            provenance=provenance, runs=runs, optimizer_state_names=optimizer_state_names,
            step_chunk=step_chunk, precision_bits=precision_bits, storage_options=storage_options)
        return cls(group, S.describe(url), lock)

    @classmethod
    def resume(cls, url, resolved, *, study_id: str, storage_options: dict | None = None,
               optimizer_state_names: list[str] | None = None) -> StudyWriter:
        """Reopen an existing store of the same study for resuming.

        Runs whose chunks are missing (deleted, lost) are marked incomplete, with
        everything that depends on them, so they are retrained instead of read as zeros.
        ``optimizer_state_names`` (the config's) must match the store's, if given.
        """
        from stabilitylab.store.validate import check_contents, missing_chunks

        where = S.describe(url)
        S.check_url(url)
        S.check_local_tree(url)
        # every check on a read-only view first: a refused resume writes nothing (opening a
        # local path read-write would already create the folder)
        group = S.open_root(url, mode="r", storage_options=storage_options, use_consolidated=False)
        attrs = dict(group.attrs)
        S.check_ours(attrs, where)
        if attrs.get("study_id") != study_id:
            raise StoreError(
                f"store at {where} holds study {attrs.get('study_id')}, not {study_id}; use another --out"
            )
        if attrs.get("created") is False:
            raise StoreError(f"store at {where} is incomplete: its creation was interrupted; "
                             "record (or record --resume) replaces it")
        from stabilitylab.store.validate import check_structure

        sizes = check_structure(group, where, attrs)
        with S.quiet(), S.reading(where):
            check_contents(group, where, attrs, sizes, chunks=False)
        if optimizer_state_names is not None:
            with S.quiet():
                have = sorted(n[len(S.STATE_PREFIX):] for n, _ in group.arrays()
                              if n.startswith(S.STATE_PREFIX))
            want = sorted(S.state_list(optimizer_state_names))
            if have != want:
                raise StoreError(f"store at {where} holds optimizer states {have}, but this config's "
                                 f"optimizer has {want}; use another --out")
        expect = {
            "level": resolved.levels, "rewind": resolved.rewinds,
            "replica": tuple(range(resolved.config.study.replicas)), "step": resolved.record_steps,
            "log_step": resolved.log_steps, "eval_step": resolved.eval_steps,
        }
        for dim, values in expect.items():
            with S.reading(where):
                stored = tuple(int(v) for v in group[dim][:])
            if stored != tuple(int(v) for v in values):
                raise StoreError(
                    f"store at {where} was sized for a different schedule ({dim} differs); use another --out"
                )
        lock = None
        path = S.local_path(url) if not isinstance(url, zarr.abc.store.Store) else None
        if path is not None:
            from stabilitylab.store.lock import acquire

            lock = acquire(path, where)
        try:
            with S.quiet(), S.reading(where):
                missing = missing_chunks(group, attrs, sizes)
            group = S.open_root(url, mode="r+", storage_options=storage_options,
                                use_consolidated=False)
            group.attrs.update({"complete": False})  # also drops stale consolidated metadata
            if lock is not None:
                _remove_partial_files(path, before=lock.acquired_at)
            if missing:
                _mark_for_retraining(group, where, missing)
        except OSError as e:
            if lock is not None:
                lock.release()
            raise StoreError(f"cannot write store at {where}: {S.one_line(e)}") from None
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return cls(group, where, lock)

    # -- status ----------------------------------------------------------------

    def completed_runs(self) -> set[RunKey]:
        """Runs whose status is complete, diverged or parent_diverged (done)."""
        self._check()
        self._worker.barrier()
        with S.reading(self._where):
            status = self._a["status"][...]
        levels = {i: lv for lv, i in self._level_idx.items()}
        rewinds = {i: k for k, i in self._rewind_idx.items()}
        return {
            RunKey(self.kinds[k], levels[l], rewinds[r], int(p))
            for k, l, r, p in zip(*np.nonzero(np.isin(status, K.DONE)))
        }

    def status_of(self, run: RunKey) -> str:
        """The committed status of ``run``: a key of :data:`~stabilitylab.core.keys.STATUS_CODES`."""
        self._check()
        self._worker.barrier()
        with S.reading(self._where):
            code = int(self._a["status"][self._idx(run)])
        return {v: k for k, v in K.STATUS_CODES.items()}[code]

    def dense_complete(self) -> bool:
        self._check()
        self._worker.barrier()
        with S.reading(self._where):
            return int(self._a["dense_status"][0]) in K.DONE

    # -- trajectories ------------------------------------------------------------

    def record(self, runs: list[RunKey], step: int, weights: np.ndarray) -> None:
        """Buffer one recorded step of several runs; ``weights`` is (len(runs), P)."""
        self._check()
        i = self._step(step)
        w = np.asarray(weights, dtype=np.float32)
        if w.shape != (len(runs), self.n_params):
            raise ValueError(f"record: weights shape {w.shape}, expected {(len(runs), self.n_params)}")
        for j, run in enumerate(runs):
            self._put(self._idx(run), i, w[j])

    def record_dense(self, step: int, weights: np.ndarray) -> None:
        self._check()
        i = self._step(step)
        w = np.asarray(weights, dtype=np.float32)
        if w.shape != (self.n_params,):
            raise ValueError(f"record_dense: weights shape {w.shape}, expected {(self.n_params,)}")
        self._put(_DENSE, i, w)

    def _put(self, key, i: int, row: np.ndarray) -> None:
        if i <= self._last.get(key, -1):
            raise ValueError(f"record: steps of a run must increase (step {self.steps[i]} after "
                             f"{self.steps[self._last[key]]})")
        buf = self._bufs.get(key)
        if buf is not None and not buf.s0 <= i < buf.s1:
            self._submit_buf(key, self._bufs.pop(key))
            buf = None
        if buf is None:
            s0 = (i // self.step_chunk) * self.step_chunk
            s1 = min(s0 + self.step_chunk, len(self.steps))
            buf = self._bufs[key] = _Buf(s0, s1, np.zeros((s1 - s0, self.n_params), np.float32))
        buf.data[i - buf.s0] = row
        self._last[key] = i
        if i == buf.s1 - 1:
            self._submit_buf(key, self._bufs.pop(key))

    def _submit_buf(self, key, buf: _Buf) -> None:
        if key == _DENSE:
            arr, region = self._a["dense_weights"], (slice(buf.s0, buf.s1), slice(None))
        else:
            arr, region = self._a["weights"], key + (slice(buf.s0, buf.s1), slice(None))
        self._submit(arr, region, buf.data)

    def _submit(self, arr, region, value) -> None:
        def write():
            arr[region] = value
        self._worker.submit(write)

    # -- metrics, masks, finals, states ----------------------------------------------

    def write_metrics(self, run: RunKey, *, train_loss, train_acc, test_loss, test_acc,
                      train_eval_loss, train_eval_acc) -> None:
        self._check()
        self._metrics(self._idx(run), "", locals())

    def write_dense_metrics(self, *, train_loss, train_acc, test_loss, test_acc,
                            train_eval_loss, train_eval_acc) -> None:
        self._check()
        self._metrics((), "dense_", locals())

    def _metrics(self, idx: tuple, prefix: str, values: dict) -> None:
        for names, n in ((S.LOG_METRICS, self.n_log), (S.EVAL_METRICS, self.n_eval)):
            for m in names:
                v = np.asarray(values[m], dtype=np.float32)
                if v.shape != (n,):
                    raise ValueError(f"{m}: shape {v.shape}, expected ({n},)")
                self._submit(self._a[prefix + m], idx + (slice(None),), v.copy())

    def write_mask(self, kind: str, level: int, rewind: int, mask: np.ndarray, density: float) -> None:
        self._check()
        idx = self._idx((kind, level, rewind, 0))[:3]
        m = np.asarray(mask, dtype=bool)
        if m.shape != (self.n_params,):
            raise ValueError(f"write_mask: mask shape {m.shape}, expected ({self.n_params},)")
        self._submit(self._a["masks"], idx + (slice(None),), m.copy())
        self._submit(self._a["density"], idx, np.float32(density))

    def write_replica_mask(self, run: RunKey, mask: np.ndarray) -> None:
        """The mask of one run of an own-mask kind (``replica_masks``)."""
        self._check()
        if "replica_masks" not in self._a:
            raise ValueError(f"write_replica_mask: this store has no replica_masks (its study "
                             f"trains no kind with per-copy masks; kinds {self.kinds})")
        m = np.asarray(mask, dtype=bool)
        if m.shape != (self.n_params,):
            raise ValueError(f"write_replica_mask: mask shape {m.shape}, expected "
                             f"({self.n_params},)")
        self._submit(self._a["replica_masks"], self._idx(run) + (slice(None),), m.copy())

    def write_final(self, run: RunKey, *, buffers, test_acc, test_loss, train_eval_acc,
                    train_eval_loss) -> None:
        self._check()
        self._final(self._idx(run), "", locals())

    def write_dense_final(self, *, buffers, test_acc, test_loss, train_eval_acc, train_eval_loss) -> None:
        self._check()
        self._final((), "dense_", locals())

    def _final(self, idx: tuple, prefix: str, values: dict) -> None:
        b = np.asarray(values["buffers"] if values["buffers"] is not None else [], dtype=np.float32)
        if b.shape != (self.n_buffers,):
            raise ValueError(f"buffers: shape {b.shape}, expected ({self.n_buffers},)")
        if self.n_buffers:
            self._submit(self._a[prefix + "final_buffers"], idx + (slice(None),), b.copy())
        at = idx if idx else (0,)
        for m in S.FINAL_METRICS:
            self._submit(self._a[f"{prefix}final_{m}"], at, np.float32(values[m]))

    def write_rewind_state(self, name: str, rewind: int, values: np.ndarray) -> None:
        self._check()
        arr = self._state(name)
        v = np.asarray(values, dtype=np.float32)
        if v.shape != (self.n_params,):
            raise ValueError(f"write_rewind_state: shape {v.shape}, expected ({self.n_params},)")
        self._submit(arr, (self._rewind(rewind), slice(None)), v.copy())

    def write_rewind_buffers(self, rewind: int, values: np.ndarray) -> None:
        """Floating buffers (BatchNorm running stats) of the dense run at rewind point k."""
        self._check()
        v = np.asarray(values, dtype=np.float32)
        if v.shape != (self.n_buffers,):
            raise ValueError(f"write_rewind_buffers: shape {v.shape}, expected ({self.n_buffers},)")
        if self.n_buffers:
            self._submit(self._a["rewind_buffers"], (self._rewind(rewind), slice(None)), v.copy())

    # -- reads (see pending writes) ------------------------------------------------

    def read_rewind_buffers(self, rewind: int) -> np.ndarray:
        self._check()
        i = self._rewind(rewind)
        self._sync()
        with S.reading(self._where):
            return np.asarray(self._a["rewind_buffers"][i, :])

    def read_rewind_state(self, name: str, rewind: int) -> np.ndarray:
        self._check()
        arr = self._state(name)
        self._sync()
        with S.reading(self._where):
            return np.asarray(arr[self._rewind(rewind), :])

    def read_weights(self, run: RunKey, step: int) -> np.ndarray:
        self._check()
        return self._read(self._idx(run), self._step(step))

    def read_dense_weights(self, step: int) -> np.ndarray:
        self._check()
        return self._read(_DENSE, self._step(step))

    def _read(self, key, i: int) -> np.ndarray:
        buf = self._bufs.get(key)
        if buf is not None and buf.s0 <= i < buf.s1 and i <= self._last.get(key, -1):
            return buf.data[i - buf.s0].copy()
        self._sync()
        with S.reading(self._where):
            if key == _DENSE:
                return np.asarray(self._a["dense_weights"][i, :])
            return np.asarray(self._a["weights"][key + (i, slice(None))])

    # -- finishing --------------------------------------------------------------------

    def finish_run(self, run: RunKey, status: str, diverged_step: int = -1) -> None:
        """Flush the run's data, wait until it is written, then write its status."""
        self._check()
        idx = self._idx(run)
        code = _status_code(status)
        if code == K.STATUS_COMPLETE and self.steps and self._last.get(idx) != len(self.steps) - 1:
            raise ValueError(f"finish_run: run {run} marked complete but step {self.steps[-1]} "
                             "was never recorded")
        if idx in self._bufs:
            self._submit_buf(idx, self._bufs.pop(idx))
        self._sync()  # data first ...
        self._submit(self._a["diverged_step"], idx, np.int64(diverged_step))
        self._submit(self._a["status"], idx, np.int8(code))  # ... then the status
        self._sync()

    def finish_dense(self, status: str, diverged_step: int = -1) -> None:
        """Flush the dense run, then write its diverged step and (last) its status."""
        self._check()
        code = _status_code(status)
        if code == K.STATUS_COMPLETE and self.steps and self._last.get(_DENSE) != len(self.steps) - 1:
            raise ValueError(f"finish_dense: marked complete but step {self.steps[-1]} was never recorded")
        if _DENSE in self._bufs:
            self._submit_buf(_DENSE, self._bufs.pop(_DENSE))
        self._sync()
        if "dense_diverged_step" in self._a:  # (absent from stores older than the array)
            self._submit(self._a["dense_diverged_step"], (0,), np.int64(diverged_step))
        self._submit(self._a["dense_status"], (0,), np.int8(code))
        self._sync()

    def reset_run(self, run: RunKey) -> None:
        """Mark a run incomplete and clear what it wrote (for resume)."""
        self._check()
        idx = self._idx(run)
        self._bufs.pop(idx, None)
        self._last.pop(idx, None)
        a = self._a
        self._submit(a["status"], idx, np.int8(K.STATUS_INCOMPLETE))  # first: never 'complete' on stale data
        self._submit(a["diverged_step"], idx, np.int64(-1))
        for m in S.FINAL_METRICS:
            self._submit(a[f"final_{m}"], idx, np.float32(np.nan))
        for m in S.LOG_METRICS + S.EVAL_METRICS:
            self._submit(a[m], idx + (slice(None),), np.float32(np.nan))
        self._submit(a["final_buffers"], idx + (slice(None),), np.float32(0))
        self._submit(self._plain["weights"], idx + (slice(None), slice(None)), np.float32(0))  # drops chunks
        self._sync()

    def update_attrs(self, attrs: dict) -> None:
        """Add JSON-serializable root attributes (e.g. an import's ``imported_from``)."""
        self._check()
        with S.reading(self._where):
            self._g.attrs.update(dict(attrs))

    def flush(self) -> None:
        """Write every pending row (partial chunks too) and wait for it."""
        self._check()
        for key, buf in self._bufs.items():
            self._submit_buf(key, _Buf(buf.s0, buf.s1, buf.data.copy()))
        self._sync()

    def close(self, *, consolidate: bool) -> bool:
        """Flush, stop the writer thread; if ``consolidate``, mark complete (when every
        planned run is done) and consolidate metadata. Returns the ``complete`` flag."""
        if self._closed:
            return bool(self._g.attrs.get("complete", False))
        try:
            if self._worker.error is None:
                for key in list(self._bufs):
                    self._submit_buf(key, self._bufs.pop(key))
        finally:
            self._worker.barrier()
            self._worker.stop()
            self._closed = True
        if self._worker.error is not None:
            self._release()
        self._raise_worker_error()
        complete = False
        if consolidate:
            with S.reading(self._where):
                status = self._a["status"][...]
                dense = int(self._a["dense_status"][0])
            planned = status != K.STATUS_ABSENT
            complete = bool(np.isin(status[planned], K.DONE).all()) and dense in K.DONE
            try:
                self._g.attrs.update({"complete": complete})
                with S.quiet():
                    zarr.consolidate_metadata(self._g.store, path=self._g.path or None)
            except OSError as e:
                self._release()
                raise StoreError(f"cannot write store at {self._where}: {S.one_line(e)}") from None
        self._release()
        return complete

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close(consolidate=True)
        elif not self._closed:
            try:
                self.close(consolidate=False)
            except StoreError:
                pass

    # -- helpers ------------------------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise StoreError(f"store writer for {self._where} is closed")
        self._raise_worker_error()

    def _raise_worker_error(self) -> None:
        err = self._worker.error
        if err is not None:
            raise StoreError(f"cannot write store at {self._where}: {S.one_line(err)}") from err

    def _sync(self) -> None:
        self._worker.barrier()
        self._raise_worker_error()

    def _step(self, step: int) -> int:
        try:
            return self._step_idx[int(step)]
        except KeyError:
            raise ValueError(f"step {step} is not a recorded step of this study") from None

    def _rewind(self, rewind: int) -> int:
        try:
            return self._rewind_idx[int(rewind)]
        except KeyError:
            raise ValueError(f"rewind {rewind} is not a rewind point of this study") from None

    def _idx(self, run: RunKey) -> tuple[int, int, int, int]:
        check_key(run, self._level_idx, self._rewind_idx, self.n_replicas, self.kinds)
        return run_index(run, self._level_idx, self._rewind_idx, self.kinds)

    def _state(self, name: str):
        arr = self._a.get(S.STATE_PREFIX + str(name))
        if arr is None:
            raise ValueError(f"unknown optimizer state {name!r}; store has {self._state_names}")
        return arr


def write_analysis(url, analysis, *, storage_options: dict | None = None) -> None:
    """Replace the ``analysis`` sub-group of a study store with an xarray Dataset.

    In a local store the new group is written beside the old one and swapped in by renames
    (:mod:`stabilitylab.store.analysis_group`): an interrupted write keeps the previous
    analysis. Call with the analysis lock held (``analyze`` does)."""
    from stabilitylab.store import analysis_group

    where = S.describe(url)
    store = S.open_store(url, read_only=False, storage_options=storage_options)
    root = S.open_root(store, mode="r+", use_consolidated=False)
    S.check_ours(dict(root.attrs), where)

    path = S.local_path(url)

    def write(group: str) -> None:
        # xarray's consolidated=True consolidates the store's root, which would then list the
        # temporary group: consolidate once, after the swap
        with S.quiet():
            analysis.to_zarr(store, group=group, mode="w", zarr_format=3,
                             consolidated=path is None)

    try:
        if path is None:  # object stores: no atomic rename, replaced in place
            write(analysis_group.LIVE)
        else:
            analysis_group.replace(path, write)
            with S.quiet():
                zarr.consolidate_metadata(store)
    except OSError as e:
        raise StoreError(f"cannot write store at {where}: {S.one_line(e)}") from None


# zarr's LocalStore writes every file as "<name>.<uuid4 hex>.partial", then renames it;
# a process killed mid-write leaves that temporary file behind (never read by zarr).
_PARTIAL = re.compile(r".+\.[0-9a-f]{32}\.partial")


def _remove_partial_files(path, *, before: float) -> None:
    """Delete the temporary files an interrupted writer left in a local store.

    Called with the writer lock held, and only for files last modified before we took
    it: no live writer can own them (a writer holds the lock for as long as it writes).
    """
    if not path.is_dir():
        return
    for p in path.rglob("*.partial"):
        try:
            stale = _PARTIAL.fullmatch(p.name) and p.is_file() and p.stat().st_mtime <= before
        except OSError:
            continue
        if stale:
            p.unlink(missing_ok=True)


def _mark_for_retraining(group: zarr.Group, where: str, missing: list) -> None:
    """Mark incomplete every run a missing chunk belongs to, and every run that depends on it."""
    import logging

    log = logging.getLogger(__name__)
    status = np.asarray(group["status"][...])
    dense = int(group["dense_status"][0])
    kinds = [str(v) for v in group["kind"][:]]
    before = status.copy()
    for m in missing:
        if m.run is None:  # the dense run (W_k, optimizer states, its trajectory): everything
            dense = K.STATUS_INCOMPLETE
            status[np.isin(status, K.DONE)] = K.STATUS_INCOMPLETE
            continue
        k, lv, r, p = m.index
        if p is None:  # masks / density of (kind, level, rewind): all its replicas
            status[k, lv, r][np.isin(status[k, lv, r], K.DONE)] = K.STATUS_INCOMPLETE
            continue
        status[k, lv, r, p] = K.STATUS_INCOMPLETE
        if kinds[k] == "imp" and p == 0:  # later levels' masks come from its final weights
            later = status[:, lv + 1:, r]
            later[np.isin(later, K.DONE)] = K.STATUS_INCOMPLETE
    n = int((np.isin(before, K.DONE) & ~np.isin(status, K.DONE)).sum())
    what = f"{n} run{'' if n == 1 else 's'}"
    if dense == K.STATUS_INCOMPLETE and int(group["dense_status"][0]) in K.DONE:
        what += " and the dense run"
    more = f" ({len(missing) - 1} more missing chunks)" if len(missing) > 1 else ""
    log.warning("%s: %s%s; retraining %s", where, missing[0].text, more, what)
    group["status"][...] = status
    group["dense_status"][0] = np.int8(dense)


def _stop(worker: _Worker, lock) -> None:
    worker.stop(60.0)
    if lock is not None:
        lock.release()


def _status_code(status: str) -> int:
    if status not in ("complete", "diverged", "incomplete", "parent_diverged"):
        raise ValueError("status must be complete, diverged, incomplete or parent_diverged, "
                         f"got {status!r}")
    return K.STATUS_CODES[status]
