"""SGD with momentum, Nesterov momentum and L2 weight decay, as ``torch.optim.SGD``.

``g = grad + wd*w; b = mu*b + g; d = g + mu*b if nesterov else b; w -= lr*d``
(Sutskever et al. 2013 for the momentum form torch uses).
"""

from __future__ import annotations

import torch

from stabilitylab.train.optimizers.base import Optimizer, descend, register


def update(c, params, grads, state, row, same_lr) -> None:
    if c.weight_decay:
        grads = torch._foreach_add(grads, params, alpha=c.weight_decay)
    directions = grads
    if c.momentum:
        buf = state["momentum"]
        torch._foreach_mul_(buf, c.momentum)
        torch._foreach_add_(buf, grads)
        directions = (torch._foreach_add(grads, buf, alpha=c.momentum) if c.nesterov
                      else buf)
    descend(params, directions, row, same_lr)


def reference(params, c) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov,
                           weight_decay=c.weight_decay)


SGD = register(Optimizer("sgd", lambda c: ("momentum",) if c.momentum else (), update,
                         reference, fields=("momentum", "nesterov")))
