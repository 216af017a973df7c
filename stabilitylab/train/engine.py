"""The replica-batched training engine: R runs of one architecture as one vectorized model.

A :class:`GroupPlan` lists R runs with their own start weights, masks, data-order
seeds, schedule positions and optimizer states. :func:`train_group` trains them
together through ``vmap(functional_call)`` with one stacked optimizer update per
step, so the Python work per step does not grow with R.

Runs in a group may start at different steps (different rewind points): iteration
i moves replica r from step ``k_r + i`` to ``k_r + i + 1``. All replicas take
``T - min(k)`` iterations; a replica that reaches T early has its final state
snapshotted then, and the few iterations it computes after T are discarded.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from stabilitylab.core.seeds import derive_seed
from stabilitylab.data.augment import replica_keys
from stabilitylab.train.data_order import DataOrders
from stabilitylab.train.functional import StackedModel
from stabilitylab.train.optim import StackedOptimizer, step_scalars
from stabilitylab.train.schedule import schedule_for


class Recorder(Protocol):
    def record(self, runs: list, step: int, weights: np.ndarray) -> None: ...


@dataclass
class GroupPlan:
    """What to train. Every stacked tensor has a leading replica dim of size R."""

    runs: list  # run keys, opaque to the engine
    start_steps: list[int]
    data_seeds: list[int]
    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # float 0/1, prunable only
    opt_state: dict | None = None
    opt_steps: list[int] | None = None  # optimizer steps already taken (restored state)
    snapshot_steps: tuple[int, ...] = ()  # steps at which to call on_snapshot (pretraining)
    seed: int = 0  # for dropout / augmentation randomness

    @property
    def size(self) -> int:
        return len(self.runs)


@dataclass
class GroupResult:
    params: dict[str, torch.Tensor]  # final (step T) weights, (R, ...)
    buffers: dict[str, torch.Tensor]
    train_loss: np.ndarray  # (R, n_log)
    train_acc: np.ndarray
    test_loss: np.ndarray  # (R, n_eval)
    test_acc: np.ndarray
    train_eval_loss: np.ndarray
    train_eval_acc: np.ndarray
    diverged_step: list[int]  # -1 when finite throughout
    compiled: bool = False  # trained by the compiled step (train/step.py)
    compile_seconds: float = 0.0  # compilation this group paid (0 when the graph was cached)

    def final(self, name: str) -> np.ndarray:
        """The value at T (last eval step) of an eval metric, per replica."""
        return getattr(self, name)[:, -1]


@torch.no_grad()
def evaluate(stacked: StackedModel, params, buffers, x, y, *, batch_size: int = 1000,
             precision: str = "fp32"):
    """Mean loss and accuracy of every replica on a shared (x, y). Returns two (R,) tensors."""
    total_loss = 0.0
    correct = 0.0
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        with autocast(xb.device, precision):
            logits = stacked.forward(params, buffers, xb, train=False, shared_input=True)
        logits = logits.float()
        r = logits.shape[0]
        loss = F.cross_entropy(logits.flatten(0, 1), yb.repeat(r), reduction="none").view(r, -1)
        total_loss = total_loss + loss.sum(1)
        correct = correct + (logits.argmax(-1) == yb).float().sum(1)
    return total_loss / x.shape[0], correct / x.shape[0]


def autocast(device: torch.device, precision: str):
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _subset(tensors: dict, index) -> dict:
    return {n: t[index] for n, t in tensors.items()}


# -- CUDA paths (each falls back to the plain CPU behaviour) ------------------------------

def _pinned_empty(shape, dtype) -> torch.Tensor:
    """A page-locked host tensor when CUDA can pin memory, else an ordinary one.

    Pinning needs a CUDA driver; without one ``pin_memory=True`` raises, and we fall back.
    """
    if torch.cuda.is_available():
        try:
            return torch.empty(shape, dtype=dtype, pin_memory=True)
        except RuntimeError:
            pass
    return torch.empty(shape, dtype=dtype)


def _host_copy(t: torch.Tensor):
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
    host = _pinned_empty(t.shape, t.dtype)
    if not host.is_pinned():  # a non_blocking copy into pageable memory is synchronous anyway
        return t.cpu(), None
    host.copy_(t, non_blocking=True)
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(t.device))
    return host, event


class _HostRecords:
    """Hands recorded weights to a recorder, in order, without stalling the device.

    ``push`` starts a device-to-host copy (:func:`_host_copy`). A copy that needs no
    event (CPU) is delivered at once, which is the direct path. Otherwise it waits in a
    queue of at most ``depth`` copies in flight (a ring of pinned buffers); completed
    copies are delivered at the next ``push``, the oldest is waited for when the queue
    is full, and ``flush`` delivers the rest. Delivery order is push order.
    """

    def __init__(self, recorder: Recorder, depth: int = 4, copy=_host_copy):
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


def channels_last_stacked(x: torch.Tensor) -> torch.Tensor:
    """The same values with a layout that makes vmapped ``conv2d`` run channels-last.

    Under ``vmap`` with per-replica weights, PyTorch runs a conv2d over a stacked
    (R, B, C, H, W) input as one grouped convolution over the (B, R*C, H, W) view
    (groups = R). ``x.contiguous(memory_format=torch.channels_last)`` is meaningless
    for a 5-D tensor (it would be channels_last_3d over the wrong dims), so instead we
    store x physically as (B, H, W, R, C): the grouped conv's input view is then
    exactly NHWC, and cuDNN keeps its output NHWC, which BN/ReLU/add under vmap
    preserve (checked in tests/train/test_cuda_paths.py). A shared (B, C, H, W) input
    (evaluation) gets the ordinary channels_last format. Other ranks are returned as is.
    Values, shapes and therefore results are unchanged; only the speed can differ.
    """
    if x.dim() == 5:
        return x.permute(1, 3, 4, 0, 2).contiguous().permute(3, 0, 4, 1, 2)
    if x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def use_channels_last(setting: bool | None = None) -> bool:
    """Whether to feed conv2d models channels-last: ``setting`` if given, else off.

    Off by default: on an H200 with torch 2.11, vmapped BatchNorm over a channels-last
    input raises "NYI: querying is_contiguous inside of vmap for memory_format other than
    torch.contiguous_format", so the layout only works for BN-free conv nets today.
    """
    if setting is not None:
        return bool(setting)
    return False


class _Schedule:
    """What happens at each iteration of a group, worked out once before training.

    Iteration i holds replica r at step ``starts[r] + i``. For each i with anything to do:
    the (step, replicas) pairs to record, the replicas to evaluate (with their eval
    columns), the replicas that reach T (final snapshot), whether replica 0 is at a
    snapshot step, and the (replica, log column) pairs whose training loss is logged.
    Built in time linear in R times the schedule lengths; the training loop then does
    no per-replica Python work on iterations without events.
    """

    def __init__(self, resolved, starts: list[int], snapshot_steps):
        T = resolved.total_steps
        self.n_iter = T - min(starts)
        self.record: dict[int, dict[int, list[int]]] = {}
        self.evals: dict[int, list[tuple[int, int]]] = {}
        self.final: dict[int, list[int]] = {}
        self.logs: dict[int, tuple[list[int], list[int]]] = {}
        self.snapshot = {s - starts[0] for s in snapshot_steps if starts[0] <= s <= T}
        for r, k in enumerate(starts):
            for s in resolved.record_steps:
                if k <= s <= T:
                    self.record.setdefault(s - k, {}).setdefault(s, []).append(r)
            for col, s in enumerate(resolved.eval_steps):
                if k <= s <= T:
                    self.evals.setdefault(s - k, []).append((r, col))
            self.final.setdefault(T - k, []).append(r)
            for col, s in enumerate(resolved.log_steps):
                if k <= s < T and s - k < self.n_iter:
                    rows, cols = self.logs.setdefault(s - k, ([], []))
                    rows.append(r)
                    cols.append(col)
        self.starts = list(starts)
        self.T = T

    def updates(self, first: int, count: int) -> int:
        """Replica-steps of real training (steps < T) in iterations first .. first+count-1."""
        return sum(max(0, min(first + count, self.T - k) - first) for k in self.starts)


BLOCK = 256  # iterations whose indices and scalars are prepared at once
PROGRESS_EVERY = 16  # iterations between progress calls (a Python call, never a sync)


def _make_update(stacked, cfg, params, buffers, masks, optimizer, data, sched, *, augment,
                 aug_keys, to_channels_last, device, R: int, compiled: bool):
    """``(update, fused)``: ``update(i, idx, lrs_row, scal_row, aug_steps) -> (loss, acc)``
    makes one update of every replica at iteration i, in place (``acc`` only at log
    iterations of the eager step); ``fused`` is the compiled
    :class:`~stabilitylab.train.step.FusedStep` behind it, or None for the eager step."""
    from stabilitylab.train.step import fused_step

    names = list(params)
    if compiled:
        fused = fused_step(stacked, cfg, augment=augment, channels_last=to_channels_last,
                           device=device, compiled=True)
        step_masks = {n: masks[n] for n in stacked.prunable_names if n in masks}

        def update(i, idx, lrs_row, scal_row, aug_steps):
            loss, acc = fused(params, buffers, optimizer.state, step_masks, data.train_x,
                              data.train_y, idx, scal_row, aug_steps, aug_keys)
            optimizer.steps += 1
            return loss, acc

        return update, fused
    for p in params.values():
        p.requires_grad_(True)
    plist = [params[n] for n in names]

    def update(i, idx, lrs_row, scal_row, aug_steps):
        xb = data.train_x[idx]
        yb = data.train_y[idx]
        if augment is not None:
            xb = augment(xb, aug_keys, aug_steps)
        if to_channels_last:
            xb = channels_last_stacked(xb)
        with autocast(device, cfg.precision):
            logits = stacked.forward(params, buffers, xb, train=True)
        logits = logits.float()
        losses = F.cross_entropy(logits.flatten(0, 1), yb.flatten(),
                                 reduction="none").view(R, -1).mean(1)
        grads = torch.autograd.grad(losses.sum(), plist)
        optimizer.step(dict(zip(names, grads)), lrs_row)
        acc = None
        if i in sched.logs:
            with torch.no_grad():
                acc = (logits.argmax(-1) == yb).float().mean(1)
        return losses.detach(), acc

    return update, None


def train_group(stacked: StackedModel, plan: GroupPlan, data, resolved, *,
                recorder: Recorder | None = None,
                on_snapshot: Callable | None = None,
                on_progress: Callable[[int], None] | None = None,
                augment: Callable | None = None,
                channels_last: bool | None = None,
                compile: str | None = None) -> GroupResult:
    """Train every run of ``plan`` to T; record, evaluate and log on the study's schedules.

    Parameters
    ----------
    data : Dataset on the training device (train_x, train_y, test_x, test_y).
    resolved : Resolved study (T, schedules, training config).
    recorder : receives ``record(runs, step, weights (n, P))`` at recorded steps.
    on_snapshot : ``f(step, params, buffers, optimizer)`` at ``plan.snapshot_steps``
        (R must be 1), before the update at that step.
    on_progress : called with the number of replica-steps done since the last call,
        every ``PROGRESS_EVERY`` iterations (never a device sync).
    augment : ``f(x (R, B, ...), keys (R, 2), steps (R,)) -> x``, all replicas at once
        (:func:`~stabilitylab.data.augment.random_flip_crop_replicas`).
    channels_last : True feeds the train batches and the evaluation sets in the
        channels-last layout of :func:`channels_last_stacked` (which changes 4-D image
        batches only); None or False: the default layout. :func:`use_channels_last` makes
        no automatic choice (vmapped BatchNorm rejects channels-last inputs).
    compile : ``auto`` / ``on`` / ``off`` (default: ``training.compile``): take the
        compiled :class:`~stabilitylab.train.step.FusedStep` or the eager reference
        step (:func:`~stabilitylab.train.step.use_compile` decides ``auto``).

    The parts: the state (weights, masks, :class:`StackedOptimizer`), the update
    (:func:`_make_update`: the compiled fused step or the eager one), the loop, and the
    results (:func:`_result`). The loop, per iteration: the bookkeeping of
    :class:`_Schedule` (record, evaluate, final snapshot, rewind snapshot), then one
    update of every replica. Indices, learning
    rates and optimizer scalars are prepared on the device for ``BLOCK`` iterations at a
    time; losses stay on the device and reach the host once, at the end. On CUDA,
    recorded weights go to the recorder through pinned host buffers and asynchronous
    copies (:class:`_HostRecords`), all delivered before this returns.
    """
    cfg = resolved.config.training
    device = data.train_x.device
    R = plan.size
    starts = list(plan.start_steps)
    sched = _Schedule(resolved, starts, plan.snapshot_steps)
    n_iter = sched.n_iter

    # -- state ----------------------------------------------------------------------------
    params = {n: t.to(device).clone() for n, t in plan.params.items()}
    buffers = {n: t.to(device).clone() for n, t in plan.buffers.items()}
    masks = {n: m.to(device=device, dtype=params[n].dtype) for n, m in plan.masks.items()}
    # A mask with nothing pruned (level 0) multiplies by one: the same bits, but a read of R x
    # the tensor's size at every step. Dropped here, once (one host sync per group).
    masks = {n: m for n, m in masks.items() if not bool(m.all())}
    state = None
    if plan.opt_state is not None:
        state = {s: {n: t.to(device) for n, t in d.items()} for s, d in plan.opt_state.items()}
    opt_steps0 = list(plan.opt_steps or [0] * R)
    optimizer = StackedOptimizer(params, masks, cfg, opt_steps0, state)
    with torch.no_grad():
        for n, m in masks.items():
            params[n].mul_(m)
    orders = DataOrders(plan.data_seeds, data.train_x.shape[0], cfg.batch_size, device)
    lr_at = schedule_for(resolved)
    has_dropout = resolved.config.model.dropout > 0
    names = list(params)
    to_channels_last = use_channels_last(channels_last)
    test_x = channels_last_stacked(data.test_x) if to_channels_last else data.test_x
    train_eval_x = data.train_x[: resolved.config.data.train_eval_size]
    train_eval_y = data.train_y[: resolved.config.data.train_eval_size]
    if to_channels_last:
        train_eval_x = channels_last_stacked(train_eval_x)
    aug_keys = replica_keys(plan.data_seeds, device) if augment is not None else None
    starts_t = torch.tensor(starts, dtype=torch.long, device=device)

    # -- the update ---------------------------------------------------------------------
    from stabilitylab.train.step import use_compile

    update, fused = _make_update(stacked, cfg, params, buffers, masks, optimizer, data, sched,
                                 augment=augment, aug_keys=aug_keys,
                                 to_channels_last=to_channels_last, device=device, R=R,
                                 compiled=use_compile(compile or getattr(cfg, "compile", "off"),
                                                      device, R, n_iter))
    compiled = fused is not None
    compile_before = fused.compile_seconds if compiled else 0.0

    # -- results, on the device until the end --------------------------------------------
    n_log, n_eval = len(resolved.log_steps), len(resolved.eval_steps)
    train_loss = torch.full((R, n_log), float("nan"), device=device)
    train_acc = torch.full((R, n_log), float("nan"), device=device)
    evals = torch.full((4, R, n_eval), float("nan"), device=device)
    final_params = {n: torch.empty_like(p, requires_grad=False) for n, p in params.items()}
    final_buffers = {n: torch.empty_like(b) for n, b in buffers.items()}
    host_records = _HostRecords(recorder) if recorder is not None else None

    def detached():
        return {n: params[n].detach() for n in names}

    idx_block = scal_block = lrs_block = steps_block = None
    for i in range(n_iter + 1):
        # -- bookkeeping at the state "after `step` updates" -----------------------------
        if i in sched.record and host_records is not None:
            for step, rs in sched.record[i].items():
                with torch.no_grad():
                    flat = stacked.flatten(_subset(detached(), rs))
                host_records.push([plan.runs[r] for r in rs], step, flat.float())
        if i in sched.evals:
            ev = [r for r, _ in sched.evals[i]]
            cols = [c for _, c in sched.evals[i]]
            sub_p, sub_b = _subset(detached(), ev), _subset(buffers, ev)
            tl, ta = evaluate(stacked, sub_p, sub_b, test_x, data.test_y, precision=cfg.precision)
            el, ea = evaluate(stacked, sub_p, sub_b, train_eval_x, train_eval_y,
                              precision=cfg.precision)
            evals[:, ev, cols] = torch.stack([tl, ta, el, ea]).float()
        if i in sched.final:
            with torch.no_grad():
                for r in sched.final[i]:
                    for n in names:
                        final_params[n][r] = params[n][r]
                    for n in buffers:
                        final_buffers[n][r] = buffers[n][r]
        if on_snapshot is not None and i in sched.snapshot:
            on_snapshot(starts[0] + i, detached(), buffers, optimizer)
        if i == n_iter:
            break
        # -- update: one step of every replica (inputs prepared BLOCK iterations ahead) ----
        j = i % BLOCK
        if j == 0:
            count = min(BLOCK, n_iter - i)
            idx_block = orders.block(starts, i, count)
            lrs_np = np.array([[lr_at(k + i + q) for k in starts] for q in range(count)],
                              dtype=np.float64)
            lrs_block = torch.from_numpy(lrs_np.astype(np.float32)).to(device)
            if compiled:
                steps0 = [s + i for s in opt_steps0]
                scal_block = torch.from_numpy(step_scalars(cfg, lrs_np, steps0)).to(device)
            steps_block = starts_t[None, :] + i + torch.arange(count, device=device)[:, None]
        if on_progress is not None and i % PROGRESS_EVERY == 0 and i > 0:
            on_progress(sched.updates(i - PROGRESS_EVERY, PROGRESS_EVERY))
        if has_dropout:
            torch.manual_seed(derive_seed(plan.seed, "dropout", i))
        loss, acc = update(i, idx_block[j], lrs_block[j],
                           scal_block[j] if compiled else None, steps_block[j])
        if i in sched.logs:
            rows, cols = sched.logs[i]
            train_loss[rows, cols] = loss[rows].float()
            train_acc[rows, cols] = acc[rows].float()
    if on_progress is not None and n_iter > 0:
        last = (n_iter - 1) // PROGRESS_EVERY * PROGRESS_EVERY
        on_progress(sched.updates(last, n_iter - last))

    if host_records is not None:
        host_records.flush()
    return _result(resolved, sched, final_params, final_buffers, train_loss, train_acc, evals,
                   compiled=compiled,
                   compile_seconds=(fused.compile_seconds - compile_before) if compiled else 0.0)


def _result(resolved, sched, final_params, final_buffers, train_loss, train_acc, evals, *,
            compiled, compile_seconds) -> GroupResult:
    """The metrics on the host and each replica's divergence step: the first logged step
    with a non-finite training loss, else T when the final weights are not all finite."""
    T = resolved.total_steps
    names = list(final_params)
    R = len(train_loss)
    n_log = len(resolved.log_steps)
    train_loss_np = train_loss.cpu().numpy()
    train_acc_np = train_acc.cpu().numpy()
    evals_np = evals.cpu().numpy()
    diverged = [-1] * R
    logged = np.zeros((R, n_log), bool)
    for rows, cols in sched.logs.values():
        logged[rows, cols] = True
    for r in range(R):
        bad = np.flatnonzero(logged[r] & ~np.isfinite(train_loss_np[r]))
        if bad.size:
            diverged[r] = int(resolved.log_steps[bad[0]])
        # A replica whose loss went non-finite between log steps is caught here too.
        elif not all(torch.isfinite(final_params[n][r]).all() for n in names):
            diverged[r] = T
    return GroupResult(
        params={n: t.detach() for n, t in final_params.items()},
        buffers=final_buffers,
        train_loss=train_loss_np, train_acc=train_acc_np,
        test_loss=evals_np[0], test_acc=evals_np[1],
        train_eval_loss=evals_np[2], train_eval_acc=evals_np[3],
        diverged_step=diverged,
        compiled=compiled,
        compile_seconds=compile_seconds,
    )
