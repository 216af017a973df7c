"""RAdam (Liu et al. 2020, Alg. 2), as ``torch.optim.RAdam``.

With ``rho_inf = 2/(1-b2) - 1`` and ``rho_t = rho_inf - 2 t b2^t/(1-b2^t)``, the adaptive
Adam step is taken only when ``rho_t > 5``, scaled by
``r_t = sqrt((rho_t-4)(rho_t-2)rho_inf / ((rho_inf-4)(rho_inf-2)rho_t))``; otherwise the
bias-corrected momentum alone. ``r_t`` and ``rho_t > 5`` are columns 3 and 4 of
:func:`~stabilitylab.train.optimizers.base.step_scalars`, filled by :func:`scalars`.
"""

from __future__ import annotations

import numpy as np
import torch

from stabilitylab.train.optimizers.adam import FIELDS, moments, state, torch_like
from stabilitylab.train.optimizers.base import Optimizer, register, view


def scalars(c, t: np.ndarray, out: np.ndarray) -> None:
    """RAdam's rectification ``r_t`` and whether ``rho_t > 5`` (Liu et al. 2020, Alg. 2)."""
    rho_inf = 2 / (1 - c.beta2) - 1
    rho_t = rho_inf - 2 * t * (c.beta2 ** t) / (1 - c.beta2 ** t)
    adaptive = rho_t > 5
    with np.errstate(invalid="ignore", divide="ignore"):
        rect = np.sqrt(np.clip((rho_t - 4) * (rho_t - 2) * rho_inf, 0, None)
                       / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
    out[..., 3] = np.where(adaptive, rect, 0.0)
    out[..., 4] = adaptive


def update(c, params, grads, st, row, same_lr) -> None:
    for p, g, m, v in zip(params, grads, st["exp_avg"], st["exp_avg_sq"]):
        if c.weight_decay:
            g = g.add(p, alpha=c.weight_decay)
        m_hat, denom = moments(c, p, g, m, v, row)
        step = torch.where(view(row[:, 4], p) > 0.5, m_hat * view(row[:, 3], p) / denom, m_hat)
        p.sub_(view(row[:, 0], p) * step)


RADAM = register(Optimizer("radam", state, update, torch_like(torch.optim.RAdam),
                           scalars=scalars, fields=FIELDS))
