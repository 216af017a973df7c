"""Stacked (replica-batched) views of an ``nn.Module``.

A group of R replicas of one architecture is held as a dict of stacked tensors,
``params[name].shape == (R, *module_param.shape)``, and run with
``torch.func.functional_call`` under ``torch.func.vmap``. BatchNorm running
statistics are stacked buffers too, so each replica keeps its own statistics and
their in-place updates stay per-replica under vmap.

The flat layout (every parameter flattened and concatenated in
``named_parameters()`` order) is the ``param`` dim of the store.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, vmap

from stabilitylab.models.common import is_prunable, materialize


@dataclass(frozen=True)
class TensorSlot:
    """Where one named tensor lives in the flat vector."""

    name: str
    shape: tuple[int, ...]
    offset: int
    size: int
    prunable: bool

    def as_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "offset": self.offset,
                "size": self.size, "prunable": self.prunable}


class StackedModel:
    """A stateless template module plus the layout of its parameters and buffers.

    Parameters
    ----------
    model : nn.Module
        Any module whose forward is a function of its parameters and buffers.
    """

    def __init__(self, model: nn.Module):
        self.template = copy.deepcopy(model).to("meta")
        self.param_slots: list[TensorSlot] = []
        offset = 0
        modules = dict(model.named_modules())
        for name, p in model.named_parameters():
            owner, _, leaf = name.rpartition(".")
            slot = TensorSlot(name, tuple(p.shape), offset, p.numel(), is_prunable(modules[owner], leaf))
            self.param_slots.append(slot)
            offset += p.numel()
        self.num_params = offset
        self.buffer_slots: list[TensorSlot] = []
        offset = 0
        for name, b in model.named_buffers():
            if not b.is_floating_point():  # num_batches_tracked: not needed (momentum is fixed)
                continue
            self.buffer_slots.append(TensorSlot(name, tuple(b.shape), offset, b.numel(), False))
            offset += b.numel()
        self.num_buffer_values = offset
        self.param_names = [s.name for s in self.param_slots]
        self.buffer_names = [s.name for s in self.buffer_slots]
        self.prunable_names = [s.name for s in self.param_slots if s.prunable]
        self._forward = vmap(self._call, in_dims=(0, 0, 0), randomness="different")
        self._forward_shared_x = vmap(self._call, in_dims=(0, 0, None), randomness="different")

    # -- layout ---------------------------------------------------------------------------
    def layout(self) -> list[dict]:
        return [s.as_dict() for s in self.param_slots]

    def buffer_layout(self) -> list[dict]:
        return [s.as_dict() for s in self.buffer_slots]

    def flatten(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """(R, P) from stacked params."""
        return torch.cat([params[s.name].reshape(params[s.name].shape[0], -1) for s in self.param_slots], 1)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stacked params (views) from a (R, P) tensor."""
        return {
            s.name: flat[:, s.offset:s.offset + s.size].reshape(flat.shape[0], *s.shape)
            for s in self.param_slots
        }

    def flatten_buffers(self, buffers: dict[str, torch.Tensor]) -> torch.Tensor:
        if not self.buffer_slots:
            r = next(iter(buffers.values())).shape[0] if buffers else 0
            return torch.zeros(r, 0)
        return torch.cat([buffers[s.name].reshape(buffers[s.name].shape[0], -1) for s in self.buffer_slots], 1)

    def unflatten_buffers(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            s.name: flat[:, s.offset:s.offset + s.size].reshape(flat.shape[0], *s.shape).clone()
            for s in self.buffer_slots
        }

    # -- stacking ---------------------------------------------------------------------------
    def stack(self, modules: list[nn.Module]) -> tuple[dict, dict]:
        """Stacked (params, buffers) copies of concrete modules of this architecture."""
        params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in modules]).clone()
                  for n in self.param_names}
        buffers = {n: torch.stack([dict(m.named_buffers())[n].detach() for m in modules]).clone()
                   for n in self.buffer_names}
        return params, buffers

    # -- forward ----------------------------------------------------------------------------
    def _call(self, params, buffers, x):
        return functional_call(self.template, (params, buffers), (x,))

    def forward(self, params: dict, buffers: dict, x: torch.Tensor, *, train: bool,
                shared_input: bool = False) -> torch.Tensor:
        """Logits (R, B, C). ``x`` is (R, B, ...) or, with ``shared_input``, (B, ...).

        In train mode BatchNorm uses batch statistics and updates each replica's
        running statistics in place; dropout is active.
        """
        self.template.train(train)
        fn = self._forward_shared_x if shared_input else self._forward
        return fn(params, buffers, x)

    def module_at(self, params: dict, buffers: dict, index: int, device=None) -> nn.Module:
        """A concrete ``nn.Module`` holding replica ``index`` (for the reference path and tests)."""
        module = materialize(copy.deepcopy(self.template), device or "cpu")
        with torch.no_grad():
            for n, p in module.named_parameters():
                p.copy_(params[n][index])
            for n, b in module.named_buffers():
                if n in buffers:
                    b.copy_(buffers[n][index])
                elif b.is_floating_point():
                    b.zero_()
                else:
                    b.zero_()
        return module
