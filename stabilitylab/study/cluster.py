"""Scale-out: record a study as tasks on a Dask cluster.

    stabilitylab record --scheduler local:4 ...          # a LocalCluster of 4 worker processes
    stabilitylab record --scheduler tcp://host:8786 ...  # any running cluster (Slurm, k8s, ...)

:func:`record_distributed` (public as ``stabilitylab.distributed.record_distributed``)
submits the tasks of :mod:`stabilitylab.study.plan` as :func:`train_task` calls: the dense
pretraining, then one task per (level, rewind point), each depending on
the task that trained the same rewind point one level below (level 0 on the dense
run). Every task opens the store itself, reads its inputs from it and writes only
its own runs' chunks, so workers never write the same chunk and need nothing but
the store URL. The driver creates (or resumes) the store before submitting and
consolidates its metadata once at the end. Because local ``record_study`` runs the
same tasks in-process, both write the same store, bit for bit on CPU.

A worker lost mid-task makes the scheduler rerun the task elsewhere; the rerun
resets the runs the task had finished and retrains all of them from the same
stored inputs, which rewrites them identically. On ``cuda`` every task asks for
the worker resource ``GPU=1`` (start workers with ``--resources GPU=1``).
See docs/distributed.md.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid

from stabilitylab.core.errors import ConfigError, StabilityLabError

log = logging.getLogger(__name__)

GPU = "GPU"  # the Dask worker resource a cuda task asks for
_RUN_LOCK = threading.Lock()  # one task at a time per process (global torch RNG, one device)


def record_distributed(cfg, out, *, scheduler, resume: bool = False, device: str | None = None,
                       progress: bool | None = None, storage_options: dict | None = None,
                       rewinds_per_task: int | None = 0, retries: int = 1,
                       max_store_gb: float | None = None) -> str:
    """Train and record the study ``cfg`` into ``out`` on a Dask cluster; return ``out``.

    Parameters
    ----------
    scheduler : a Dask scheduler address (``tcp://host:8786``), ``local:N`` for a
        LocalCluster of N single-threaded worker processes (closed at the end), or a
        ``distributed.Client``.
    device : ``cpu``, ``cuda`` or ``auto`` (default: ``study.device``). On a remote
        cluster ``auto`` means cuda when some worker offers a ``GPU`` resource.
    storage_options : fsspec options of ``out`` (e.g. an S3 endpoint), passed to every task.
    rewinds_per_task : rewind points per task (default 0 = a whole level per task, the widest
        batched groups; 1 = one task per rewind point, the most parallel tasks).
    retries : extra tries for a task that raised (lost workers are retried by the
        scheduler regardless).
    max_store_gb : refuse a study whose estimated uncompressed store is larger (as ``record``).
    """
    from stabilitylab.config import config_to_dict, study_id, validate
    from stabilitylab.store import StudyWriter
    from stabilitylab.study.plan import check_rewinds_per_task, plan_tasks
    from stabilitylab.study.runner import check_resources

    resolved = validate(cfg)
    per_task = check_rewinds_per_task(rewinds_per_task)
    url = _task_url(out)
    half = check_resources(cfg, url, resume=resume, device=device if device != "auto" else "cpu",
                           storage_options=storage_options, rewinds_per_task=per_task,
                           max_store_gb=max_store_gb)
    if not resume:
        _refuse_existing(url, storage_options)  # before starting a cluster; create checks again
    wanted = str(device or cfg.study.device)
    client, cluster, owned = _connect(scheduler, wanted)
    try:
        dev = _task_device(client, wanted)
        resources = {GPU: 1} if dev == "cuda" else None
        cfg_dict = config_to_dict(cfg)
        token = f"stabilitylab-{study_id(cfg)}-{uuid.uuid4().hex[:8]}"
        # Build the task context on a worker first: a missing dataset or a bad pruning.ignore
        # stops us there, before anything is written.
        spec = client.submit(store_spec_task, cfg_dict, dev, key=f"{token}-store-spec", pure=False,
                             resources=resources).result()
        if resume and not half:
            writer = StudyWriter.resume(url, resolved, study_id=study_id(cfg),
                                        storage_options=storage_options,
                                        optimizer_state_names=spec["optimizer_state_names"])
        else:
            writer = StudyWriter.create(url, resolved, storage_options=storage_options, **spec)
        try:
            _run_tasks(client, writer, plan_tasks(resolved, per_task), resolved, url, cfg_dict,
                       dev=dev, resources=resources, storage_options=storage_options,
                       token=token, retries=retries, progress=progress)
        finally:
            writer.close(consolidate=True)
    finally:
        if owned:
            client.close()
        if cluster is not None:
            _close_quietly(cluster)
    return str(out)


def _close_quietly(cluster) -> None:
    """Close a LocalCluster we started. Worker processes that imported torch often exit a
    little after the nanny's 4 s grace period; its 'killing' warning is noise here."""
    nanny = logging.getLogger("distributed.nanny")
    level = nanny.level
    nanny.setLevel(logging.ERROR)
    try:
        cluster.close()
    finally:
        nanny.setLevel(level)


def _task_url(out) -> str:
    """``out`` as a string every worker can open: local paths made absolute."""
    import os

    from stabilitylab.store.schema import local_path

    if isinstance(out, os.PathLike):
        out = os.fspath(out)
    if not isinstance(out, str):
        raise ConfigError(f"record on a cluster needs a store path or URL, not {type(out).__name__}")
    path = local_path(out)
    if path is not None and not out.startswith("file://"):
        return str(path.absolute())
    return out


def _refuse_existing(url: str, storage_options: dict | None) -> None:
    from stabilitylab.core.errors import StoreError
    from stabilitylab.store.schema import creation_state

    try:
        state = creation_state(url, storage_options)
    except Exception:  # noqa: BLE001 - unreachable/unauthorized: StudyWriter.create says why
        return
    if state == "created":  # (a half-created one is replaced)
        raise StoreError(f"a store already exists at {url}; use --resume or another --out")


def _run_tasks(client, writer, tasks, resolved, url, cfg_dict, *, dev, resources, storage_options,
               token, retries, progress) -> None:
    from distributed import as_completed

    from stabilitylab.progress import Progress
    from stabilitylab.study.plan import DENSE, all_runs, dependencies

    done = writer.completed_runs()
    dense_done = writer.dense_complete()
    bar = Progress(sum(t.replica_steps(resolved) for t in tasks), desc="record",
                   unit="replica-steps", enabled=progress)
    total_runs = 1 + len(all_runs(resolved))
    done_runs = 0
    futures = {}
    steps = {}
    levels = {}
    for task in tasks:
        runs = task.runs(resolved)
        if dense_done if runs == [DENSE] else all(run in done for run in runs):
            bar.update(task.replica_steps(resolved))  # resumed: nothing to do
            done_runs += len(runs)
            continue
        after = [futures[d] for d in dependencies(task, resolved) if d in futures]
        f = client.submit(train_task, url, cfg_dict,
                          task.level, task.rewinds, device=dev, storage_options=storage_options,
                          after=after, key=f"{token}-{task.name}", pure=False,
                          resources=resources, retries=retries)
        futures[task] = f
        steps[f.key] = task.replica_steps(resolved)
        levels[f.key] = -1 if task.level is None else task.level

    def show():
        pending = sorted(set(levels.values()))
        level = None if not pending else "dense" if pending[0] < 0 else pending[0]
        bar.set(level=level, runs=f"{done_runs}/{total_runs}")

    show()
    try:
        for f in as_completed(list(futures.values())):
            if f.status != "finished":
                f.result()  # raises the task's error here, with its own type
            done_runs += len(f.result()["statuses"])  # committed by the task before it returned
            levels.pop(f.key)
            show()
            bar.update(steps[f.key])
    except BaseException:
        client.cancel(list(futures.values()))
        raise
    finally:
        bar.close()


def _connect(scheduler, device: str):
    """(client, the cluster we started or None, whether we own the client)."""
    from distributed import Client

    if isinstance(scheduler, Client):
        return scheduler, None, False
    text = str(scheduler).strip()
    if text.startswith("local:"):
        n = text[len("local:"):]
        if not n.isdigit() or int(n) < 1:
            raise ConfigError(f"--scheduler {text}: need local:N with N >= 1 worker processes")
        from distributed import LocalCluster

        from stabilitylab.core.device import resolve_device

        resources = {GPU: 1} if resolve_device(device).type == "cuda" else None
        try:
            cluster = LocalCluster(n_workers=int(n), threads_per_worker=1, processes=True,
                                   host="127.0.0.1", dashboard_address=None, resources=resources)
        except Exception as e:  # noqa: BLE001 - ports, spawn failures, ...
            raise StabilityLabError(f"cannot start a local Dask cluster: {_one_line(e)}") from None
        return Client(cluster), cluster, True
    try:
        return Client(text, timeout="30s"), None, True
    except Exception as e:  # noqa: BLE001 - OSError, TimeoutError, bad address, ...
        raise StabilityLabError(f"cannot connect to Dask scheduler {text}: {_one_line(e)}") from None


def _task_device(client, wanted: str) -> str:
    """``cpu`` or ``cuda``: where the tasks train."""
    if wanted not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device: choose auto, cpu or cuda, got {wanted!r}")
    gpus = [w for w, info in client.scheduler_info(n_workers=-1)["workers"].items()
            if info.get("resources", {}).get(GPU, 0) >= 1]
    if wanted == "auto":
        return "cuda" if gpus else "cpu"
    if wanted == "cuda" and not gpus:
        log.warning("no Dask worker offers a %s resource yet; cuda tasks wait for one "
                    "(start workers with --resources %s=1)", GPU, GPU)
    return wanted


def _one_line(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return " ".join(text.split())


# -- the task as a worker sees it ----------------------------------------------------------

def open_task_writer(url, cfg, *, storage_options: dict | None = None):
    """A writer on an existing store for one task: no attribute writes, no structure checks
    (the driver did those), so concurrent tasks touch only their own chunks."""
    from stabilitylab.config import study_id
    from stabilitylab.core.errors import StoreError
    from stabilitylab.store import StudyWriter
    from stabilitylab.store import schema as S

    where = S.describe(url)
    group = S.open_root(url, mode="r+", storage_options=storage_options, use_consolidated=False)
    attrs = dict(group.attrs)
    S.check_ours(attrs, where)
    if attrs.get("study_id") != study_id(cfg):
        raise StoreError(f"store at {where} holds study {attrs.get('study_id')}, not {study_id(cfg)}")
    return StudyWriter(group, where)


def train_task(url, cfg_dict: dict, level: int | None, rewinds=(), *, device: str | None = None,
               storage_options: dict | None = None, after=None) -> dict:
    """Run one task against the store at ``url`` (which must exist): open it, train, close.

    This is what :func:`record_distributed` submits. ``cfg_dict`` is ``config_to_dict(cfg)``;
    ``after`` is ignored (it carries the futures of the tasks this one depends on).
    Returns ``{"task": name, "statuses": {run: status}}``.
    """
    from stabilitylab.study.context import context_for
    from stabilitylab.study.execution import run_task
    from stabilitylab.study.plan import Task

    task = Task(None if level is None else int(level), tuple(int(k) for k in rewinds))
    ctx = context_for(cfg_dict, device)
    with _RUN_LOCK:
        writer = open_task_writer(url, ctx.cfg, storage_options=storage_options)
        try:
            statuses = run_task(ctx, writer, task)
        except BaseException:
            with contextlib.suppress(Exception):  # the task's own error is the one to report
                writer.close(consolidate=False)
            raise
        writer.close(consolidate=False)
    return {"task": task.name, "statuses": {"/".join(map(str, r)): s for r, s in statuses.items()}}


def store_spec_task(cfg_dict: dict, device: str | None = None) -> dict:
    """Build the study's context where tasks will run (data, model, device) and return what
    a new store is created with: ``StudyWriter.create`` keyword arguments."""
    from stabilitylab.study.context import context_for

    return context_for(cfg_dict, device).store_spec()
