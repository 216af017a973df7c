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
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from stabilitylab.core.seeds import derive_seed
from stabilitylab.data.augment import replica_keys
from stabilitylab.train.data_order import DataOrders
from stabilitylab.train.functional import StackedModel
from stabilitylab.train.host_records import HostRecords, Recorder
from stabilitylab.train.layout import channels_last_stacked
from stabilitylab.train.optim import StackedOptimizer, step_scalars
from stabilitylab.train.schedule import schedule_for
from stabilitylab.train.step import fused_step, use_compile


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


class _Group:
    """One group on the training device: weights, masks, optimizer state, the inputs of
    the next ``BLOCK`` iterations, and :meth:`step`, one update of every replica (the
    compiled :class:`~stabilitylab.train.step.FusedStep` or the eager step; both end in
    :func:`~stabilitylab.train.optim.apply_update`)."""

    def __init__(self, stacked, plan: GroupPlan, data, resolved, *, augment, channels_last,
                 compile):
        cfg = self.cfg = resolved.config.training
        device = self.device = data.train_x.device
        self.stacked, self.plan, self.data, self.augment = stacked, plan, data, augment
        self.R = plan.size
        self.starts = list(plan.start_steps)
        self.sched = _Schedule(resolved, self.starts, plan.snapshot_steps)
        params = self.params = {n: t.to(device).clone() for n, t in plan.params.items()}
        self.buffers = {n: t.to(device).clone() for n, t in plan.buffers.items()}
        masks = {n: m.to(device=device, dtype=params[n].dtype) for n, m in plan.masks.items()}
        # A mask with nothing pruned (level 0) multiplies by one: the same bits, but a read
        # of R x the tensor's size at every step. Dropped here, once (one host sync).
        self.masks = masks = {n: m for n, m in masks.items() if not bool(m.all())}
        state = None
        if plan.opt_state is not None:
            state = {s: {n: t.to(device) for n, t in d.items()}
                     for s, d in plan.opt_state.items()}
        self.opt_steps0 = list(plan.opt_steps or [0] * self.R)
        self.optimizer = StackedOptimizer(params, masks, cfg, self.opt_steps0, state)
        with torch.no_grad():
            for n, m in masks.items():
                params[n].mul_(m)
        self.orders = DataOrders(plan.data_seeds, data.train_x.shape[0], cfg.batch_size, device)
        self.lr_at = schedule_for(resolved)
        self.has_dropout = resolved.config.model.dropout > 0
        self.names = list(params)
        self.channels_last = use_channels_last(channels_last)
        self.test_x = channels_last_stacked(data.test_x) if self.channels_last else data.test_x
        size = resolved.config.data.train_eval_size
        self.train_eval_x, self.train_eval_y = data.train_x[:size], data.train_y[:size]
        if self.channels_last:
            self.train_eval_x = channels_last_stacked(self.train_eval_x)
        self.aug_keys = replica_keys(plan.data_seeds, device) if augment is not None else None
        self.starts_t = torch.tensor(self.starts, dtype=torch.long, device=device)
        self.fused = None
        if use_compile(compile or getattr(cfg, "compile", "off"), device, self.R,
                       self.sched.n_iter):
            self.fused = fused_step(stacked, cfg, augment=augment,
                                    channels_last=self.channels_last, device=device,
                                    compiled=True)
            self.step_masks = {n: masks[n] for n in stacked.prunable_names if n in masks}
        else:
            for p in params.values():
                p.requires_grad_(True)
        self.compile_before = self.fused.compile_seconds if self.fused is not None else 0.0

    def detached(self) -> dict:
        return {n: self.params[n].detach() for n in self.names}

    def _prepare(self, i: int) -> None:
        """Example indices, shared learning rates, scalar rows and augmentation steps of
        iterations i .. i + BLOCK - 1, on the device."""
        count = min(BLOCK, self.sched.n_iter - i)
        self.idx = self.orders.block(self.starts, i, count)
        lrs = np.array([[self.lr_at(k + i + q) for k in self.starts] for q in range(count)],
                       dtype=np.float64)
        lrs32 = lrs.astype(np.float32)
        self.same_lr = [float(r[0]) if (r == r[0]).all() else None for r in lrs32]
        steps0 = [s + i for s in self.opt_steps0]
        self.rows = torch.from_numpy(step_scalars(self.cfg, lrs, steps0)).to(self.device)
        self.aug_steps = (self.starts_t[None, :] + i
                          + torch.arange(count, device=self.device)[:, None])

    def step(self, i: int):
        """One update of every replica at iteration i, in place: ``(loss, acc)``, (R,)
        device tensors (the eager step computes ``acc`` only at log iterations)."""
        j = i % BLOCK
        if j == 0:
            self._prepare(i)
        if self.has_dropout:
            torch.manual_seed(derive_seed(self.plan.seed, "dropout", i))
        data, idx, row = self.data, self.idx[j], self.rows[j]
        if self.fused is not None:
            loss, acc = self.fused(self.params, self.buffers, self.optimizer.state,
                                   self.step_masks, data.train_x, data.train_y, idx, row,
                                   self.aug_steps[j], self.aug_keys)
            self.optimizer.steps += 1
            return loss, acc
        xb, yb = data.train_x[idx], data.train_y[idx]
        if self.augment is not None:
            xb = self.augment(xb, self.aug_keys, self.aug_steps[j])
        if self.channels_last:
            xb = channels_last_stacked(xb)
        with autocast(self.device, self.cfg.precision):
            logits = self.stacked.forward(self.params, self.buffers, xb, train=True)
        logits = logits.float()
        losses = F.cross_entropy(logits.flatten(0, 1), yb.flatten(),
                                 reduction="none").view(self.R, -1).mean(1)
        grads = torch.autograd.grad(losses.sum(), [self.params[n] for n in self.names])
        self.optimizer.step(dict(zip(self.names, grads)), row=row, same_lr=self.same_lr[j])
        acc = None
        if i in self.sched.logs:
            with torch.no_grad():
                acc = (logits.argmax(-1) == yb).float().mean(1)
        return losses.detach(), acc


