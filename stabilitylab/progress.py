"""Progress of a long phase (``record``'s training, ``analyze``'s measures), one helper for both.

* On a terminal: a tqdm bar.
* Otherwise (a pipe, ``tee``, nohup, a log file): one plain line on stderr every
  ``interval`` seconds (10) or every ``fraction`` (5%) of the work, whichever comes first
  (but at most one a second), and a last one at the end, e.g.::

      record: level 1 | runs 7/19 | 52% of 35,100 replica-steps | 1,210 replica-steps/s | ETA 14s

* ``enabled=False``: nothing.

Work is counted with :meth:`Progress.update` (an int: units done since the last call; the
training engine calls it once per block of steps with the replica-steps done). What is
being worked on (``level``, ``phase``) and the run count go in with :meth:`Progress.set`.
"""

from __future__ import annotations

import sys
import time


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m"
    return f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """A tqdm bar on a terminal, periodic one-line updates elsewhere, or nothing.

    ``enabled``: None = a bar when ``stream`` is a terminal, lines otherwise; True = always
    the bar; False = silent. ``clock`` is injectable for tests.
    """

    def __init__(self, total: int, *, desc: str, unit: str, enabled: bool | None = None,
                 stream=None, interval: float = 10.0, fraction: float = 0.05,
                 min_gap: float = 1.0, clock=time.monotonic):
        self.total = max(0, int(total))
        self.desc, self.unit = desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.interval, self.fraction, self.clock = float(interval), float(fraction), clock
        self.min_gap = float(min_gap)  # a short run prints a few lines, not one per 5%
        self.done = 0
        self.fields: dict[str, str] = {}
        self._bar = None
        self._lines = False
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty())
            self._lines = not tty
            enabled = tty
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, unit=unit, desc=desc, smoothing=0.1,
                             dynamic_ncols=True, file=self.stream)
        self._start = self.clock()
        self._last_time = self._start
        self._last_done = 0
        self._last_state = None
        self._closed = False

    # -- counting --------------------------------------------------------------------
    def update(self, n: int = 1) -> None:
        n = int(n)
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._lines:
            now = self.clock()
            step = max(1, int(self.fraction * self.total)) if self.total else 1
            since = now - self._last_time
            if since >= self.interval or (self.done - self._last_done >= step
                                          and since >= self.min_gap):
                self._emit(now)

    def set(self, announce: bool = False, **fields) -> None:
        """Describe the current state, e.g. ``set(level=1, runs="7/19")`` or ``set(phase=...)``;
        ``announce``: also print a line now (when printing lines), e.g. at a new phase."""
        for key, value in fields.items():
            if value is None:
                self.fields.pop(key, None)
            else:
                self.fields[key] = str(value)
        if self._bar is not None:
            self._bar.set_postfix_str(" ".join(f"{k} {v}" for k, v in self.fields.items()))
        elif self._lines and announce:
            self._emit(self.clock())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self._lines and self._state() != self._last_state:
            self._emit(self.clock())  # the final state (e.g. the last runs committed)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the line ----------------------------------------------------------------------
    def line(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        parts = [f"{k} {v}" for k, v in self.fields.items()]
        if self.total:
            parts.append(f"{100 * self.done / self.total:.0f}% of {self.total:,} {self.unit}")
        else:
            parts.append(f"{self.done:,} {self.unit}")
        parts.append(f"{rate:,.0f} {self.unit}/s" if rate >= 10 else f"{rate:,.2f} {self.unit}/s")
        if self.total and self.done >= self.total:
            parts.append(f"done in {_duration(elapsed)}")
        elif self.total and rate > 0:
            parts.append(f"ETA {_duration((self.total - self.done) / rate)}")
        else:
            parts.append("ETA unknown")
        return f"{self.desc}: " + " | ".join(parts)

    def _state(self):
        return self.done, tuple(self.fields.items())

    def _emit(self, now: float) -> None:
        print(self.line(now), file=self.stream, flush=True)
        self._last_time = now
        self._last_done = self.done
        self._last_state = self._state()
