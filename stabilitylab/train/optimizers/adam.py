"""Adam (Kingma & Ba 2015, Alg. 1) with L2 weight decay, as ``torch.optim.Adam``.

``g = grad + wd*w; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
w -= lr * (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps)``. The bias corrections ``1 - b^t`` are
columns 1 and 2 of :func:`~stabilitylab.train.optimizers.base.step_scalars`.
"""

from __future__ import annotations

import torch

from stabilitylab.train.optimizers.base import Optimizer, register, view

FIELDS = ("beta1", "beta2", "eps")


def state(c) -> tuple[str, ...]:
    return ("exp_avg", "exp_avg_sq")


def moments(c, p, g, m, v, row):
    """Update the moments ``m``, ``v`` of tensor ``p`` in place with gradient ``g``;
    return the bias-corrected ``m_hat`` and the denominator ``sqrt(v_hat) + eps``."""
    m.lerp_(g, 1 - c.beta1)
    v.mul_(c.beta2).addcmul_(g, g, value=1 - c.beta2)
    return m / view(row[:, 1], p), (v / view(row[:, 2], p)).sqrt() + c.eps


def update(c, params, grads, state, row, same_lr) -> None:
    for p, g, m, v in zip(params, grads, state["exp_avg"], state["exp_avg_sq"]):
        if c.weight_decay:
            g = g.add(p, alpha=c.weight_decay)
        m_hat, denom = moments(c, p, g, m, v, row)
        p.sub_(view(row[:, 0], p) * (m_hat / denom))


def torch_like(cls):
    """``reference`` for an Adam-family ``torch.optim`` class."""
    def make(params, c) -> torch.optim.Optimizer:
        return cls(params, lr=c.lr, betas=(c.beta1, c.beta2), eps=c.eps,
                   weight_decay=c.weight_decay)

    return make


ADAM = register(Optimizer("adam", state, update, torch_like(torch.optim.Adam), fields=FIELDS))
