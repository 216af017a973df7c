"""Pruning-at-initialisation (PAI) masks: magnitude at init, SNIP, GraSP, SynFlow, and the
layerwise-shuffle ablation.

Every rule works on one replica: a template ``nn.Module`` (a concrete module or a
:class:`~stabilitylab.train.functional.StackedModel`'s meta ``template``), a dict of that
replica's parameters ``name -> tensor`` (the module's shapes, no replica axis; W_0 or W_k)
and its floating buffers, a batch ``(x, y)``, the target ``density`` and the current masks.
It returns new masks ``name -> bool tensor`` (True = kept) over the same prunable tensors.

Counting and ties (the convention of :func:`stabilitylab.prune.masks.global_magnitude_masks`):

- the *eligible* weights are the survivors of the current ``masks`` (all prunable weights
  when ``masks`` is None); weights the current masks prune stay pruned;
- exactly ``round(density * n_eligible)`` weights are kept (Python's round, half to even),
  pooled over all prunable tensors (global, not per layer). Pass the current level's density
  with ``masks=None`` (or all-True masks) to reach that density over all prunable weights;
- the lowest scores are pruned, ties broken by flat index through a stable sort (of two
  equal scores, the earlier one in ``named_parameters`` order is pruned first).

Scores are computed at the masked point m ⊙ W (pruned weights are zero in the forward pass).
Only the shuffle draws random numbers; the score rules are deterministic functions of their
inputs and accept ``generator`` only so that every rule shares one signature
(:data:`PAI_RULES`). SNIP and GraSP run BatchNorm on the batch's own statistics without
updating any running statistic, with dropout off; SynFlow runs BatchNorm in eval mode.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad

from stabilitylab.core.errors import ConfigError
from stabilitylab.models.common import is_prunable
from stabilitylab.prune.masks import random_masks_like

__all__ = [
    "PAI_RULES",
    "grasp_masks",
    "grasp_scores",
    "kept_count",
    "layerwise_shuffle",
    "magnitude_init_masks",
    "masks_from_scores",
    "prunable_names",
    "snip_masks",
    "snip_scores",
    "synflow_masks",
    "synflow_scores",
]

Masks = dict[str, torch.Tensor]


# -- counting and selection ----------------------------------------------------------------
def kept_count(density: float, n_eligible: int) -> int:
    """``round(density * n_eligible)``, the number of weights a rule keeps."""
    if isinstance(density, bool) or not isinstance(density, (int, float)) \
            or not math.isfinite(density) or not 0.0 <= density <= 1.0:
        raise ConfigError(f"density must be a number in [0, 1], got {density!r}")
    return round(float(density) * int(n_eligible))


def prunable_names(model: nn.Module) -> list[str]:
    """Names of the prunable tensors (conv and linear weights), in ``named_parameters`` order."""
    modules = dict(model.named_modules())
    out = []
    for name, _ in model.named_parameters():
        owner, _, leaf = name.rpartition(".")
        if is_prunable(modules[owner], leaf):
            out.append(name)
    return out


def _current_masks(model: nn.Module | None, params: dict, masks: Masks | None) -> Masks:
    if masks is None:
        if model is None:
            raise ConfigError("masks: give the current masks or the model")
        names = prunable_names(model)
        missing = [n for n in names if n not in params]
        if missing:
            raise ConfigError(f"params: no tensor for prunable {missing[0]!r}")
        return {n: torch.ones(params[n].shape, dtype=torch.bool, device=params[n].device)
                for n in names}
    return check_masks(params, masks)


def check_masks(params: dict, masks: Masks) -> Masks:
    """``masks`` as bool tensors, after checking each names a parameter of the same shape
    (a one-line :class:`~stabilitylab.core.errors.ConfigError` otherwise)."""
    for n, m in masks.items():
        if n not in params:
            raise ConfigError(f"masks: {n!r} is not among the parameters")
        if tuple(m.shape) != tuple(params[n].shape):
            raise ConfigError(f"masks: {n!r} has shape {tuple(m.shape)}, the parameter "
                              f"{tuple(params[n].shape)}")
    return {n: m.bool() for n, m in masks.items()}


def _select(scores: Masks, eligible: Masks, keep: int) -> Masks:
    """Keep the ``keep`` highest-scoring eligible entries (stable ties: lower index pruned)."""
    names = list(eligible)
    flat_ok = torch.cat([eligible[n].flatten().cpu() for n in names])
    flat = torch.cat([scores[n].detach().flatten().double().cpu() for n in names])
    if torch.isnan(flat[flat_ok]).any():
        raise ConfigError("pruning scores contain NaN (a non-finite model output or gradient)")
    n_ok = int(flat_ok.sum())
    if not 0 <= keep <= n_ok:
        raise ConfigError(f"cannot keep {keep} of {n_ok} eligible weights")
    flat = torch.where(flat_ok, flat, torch.full_like(flat, -math.inf))
    order = torch.argsort(flat, stable=True)
    kept = torch.ones(flat.numel(), dtype=torch.bool)
    kept[order[: flat.numel() - keep]] = False
    kept &= flat_ok  # -inf eligible scores tie with ineligible ones; never revive those
    if int(kept.sum()) != keep:  # only if an eligible score is itself -inf
        raise ConfigError("pruning scores contain -inf")
    out, offset = {}, 0
    for n in names:
        size = eligible[n].numel()
        out[n] = kept[offset:offset + size].view(eligible[n].shape).to(eligible[n].device).clone()
        offset += size
    return out


def masks_from_scores(scores: Masks, density: float, masks: Masks | None = None) -> Masks:
    """Global selection: keep the ``round(density * n_eligible)`` highest scores among the
    current survivors (all entries of ``scores`` when ``masks`` is None)."""
    if masks is None:
        masks = {n: torch.ones(s.shape, dtype=torch.bool, device=s.device)
                 for n, s in scores.items()}
    masks = {n: m.bool() for n, m in masks.items()}
    n_ok = sum(int(m.sum()) for m in masks.values())
    return _select(scores, masks, kept_count(density, n_ok))


# -- functional helpers --------------------------------------------------------------------
def _scoring_template(model: nn.Module, *, bn: str) -> nn.Module:
    """A private copy: dropout off; BatchNorm on batch statistics without updates
    (``bn="batch"``) or in eval mode (``bn="eval"``)."""
    template = copy.deepcopy(model).train(False)
    for m in template.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if type(m).__name__ == "BatchNorm2d" and type(m) is not nn.BatchNorm2d:
                m.__class__ = nn.BatchNorm2d  # models.common's float32 cast breaks float64
            if bn == "batch":
                m.train()
                m.running_mean = m.running_var = m.num_batches_tracked = None
    return template


def _masked(params: dict, masks: Masks) -> dict:
    return {n: (p * masks[n].to(p.dtype) if n in masks else p) for n, p in params.items()}


def _buffers_for(template: nn.Module, buffers: dict | None) -> dict:
    names = {n for n, _ in template.named_buffers()}
    return {n: b for n, b in (buffers or {}).items() if n in names}


def _check_batch(batch) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise ConfigError("batch: expected (x, y)")
    x, y = batch
    if x.shape[0] == 0 or x.shape[0] != y.shape[0]:
        raise ConfigError(f"batch: x {tuple(x.shape)} and y {tuple(y.shape)} need the same "
                          "number (>= 1) of examples")
    return x, y


def _loss_fn(template, params, buffers, masks, x, y, temperature: float = 1.0):
    """L(w_prunable): cross-entropy at (m ⊙ w_prunable, other params fixed)."""
    others = {n: p.detach() for n, p in params.items() if n not in masks}

    def loss(pw):
        full = {**others, **{n: pw[n] * masks[n].to(pw[n].dtype) for n in masks}}
        logits = functional_call(template, (full, buffers), (x,))
        return nn.functional.cross_entropy(logits / temperature, y)

    return loss


# -- the rules -----------------------------------------------------------------------------
def magnitude_init_masks(model: nn.Module | None, params: dict, buffers: dict | None,
                         batch=None, density: float = 1.0, masks: Masks | None = None, *,
                         generator: torch.Generator | None = None) -> Masks:
    """Magnitude pruning at initialisation: keep the largest |w_0| globally.

    The baseline of Frankle, Dziugaite, Roy & Carbin 2021, "Pruning Neural Networks at
    Initialization: Why are We Missing the Mark?" (ICLR 2021), one of its
    baselines. ``model``, ``buffers``, ``batch`` and ``generator`` are unused.
    """
    masks = _current_masks(model, params, masks)
    return masks_from_scores({n: params[n].detach().abs() for n in masks}, density, masks)


def snip_scores(model: nn.Module, params: dict, buffers: dict | None, batch,
                masks: Masks | None = None) -> Masks:
    """SNIP connection sensitivity |∂L/∂w ⊙ w| on one batch.

    Lee, Ajanthan & Torr 2019, "SNIP: Single-shot Network Pruning based on Connection
    Sensitivity" (ICLR), Eq. 6: s_j = |g_j(w; D)| / Σ_k |g_k(w; D)| with
    g_j = ∂L(c ⊙ w)/∂c_j at c = 1, i.e. (∂L/∂w_j) · w_j. Returned unnormalised (the
    normaliser does not change the ranking). L is the mean cross-entropy on ``batch``.
    """
    masks = _current_masks(model, params, masks)
    x, y = _check_batch(batch)
    template = _scoring_template(model, bn="batch")
    loss = _loss_fn(template, params, _buffers_for(template, buffers), masks, x, y)
    pw = {n: params[n].detach() for n in masks}
    g = grad(loss)(pw)
    return {n: (g[n] * pw[n] * masks[n].to(pw[n].dtype)).abs() for n in masks}


def snip_masks(model: nn.Module, params: dict, buffers: dict | None, batch, density: float,
               masks: Masks | None = None, *, generator: torch.Generator | None = None) -> Masks:
    """SNIP (Lee et al. 2019, Eq. 6): keep the highest :func:`snip_scores` globally."""
    masks = _current_masks(model, params, masks)
    return masks_from_scores(snip_scores(model, params, buffers, batch, masks), density, masks)


def grasp_scores(model: nn.Module, params: dict, buffers: dict | None, batch,
                 masks: Masks | None = None, *, temperature: float = 1.0) -> Masks:
    """GraSP scores S(−w) = −w ⊙ (H g).

    Wang, Zhang & Grosse 2020, "Picking Winning Tickets Before Training by Preserving
    Gradient Flow" (ICLR), Eq. 8, where g = ∇L and H = ∇²L on ``batch``; GraSP removes the
    *highest* scores. H g is the Hessian-gradient product ∇_w⟨∇L(w), sg(g)⟩ by double
    backward (``torch.func.grad`` of a gradient; Pearlmutter 1994), with g and H over the
    surviving prunable weights. ``temperature`` divides the logits (the authors' released
    code uses 200; 1 is Eq. 8 as written).
    """
    masks = _current_masks(model, params, masks)
    x, y = _check_batch(batch)
    template = _scoring_template(model, bn="batch")
    loss = _loss_fn(template, params, _buffers_for(template, buffers), masks, x, y,
                    float(temperature))
    pw = {n: params[n].detach() for n in masks}
    g = {n: t.detach() for n, t in grad(loss)(pw).items()}

    def g_dot(w):
        gw = grad(loss)(w)
        return sum((gw[n] * g[n]).sum() for n in masks)

    hg = grad(g_dot)(pw)
    return {n: -pw[n] * hg[n] * masks[n].to(pw[n].dtype) for n in masks}


def grasp_masks(model: nn.Module, params: dict, buffers: dict | None, batch, density: float,
                masks: Masks | None = None, *, generator: torch.Generator | None = None,
                temperature: float = 1.0) -> Masks:
    """GraSP (Wang et al. 2020, Eq. 8): remove the highest, keep the lowest
    :func:`grasp_scores` globally."""
    masks = _current_masks(model, params, masks)
    s = grasp_scores(model, params, buffers, batch, masks, temperature=temperature)
    return masks_from_scores({n: -t for n, t in s.items()}, density, masks)


def _synflow_input_shape(batch, input_shape) -> tuple[int, ...]:
    if input_shape is not None:
        return tuple(int(s) for s in input_shape)
    if isinstance(batch, (tuple, list)) and batch:
        return tuple(batch[0].shape[1:])
    if isinstance(batch, torch.Tensor):
        return tuple(batch.shape[1:])
    raise ConfigError("synflow: give input_shape or a batch (only its shape is used)")


def synflow_scores(model: nn.Module, params: dict, buffers: dict | None, masks: Masks | None,
                   input_shape: tuple[int, ...], *, dtype: torch.dtype = torch.float64) -> Masks:
    """SynFlow scores S = ∂R/∂θ ⊙ θ with R = 1ᵀ(∏_l |θ^l|)1, data-free.

    Tanaka, Kunin, Yamins & Ganguli 2020, "Pruning neural networks without any data by
    iteratively conserving synaptic flow" (NeurIPS), Eq. 2 and Alg. 1: every parameter
    (biases and BatchNorm affine parameters too) is replaced by its absolute value, the
    network is applied to an all-ones input of one example, and R is the sum of its
    outputs. BatchNorm runs in eval mode with identity statistics (mean 0, variance 1: the
    statistics of an initialised network, so at W_0 this is the authors' eval-mode
    computation). Computed in ``dtype`` (float64 by default) against overflow of R in deep
    networks. Scores are ≥ 0; pruned weights score 0.
    """
    masks = _current_masks(model, params, masks)
    template = _scoring_template(model, bn="eval")
    names = {n for n, _ in template.named_buffers()}
    bufs = {n: b.detach().to(dtype) for n, b in (buffers or {}).items() if n in names}
    device = next(iter(params.values())).device
    for mod_name, m in template.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            prefix = f"{mod_name}." if mod_name else ""
            bufs[prefix + "running_mean"] = torch.zeros(m.num_features, dtype=dtype, device=device)
            bufs[prefix + "running_var"] = torch.ones(m.num_features, dtype=dtype, device=device)
    absolute = {n: p.detach().to(dtype).abs() for n, p in params.items()}
    others = {n: p for n, p in absolute.items() if n not in masks}
    ones = torch.ones((1, *input_shape), dtype=dtype, device=device)

    def flow(pw):
        full = {**others, **{n: pw[n] * masks[n].to(dtype) for n in masks}}
        return functional_call(template, (full, bufs), (ones,)).sum()

    pw = {n: absolute[n] for n in masks}
    g = grad(flow)(pw)
    return {n: g[n] * pw[n] * masks[n].to(dtype) for n in masks}


def synflow_masks(model: nn.Module, params: dict, buffers: dict | None, batch, density: float,
                  masks: Masks | None = None, *, generator: torch.Generator | None = None,
                  iterations: int = 100, input_shape: tuple[int, ...] | None = None,
                  dtype: torch.dtype = torch.float64) -> Masks:
    """Iterative SynFlow (Tanaka et al. 2020, Alg. 1).

    For i = 1..``iterations`` the scores are recomputed at the current mask and the
    survivors are cut to ``round(density**(i/n) * n_eligible)`` (the exponential
    schedule), so the last iteration keeps exactly ``round(density * n_eligible)``.
    Data-free: of ``batch`` only the example shape is used (or give ``input_shape``).
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ConfigError(f"synflow iterations must be an integer >= 1, got {iterations!r}")
    masks = _current_masks(model, params, masks)
    shape = _synflow_input_shape(batch, input_shape)
    n_ok = sum(int(m.sum()) for m in masks.values())
    kept_count(density, n_ok)  # validates density
    current = masks
    for i in range(1, iterations + 1):
        keep = round(float(density) ** (i / iterations) * n_ok)
        scores = synflow_scores(model, params, buffers, current, shape, dtype=dtype)
        alive = sum(int(m.sum()) for m in current.values())
        current = _select(scores, current, min(keep, alive))
    return current


