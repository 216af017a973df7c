"""The report's figures drawn on two processes (stabilitylab.report.render)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from matplotlib.figure import Figure

from stabilitylab.report import render as R
from stabilitylab.report.document import DPI, _png

PARENT = os.getpid()


def _line(seed: int):
    def build():
        fig = Figure(figsize=(4, 3), layout="constrained")
        ax = fig.subplots()
        ax.plot(np.random.default_rng(seed).normal(size=50).cumsum())
        ax.set_title(f"figure {seed}")
        return fig
    return build


def _broken():
    raise ValueError("no data for this figure")


def _dies_in_helper(seed: int):
    def build():
        if os.getpid() != PARENT:  # the forked helper ends without a word
            os._exit(3)
        return _line(seed)()
    return build


def png(fig):
    return _png(fig, DPI)


def _serial(builds, monkeypatch):
    monkeypatch.setenv(R.WORKERS_ENV, "1")
    with R.Render(builds, png) as drawing:
        assert drawing.helper is None
        out = drawing.collect()
    monkeypatch.delenv(R.WORKERS_ENV)
    return out


needs_fork = pytest.mark.skipif(not R.parallel_ok(2), reason="no fork or fewer than 2 cores")


@needs_fork
def test_two_processes_give_the_serial_bytes_in_order(monkeypatch):
    builds = [_line(i) for i in range(6)]
    expected = _serial(builds, monkeypatch)
    with R.Render(builds, png, first=[4]) as drawing:  # figure 4 claimed first
        assert drawing.helper is not None and drawing.helper.pid != PARENT
        assert drawing.order == [4, 0, 1, 2, 3, 5]
        got = drawing.collect()
    assert all(isinstance(b, bytes) and b.startswith(b"\x89PNG") for b in got)
    assert got == expected
    assert len(set(got)) == 6  # each figure its own, in the order given


@needs_fork
def test_a_failing_figure_comes_back_as_its_exception_from_the_parent():
    with R.Render([_line(0), _broken, _line(1)], png) as drawing:
        got = drawing.collect()
    assert isinstance(got[1], ValueError) and "no data" in str(got[1])
    assert isinstance(got[0], bytes) and isinstance(got[2], bytes)


@needs_fork
def test_figures_of_a_helper_that_died_are_drawn_by_the_parent(monkeypatch, caplog):
    builds = [_dies_in_helper(i) for i in range(4)]
    expected = _serial([_line(i) for i in range(4)], monkeypatch)
    with R.Render(builds, png) as drawing:
        got = drawing.collect()
    assert got == expected
    assert "helper process ended early" in caplog.text


@needs_fork
def test_close_before_collect_stops_the_helper():
    drawing = R.Render([_line(i) for i in range(8)], png)
    helper = drawing.helper
    drawing.close()
    assert not helper.is_alive() and drawing.helper is None


def test_one_figure_or_workers_1_draws_here(monkeypatch):
    assert not R.parallel_ok(1) and not R.parallel_ok(0)
    monkeypatch.setenv(R.WORKERS_ENV, "1")
    assert not R.parallel_ok(5)
    got = R.Render([_line(0), _broken], png).collect()
    assert isinstance(got[0], bytes) and isinstance(got[1], ValueError)


def test_figures_are_claimed_slowest_first_then_in_order(monkeypatch):
    import multiprocessing as mp

    monkeypatch.setenv(R.WORKERS_ENV, "1")  # no helper: only the order is looked at
    counter = mp.get_context().Value("i", 0)
    order = R.Render([_line(i) for i in range(4)], png, first=[2, 9]).order
    assert order == [2, 0, 1, 3]  # an index beyond the list is ignored
    claimed = [R._claim(counter, order) for _ in range(5)]
    assert claimed == [2, 0, 1, 3, None]
