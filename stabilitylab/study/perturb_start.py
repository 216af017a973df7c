"""The start point of a ``perturb`` copy: W_k moved as ``study.perturbation`` says.

:func:`perturbed_params` gathers what :func:`stabilitylab.train.perturb.perturb` needs for
one replica (its seeded generator, W_0 for the init-scale modes, the gradient of one batch
for the ``batch`` mode) and applies it. With ``study.perturb_reference``, replica 0 of each
perturbed kind is left at W_k itself, so that the pairs (0, j) compare a perturbed copy with
the unperturbed one, as Kwok et al. 2025 ("The Butterfly Effect", ICML) do.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from stabilitylab.study.kinds import StartInputs

Tensors = dict[str, torch.Tensor]


def is_reference(s: StartInputs) -> bool:
    """Replica 0 of a perturbed kind under ``study.perturb_reference``: not perturbed."""
    return bool(getattr(s.ctx.cfg.study, "perturb_reference", False)) and s.replica == 0


def batch_gradient(template: torch.nn.Module, params: Tensors, buffers: Tensors,
                   masks: Tensors, x: torch.Tensor, y: torch.Tensor) -> Tensors:
    """∇_W of the mean cross-entropy on (x, y) at m ⊙ W, every parameter.

    The forward runs in eval mode (dropout off, BatchNorm on the buffers given, which are
    not updated), so the gradient is a function of W, the buffers and the batch alone."""
    model = copy.deepcopy(template)
    model.eval()  # dropout off, BatchNorm on the given buffers
    leaves = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
    full = {n: (w * masks[n].to(w.device, w.dtype) if n in masks else w)
            for n, w in leaves.items()}
    bufs = {n: b.detach().clone() for n, b in buffers.items()}
    logits = torch.func.functional_call(model, (full, bufs), (x,))
    loss = torch.nn.functional.cross_entropy(logits.float(), y)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return {n: (g if g is not None else torch.zeros_like(leaves[n])).detach()
            for n, g in zip(leaves, grads, strict=True)}


def perturbed_params(s: StartInputs, params: Tensors, buffers: Tensors) -> Tensors:
    """``params`` (W_k, unstacked) moved by this replica's perturbation (seeded for (kind,
    level, k, replica)). The ``batch`` mode's batch: ``training.batch_size`` training
    examples drawn without replacement by the same generator, before anything else it
    draws (not augmented)."""
    from stabilitylab.train.perturb import perturb

    study = s.ctx.cfg.study
    generator = s.generator()
    mode = study.perturbation
    init = s.ctx.init_weights if mode in ("init_scale", "single_weight", "batch") else None
    gradient = None
    if mode == "batch":
        data = s.ctx.data
        n = data.train_x.shape[0]
        size = min(n, s.ctx.cfg.training.batch_size)
        index = torch.randperm(n, generator=generator)[:size].to(data.train_x.device)
        gradient = batch_gradient(s.ctx.template, params, buffers, s.mask,
                                  data.train_x[index], data.train_y[index])
    return perturb(params, s.mask, generator, kind=mode, epsilon=study.epsilon, init=init,
                   gradient=gradient, fraction=getattr(study, "perturb_fraction", 1.0),
                   modules=tuple(getattr(study, "perturb_modules", ())))
