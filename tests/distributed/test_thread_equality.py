"""Local and Dask records of the default model are equal bit for bit when the recording
process runs torch with more than one intra-op thread: Dask workers start with
``OMP_NUM_THREADS=1``, so each task now runs with the driver's thread count (a CPU GEMM's
summation order depends on it: 2.4e-7 differences in 12 arrays before)."""

import pytest
import torch
import zarr
from _helpers import assert_same_store

import stabilitylab
from stabilitylab.study.cluster import record_distributed

distributed = pytest.importorskip("distributed")

# the default model (conv1d, default width) and data; only the study is shrunk
SMALL = ["training.steps='30it'", "study.rewinds=['0it','10it']", "study.replicas=2",
         "pruning.levels=1", "training.eval_every='15it'", "training.log_every='5it'",
         "study.record='every:5'"]


@pytest.mark.slow
def test_local_and_local2_records_of_the_default_model_are_bitwise_equal(tmp_path):
    cfg = stabilitylab.load_config(None, SMALL)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)  # what a local record on 2 cores uses
    try:
        stabilitylab.record_study(cfg, str(tmp_path / "local.zarr"), progress=False, device="cpu")
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      host="127.0.0.1", dashboard_address=None) as cluster, \
                distributed.Client(cluster) as client:
            record_distributed(cfg, str(tmp_path / "dask.zarr"), scheduler=client, device="cpu",
                               progress=False)
    finally:
        torch.set_num_threads(previous)
    a = zarr.open_group(str(tmp_path / "local.zarr"), mode="r")
    b = zarr.open_group(str(tmp_path / "dask.zarr"), mode="r")
    assert_same_store(a, b, layout=True)
