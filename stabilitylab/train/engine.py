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
from dataclasses import dataclass, field
from typing import Callable, Protocol

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


def train_group(stacked: StackedModel, plan: GroupPlan, data, resolved, *,
                recorder: Recorder | None = None,
                on_snapshot: Callable | None = None,
                on_progress: Callable[[int], None] | None = None,
                augment: Callable | None = None) -> GroupResult:
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
                recorder.record([plan.runs[r] for r in rs], step, flat.float().cpu().numpy())
        ev = [r for r in live if steps[r] in eval_index]
        if ev:
            sub_p = _subset({n: params[n].detach() for n in names}, ev)
            sub_b = _subset(buffers, ev)
            tl, ta = evaluate(stacked, sub_p, sub_b, data.test_x, data.test_y, precision=cfg.precision)
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
