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

and, after Kwok, Altıntaş, Raffel & Rolnick 2025, "The Butterfly Effect: Neural Network
Training Trajectories Are Highly Sensitive to Initial Conditions" (ICML), Sec. 3, whose
perturbations are sized relative to each layer's *initialisation scale* σ_l (the std of the
layer's weights at W_0; σ = 1 is the init scale):

- :func:`init_scale_gaussian`: δ_i = ε · σ_l · z_i, z_i ~ N(0, 1), on every surviving weight
  or on a seeded random ``fraction`` of them;
- :func:`single_weight`: one seeded, uniformly chosen surviving weight moved by ±ε · σ_l;
- :func:`batch_gradient_step`: δ = ε · S · g / ‖g‖ with g the gradient of the training loss
  on one batch (their "batch" mode) and S = √(Σ_i σ_l(i)²) the norm that init-scale noise
  of the same ε has in expectation on the same weights (so ε sizes both alike).

Any of them can be limited to a chosen set of modules (``modules``: module or parameter
names; empty = all).

All act on *every trainable parameter* of one replica (``name -> tensor``, the module's
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

__all__ = ["DEFAULT_EPSILON", "MODES", "batch_gradient_step", "bit_flip", "bit_flip_site",
           "init_scale_gaussian", "init_scales", "perturb", "relative_gaussian", "single_weight"]

MODES = ("gaussian", "bit_flip", "init_scale", "single_weight", "batch")

DEFAULT_EPSILON = 1e-6
"""The default relative size of :func:`relative_gaussian`."""

Tensors = dict[str, torch.Tensor]


def _keep(params: Tensors, masks: Tensors | None, modules=()) -> Tensors:
    masks = check_masks(params, masks or {})
    chosen = in_modules(params, modules)
    return {n: (masks[n].to(p.device) if n in masks
                else torch.ones(p.shape, dtype=torch.bool, device=p.device)) & chosen[n]
            for n, p in params.items()}


def in_modules(params, modules) -> dict[str, bool]:
    """``name -> bool``: the parameter belongs to one of ``modules`` (a module name, e.g.
    ``"conv1"``, or a parameter name, e.g. ``"conv1.bias"``); every parameter when
    ``modules`` is empty. A name matching no parameter is a :class:`ConfigError`."""
    if not modules:
        return {n: True for n in params}
    unknown = [m for m in modules if not any(n == m or n.startswith(m + ".") for n in params)]
    if unknown:
        modules_of = sorted({n.rsplit(".", 1)[0] for n in params})
        raise ConfigError(f"study.perturb_modules: no module or parameter named {unknown[0]!r};"
                          f" modules: {', '.join(modules_of)}")
    return {n: any(n == m or n.startswith(m + ".") for m in modules) for n in params}


def _check_epsilon(epsilon) -> None:
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) \
            or not math.isfinite(epsilon) or epsilon < 0:
        raise ConfigError(f"perturbation epsilon must be a finite number >= 0, got {epsilon!r}")


def relative_gaussian(params: Tensors, masks: Tensors | None, generator: torch.Generator, *,
                      epsilon: float = DEFAULT_EPSILON, modules=()) -> Tensors:
    """W + ε · ‖m ⊙ W‖ · z / ‖z‖ with z ~ N(0, I) on the surviving positions (0 elsewhere).

    The norms are global over all parameters of the replica. z is drawn tensor by tensor in
    the dict's order (the full shape each, pruned positions then zeroed), in float64, and
    the step is added in float64 before rounding to each tensor's dtype. So in float64
    ‖W' − W‖ / ‖m ⊙ W‖ = ε to rounding; in float32 the realised size differs from ε by the
    rounding of W + δ (at ε = 1e-6, δ is about ε·|w|, some 8 float32 ulps of a weight, so
    the realised size is off by a few percent). When m ⊙ W = 0 the result equals the input.
    ``modules``: only their parameters count and move (both norms are over them).
    """
    _check_epsilon(epsilon)
    keep = _keep(params, masks, modules)
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


def bit_flip_site(params: Tensors, masks: Tensors | None, generator: torch.Generator,
                  modules=()) -> tuple[str, int]:
    """``(name, flat index)`` of one surviving float32 weight (of ``modules``), uniform over
    all of them."""
    return _site(_keep(params, masks, modules), params, generator, "bit flip")


