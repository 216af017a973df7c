"""How the analysis asks the operating system for memory, and how often Python's cyclic
garbage collector looks at it.

NumPy advises the kernel to back every array of 4 MiB or more with transparent huge
pages (``madvise(MADV_HUGEPAGE)``, on Linux when the system's policy is ``madvise``).
A fresh huge page is zeroed whole (2 MiB) when it is first touched. The analysis makes
and drops many such temporaries (a trajectory block, its float64 widening, the masks of
every step), and on a virtual machine whose memory the host backs lazily, that zeroing
dominated: on the 2-core Xeon VM, ``perf`` put 29% of all CPU samples of the trajectory
group in ``clear_page_erms`` under ``do_huge_pmd_anonymous_page``, and the group took
5.4-6.9 s with huge pages against 3.1-3.2 s without (the same values: only where the
memory comes from changes).

:func:`small_pages` turns NumPy's advice off for the duration of a ``with`` block and
restores it after. A user who chose with ``NUMPY_MADVISE_HUGEPAGE`` (NumPy's own switch,
read at its import) keeps that choice.

Python's cyclic garbage collector runs a full collection whenever the objects that
survived the younger ones have grown by a quarter, and a full collection visits every
tracked object. Importing torch, xarray, zarr, scipy and inductor makes about 800,000 of
them, which live as long as the process, so ``analyze`` of the default study spent 1.1-1.4 s
in the collector (2-core AMD EPYC; measured with ``gc.callbacks``), 1.0 s of it in full
collections during and after those imports, all of it while no other Python thread ran.
:func:`collector_paused` turns the collector off around imports, and
:func:`long_lived_frozen` moves the objects alive at its entry out of the collector's view
(``gc.freeze``) until its end: 0.08-0.11 s in the collector then. Objects made inside the
block are collected as before.
"""

from __future__ import annotations

import contextlib
import gc
import os

ENV = "NUMPY_MADVISE_HUGEPAGE"


def _toggle():
    """NumPy's runtime switch of the advice (returns the previous setting), or None where
    this NumPy has none."""
    try:
        from numpy._core import multiarray
    except ImportError:  # NumPy 1.x
        from numpy.core import multiarray
    return getattr(multiarray, "_set_madvise_hugepage", None)


@contextlib.contextmanager
def small_pages():
    """NumPy's arrays on ordinary pages inside the block (see the module docstring),
    unless ``NUMPY_MADVISE_HUGEPAGE`` is set, which is then left as it is."""
    toggle = _toggle()
    if toggle is None or os.environ.get(ENV, "").strip():
        yield
        return
    previous = toggle(False)
    try:
        yield
    finally:
        toggle(previous)


@contextlib.contextmanager
def collector_paused():
    """The cyclic garbage collector off inside the block (as it was after): for imports,
    whose objects live as long as the process and leave no cycles worth a full collection."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@contextlib.contextmanager
def long_lived_frozen():
    """The objects alive at entry frozen (``gc.freeze``: full collections skip them) inside
    the block. At its end they go back to the collector, unless objects were frozen before
    the block: whoever froze them keeps them frozen (the ``analyze`` command, until the
    process ends; the final collection of an exiting interpreter then skips them too)."""
    global _FROZEN
    before = gc.get_freeze_count()
    gc.freeze()
    _FROZEN += 1
    try:
        yield
    finally:
        _FROZEN -= 1
        if not before:
            gc.unfreeze()


_FROZEN = 0  # depth of long_lived_frozen blocks


@contextlib.contextmanager
def long_lived_imports():
    """Inside :func:`long_lived_frozen`: the block runs with the collector paused
    (:func:`collector_paused`) and the objects made in it are frozen after it (modules
    imported on first use, a compiled forward). Elsewhere: the block as it is."""
    if not _FROZEN:
        yield
        return
    with collector_paused():
        yield
        gc.freeze()  # before the collector is back: its next collection would visit them all
