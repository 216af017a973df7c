"""How the analysis asks the operating system for memory.

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
"""

from __future__ import annotations

import contextlib
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
