"""AdamW (Loshchilov & Hutter 2019, Alg. 2), as ``torch.optim.AdamW``: Adam with the
weight decay decoupled from the gradient, ``w *= 1 - lr*wd`` before the Adam step."""

from __future__ import annotations

import torch

from stabilitylab.train.optimizers.adam import FIELDS, moments, state, torch_like
from stabilitylab.train.optimizers.base import Optimizer, register, view


def update(c, params, grads, st, row, same_lr) -> None:
    for p, g, m, v in zip(params, grads, st["exp_avg"], st["exp_avg_sq"]):
        lr = view(row[:, 0], p)
        if c.weight_decay:
            p.mul_(1 - lr * c.weight_decay)
        m_hat, denom = moments(c, p, g, m, v, row)
        p.sub_(lr * (m_hat / denom))


ADAMW = register(Optimizer("adamw", state, update, torch_like(torch.optim.AdamW),
                           fields=FIELDS))
