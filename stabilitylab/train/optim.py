"""The update of stacked replica parameters, with masks enforced inside it.

Each parameter is a tensor of shape (R, ...). :func:`apply_update` is the one update of
all R replicas: the rule of ``training.optimizer`` (one file each in
:mod:`stabilitylab.train.optimizers`), the masks and Lookahead. The eager path runs it
through :class:`StackedOptimizer`; the compiled step
(:class:`~stabilitylab.train.step.FusedStep`) traces the same function into its graph.
Each replica has its own learning rate (its schedule position) and its own optimizer step
count (Adam bias correction, RAdam rectification, Lookahead sync): the per-step scalars of
:func:`~stabilitylab.train.optimizers.base.step_scalars`.

Masks are applied to the gradient *before* momentum and weight decay see it, and
to the weights after the update, so pruned weights stay exactly 0 and never hold
momentum or decay (OpenLTH lets both leak into pruned positions).

Lookahead (Zhang et al. 2019, Alg. 1): every k inner steps, ``slow += alpha*(fast - slow);
fast = slow``. The update rules match ``torch.optim`` (tests compare against it).
"""

from __future__ import annotations

import numpy as np
import torch

from stabilitylab.train.optimizers import (  # noqa: F401 - re-exported
    OPTIMIZERS,
    SCALAR_COLUMNS,
    Optimizer,
    register,
    state_names,
    step_scalars,
)
from stabilitylab.train.optimizers.base import view


def apply_update(training, params: dict, grads: dict, state: dict, masks: dict,
                 row: torch.Tensor, same_lr: float | None = None) -> None:
    """One in-place step of every replica of every parameter.

    ``state`` maps each state name to ``{param name: tensor}``; ``masks`` holds a 0/1
    tensor for each parameter with pruned weights (one absent from it is dense: no
    multiply); ``row`` is this step's (R, 6) row of
    :func:`~stabilitylab.train.optimizers.base.step_scalars`; ``same_lr`` the shared
    learning rate as a Python float on the eager path when all replicas have the same one.
    No host synchronisation: the compiled step traces this function.
    """
    c = training
    names = list(params)
    plist = [params[n] for n in names]
    glist = [grads[n] * masks[n] if n in masks else grads[n] for n in names]
    rule_state = {s: [state[s][n] for n in names] for s in state if s != "slow"}
    OPTIMIZERS[c.optimizer].update(c, plist, glist, rule_state, row, same_lr)
    for n, m in masks.items():
        params[n].mul_(m)
    if c.lookahead:
        for n, p in params.items():
            slow = state["slow"][n]
            sync = view(row[:, 5], p) > 0.5
            new_slow = slow + c.lookahead_alpha * (p - slow)
            slow.copy_(torch.where(sync, new_slow, slow))
            p.copy_(torch.where(sync, slow, p))


class StackedOptimizer:
    """The optimizer state of one replica group, updated eagerly by :func:`apply_update`.

    Parameters
    ----------
    params : dict name -> (R, ...) tensor
        Updated in place (leaf tensors; the caller computes gradients).
    masks : dict name -> (R, ...) tensor
        0/1 masks for pruned tensors; names absent from the dict are dense.
    training : TrainingConfig
    steps : list of int
        Optimizer steps already taken by each replica (0 for a fresh state).
    state : dict state_name -> dict param_name -> (R, ...) tensor, optional
        Restored state (e.g. the dense run's momentum at the rewind point).
    """

    def __init__(self, params, masks, training, steps, state=None):
        self.params = params
        self.names = list(params)
        self.masks = masks
        self.cfg = training
        self.steps = torch.tensor(steps, dtype=torch.float64)
        self.state: dict[str, dict[str, torch.Tensor]] = {}
        for sname in state_names(training):
            if state is not None and sname in state:
                self.state[sname] = {n: state[sname][n].clone() for n in self.names}
            elif sname == "slow":
                self.state[sname] = {n: p.detach().clone() for n, p in params.items()}
            else:
                self.state[sname] = {n: torch.zeros_like(p) for n, p in params.items()}
        with torch.no_grad():
            for sname, tensors in self.state.items():
                for n, m in masks.items():
                    tensors[n].mul_(m)

    @torch.no_grad()
    def step(self, grads: dict[str, torch.Tensor], lrs: torch.Tensor | None = None, *,
             row: torch.Tensor | None = None, same_lr: float | None = None) -> None:
        """One update of every replica: ``lrs`` (R,) on the parameters' device, or this
        step's ``row`` of :func:`step_scalars` (on the device) and ``same_lr`` when the
        caller prepared them (the engine, a block of steps at a time)."""
        if row is None:
            lrs32 = lrs.detach().cpu().float().numpy()
            if (lrs32 == lrs32[0]).all():
                same_lr = float(lrs32[0])
            row = torch.from_numpy(step_scalars(self.cfg, lrs32.astype(np.float64)[None],
                                                self.steps.numpy())[0]).to(lrs.device)
        self.steps += 1
        apply_update(self.cfg, self.params, grads, self.state, self.masks, row, same_lr)

    def state_of(self, index: int) -> dict[str, dict[str, torch.Tensor]]:
        """Replica ``index``'s state tensors (without the replica dim)."""
        return {s: {n: t[index].detach().clone() for n, t in d.items()}
                for s, d in self.state.items()}
