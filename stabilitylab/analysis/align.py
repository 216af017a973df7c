"""Permutation alignment by weight matching (Git Re-Basin).

Ainsworth, Hayase & Srinivasa, "Git Re-Basin: Merging Models modulo Permutation
Symmetries", ICLR 2023, §3.2 and Algorithm 1 ("weight matching"): hidden units of a
network can be permuted without changing its function; find per-layer permutations
P_ℓ of model B's units maximising Σ_ℓ ⟨W_ℓ^A, P_ℓ W_ℓ^B P_{ℓ−1}ᵀ⟩ by coordinate
descent: for one P_ℓ at a time (others fixed) the objective is a linear assignment
problem, solved with ``scipy.optimize.linear_sum_assignment``; sweep the layers in
random order until no P_ℓ changes the objective.

Cost per sweep: one n_ℓ×n_ℓ assignment (O(n_ℓ³)) plus O(P·n_ℓ) of matrix products
per hidden layer; typically a handful of sweeps.

Tensors are dicts keyed like ``StackedModel.param_names`` ("0.weight", "conv1.bias",
...). The spec (:mod:`stabilitylab.analysis.permutation_spec`) covers every shipped
architecture (chains and ResNets, one shared permutation per residual stream) and
plugins that declare a spec or whose ``torch.fx`` trace has a permutation rule. A
permutation shared by several layers (a residual stream) is one assignment problem whose
cost sums over every tensor it acts on (Ainsworth et al. 2023, Eq. 3). Masks are tensors
like any other: ``apply_permutation(spec, perm, masks)`` permutes them with the weights.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from stabilitylab.analysis.permutation_spec import (
    AlignmentError,
    PermutationSpec,
    permutation_spec,
)

__all__ = [
    "AlignmentError",
    "PermutationSpec",
    "align_flat",
    "apply_permutation",
    "permutation_spec",
    "weight_matching",
]

# -- permuting -------------------------------------------------------------------------------
def _take(w, idx, axis: int, block: int):
    """Reorder the units along ``axis`` (blocks of ``block`` entries) by ``idx``."""
    n = len(idx)
    shape = tuple(w.shape)
    view = shape[:axis] + (n, block) + shape[axis + 1:]
    if isinstance(w, torch.Tensor):
        t = torch.as_tensor(idx, device=w.device, dtype=torch.long)
        return w.reshape(view).index_select(axis, t).reshape(shape)
    return np.take(np.reshape(w, view), idx, axis=axis).reshape(shape)


def _permute(spec: PermutationSpec, perm: dict, name: str, w, except_axis: int | None = None):
    for axis, p, block in spec.axes.get(name, ()):
        if axis != except_axis:
            w = _take(w, perm[p], axis, block)
    return w


def apply_permutation(spec: PermutationSpec, perm: dict, tensors: dict) -> dict:
    """Permute the hidden units of a network: ``new[unit i] = old[unit perm[p][i]]``.

    Works on numpy arrays or torch tensors (type preserved); names absent from
    ``spec`` (e.g. the first layer's input side, the logits) are returned unchanged.
    The network function is unchanged. Cost O(P).
    """
    return {name: _permute(spec, perm, name, w) for name, w in tensors.items()}


def _np(w) -> np.ndarray:
    if isinstance(w, torch.Tensor):
        w = w.detach().cpu().numpy()
    return np.asarray(w, dtype=np.float64)


def _units(w: np.ndarray, axis: int, n: int) -> np.ndarray:
    return np.moveaxis(w, axis, 0).reshape(n, -1)


def weight_matching(spec: PermutationSpec, params_a: dict, params_b: dict, *,
                    max_iter: int = 100, seed: int = 0, init_perm: dict | None = None) -> dict:
    """Permutations of B's hidden units that best match A (Ainsworth et al. 2023, Alg. 1).

    Parameters
    ----------
    spec : PermutationSpec
        From :func:`permutation_spec`.
    params_a, params_b : dict
        Named tensors (numpy or torch) of the reference model A and of model B.
        Buffers named in ``spec.buffers`` are ignored.
    max_iter : int
        Maximum number of sweeps over all layers.
    seed : int
        Seeds the random layer order of each sweep.
    init_perm : dict, optional
        Starting permutations (default identity). Without it, when Alg. 1 does not end at
        an exact copy of A, :func:`_forward_start` is tried and kept if it is one (B a
        permuted copy of A is then always recovered).

    Returns
    -------
    dict
        Perm name → int64 index array; align B with
        ``apply_permutation(spec, perm, params_b)``.
    """
    names = [n for n in spec.axes if n not in spec.buffers and n in params_a and n in params_b]
    a = {n: _np(params_a[n]) for n in names}
    b = {n: _np(params_b[n]) for n in names}
    touching = {p: [(n, ax, blk) for n in names for ax, q, blk in spec.axes[n] if q == p]
                for p in spec.perm_sizes}
    a_units = {(n, ax): _units(a[n], ax, spec.perm_sizes[p])
               for p, ts in touching.items() for n, ax, _ in ts}
    perm = {p: np.arange(n) for p, n in spec.perm_sizes.items()}
    if init_perm is not None:
        perm.update({p: np.asarray(v, dtype=np.int64) for p, v in init_perm.items()})
    perm = _coordinate_descent(spec, a_units, b, touching, perm, np.random.default_rng(seed),
                               max_iter)
    if init_perm is None and not _exact(spec, a, b, perm):
        # Alg. 1 from the identity can stall short of an exact permutation of A even when B
        # is one; the forward start finds it. Kept only when exact (then it is the optimum),
        # so on pairs that are not permuted copies the result is Alg. 1's alone.
        forward = _forward_start(spec, a_units, b, touching)
        if _exact(spec, a, b, forward):
            perm = forward
    return perm


def _exact(spec, a, b, perm) -> bool:
    """Whether the permuted B equals A (to float rounding) on every matched tensor."""
    return all(np.allclose(_permute(spec, perm, n, b[n]), a[n], rtol=1e-6, atol=1e-9)
               for n in a)


def _cost(spec, a_units, b, touching, perm, p, only=None) -> np.ndarray:
    """The assignment cost of perm ``p`` with every other perm fixed (Alg. 1, line 4)."""
    n = spec.perm_sizes[p]
    cost = np.zeros((n, n))
    for name, axis, _block in touching[p]:
        if only is not None and not only(name, axis):
            continue
        wb = _permute(spec, perm, name, b[name], except_axis=axis)
        cost += a_units[(name, axis)] @ _units(wb, axis, n).T
    return cost


def _coordinate_descent(spec, a_units, b, touching, perm, rng, max_iter) -> dict:
    order = list(spec.perm_sizes)
    for _ in range(max_iter):
        progress = False
        for i in rng.permutation(len(order)):
            p = order[i]
            n = spec.perm_sizes[p]
            cost = _cost(spec, a_units, b, touching, perm, p)
            _, cols = linear_sum_assignment(cost, maximize=True)
            old = cost[np.arange(n), perm[p]].sum()
            new = cost[np.arange(n), cols].sum()
            if new > old + 1e-12 * max(1.0, abs(old)):
                progress = True
                perm[p] = cols.astype(np.int64)
        if not progress:
            break
    return perm


def _forward_start(spec, a_units, b, touching) -> dict:
    """A start for Alg. 1: solve the perms in order of appearance (input to output), each
    from the tensors whose other permuted axes are already solved (the first layer's units
    are fixed by its weights alone, since the input is never permuted). On a permuted copy
    this recovers the planted permutation, where the identity start can stall."""
    perm = {p: np.arange(n) for p, n in spec.perm_sizes.items()}
    solved: set = set()
    for p in spec.perm_sizes:
        def ready(name, axis):
            return all(q in solved for ax, q, _ in spec.axes[name] if ax != axis)

        only = ready if any(ready(n, ax) for n, ax, _ in touching[p]) else None
        cost = _cost(spec, a_units, b, touching, perm, p, only=only)
        perm[p] = linear_sum_assignment(cost, maximize=True)[1].astype(np.int64)
        solved.add(p)
    return perm


def align_flat(model, reference_flat, other_flat, *, spec: PermutationSpec | None = None,
               **matching_kwargs):
    """Align a flat weight vector (``param`` layout) to a reference by weight matching.

    Parameters
    ----------
    model : nn.Module or StackedModel
        The architecture (gives names, shapes and the spec).
    reference_flat, other_flat : (P,) numpy array or torch tensor
    spec : PermutationSpec, optional
        Default ``permutation_spec(model)``.

    Returns
    -------
    aligned : same type as ``other_flat``
        ``other_flat`` with its hidden units permuted to match the reference.
    perm : dict
        The permutations found.
    """
    from stabilitylab.train.functional import StackedModel

    stacked = model if isinstance(model, StackedModel) else StackedModel(model)
    spec = spec or permutation_spec(stacked.template)

    def unflat(v):
        return {s.name: v[s.offset:s.offset + s.size].reshape(s.shape) for s in stacked.param_slots}

    perm = weight_matching(spec, unflat(reference_flat), unflat(other_flat), **matching_kwargs)
    aligned = apply_permutation(spec, perm, unflat(other_flat))
    parts = [aligned[s.name].reshape(-1) for s in stacked.param_slots]
    out = torch.cat(parts) if isinstance(other_flat, torch.Tensor) else np.concatenate(parts)
    return out, perm


def flat_aligner(stacked, what: str = "aligned barrier"):
    """``align(reference_flat, other_flat) -> aligned other_flat``: weight matching for the
    architecture of ``stacked``, or None when it has no permutation spec (the reason is
    logged once as "<what> skipped: ...")."""
    import logging

    try:
        spec = permutation_spec(stacked.template)
    except NotImplementedError as exc:  # AlignmentError, one line
        logging.getLogger(__name__).info("%s skipped: %s", what, exc)
        return None
    return lambda ref, other: align_flat(stacked, ref, other, spec=spec)[0]