class _Outputs:
    """What a group leaves behind, on the device until the end: recorded weights (to the
    recorder), the evaluations, the logged training loss and accuracy, the final state."""

    def __init__(self, group: _Group, resolved, recorder: Recorder | None):
        self.group, self.resolved = group, resolved
        R, device = group.R, group.device
        n_log, n_eval = len(resolved.log_steps), len(resolved.eval_steps)
        self.train_loss = torch.full((R, n_log), float("nan"), device=device)
        self.train_acc = torch.full((R, n_log), float("nan"), device=device)
        self.evals = torch.full((4, R, n_eval), float("nan"), device=device)
        self.final_params = {n: torch.empty_like(p, requires_grad=False)
                             for n, p in group.params.items()}
        self.final_buffers = {n: torch.empty_like(b) for n, b in group.buffers.items()}
        self.records = HostRecords(recorder) if recorder is not None else None

    def at(self, i: int) -> None:
        """The bookkeeping at iteration i (the state after ``start + i`` updates): record,
        evaluate, snapshot the replicas that reach T."""
        g, sched, precision = self.group, self.group.sched, self.group.cfg.precision
        if i in sched.record and self.records is not None:
            for step, rs in sched.record[i].items():
                with torch.no_grad():
                    flat = g.stacked.flatten(_subset(g.detached(), rs))
                self.records.push([g.plan.runs[r] for r in rs], step, flat.float())
        if i in sched.evals:
            ev = [r for r, _ in sched.evals[i]]
            cols = [c for _, c in sched.evals[i]]
            sub_p, sub_b = _subset(g.detached(), ev), _subset(g.buffers, ev)
            tl, ta = evaluate(g.stacked, sub_p, sub_b, g.test_x, g.data.test_y,
                              precision=precision)
            el, ea = evaluate(g.stacked, sub_p, sub_b, g.train_eval_x, g.train_eval_y,
                              precision=precision)
            self.evals[:, ev, cols] = torch.stack([tl, ta, el, ea]).float()
        if i in sched.final:
            with torch.no_grad():
                for r in sched.final[i]:
                    for n in g.names:
                        self.final_params[n][r] = g.params[n][r]
                    for n in g.buffers:
                        self.final_buffers[n][r] = g.buffers[n][r]

    def log(self, i: int, loss, acc) -> None:
        if i in self.group.sched.logs:
            rows, cols = self.group.sched.logs[i]
            self.train_loss[rows, cols] = loss[rows].float()
            self.train_acc[rows, cols] = acc[rows].float()

    def result(self) -> GroupResult:
        if self.records is not None:
            self.records.flush()
        fused = self.group.fused
        return _result(self.resolved, self.group.sched, self.final_params, self.final_buffers,
                       self.train_loss, self.train_acc, self.evals, compiled=fused is not None,
                       compile_seconds=(fused.compile_seconds - self.group.compile_before)
                       if fused is not None else 0.0)


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
        compiled :class:`~stabilitylab.train.step.FusedStep` or the eager step
        (:func:`~stabilitylab.train.step.use_compile` decides ``auto``).

    The loop walks the iterations of :class:`_Schedule`: at each, the bookkeeping of
    :class:`_Outputs` (record, evaluate, final snapshot), the rewind snapshot, then one
    update of every replica (:meth:`_Group.step`). Indices, learning rates and optimizer
    scalars are prepared on the device ``BLOCK`` iterations at a time; losses stay on the
    device and reach the host once, at the end. On CUDA, recorded weights go to the
    recorder through pinned host buffers and asynchronous copies
    (:class:`~stabilitylab.train.host_records.HostRecords`), all delivered before this
    returns.
    """
    group = _Group(stacked, plan, data, resolved, augment=augment,
                   channels_last=channels_last, compile=compile)
    out = _Outputs(group, resolved, recorder)
    sched, n_iter = group.sched, group.sched.n_iter
    for i in range(n_iter + 1):
        out.at(i)
        if on_snapshot is not None and i in sched.snapshot:
            on_snapshot(group.starts[0] + i, group.detached(), group.buffers, group.optimizer)
        if i == n_iter:
            break
        if on_progress is not None and i % PROGRESS_EVERY == 0 and i > 0:
            on_progress(sched.updates(i - PROGRESS_EVERY, PROGRESS_EVERY))
        out.log(i, *group.step(i))
    if on_progress is not None and n_iter > 0:
        last = (n_iter - 1) // PROGRESS_EVERY * PROGRESS_EVERY
        on_progress(sched.updates(last, n_iter - last))
    return out.result()


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
