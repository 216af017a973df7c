"""What one optimizer declares, the registry it joins, and the per-step scalars table.

An optimizer is one file of :mod:`stabilitylab.train.optimizers` that calls
:func:`register` with an :class:`Optimizer`. Its ``update`` is the one rule both training
paths run: eagerly (:class:`~stabilitylab.train.optim.StackedOptimizer`) and inside the
compiled step (:class:`~stabilitylab.train.step.FusedStep`), through
:func:`~stabilitylab.train.optim.apply_update`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

SCALAR_COLUMNS = ("lr", "bc1", "bc2", "rect", "adaptive", "sync")


@dataclass(frozen=True)
class Optimizer:
    """One value of ``training.optimizer``.

    - ``name``: the config value;
    - ``state(training)``: names of its per-parameter state tensors (Lookahead's ``slow``
      is added by :func:`state_names`);
    - ``update(training, params, grads, state, row, same_lr)``: one in-place step of the
      listed (R, ...) tensors. ``grads`` are masked already; ``state`` maps each state
      name to the list aligned with ``params``; ``row`` is this step's (R, 6) row of
      :func:`step_scalars` (``row[:, 0]`` the per-replica learning rate); ``same_lr`` is
      the learning rate as a Python float when every replica has the same one on the
      eager path, else None. No host synchronisation (it is traced into one graph);
    - ``reference(params, training)``: the ``torch.optim`` optimizer it must match (the
      single-replica reference path, and the tests);
    - ``scalars(training, t, out)``: optional, fills its own columns of
      :func:`step_scalars` for optimizer steps ``t``;
    - ``fields``: the ``training.*`` hyperparameters only this optimizer reads (the report
      lists them for a study that uses it, and leaves them out otherwise).
    """

    name: str
    state: Callable[[object], tuple[str, ...]]
    update: Callable
    reference: Callable[[object, object], torch.optim.Optimizer]
    scalars: Callable | None = None
    fields: tuple[str, ...] = ()


OPTIMIZERS: dict[str, Optimizer] = {}


def register(optimizer: Optimizer) -> Optimizer:
    """Add ``optimizer`` under its name (each name once)."""
    if optimizer.name in OPTIMIZERS:
        raise ValueError(f"optimizer {optimizer.name!r} is already registered")
    OPTIMIZERS[optimizer.name] = optimizer
    return optimizer


def state_names(training) -> tuple[str, ...]:
    """Names of the per-parameter state tensors for a TrainingConfig."""
    return OPTIMIZERS[training.optimizer].state(training) + (
        ("slow",) if training.lookahead else ())


def view(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(R,) per-replica scalars shaped to broadcast against an (R, ...) tensor."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def step_scalars(training, lrs: np.ndarray, opt_steps0) -> np.ndarray:
    """(n, R, 6) float32 table of per-step, per-replica scalars for the update rules.

    ``lrs`` is the (n, R) learning rate of each iteration; ``opt_steps0`` the optimizer
    steps each replica had taken before the first of them. Row i holds, for optimizer step
    ``t = opt_steps0 + i + 1``: lr, ``1 - beta1**t``, ``1 - beta2**t`` (Adam's bias
    corrections), the columns an optimizer's ``scalars`` fills (RAdam: ``rect``,
    ``adaptive``), and whether Lookahead syncs after this step (Zhang et al. 2019, Alg. 1:
    every k-th step). Computed in float64, stored as float32.
    """
    c = training
    n, r = lrs.shape
    t = np.asarray(opt_steps0, np.float64)[None, :] + np.arange(1, n + 1, dtype=np.float64)[:, None]
    out = np.zeros((n, r, len(SCALAR_COLUMNS)), np.float64)
    out[..., 0] = lrs
    out[..., 1] = 1 - c.beta1 ** t
    out[..., 2] = 1 - c.beta2 ** t
    scalars = OPTIMIZERS[c.optimizer].scalars
    if scalars is not None:
        scalars(c, t, out)
    if c.lookahead:
        out[..., 5] = (t % c.lookahead_steps) == 0
    return out.astype(np.float32)


def descend(params: list, directions: list, row: torch.Tensor, same_lr: float | None) -> None:
    """``w -= lr * d`` for every listed tensor: one shared Python-float lr (eager path,
    all replicas alike) or each replica's lr from ``row[:, 0]``."""
    if same_lr is not None:
        torch._foreach_add_(params, directions, alpha=-same_lr)
    else:
        torch._foreach_sub_(params, [view(row[:, 0], d) * d for d in directions])
