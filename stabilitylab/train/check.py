"""Can a model run under the batched engine? Checked once, at validation, on a tiny batch.

The engine trains R stacked copies through ``vmap(functional_call)``
(:class:`stabilitylab.train.functional.StackedModel`), so a module must be a pure
function of its parameters and buffers. :func:`check_batched` refuses, with one line
naming the module and the reason:

- in-place buffer updates other than BatchNorm's running statistics (they would be
  shared by every replica, or silently lost);
- data-dependent Python control flow (``if x.sum() > 0``, ``.item()``), which vmap
  cannot trace;
- operations vmap has no batching rule for.

It builds two replicas, runs a forward and backward pass in train mode and a
forward pass in eval mode on two examples, and records which module was running
when anything failed. Nothing here touches the global RNG (it is forked).
"""

from __future__ import annotations

import copy
import json

import torch
from torch import nn

from stabilitylab.core.errors import ConfigError
from stabilitylab.models import build_model
from stabilitylab.train.functional import StackedModel

_CACHE: dict[str, str | None] = {}


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    low = text.lower()
    if "data-dependent control flow" in low or "_local_scalar_dense" in low or ".item()" in low:
        return "data-dependent Python control flow on a tensor value (vmap cannot trace it)"
    if "batching rule not implemented" in low or "not implemented for" in low or "do not support" in low \
            or "not supported" in low or "unsupported" in low:
        return f"an operation vmap does not support ({first[:160]})"
    if "inplace" in low or "in-place" in low:
        return f"an in-place update vmap cannot batch ({first[:160]})"
    return f"{type(exc).__name__}: {first[:160]}"


def _track(template: nn.Module):
    """Forward hooks keeping the stack of running modules; returns (stack, handles)."""
    stack: list[str] = []
    handles = []
    for name, module in template.named_modules():
        label = f"{name or '<root>'} ({type(module).__name__})"

        def pre(_m, _args, label=label):
            stack.append(label)

        def post(_m, _args, _out, label=label):
            if stack and stack[-1] == label:
                stack.pop()

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    return stack, handles


def _buffer_mutations(model: nn.Module, x: torch.Tensor) -> str | None:
    """A non-BatchNorm buffer that a train-mode forward changes, as 'module (Type): buffer'."""
    watched = {}
    for mname, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        for bname, buf in module.named_buffers(recurse=False):
            watched[(mname, bname)] = (module, buf.detach().clone())
    if not watched:
        return None
    probe = copy.deepcopy(model).train()
    with torch.no_grad():
        probe(x)
    modules = dict(probe.named_modules())
    for (mname, bname), (module, before) in watched.items():
        after = getattr(modules[mname], bname)
        if after.shape != before.shape or not torch.equal(after, before):
            return (f"module '{mname or '<root>'}' ({type(module).__name__}) updates buffer "
                    f"'{bname}' in place during forward; only BatchNorm's running statistics may")
    return None


def batched_problem(model: nn.Module, input_shape: tuple, num_classes: int) -> str | None:
    """Why ``model`` cannot train under ``vmap(functional_call)``, or None when it can."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, *input_shape, generator=g)
    y = torch.randint(0, num_classes, (2, 2), generator=g)
    with torch.random.fork_rng(devices=[]):
        try:
            problem = _buffer_mutations(model, x[0])
        except Exception as exc:  # noqa: BLE001 - the plain forward fails: report it
            return f"the model's forward fails on a batch of shape {tuple(x[0].shape)}: {_reason(exc)}"
        if problem:
            return problem
        stacked = StackedModel(model)
        params, buffers = stacked.stack([model, model])
        params = {n: t.requires_grad_(True) for n, t in params.items()}
        stack, handles = _track(stacked.template)
        try:
            for train in (True, False):
                stack.clear()
                logits = stacked.forward(params, buffers, x, train=train)
                if tuple(logits.shape) != (2, 2, num_classes):
                    return (f"its output has shape {tuple(logits.shape[1:])} per replica; "
                            f"expected (batch, {num_classes})")
                if train:
                    loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
                    torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        except Exception as exc:  # noqa: BLE001 - classify whatever vmap raised
            where = stack[-1] if stack else "<root>"
            return f"module '{where.split(' ', 1)[0]}' ({where.split(' ', 1)[-1][1:-1]}): " \
                   + _reason(exc) if stack else _reason(exc)
        finally:
            for h in handles:
                h.remove()
    return None


def check_batched(cfg, input_shape: tuple, num_classes: int) -> None:
    """Raise ConfigError (one line) when model ``cfg`` cannot run under the batched engine.

    Cached per (name, options, input shape, classes) for the process.
    """
    key = json.dumps([cfg.name, cfg.options, cfg.dropout, list(input_shape), num_classes],
                     sort_keys=True, default=list)
    if key not in _CACHE:
        with torch.random.fork_rng(devices=[]):
            model = build_model(cfg, input_shape, num_classes, generator=torch.Generator().manual_seed(0))
        _CACHE[key] = batched_problem(model, tuple(input_shape), int(num_classes))
    if _CACHE[key]:
        raise ConfigError(f"model.name: {cfg.name} cannot run under the batched engine "
                          f"(functional_call + vmap): {_CACHE[key]}")
