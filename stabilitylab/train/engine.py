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

from stabilitylab.train.data_order import DataOrders
from stabilitylab.train.functional import StackedModel
from stabilitylab.train.optim import StackedOptimizer
from stabilitylab.train.schedule import schedule_for
from stabilitylab.train.seeds import derive_seed


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

    def final(self, name: str) -> np.ndarray:
        """The value at T (last eval step) of an eval metric, per replica."""
        return getattr(self, name)[:, -1]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from stabilitylab.errors import ConfigError

        raise ConfigError("study.device: cuda requested but torch sees no CUDA device")
    return torch.device(name)


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


# torch.compile is deliberately not applied. The step is vmap(functional_call) with
# in-place per-replica BatchNorm buffer updates under vmap, R changes from group to group
# (a recompile per shape), and the compiled graph would have to be checked against the
# reference path on a GPU we cannot test here. Wrapping ``StackedModel._forward`` in
# ``torch.compile`` is the place to try it once it can be measured.


def use_channels_last(device: torch.device, example_shape: tuple, setting: bool | None = None) -> bool:
    """Whether to feed conv2d models channels-last: ``setting`` if given, else off.

    Off by default: on an H200 with torch 2.11, vmapped BatchNorm over a channels-last
    input raises "NYI: querying is_contiguous inside of vmap for memory_format other than
    torch.contiguous_format", so the layout only works for BN-free conv nets today.
    """
    if setting is not None:
        return bool(setting)
    return False


