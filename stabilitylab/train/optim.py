"""Optimizers over stacked replica parameters, with masks enforced inside the update.

Each parameter is a tensor of shape (R, ...). One call to :meth:`StackedOptimizer.step`
updates all R replicas with Python work that does not grow with R. Each replica
has its own learning rate (its schedule position) and its own optimizer step
count (Adam bias correction, RAdam rectification, Lookahead sync).

Masks are applied to the gradient *before* momentum and weight decay see it, and
to the weights after the update, so pruned weights stay exactly 0 and never hold
momentum or decay (OpenLTH lets both leak into pruned positions).

Update rules match ``torch.optim`` (tests compare against it):

- SGD: ``g = grad + wd*w; b = mu*b + g; d = g + mu*b if nesterov else b; w -= lr*d``
- Adam (Kingma & Ba 2015): ``m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
  w -= lr * (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps)``; AdamW decays ``w *= 1 - lr*wd`` first
  (Loshchilov & Hutter 2019).
- RAdam (Liu et al. 2020, eq. in Alg. 2): with ``rho_inf = 2/(1-b2) - 1`` and
  ``rho_t = rho_inf - 2 t b2^t/(1-b2^t)``, the adaptive step is used only when
  ``rho_t > 5``, scaled by ``r_t = sqrt((rho_t-4)(rho_t-2)rho_inf / ((rho_inf-4)(rho_inf-2)rho_t))``.
- Lookahead (Zhang et al. 2019): every k inner steps, ``slow += alpha*(fast - slow); fast = slow``.

Every optimizer is one entry of :data:`OPTIMIZERS` (its state names, its update rules and
the ``torch.optim`` class it must match); the engine, the reference path and config
validation all read that table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


def state_names(training) -> tuple[str, ...]:
    """Names of the per-parameter state tensors for a TrainingConfig."""
    return OPTIMIZERS[training.optimizer].state(training) + (
        ("slow",) if training.lookahead else ())


def _view(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(R,) per-replica scalars shaped to broadcast against an (R, ...) tensor."""
    return values.view(-1, *([1] * (like.dim() - 1)))


class StackedOptimizer:
    """The optimizer of one replica group.

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
        self.kind = training.optimizer
        self.rule = OPTIMIZERS[training.optimizer]
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

    # ------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, grads: dict[str, torch.Tensor], lrs: torch.Tensor) -> None:
        """One update of every replica. ``lrs`` is (R,) on the parameters' device."""
        self.steps += 1
        uniform = bool((lrs == lrs[0]).all()) if lrs.numel() > 1 else True
        for n, m in self.masks.items():
            grads[n].mul_(m)
        if self.rule.eager is not None:
            self.rule.eager(self, grads, lrs, uniform)
        else:
            self._fused_rule(grads, lrs)
        for n, m in self.masks.items():
            self.params[n].mul_(m)
        if self.cfg.lookahead:
            self._lookahead()

    def _apply(self, direction: dict, lrs: torch.Tensor, uniform: bool, lr_scalar: float) -> None:
        if uniform:
            torch._foreach_add_([self.params[n] for n in self.names],
                                [direction[n] for n in self.names], alpha=-lr_scalar)
        else:
            for n in self.names:
                self.params[n].sub_(_view(lrs, direction[n]) * direction[n])

    def _sgd(self, grads, lrs, uniform):
        """SGD with momentum, Nesterov and L2 weight decay (as ``torch.optim.SGD``)."""
        c = self.cfg
        names = self.names
        g = [grads[n] for n in names]
        if c.weight_decay:
            torch._foreach_add_(g, [self.params[n] for n in names], alpha=c.weight_decay)
        if c.momentum:
            buf = [self.state["momentum"][n] for n in names]
            torch._foreach_mul_(buf, c.momentum)
            torch._foreach_add_(buf, g)
            if c.nesterov:
                torch._foreach_add_(g, buf, alpha=c.momentum)
                direction = dict(zip(names, g))
            else:
                direction = dict(zip(names, buf))
        else:
            direction = dict(zip(names, g))
        self._apply(direction, lrs, uniform, float(lrs[0]))

    def _adam_family(self, grads, lrs, uniform=None):
        """Adam, AdamW and RAdam (as ``torch.optim.Adam``/``AdamW``/``RAdam``)."""
        c = self.cfg
        dev = lrs.device
        t = self.steps
        bc1 = (1 - c.beta1 ** t).to(dev, torch.float32)
        bc2 = (1 - c.beta2 ** t).to(dev, torch.float32)
        if self.kind == "radam":
            rho_inf = 2 / (1 - c.beta2) - 1
            rho_t = rho_inf - 2 * t * (c.beta2 ** t) / (1 - c.beta2 ** t)
            adaptive = rho_t > 5
            rect = torch.where(
                adaptive,
                torch.sqrt(((rho_t - 4) * (rho_t - 2) * rho_inf).clamp(min=0)
                           / ((rho_inf - 4) * (rho_inf - 2) * rho_t)),
                torch.zeros_like(rho_t),
            ).to(dev, torch.float32)
            adaptive = adaptive.to(dev)
        for n in self.names:
            p, g = self.params[n], grads[n]
            m, v = self.state["exp_avg"][n], self.state["exp_avg_sq"][n]
            lr = _view(lrs, p)
            if c.weight_decay:
                if self.kind == "adamw":
                    p.mul_(1 - lr * c.weight_decay)
                else:
                    g = g.add(p, alpha=c.weight_decay)
            m.lerp_(g, 1 - c.beta1)
            v.mul_(c.beta2).addcmul_(g, g, value=1 - c.beta2)
            m_hat = m / _view(bc1, p)
            if self.kind == "radam":
                denom = (v / _view(bc2, p)).sqrt_().add_(c.eps)
                step = torch.where(_view(adaptive, p), m_hat * _view(rect, p) / denom, m_hat)
            else:
                denom = (v / _view(bc2, p)).sqrt_().add_(c.eps)
                step = m_hat / denom
            p.sub_(lr * step)

    def _fused_rule(self, grads, lrs):
        """An optimizer without an eager rule: its fused rule, with this step's row of
        :func:`step_scalars` computed here (one small host computation per step)."""
        lrs_np = lrs.detach().cpu().double().numpy()[None]
        row = torch.from_numpy(step_scalars(self.cfg, lrs_np, (self.steps - 1).numpy())[0])
        row = row.to(lrs.device)
        for n in self.names:
            p = self.params[n]
            st = {s: self.state[s][n] for s in self.state if s != "slow"}
            self.rule.fused(self.cfg, p, grads[n], st, _view(row[:, 0], p), row)

    def _lookahead(self):
        sync = (self.steps % self.cfg.lookahead_steps == 0)
        if not bool(sync.any()):
            return
        alpha = self.cfg.lookahead_alpha
        for n in self.names:
            p, slow = self.params[n], self.state["slow"][n]
            which = _view(sync.to(p.device), p)
            new_slow = slow + alpha * (p - slow)
            slow.copy_(torch.where(which, new_slow, slow))
            p.copy_(torch.where(which, slow, p))

    # ------------------------------------------------------------------------------------
    def state_of(self, index: int) -> dict[str, dict[str, torch.Tensor]]:
        """Replica ``index``'s state tensors (without the replica dim)."""
        return {s: {n: t[index].detach().clone() for n, t in d.items()} for s, d in self.state.items()}



