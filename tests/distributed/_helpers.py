"""Shared by the scale-out and remote-store tests: loopback servers and store comparison."""

from __future__ import annotations

import socket
import subprocess

import numpy as np
import zarr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """Terminate a server subprocess; kill it if it does not exit within 10 s."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def assert_same_store(expected: zarr.Group, actual: zarr.Group, *, layout: bool = False) -> None:
    """Every array (NaN positions included) and every attribute but created_at; with
    ``layout``, also each array's dtype, shape and chunks."""
    names = sorted(n for n, _ in expected.arrays())
    assert names == sorted(n for n, _ in actual.arrays())
    for name in names:
        x, y = expected[name], actual[name]
        if layout:
            assert x.dtype == y.dtype and x.shape == y.shape and x.chunks == y.chunks, name
        x, y = np.asarray(x[...]), np.asarray(y[...])
        if x.dtype.kind in "OTU":
            assert x.tolist() == y.tolist(), name
        else:
            assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name
    a, b = dict(expected.attrs), dict(actual.attrs)
    a.pop("created_at")
    b.pop("created_at")
    assert a == b