def train_group(stacked: StackedModel, plan: GroupPlan, data, resolved, *,
                recorder: Recorder | None = None,
                on_snapshot: Callable | None = None,
                on_progress: Callable[[int], None] | None = None,
                augment: Callable | None = None,
                channels_last: bool | None = None) -> GroupResult:
    """Train every run of ``plan`` to T; record, evaluate and log on the study's schedules.

    Parameters
    ----------
    data : Dataset on the training device (train_x, train_y, test_x, test_y).
    resolved : Resolved study (T, schedules, training config).
    recorder : receives ``record(runs, step, weights (n, P))`` at recorded steps.
    on_snapshot : ``f(step, params, buffers, optimizer)`` at ``plan.snapshot_steps``
        (R must be 1), before the update at that step.
    on_progress : called with the number of replica-steps done since the last call.
    augment : ``f(x (B, ...), generator) -> x`` applied per replica (CIFAR recipes).
    channels_last : feed image batches channels-last (:func:`channels_last_stacked`);
        None: on for image data on CUDA, off otherwise (:func:`use_channels_last`).

    On CUDA, recorded weights go to the recorder through pinned host buffers and
    asynchronous copies (:class:`_HostRecords`), all delivered before this returns.
    """
    cfg = resolved.config.training
    device = data.train_x.device
    R = plan.size
    T = resolved.total_steps
    starts = list(plan.start_steps)
    k_min = min(starts)
    n_iter = T - k_min
    params = {n: t.to(device).clone().requires_grad_(True) for n, t in plan.params.items()}
    buffers = {n: t.to(device).clone() for n, t in plan.buffers.items()}
    masks = {n: m.to(device=device, dtype=params[n].dtype) for n, m in plan.masks.items()}
    state = None
    if plan.opt_state is not None:
        state = {s: {n: t.to(device) for n, t in d.items()} for s, d in plan.opt_state.items()}
    optimizer = StackedOptimizer(params, masks, cfg, plan.opt_steps or [0] * R, state)
    with torch.no_grad():
        for n, m in masks.items():
            params[n].mul_(m)
    orders = DataOrders(plan.data_seeds, data.train_x.shape[0], cfg.batch_size, device)
    lr_at = schedule_for(resolved)
    constant_lr = resolved.warmup == 0 and not resolved.milestones
    lrs_const = torch.full((R,), cfg.lr, device=device)
    has_dropout = resolved.config.model.dropout > 0

    log_index = {s: i for i, s in enumerate(resolved.log_steps)}
    eval_index = {s: i for i, s in enumerate(resolved.eval_steps)}
    record_set = set(resolved.record_steps)
    snapshot_set = set(plan.snapshot_steps)
    nan = np.full
    train_loss = nan((R, len(log_index)), np.nan, np.float32)
    train_acc = nan((R, len(log_index)), np.nan, np.float32)
    evals = {k: nan((R, len(eval_index)), np.nan, np.float32)
             for k in ("test_loss", "test_acc", "train_eval_loss", "train_eval_acc")}
    diverged = [-1] * R
    final_params: dict[str, torch.Tensor] = {n: torch.empty_like(p) for n, p in params.items()}
    final_buffers: dict[str, torch.Tensor] = {n: torch.empty_like(b) for n, b in buffers.items()}
    train_eval_x = data.train_x[: resolved.config.data.train_eval_size]
    train_eval_y = data.train_y[: resolved.config.data.train_eval_size]
    names = list(params)
    plist = [params[n] for n in names]
    host_records = _HostRecords(recorder) if recorder is not None else None
    to_channels_last = use_channels_last(device, tuple(data.train_x.shape[1:]), channels_last)
    test_x = channels_last_stacked(data.test_x) if to_channels_last else data.test_x
    if to_channels_last:
        train_eval_x = channels_last_stacked(train_eval_x)

    for i in range(n_iter + 1):
        steps = [k + i for k in starts]
        live = [r for r in range(R) if steps[r] <= T]
        # -- bookkeeping at the state "after `step` updates" -----------------------------
        rec = [r for r in live if steps[r] in record_set]
        if rec and recorder is not None:
            by_step: dict[int, list[int]] = {}
            for r in rec:
                by_step.setdefault(steps[r], []).append(r)
            for step, rs in by_step.items():
                with torch.no_grad():
                    flat = stacked.flatten(_subset({n: params[n].detach() for n in names}, rs))
                host_records.push([plan.runs[r] for r in rs], step, flat.float())
        ev = [r for r in live if steps[r] in eval_index]
        if ev:
            sub_p = _subset({n: params[n].detach() for n in names}, ev)
            sub_b = _subset(buffers, ev)
            tl, ta = evaluate(stacked, sub_p, sub_b, test_x, data.test_y, precision=cfg.precision)
            el, ea = evaluate(stacked, sub_p, sub_b, train_eval_x, train_eval_y, precision=cfg.precision)
            for j, r in enumerate(ev):
                col = eval_index[steps[r]]
                evals["test_loss"][r, col] = float(tl[j])
                evals["test_acc"][r, col] = float(ta[j])
                evals["train_eval_loss"][r, col] = float(el[j])
                evals["train_eval_acc"][r, col] = float(ea[j])
        for r in live:
            if steps[r] == T:
                with torch.no_grad():
                    for n in names:
                        final_params[n][r] = params[n][r]
                    for n in buffers:
                        final_buffers[n][r] = buffers[n][r]
        if on_snapshot is not None and steps[0] in snapshot_set:
            on_snapshot(steps[0], {n: params[n].detach() for n in names}, buffers, optimizer)
        if i == n_iter:
            break
        # -- one update of every replica --------------------------------------------------
        idx = orders.indices(steps)
        xb = data.train_x[idx]
        yb = data.train_y[idx]
        if augment is not None:
            xb = torch.stack([
                augment(xb[r], torch.Generator(device=device).manual_seed(
                    derive_seed(plan.data_seeds[r], "augment", steps[r])))
                for r in range(R)
            ])
        if to_channels_last:
            xb = channels_last_stacked(xb)
        if has_dropout:
            torch.manual_seed(derive_seed(plan.seed, "dropout", i))
        with autocast(device, cfg.precision):
            logits = stacked.forward(params, buffers, xb, train=True)
        logits = logits.float()
        losses = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none").view(R, -1).mean(1)
        grads = torch.autograd.grad(losses.sum(), plist)
        if constant_lr:
            lrs = lrs_const
        else:
            lrs = torch.tensor([lr_at(s) for s in steps], device=device, dtype=torch.float32)
        optimizer.step(dict(zip(names, grads)), lrs)
        logged = [r for r in live if steps[r] in log_index]
        if logged:
            with torch.no_grad():
                acc = (logits.argmax(-1) == yb).float().mean(1)
            loss_cpu, acc_cpu = losses.detach().cpu().numpy(), acc.cpu().numpy()
            for r in logged:
                train_loss[r, log_index[steps[r]]] = loss_cpu[r]
                train_acc[r, log_index[steps[r]]] = acc_cpu[r]
                if diverged[r] < 0 and not np.isfinite(loss_cpu[r]):
                    diverged[r] = steps[r]
        if on_progress is not None:
            on_progress(len(live) - sum(1 for r in live if steps[r] == T))

    if host_records is not None:
        host_records.flush()
    # A replica whose loss went non-finite between log steps is caught here too.
    for r in range(R):
        if diverged[r] < 0 and not all(torch.isfinite(final_params[n][r]).all() for n in names):
            diverged[r] = T
    return GroupResult(
        params={n: t.detach() for n, t in final_params.items()},
        buffers=final_buffers,
        train_loss=train_loss, train_acc=train_acc,
        test_loss=evals["test_loss"], test_acc=evals["test_acc"],
        train_eval_loss=evals["train_eval_loss"], train_eval_acc=evals["train_eval_acc"],
        diverged_step=diverged,
    )