# -- the sync-free form used inside the compiled step ----------------------------------------
#
# The update above reads per-step scalars (bias corrections, RAdam's rectification,
# Lookahead's sync flag) from host tensors and branches on them in Python. Inside one
# compiled step nothing may wait on the host, so those scalars are computed ahead, for a
# block of steps, by :func:`step_scalars` (in float64, exactly as ``step`` computes them,
# then float32), and :func:`fused_update` applies the same update rules with every
# per-replica quantity as a tensor and no Python branch on data.

SCALAR_COLUMNS = ("lr", "bc1", "bc2", "rect", "adaptive", "sync")


def step_scalars(training, lrs: np.ndarray, opt_steps0) -> np.ndarray:
    """(n, R, 6) float32 table of per-step, per-replica scalars for :func:`fused_update`.

    ``lrs`` is the (n, R) learning rate of each iteration; ``opt_steps0`` the optimizer
    steps each replica had taken before the first of them. Row i holds, for optimizer step
    ``t = opt_steps0 + i + 1``: lr, ``1 - beta1**t``, ``1 - beta2**t``, RAdam's
    rectification ``r_t`` and whether ``rho_t > 5`` (Liu et al. 2020, Alg. 2), and whether
    Lookahead syncs after this step (Zhang et al. 2019, Alg. 1: every k-th step).
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


def _radam_scalars(c, t: np.ndarray, out: np.ndarray) -> None:
    """RAdam's rectification ``r_t`` and whether ``rho_t > 5`` (Liu et al. 2020, Alg. 2)."""
    rho_inf = 2 / (1 - c.beta2) - 1
    rho_t = rho_inf - 2 * t * (c.beta2 ** t) / (1 - c.beta2 ** t)
    adaptive = rho_t > 5
    with np.errstate(invalid="ignore", divide="ignore"):
        rect = np.sqrt(np.clip((rho_t - 4) * (rho_t - 2) * rho_inf, 0, None)
                       / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
    out[..., 3] = np.where(adaptive, rect, 0.0)
    out[..., 4] = adaptive


def fused_sgd(c, p, g, st, lr, row) -> None:
    """One SGD step of tensor ``p`` (R, ...) in place; ``lr`` broadcasts against it."""
    if c.weight_decay:
        g = g + c.weight_decay * p
    if c.momentum:
        buf = st["momentum"]
        buf.mul_(c.momentum).add_(g)
        d = g + c.momentum * buf if c.nesterov else buf
    else:
        d = g
    p.sub_(lr * d)


def fused_adam(c, p, g, st, lr, row) -> None:
    """One Adam / AdamW / RAdam step (by ``c.optimizer``) of tensor ``p`` in place; ``row``
    is this step's (R, 6) row of :func:`step_scalars`."""
    kind = c.optimizer
    m, v = st["exp_avg"], st["exp_avg_sq"]
    if c.weight_decay:
        if kind == "adamw":
            p.mul_(1 - lr * c.weight_decay)
        else:
            g = g + c.weight_decay * p
    m.lerp_(g, 1 - c.beta1)
    v.mul_(c.beta2).addcmul_(g, g, value=1 - c.beta2)
    m_hat = m / _view(row[:, 1], p)
    denom = (v / _view(row[:, 2], p)).sqrt() + c.eps
    if kind == "radam":
        step = torch.where(_view(row[:, 4], p) > 0.5, m_hat * _view(row[:, 3], p) / denom, m_hat)
    else:
        step = m_hat / denom
    p.sub_(lr * step)


def fused_update(training):
    """``update(params, grads, state, masks, scalars)``: one in-place step of every replica.

    The same rules as :meth:`StackedOptimizer.step` (see the module docstring), written
    without host synchronisation so that it traces into one compiled graph. ``scalars`` is
    one (R, 6) row of :func:`step_scalars`; ``masks`` holds a 0/1 tensor for each
    parameter with pruned weights (a parameter absent from it is dense: no multiply).
    """
    c = training
    rule = OPTIMIZERS[c.optimizer].fused

    def update(params, grads, state, masks, row):
        for n, p in params.items():
            g = grads[n]
            m = masks.get(n)
            if m is not None:
                g = g * m
            st = {s: state[s][n] for s in state if s != "slow"}
            rule(c, p, g, st, _view(row[:, 0], p), row)
            if m is not None:
                p.mul_(m)
            if c.lookahead:
                slow = state["slow"][n]
                sync = _view(row[:, 5], p) > 0.5
                new_slow = slow + c.lookahead_alpha * (p - slow)
                slow.copy_(torch.where(sync, new_slow, slow))
                p.copy_(torch.where(sync, slow, p))

    return update


# -- the table: every optimizer, once ---------------------------------------------------------

def _torch_sgd(params, c):
    return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov,
                           weight_decay=c.weight_decay)