def layerwise_shuffle(masks: Masks, generator: torch.Generator, *,
                      within: Masks | None = None) -> Masks:
    """The layerwise-shuffle ablation: each tensor's kept positions moved to a uniformly random
    set of the same size within that tensor (per-layer density preserved).

    Frankle, Dziugaite, Roy & Carbin 2021, "Pruning Neural Networks at Initialization: Why
    are We Missing the Mark?" (ICLR 2021), its ablation that randomly
    shuffles the mask within each layer. ``within`` restricts the new positions to a
    tensor's allowed set (e.g. the survivors of an earlier mask, so nothing pruned there is
    revived); by default every position is allowed, and the result is distributed as
    :func:`stabilitylab.prune.masks.random_masks_like`. Seeded by ``generator`` only (CPU draws).
    """
    if within is None:  # every position allowed: exactly the random-pruning control
        return {n: t.to(masks[n].device) for n, t in random_masks_like(masks, generator).items()}
    out = {}
    for n, m in masks.items():
        m = m.bool()
        allowed = within[n].bool().flatten().cpu()
        candidates = torch.nonzero(allowed).flatten()
        kept = int(m.sum())
        if kept > candidates.numel():
            raise ConfigError(f"layerwise shuffle: {n!r} keeps {kept} weights but only "
                              f"{candidates.numel()} positions are allowed")
        order = torch.randperm(candidates.numel(), generator=generator)
        flat = torch.zeros(m.numel(), dtype=torch.bool)
        flat[candidates[order[:kept]]] = True
        out[n] = flat.view(m.shape).to(m.device)
    return out


PAI_RULES: dict[str, Callable[..., Masks]] = {
    "magnitude_init": magnitude_init_masks,
    "snip": snip_masks,
    "grasp": grasp_masks,
    "synflow": synflow_masks,
}
"""Rule name -> ``(model, params, buffers, batch, density, masks=None, *, generator=None)``."""
