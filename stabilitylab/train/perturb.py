"""Seeded perturbations of a start point, for ``perturb`` noise copies.

A ``perturb`` copy trains under the same data order as replica 0 from a slightly moved
W_k, so that the distance it reaches measures sensitivity to the start point alone
(chaos), not to the data order. Summers & Dinneen 2021, "Nondeterminism and Instability
in Neural Network Optimization" (ICML), found that changing one bit of the
initialisation gave as much run-to-run variability as every source of randomness
together; these are the two perturbations they and we use:

- :func:`relative_gaussian`: W' = W + ε · ‖m ⊙ W‖ · z / ‖z‖, z ~ N(0, I) on the surviving
  positions, so ‖W' − W‖ = ε ‖m ⊙ W‖;
- :func:`bit_flip`: the least significant mantissa bit of one uniformly chosen surviving
  float32 weight is flipped (one ulp).

Both act on *every trainable parameter* of one replica (``name -> tensor``, the module's
shapes), not only on the prunable ones: a bias or norm parameter is part of the start
point too. ``masks`` (``name -> bool``, True = kept) covers the prunable tensors; a
parameter without a mask is dense. Pruned positions are never touched (a pruned weight
that is 0 stays exactly 0). Inputs are never modified; all draws come from the CPU
``generator``, so the result is a function of the seed alone.
"""

from __future__ import annotations

import math

import torch

from stabilitylab.core.errors import ConfigError
from stabilitylab.prune.pai import check_masks

__all__ = ["DEFAULT_EPSILON", "bit_flip", "bit_flip_site", "perturb", "relative_gaussian"]

DEFAULT_EPSILON = 1e-6
"""The default relative size of :func:`relative_gaussian`."""

Tensors = dict[str, torch.Tensor]


def _keep(params: Tensors, masks: Tensors | None) -> Tensors:
    masks = check_masks(params, masks or {})
    return {n: (masks[n].to(p.device) if n in masks
                else torch.ones(p.shape, dtype=torch.bool, device=p.device))
            for n, p in params.items()}


def relative_gaussian(params: Tensors, masks: Tensors | None, generator: torch.Generator, *,
                      epsilon: float = DEFAULT_EPSILON) -> Tensors:
    """W + ε · ‖m ⊙ W‖ · z / ‖z‖ with z ~ N(0, I) on the surviving positions (0 elsewhere).

    The norms are global over all parameters of the replica. z is drawn tensor by tensor in
    the dict's order (the full shape each, pruned positions then zeroed), in float64, and
    the step is added in float64 before rounding to each tensor's dtype. So in float64
    ‖W' − W‖ / ‖m ⊙ W‖ = ε to rounding; in float32 the realised size differs from ε by the
    rounding of W + δ (at ε = 1e-6, δ is about ε·|w|, some 8 float32 ulps of a weight, so
    the realised size is off by a few percent). When m ⊙ W = 0 the result equals the input.
    """
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) \
            or not math.isfinite(epsilon) or epsilon < 0:
        raise ConfigError(f"perturbation epsilon must be a finite number >= 0, got {epsilon!r}")
    keep = _keep(params, masks)
    z = {n: torch.randn(p.shape, generator=generator, dtype=torch.float64) * keep[n].cpu()
         for n, p in params.items()}
    w_norm = math.sqrt(sum(float((p.detach().double().cpu() * keep[n].cpu()).square().sum())
                           for n, p in params.items()))
    z_norm = math.sqrt(sum(float(t.square().sum()) for t in z.values()))
    scale = float(epsilon) * w_norm / z_norm if z_norm > 0 else 0.0
    out = {}
    for n, p in params.items():
        new = p.detach().double() + (z[n] * scale).to(p.device)
        out[n] = torch.where(keep[n], new.to(p.dtype), p.detach()).clone()
    return out


def bit_flip_site(params: Tensors, masks: Tensors | None,
                  generator: torch.Generator) -> tuple[str, int]:
    """``(name, flat index)`` of one surviving float32 weight, uniform over all of them."""
    keep = _keep(params, masks)
    names = [n for n, p in params.items() if p.dtype == torch.float32]
    counts = [int(keep[n].sum()) for n in names]
    total = sum(counts)
    if total == 0:
        raise ConfigError("bit flip: no surviving float32 parameter to flip")
    pick = int(torch.randint(total, (1,), generator=generator))
    for n, c in zip(names, counts, strict=True):
        if pick < c:
            index = torch.nonzero(keep[n].flatten().cpu()).flatten()[pick]
            return n, int(index)
        pick -= c
    raise AssertionError("unreachable")


def bit_flip(params: Tensors, masks: Tensors | None, generator: torch.Generator) -> Tensors:
    """Flip the least significant mantissa bit of one seeded, uniformly chosen surviving
    float32 weight (its int32 view xor 1): that element moves by one ulp, nothing else
    changes (Summers & Dinneen 2021's one-bit change)."""
    name, index = bit_flip_site(params, masks, generator)
    out = {n: p.detach().clone(memory_format=torch.contiguous_format) for n, p in params.items()}
    flat = out[name].view(-1)
    bits = flat[index:index + 1].view(torch.int32)
    bits ^= 1  # writes through the view into the clone
    return out


def perturb(params: Tensors, masks: Tensors | None, generator: torch.Generator, *,
            kind: str = "gaussian", epsilon: float = DEFAULT_EPSILON) -> Tensors:
    """Dispatch: ``kind="gaussian"`` (:func:`relative_gaussian`, size ``epsilon``) or
    ``kind="bit_flip"`` (:func:`bit_flip`; ``epsilon`` unused)."""
    if kind == "gaussian":
        return relative_gaussian(params, masks, generator, epsilon=epsilon)
    if kind == "bit_flip":
        return bit_flip(params, masks, generator)
    raise ConfigError(f"perturbation kind: unknown {kind!r}; choose gaussian or bit_flip")
