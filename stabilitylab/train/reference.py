"""The single-replica reference path: one ``nn.Module``, one ``torch.optim`` optimizer.

It is deliberately plain: the way OpenLTH (and most papers' code) trains one run at
a time, with the masks applied the safe way (gradients masked before the update,
weights masked after). Tests assert that the batched engine reproduces it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stabilitylab.train.data_order import DataOrders
from stabilitylab.train.schedule import schedule_for


def make_torch_optimizer(module: nn.Module, training) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimizer a TrainingConfig describes (no Lookahead)."""
    from stabilitylab.train.optim import OPTIMIZERS

    return OPTIMIZERS[training.optimizer].reference(module.parameters(), training)


def train_reference(module: nn.Module, data, resolved, *, start_step: int, data_seed: int,
                    masks: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Train ``module`` in place from ``start_step`` to T with a fresh optimizer state."""
    cfg = resolved.config.training
    masks = {n: m.float() for n, m in (masks or {}).items()}
    named = dict(module.named_parameters())
    with torch.no_grad():
        for n, m in masks.items():
            named[n].mul_(m)
    opt = make_torch_optimizer(module, cfg)
    lr_at = schedule_for(resolved)
    orders = DataOrders([data_seed], data.train_x.shape[0], cfg.batch_size)
    module.train()
    for step in range(start_step, resolved.total_steps):
        idx = orders.indices([step])[0]
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = F.cross_entropy(module(data.train_x[idx]), data.train_y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            for n, m in masks.items():
                named[n].grad.mul_(m)
        opt.step()
        with torch.no_grad():
            for n, m in masks.items():
                named[n].mul_(m)
    return module
