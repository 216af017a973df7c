"""Stores read over HTTP from real servers on loopback: ``open_study`` and ``analyze``.

Two servers, each a subprocess bound to 127.0.0.1 on a free port and stopped after
the module: ``python -m http.server`` (which serves directory listings) and a
static server without listings, like most object-store / CDN hosting. HTTP cannot
list a store, so zarr needs the consolidated metadata ``record`` writes at the end.
"""

import json
import shutil
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import xarray as xr
from _helpers import free_port, stop

import stabilitylab
from stabilitylab.core.errors import StoreError

aiohttp = pytest.importorskip("aiohttp", reason="fsspec's HTTP filesystem needs aiohttp")

TIMEOUT_S = 30  # every HTTP request is bounded

NO_LISTING_SERVER = r"""
import functools, http.server, sys

class Handler(http.server.SimpleHTTPRequestHandler):
    def list_directory(self, path):  # static hosting: no directory listings
        self.send_error(404, "no listings here")

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])),
                                         functools.partial(Handler, directory=sys.argv[1]))
server.serve_forever()
"""


def _serve(kind: str, root) -> tuple[subprocess.Popen, str]:
    port = free_port()
    if kind == "http.server":
        cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
               "--directory", str(root)]
    else:
        cmd = [sys.executable, "-c", NO_LISTING_SERVER, str(root), str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(f"{base}/ready.txt", timeout=2) as r:
                if r.status == 200:
                    return proc, base
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{kind} server did not start on port {port}") from None
            time.sleep(0.1)


@pytest.fixture(scope="module")
def served(tiny_study, tmp_path_factory):
    """A folder with the tiny study (consolidated, as `record` leaves it) and a copy with
    the consolidated metadata stripped, served by both servers: {kind: base URL}."""
    root = tmp_path_factory.mktemp("served")
    shutil.copytree(tiny_study, root / "tiny.zarr")
    shutil.copytree(tiny_study, root / "unconsolidated.zarr")
    meta = root / "unconsolidated.zarr" / "zarr.json"
    doc = json.loads(meta.read_text())
    assert doc.pop("consolidated_metadata", None)
    meta.write_text(json.dumps(doc))
    (root / "ready.txt").write_text("ok")
    servers = {}
    try:
        for kind in ("http.server", "no-listing"):
            servers[kind] = _serve(kind, root)
        yield {kind: base for kind, (_, base) in servers.items()}
    finally:
        for proc, _ in servers.values():
            stop(proc)


def _options():
    return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=TIMEOUT_S)}}


@pytest.mark.parametrize("kind", ["http.server", "no-listing"])
def test_open_study_over_http_is_lazy_and_equals_the_local_store(tiny_study, served, kind):
    import dask.array

    ds = stabilitylab.open_study(f"{served[kind]}/tiny.zarr", storage_options=_options())
    local = stabilitylab.open_study(str(tiny_study))
    assert isinstance(ds.weights.data, dask.array.Array)
    one = ds.weights.sel(kind="imp", level=1, rewind=10, replica=0)
    assert np.array_equal(one.values, local.weights.sel(kind="imp", level=1, rewind=10,
                                                        replica=0).values)
    assert set(ds.data_vars) == set(local.data_vars)
    for name in local.data_vars:
        a, b = local[name].values, ds[name].values
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), name
    assert ds.attrs == local.attrs


def test_unconsolidated_store_needs_a_listing_server(served):
    url = f"{served['no-listing']}/unconsolidated.zarr"
    with pytest.raises(StoreError, match="no consolidated metadata.*cannot list") as err:
        stabilitylab.open_study(url, storage_options=_options())
    assert url in str(err.value) and "\n" not in str(err.value)
    ds = stabilitylab.open_study(f"{served['http.server']}/unconsolidated.zarr",
                                 storage_options=_options())
    assert ds.sizes["param"] > 0


def test_analyze_reads_the_study_over_http(tiny_analyzed, served, monkeypatch):
    """Every measure computed from the HTTP store equals the local analysis. HTTP is
    read-only, so the write-back (store group + CSV) is captured instead."""
    from stabilitylab.analysis import run
    from stabilitylab.store import schema as run_schema
    from stabilitylab.store import writer

    captured = {}
    monkeypatch.setattr(run_schema, "check_writable", lambda url, **kw: None)
    monkeypatch.setattr(writer, "write_analysis",
                        lambda url, analysis, **kw: captured.setdefault("analysis", analysis))
    monkeypatch.setattr(run, "write_csv", lambda url, analysis, *a, **kw: None)
    _, local = tiny_analyzed
    result = run.analyze_store(f"{served['no-listing']}/tiny.zarr", storage_options=_options(),
                               progress=False, n_boot=200)
    assert captured["analysis"] is result["analysis"]
    ignore = {"created_at", "analysis_seconds"}
    remote, expected = result["analysis"], local["analysis"]
    assert {k: v for k, v in remote.attrs.items() if k not in ignore} == \
        {k: v for k, v in expected.attrs.items() if k not in ignore}
    xr.testing.assert_identical(remote.drop_attrs(), expected.drop_attrs())
    assert result["lines"] == local["lines"]


def test_analyze_on_a_read_only_http_store_fails_fast_in_one_line(served, capsys):
    """Nothing is computed: the write-ability probe runs right after the store is opened."""
    import dataclasses

    from stabilitylab.cli.main import main

    from stabilitylab.analysis import registry

    url = f"{served['no-listing']}/tiny.zarr"
    calls = []
    registry.load()
    saved = dict(registry.GROUPS)
    try:
        for name, g in saved.items():  # every group's compute, counted
            if g.compute is not None:
                registry.GROUPS[name] = dataclasses.replace(
                    g, compute=lambda *a, _real=g.compute, **k: calls.append(1) or _real(*a, **k))
        assert main(["analyze", url, "--no-progress"]) == 2
    finally:
        registry.GROUPS.clear()
        registry.GROUPS.update(saved)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert url in err[0] and "read-only over HTTP" in err[0] and "copy" in err[0]
    assert not calls


def test_missing_store_at_a_url_names_the_url(served):
    url = f"{served['no-listing']}/nothing-here.zarr"
    with pytest.raises(StoreError) as err:
        stabilitylab.open_study(url, storage_options=_options())
    assert url in str(err.value) and "FsspecStore" not in str(err.value)
    with pytest.raises(StoreError, match="nothing-here"):
        stabilitylab.open_analysis(url, storage_options=_options())