def _torch_adam_like(cls):
    def make(params, c):
        return cls(params, lr=c.lr, betas=(c.beta1, c.beta2), eps=c.eps,
                   weight_decay=c.weight_decay)

    return make


@dataclass(frozen=True)
class Optimizer:
    """One optimizer of ``training.optimizer``.

    - ``state(training)``: names of its per-parameter state tensors (Lookahead's ``slow``
      is added by :func:`state_names`);
    - ``fused(training, p, g, state, lr, row)``: its update of one stacked tensor, in place,
      with no host synchronisation (the compiled step; ``row`` is one (R, 6) row of
      :func:`step_scalars`, ``lr`` is ``row[:, 0]`` shaped to broadcast against ``p``);
    - ``reference(params, training)``: the ``torch.optim`` optimizer it must match (the
      single-replica reference path, and the tests);
    - ``eager(optimizer, grads, lrs, uniform)``: optional faster update of a whole
      :class:`StackedOptimizer` for the eager path (None: the fused rule, with its scalars
      row computed per step);
    - ``scalars(training, t, out)``: optional, fills its own columns of
      :func:`step_scalars` for optimizer steps ``t``;
    - ``fields``: the ``training.*`` hyperparameters only this optimizer reads (the report
      lists them for a study that uses it, and leaves them out otherwise).
    """

    state: Callable[[object], tuple[str, ...]]
    fused: Callable
    reference: Callable[[object, object], torch.optim.Optimizer]
    eager: Callable | None = None
    scalars: Callable | None = None
    fields: tuple[str, ...] = ()


def _adam_state(c) -> tuple[str, ...]:
    return ("exp_avg", "exp_avg_sq")


_ADAM_FIELDS = ("beta1", "beta2", "eps")

OPTIMIZERS: dict[str, Optimizer] = {
    "sgd": Optimizer(lambda c: ("momentum",) if c.momentum else (), fused_sgd, _torch_sgd,
                     eager=StackedOptimizer._sgd, fields=("momentum", "nesterov")),
    "adam": Optimizer(_adam_state, fused_adam, _torch_adam_like(torch.optim.Adam),
                      eager=StackedOptimizer._adam_family, fields=_ADAM_FIELDS),
    "adamw": Optimizer(_adam_state, fused_adam, _torch_adam_like(torch.optim.AdamW),
                       eager=StackedOptimizer._adam_family, fields=_ADAM_FIELDS),
    "radam": Optimizer(_adam_state, fused_adam, _torch_adam_like(torch.optim.RAdam),
                       eager=StackedOptimizer._adam_family, scalars=_radam_scalars,
                       fields=_ADAM_FIELDS),
}
