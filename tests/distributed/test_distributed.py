"""`record` on a real Dask LocalCluster (2 worker processes): the store equals the local one
bit for bit, a lost worker's task is retried identically, resume works, cuda asks for a GPU."""

import os
import shutil

import numpy as np
import pytest
import torch
import zarr
from _helpers import assert_same_store as same_store
from conftest import tiny_config

from stabilitylab.core.errors import ConfigError
from stabilitylab.store import validate
from stabilitylab.study.cluster import record_distributed

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded worker processes on loopback; they advertise a GPU resource
    (a label only: the cuda test below checks that tasks ask for it)."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None,
                                  resources={"GPU": 1}) as cluster, \
            distributed.Client(cluster) as client:
        yield cluster, client


def assert_same_store(expected, actual):
    """Every array (NaN positions included, same dtype/shape/chunks) and every attribute
    but created_at; the copy is complete."""
    a = zarr.open_group(str(expected), mode="r")
    b = zarr.open_group(str(actual), mode="r")
    same_store(a, b, layout=True)
    assert b.attrs["complete"] is True


def test_cluster_store_is_bitwise_the_local_store(tiny_study, cluster, tmp_path):
    _, client = cluster
    out = tmp_path / "cluster.zarr"
    record_distributed(tiny_config(), str(out), scheduler=client, device="cpu", progress=False)
    validate(str(out))
    assert_same_store(tiny_study, out)


def _kill_once(marker: str):
    """A worker plugin: the first worker to finish a level-1 run exits at once (os._exit),
    leaving its task half written (one run complete, the others not)."""

    class KillOnce(distributed.WorkerPlugin):
        name = "stabilitylab-test-kill-once"

        def setup(self, worker):
            from stabilitylab.store.writer import StudyWriter

            original = StudyWriter.finish_run

            def finish_run(writer, run, *args, **kwargs):
                original(writer, run, *args, **kwargs)
                if run.level == 1:
                    try:
                        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                    except FileExistsError:
                        return
                    os._exit(1)

            StudyWriter.finish_run = finish_run
            self.restore = (StudyWriter, original)

        def teardown(self, worker):
            cls, original = self.restore
            cls.finish_run = original

    return KillOnce()


@pytest.mark.slow
def test_lost_worker_task_is_retried_and_gives_the_same_store(tiny_study, cluster, tmp_path):
    _, client = cluster
    marker = tmp_path / "killed"
    plugin = _kill_once(str(marker))
    client.register_plugin(plugin)
    try:
        out = tmp_path / "retried.zarr"
        record_distributed(tiny_config(), str(out), scheduler=client, device="cpu", progress=False)
    finally:
        client.unregister_worker_plugin(plugin.name)
    assert marker.exists(), "no worker was lost"
    client.wait_for_workers(2, timeout=120)  # the nanny restarted it
    assert_same_store(tiny_study, out)


def test_resume_on_the_cluster_is_bitwise_identical(tiny_study, cluster, tmp_path):
    """Knock the last level back to 'incomplete' (as a crash would leave it) and resume."""
    _, client = cluster
    out = tmp_path / "resumed.zarr"
    shutil.copytree(tiny_study, out)
    group = zarr.open_group(str(out), mode="r+")
    status = group["status"]
    s = np.asarray(status[:, 2])
    status[:, 2] = np.where(s == 2, 1, s)
    group["weights"][:, 2] = 0.0
    group.attrs["complete"] = False
    record_distributed(tiny_config(), str(out), scheduler=client, resume=True, device="cpu",
                       progress=False)
    assert_same_store(tiny_study, out)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where torch sees no CUDA")
def test_cuda_tasks_ask_for_a_gpu_resource_and_fail_before_writing(cluster, tmp_path):
    scheduler_cluster, client = cluster
    seen = {}

    class Spy(distributed.diagnostics.plugin.SchedulerPlugin):
        def update_graph(self, scheduler, *, keys, **kwargs):
            for key in keys:
                seen[key] = scheduler.tasks[key].resource_restrictions

    scheduler_cluster.scheduler.add_plugin(Spy(), name="spy")
    try:
        out = tmp_path / "cuda.zarr"
        with pytest.raises(ConfigError, match="cuda"):
            record_distributed(tiny_config(), str(out), scheduler=client, device="cuda",
                               progress=False)
    finally:
        scheduler_cluster.scheduler.remove_plugin("spy")
    assert seen and all(r == {"GPU": 1} for r in seen.values()), seen
    assert not out.exists()


@pytest.mark.parametrize("spec", ["local:0", "local:two", "local:"])
def test_bad_local_scheduler_is_one_clear_error(spec, tmp_path):
    with pytest.raises(ConfigError, match="local:N"):
        record_distributed(tiny_config(), str(tmp_path / "s.zarr"), scheduler=spec)
    assert not (tmp_path / "s.zarr").exists()