def bit_flip(params: Tensors, masks: Tensors | None, generator: torch.Generator,
             modules=()) -> Tensors:
    """Flip the least significant mantissa bit of one seeded, uniformly chosen surviving
    float32 weight (its int32 view xor 1): that element moves by one ulp, nothing else
    changes (Summers & Dinneen 2021's one-bit change)."""
    name, index = bit_flip_site(params, masks, generator, modules)
    out = {n: p.detach().clone(memory_format=torch.contiguous_format) for n, p in params.items()}
    flat = out[name].view(-1)
    bits = flat[index:index + 1].view(torch.int32)
    bits ^= 1  # writes through the view into the clone
    return out


def init_scales(init: Tensors) -> dict[str, float]:
    """σ_l per tensor: the std of its W_0 values (float64, over all of them, pruned or not).

    A tensor whose W_0 is constant (biases at 0, norm scales at 1) has no spread of its own;
    it takes the σ of the nearest following tensor that has one (the next layer's weights,
    whose fan-in sets the scale Kwok et al. 2025 use for norm parameters), else of the
    nearest preceding one; 0 when no tensor has spread."""
    names = list(init)
    sd = {n: float(init[n].detach().double().std(unbiased=False)) if init[n].numel() > 1
          else 0.0 for n in names}
    spread = [i for i, n in enumerate(names) if sd[n] > 0]
    out = {}
    for i, n in enumerate(names):
        if sd[n] > 0 or not spread:
            out[n] = sd[n]
            continue
        after = [j for j in spread if j > i]
        out[n] = sd[names[after[0] if after else max(spread)]]
    return out


def _select_fraction(keep: Tensors, fraction: float, generator: torch.Generator) -> Tensors:
    """A seeded random subset of round(fraction · N) of the N kept positions (at least one
    when fraction > 0 and N > 0), chosen uniformly without replacement over all tensors."""
    if not (0 < fraction <= 1):
        raise ConfigError(f"study.perturb_fraction: must be in (0, 1], got {fraction!r}")
    if fraction == 1:
        return keep
    flat = torch.cat([k.flatten().cpu() for k in keep.values()])
    where = torch.nonzero(flat).flatten()
    count = min(len(where), max(1, round(fraction * len(where)))) if len(where) else 0
    chosen = torch.zeros_like(flat)
    chosen[where[torch.randperm(len(where), generator=generator)[:count]]] = True
    out, start = {}, 0
    for n, k in keep.items():
        out[n] = chosen[start:start + k.numel()].view(k.shape).to(k.device)
        start += k.numel()
    return out


def _apply(params: Tensors, keep: Tensors, delta: Tensors) -> Tensors:
    """W + δ on the kept positions (added in float64, rounded to each tensor's dtype)."""
    out = {}
    for n, p in params.items():
        new = p.detach().double() + delta[n].to(p.device)
        out[n] = torch.where(keep[n], new.to(p.dtype), p.detach()).clone()
    return out


def init_scale_gaussian(params: Tensors, masks: Tensors | None, init: Tensors,
                        generator: torch.Generator, *, epsilon: float = DEFAULT_EPSILON,
                        fraction: float = 1.0, modules=()) -> Tensors:
    """W + ε · σ_l · z on the surviving weights (of ``modules``), z ~ N(0, 1) per weight; with
    ``fraction`` < 1 only on a seeded random round(fraction · N) of them (Kwok et al. 2025,
    Sec. 3: Gaussian noise relative to the init scale σ_l of each layer, :func:`init_scales`
    of ``init`` = W_0). Draws: the subset first (when fraction < 1), then z tensor by tensor
    (the full shape each) in the dict's order."""
    _check_epsilon(epsilon)
    keep = _select_fraction(_keep(params, masks, modules), fraction, generator)
    sigma = init_scales(init)
    delta = {n: torch.randn(p.shape, generator=generator, dtype=torch.float64)
             * (float(epsilon) * sigma[n]) * keep[n].cpu() for n, p in params.items()}
    return _apply(params, keep, delta)


def single_weight(params: Tensors, masks: Tensors | None, init: Tensors,
                  generator: torch.Generator, *, epsilon: float = DEFAULT_EPSILON,
                  modules=()) -> Tensors:
    """One seeded, uniformly chosen surviving weight (of ``modules``) moved by
    ±ε · σ_l (random sign); nothing else changes (Kwok et al. 2025: perturbing a single
    weight early is enough to send training to another basin)."""
    _check_epsilon(epsilon)
    keep = _keep(params, masks, modules)
    name, index = _site(keep, params, generator)
    sign = 1.0 if int(torch.randint(2, (1,), generator=generator)) else -1.0
    delta = {n: torch.zeros(p.shape, dtype=torch.float64) for n, p in params.items()}
    delta[name].view(-1)[index] = sign * float(epsilon) * init_scales(init)[name]
    only = {n: torch.zeros_like(k) for n, k in keep.items()}
    only[name].view(-1)[index] = True
    return _apply(params, only, delta)


