"""`record` writes to an S3-compatible server and `analyze` reads it back: moto's standalone
server (from PyPI) in a subprocess on 127.0.0.1, stopped after the module."""

import os
import subprocess
import sys
import time
import urllib.request

import pytest
import zarr
from _helpers import assert_same_store, free_port, stop
from conftest import TINY, tiny_config

import stabilitylab
from stabilitylab.study.cluster import record_distributed

pytest.importorskip("moto.server", reason="needs moto's S3 server: pip install 'moto[server]'")
s3fs = pytest.importorskip("s3fs", reason="needs s3fs for s3:// stores: pip install s3fs")
boto3 = pytest.importorskip("boto3", reason="needs boto3 (installed with moto)")

TIMEOUT_S = 30
BUCKET = "studies"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server with one empty bucket: (endpoint URL, fsspec storage options)."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start on port {port}") from None
                time.sleep(0.2)
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                     aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing",
                   "config_kwargs": {"connect_timeout": TIMEOUT_S, "read_timeout": TIMEOUT_S,
                                     "retries": {"max_attempts": 2}}}
        yield endpoint, options
    finally:
        stop(proc)


@pytest.mark.slow
def test_record_on_a_local_cluster_to_s3_then_analyze_with_the_cli(tiny_study, s3, tmp_path):
    endpoint, options = s3
    url = f"s3://{BUCKET}/tiny.zarr"
    # record: two worker processes write their runs' chunks straight to S3
    record_distributed(tiny_config(), url, scheduler="local:2", device="cpu", progress=False,
                       storage_options=options)
    remote = zarr.open_group(zarr.storage.FsspecStore.from_url(url, storage_options=options,
                                                               read_only=True), mode="r")
    assert_same_store(zarr.open_group(str(tiny_study), mode="r"), remote)
    ds = stabilitylab.open_study(url, storage_options=options)
    assert ds.attrs["complete"] is True

    # analyze through the command line; the endpoint and keys come from the environment
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(CREDENTIALS, AWS_ENDPOINT_URL=endpoint, OMP_NUM_THREADS="1")

    def cli(*args, timeout):
        return subprocess.run([sys.executable, "-m", "stabilitylab.cli.main", *args], env=env,
                              cwd=tmp_path, capture_output=True, text=True, check=False,
                              timeout=timeout)

    done = cli("analyze", url, "--no-report", "--no-progress", timeout=600)
    assert done.returncode == 0, done.stderr
    assert "instability" in done.stdout
    analysis = stabilitylab.open_analysis(url, storage_options=options)
    assert "instability" in analysis
    fs = s3fs.S3FileSystem(**options)
    assert {p.rsplit("/", 1)[-1] for p in fs.ls(f"{BUCKET}/tiny.zarr.analysis")} >= {
        "summary.csv", "correlations.csv", "predictions.csv"}

    # `record --scheduler` refuses to clobber it (before starting a cluster)
    sets = [a for item in TINY for a in ("--set", item)]
    done = cli("record", "--out", url, "--scheduler", "local:1", *sets, timeout=300)
    assert done.returncode == 2 and "already exists" in done.stderr, done.stderr
