"""Recorded weights on their way to the recorder: device-to-host copies that do not stall
the device (CUDA: pinned buffers and asynchronous copies; each path falls back to the plain
CPU behaviour)."""

from __future__ import annotations

from collections import deque
from typing import Protocol

import numpy as np
import torch


class Recorder(Protocol):
    def record(self, runs: list, step: int, weights: np.ndarray) -> None: ...


def pinned_empty(shape, dtype) -> torch.Tensor:
    """A page-locked host tensor when CUDA can pin memory, else an ordinary one.

    Pinning needs a CUDA driver; without one ``pin_memory=True`` raises, and we fall back.
    """
    if torch.cuda.is_available():
        try:
            return torch.empty(shape, dtype=dtype, pin_memory=True)
        except RuntimeError:
            pass
    return torch.empty(shape, dtype=dtype)


def host_copy(t: torch.Tensor):
    """Start copying ``t`` to host memory: ``(host_tensor, event)``.

    CUDA tensor and pinned memory available: an asynchronous copy into a fresh pinned
    buffer (``non_blocking=True``) and a CUDA event recorded after it on the current
    stream; ``host_tensor`` is valid once ``event`` has completed. Otherwise (CPU tensor,
    or no pinned memory): a plain synchronous copy and ``event`` None. A CPU tensor is
    returned as is (no copy), so pass a tensor nobody will modify afterwards.

    Fresh pinned buffers are cheap after warm-up: PyTorch's caching host allocator
    reuses a pinned block only after its tensor is freed and the copies recorded on it
    are done, so a recorder may keep the arrays it is handed.
    """
    t = t.detach()
    if t.device.type != "cuda":
        return t.cpu(), None
    host = pinned_empty(t.shape, t.dtype)
    if not host.is_pinned():  # a non_blocking copy into pageable memory is synchronous anyway
        return t.cpu(), None
    host.copy_(t, non_blocking=True)
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(t.device))
    return host, event


class HostRecords:
    """Hands recorded weights to a recorder, in order, without stalling the device.

    ``push`` starts a device-to-host copy (:func:`host_copy`). A copy that needs no
    event (CPU) is delivered at once, which is the direct path. Otherwise it waits in a
    queue of at most ``depth`` copies in flight (a ring of pinned buffers); completed
    copies are delivered at the next ``push``, the oldest is waited for when the queue
    is full, and ``flush`` delivers the rest. Delivery order is push order.
    """

    def __init__(self, recorder: Recorder, depth: int = 4, copy=host_copy):
        self.recorder = recorder
        self.depth = max(1, int(depth))
        self.copy = copy
        self.pending: deque = deque()

    def push(self, runs: list, step: int, flat: torch.Tensor) -> None:
        host, event = self.copy(flat)
        if event is None and not self.pending:
            self.recorder.record(runs, step, host.numpy())
            return
        self.pending.append((runs, step, host, event, flat))  # keep ``flat`` alive until copied
        self._deliver(block=False)
        while len(self.pending) > self.depth:
            self._deliver_one()

    def flush(self) -> None:
        self._deliver(block=True)

    def _deliver(self, block: bool) -> None:
        while self.pending:
            event = self.pending[0][3]
            if not block and event is not None and not event.query():
                return
            self._deliver_one()

    def _deliver_one(self) -> None:
        runs, step, host, event, _ = self.pending.popleft()
        if event is not None and not event.query():
            event.synchronize()
        self.recorder.record(runs, step, host.numpy())