def batch_gradient_step(params: Tensors, masks: Tensors | None, init: Tensors,
                        gradient: Tensors, generator: torch.Generator, *,
                        epsilon: float = DEFAULT_EPSILON, fraction: float = 1.0,
                        modules=()) -> Tensors:
    """W + ε · S · g / ‖g‖ on the surviving weights (of ``modules``, of a seeded ``fraction``
    of them), with ``gradient`` g the gradient of the training loss on one batch at W (Kwok
    et al. 2025's "batch" mode: the perturbation is a step up that batch's loss) and
    S = √(Σ σ_l²) over the perturbed weights (:func:`init_scales` of ``init``), the norm an
    :func:`init_scale_gaussian` perturbation of the same ε has in expectation. A zero
    gradient leaves W unchanged."""
    _check_epsilon(epsilon)
    keep = _select_fraction(_keep(params, masks, modules), fraction, generator)
    sigma = init_scales(init)
    g = {n: gradient[n].detach().double().cpu() * keep[n].cpu() for n in params}
    g_norm = math.sqrt(sum(float(t.square().sum()) for t in g.values()))
    size = math.sqrt(sum(sigma[n] ** 2 * int(keep[n].sum()) for n in params))
    scale = float(epsilon) * size / g_norm if g_norm > 0 else 0.0
    return _apply(params, keep, {n: t * scale for n, t in g.items()})


def _site(keep: Tensors, params: Tensors, generator: torch.Generator,
          what: str = "single weight") -> tuple[str, int]:
    """One kept position, uniform over all of them (one ``randint`` draw): of the float32
    tensors for a bit flip, of every floating-point tensor otherwise."""
    flip = what == "bit flip"
    names = [n for n, p in params.items()
             if (p.dtype == torch.float32 if flip else p.is_floating_point())]
    counts = [int(keep[n].sum()) for n in names]
    total = sum(counts)
    if total == 0:
        raise ConfigError(f"{what}: no surviving float32 parameter to flip" if flip
                          else f"{what}: no surviving parameter to perturb")
    pick = int(torch.randint(total, (1,), generator=generator))
    for n, c in zip(names, counts, strict=True):
        if pick < c:
            return n, int(torch.nonzero(keep[n].flatten().cpu()).flatten()[pick])
        pick -= c
    raise AssertionError("unreachable")


def perturb(params: Tensors, masks: Tensors | None, generator: torch.Generator, *,
            kind: str = "gaussian", epsilon: float = DEFAULT_EPSILON, init: Tensors | None = None,
            gradient: Tensors | None = None, fraction: float = 1.0, modules=()) -> Tensors:
    """Dispatch on ``kind`` (:data:`MODES`): ``"gaussian"`` (:func:`relative_gaussian`, size
    ``epsilon``), ``"bit_flip"`` (:func:`bit_flip`; ``epsilon`` unused), ``"init_scale"``
    (:func:`init_scale_gaussian`), ``"single_weight"`` (:func:`single_weight`) and
    ``"batch"`` (:func:`batch_gradient_step`, needs ``gradient``); the last three need
    ``init`` (W_0). ``modules`` limits every mode; ``fraction`` applies to init_scale and
    batch. With the defaults, gaussian and bit_flip draw exactly as they always have."""
    if kind == "gaussian":
        return relative_gaussian(params, masks, generator, epsilon=epsilon, modules=modules)
    if kind == "bit_flip":
        return bit_flip(params, masks, generator, modules)
    if kind in ("init_scale", "single_weight", "batch") and init is None:
        raise ConfigError(f"perturbation {kind}: needs the init weights W_0")
    if kind == "init_scale":
        return init_scale_gaussian(params, masks, init, generator, epsilon=epsilon,
                                   fraction=fraction, modules=modules)
    if kind == "single_weight":
        return single_weight(params, masks, init, generator, epsilon=epsilon, modules=modules)
    if kind == "batch":
        if gradient is None:
            raise ConfigError("perturbation batch: needs the gradient of one batch")
        return batch_gradient_step(params, masks, init, gradient, generator, epsilon=epsilon,
                                   fraction=fraction, modules=modules)
    raise ConfigError(f"perturbation kind: unknown {kind!r}; choose from {', '.join(MODES)}")
