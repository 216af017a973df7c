"""The report's figures drawn on two cores.

Matplotlib draws on one thread under the GIL, and drawing is most of a report's time (on
the default study, 10 figures: ~5 s of building, drawing and encoding against ~2 s of
reading the store). :class:`Render` therefore forks one helper process that takes figures
from the same list as the parent: each process claims the next unclaimed figure from a
shared counter, builds, draws and encodes it, and the helper sends its PNG bytes back
through a pipe when the list is empty. The parent meanwhile writes the report's tables and
then draws its own share, so the slowest figure (the measure-correlation grid) overlaps the
others.

The helper is a fork: it inherits the in-memory study and analysis, the imported modules
and matplotlib's font cache, so it starts in milliseconds, where a spawned interpreter
would spend seconds importing. It only draws: dask is switched to its synchronous
scheduler there (a forked process has none of its parent's pool threads), and zarr
resets its own event loop after a fork. A figure the helper could not make, or every
figure it had not sent when it died, is made again by the parent, which reports any error
as the serial path does; the PNG bytes are the same whichever process drew them.

The fork is used on Linux with at least two usable cores and more than one figure;
elsewhere (macOS, where forking a process that has loaded system frameworks is unsafe,
and Windows) and with ``STABILITYLAB_REPORT_WORKERS=1`` the figures are drawn in order
by the calling process.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

#: Set to "1" to draw every figure in the calling process.
WORKERS_ENV = "STABILITYLAB_REPORT_WORKERS"


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def parallel_ok(n_figures: int) -> bool:
    """Whether :class:`Render` forks a helper for ``n_figures`` figures here."""
    import multiprocessing as mp

    return (n_figures > 1 and sys.platform.startswith("linux")
            and "fork" in mp.get_all_start_methods() and _usable_cores() >= 2
            and os.environ.get(WORKERS_ENV, "").strip() != "1")


class Render:
    """``[png(build()) for build in builds]``, on two processes where :func:`parallel_ok`.

    Creating it forks the helper, which starts drawing at once; the caller may do other
    work (the report's tables) before :meth:`collect`, which draws the parent's share and
    returns every figure's PNG bytes in order. An exception raised by a build or by
    ``png`` is returned in that figure's place (raised in the calling process, so its
    traceback is the caller's to log).
    """

    def __init__(self, builds: Sequence[Callable[[], object]], png: Callable[[object], bytes],
                 first: Sequence[int] = ()):
        self.builds, self.png, self.helper = list(builds), png, None
        self.counter = self.receive = None
        # the claim order: ``first`` (the slowest figures: started early, they do not end
        # the report alone), then the rest as given
        rest = [i for i in range(len(self.builds)) if i not in set(first)]
        self.order = [i for i in first if 0 <= i < len(self.builds)] + rest
        if not parallel_ok(len(self.builds)):
            return
        import multiprocessing as mp

        ctx = mp.get_context("fork")
        self.counter = ctx.Value("i", 0)
        self.receive, send = ctx.Pipe(duplex=False)
        self.helper = ctx.Process(target=_helper, args=(self.builds, self.order, png,
                                                        self.counter, send),
                                  daemon=True, name="stabilitylab-report-figures")
        with warnings.catch_warnings():  # Python >= 3.12 warns on forking a threaded
            warnings.simplefilter("ignore", DeprecationWarning)  # process; the helper only draws
            self.helper.start()
        send.close()  # the helper holds the only writer: its exit ends receive.recv()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the helper if it still runs (the caller failed before :meth:`collect`)."""
        if self.helper is not None and self.helper.pid is not None:
            if self.helper.is_alive():
                self.helper.kill()
            self.helper.join()
            self.receive.close()
            self.helper = None

    def collect(self) -> list:
        builds, png = self.builds, self.png
        if self.helper is None:
            return [_one(build, png) for build in builds]
        results: dict[int, object] = {}
        try:
            while (i := _claim(self.counter, self.order)) is not None:
                results[i] = _one(builds[i], png)
            try:
                theirs = self.receive.recv()
            except (EOFError, OSError):  # the helper died: its figures are redone below
                log.warning("report: the figure helper process ended early; drawing its "
                            "figures here")
                theirs = {}
        finally:
            self.helper.join(timeout=5)
            self.close()
        results.update({i: data for i, data in theirs.items() if isinstance(data, bytes)})
        return [results[i] if i in results else _one(builds[i], png) for i in range(len(builds))]


def _claim(counter, order: Sequence[int]) -> int | None:
    """The next unclaimed figure of ``order``, or None when every one is claimed."""
    with counter.get_lock():
        i = counter.value
        if i >= len(order):
            return None
        counter.value = i + 1
        return order[i]


def _one(build, png):
    try:
        return png(build())
    except Exception as e:  # noqa: BLE001 - the caller logs it and leaves the figure out
        return e


def _helper(builds, order, png, counter, send) -> None:
    """The forked process: figures claimed from ``counter`` until none are left; sends
    {index: PNG bytes, or None where it failed (the parent makes that one again)}."""
    try:
        import dask

        dask.config.set(scheduler="synchronous")
    except ImportError:
        pass
    done: dict[int, bytes | None] = {}
    while (i := _claim(counter, order)) is not None:
        data = _one(builds[i], png)
        done[i] = data if isinstance(data, bytes) else None
    send.send(done)
    send.close()
