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
...). Supported: any model whose forward (traced with ``torch.fx``) is one chain of
Linear / Conv1d / Conv2d (groups=1), BatchNorm, elementwise activations, pooling,
dropout and flatten — ``nn.Sequential`` models and the registry's ``mlp`` /
``lenet_300_100`` / ``conv1d`` / VGG-style nets. The units of a conv layer are its
output channels; after a flatten the next Linear's input features are channel-major
blocks of (spatial size) features. Residual nets raise ``NotImplementedError``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

__all__ = [
    "PermutationSpec",
    "align_flat",
    "apply_permutation",
    "permutation_spec",
    "weight_matching",
]

_WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_PASS_THROUGH = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.ELU, nn.SiLU,
                 nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.MaxPool1d, nn.MaxPool2d,
                 nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)


@dataclass(frozen=True)
class PermutationSpec:
    """Which axes of which tensors each hidden-unit permutation acts on.

    Attributes
    ----------
    perm_sizes : dict
        Permutation name ("P_0", "P_1", ...) → number of units.
    axes : dict
        Tensor name → tuple of (axis, perm name, block). ``block`` > 1 means the
        axis holds ``n·block`` entries in contiguous blocks of ``block`` per unit
        (a Linear after a Flatten of conv channels).
    buffers : frozenset
        Tensor names that are buffers (BN running stats): permuted by
        :func:`apply_permutation`, never used in the matching objective.
    """

    perm_sizes: dict
    axes: dict
    buffers: frozenset = frozenset()


_ELEMENTWISE_FNS = {"relu", "relu_", "leaky_relu", "tanh", "sigmoid", "gelu", "elu", "silu",
                    "dropout", "dropout1d", "dropout2d", "contiguous", "max_pool1d", "max_pool2d",
                    "avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d", "adaptive_avg_pool2d"}
_SHAPE_FNS = {"getattr", "size", "dim"}
# Layout-only ops: they move the channel axis (e.g. length-major conv activations, see
# stabilitylab.models.conv1d) but never mix units, so they do not affect the permutation.
_LAYOUT_FNS = {"transpose", "permute", "contiguous"}
_REDUCE_FNS = {"mean", "sum", "amax", "amin"}  # allowed over spatial dims (global pooling)


def _unsupported(what: str) -> NotImplementedError:
    return NotImplementedError(
        f"permutation_spec: {what}. Supported: a single chain of Linear/Conv1d/Conv2d layers with "
        "BatchNorm, elementwise activations, pooling, dropout and flatten/reshape(B, -1) between "
        "them; residual or branching architectures (e.g. ResNets) tie permutations across "
        "layers and need a hand-written PermutationSpec")


def _is_flatten(node) -> bool:
    """x.flatten(1) / torch.flatten(x, 1) / x.reshape(B, -1) / x.view(B, -1)."""
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    args = list(node.args[1:])
    if name == "flatten":
        start = node.kwargs.get("start_dim", args[0] if args else 0)
        end = node.kwargs.get("end_dim", args[1] if len(args) > 1 else -1)
        return start == 1 and end == -1
    if name in ("reshape", "view"):
        shape = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
        return len(shape) == 2 and shape[1] == -1
    return False


def _chain(model: nn.Module):
    """(name, op) along the model's single activation path, traced with torch.fx.

    ``op`` is a leaf module, or "flatten" / "elementwise" / ("reduce", dims) for
    functional calls.
    """
    from torch import fx

    class _Tracer(fx.Tracer):
        # Subclasses of Linear/Conv/BN (e.g. MatmulConv1d) are layers, not code to trace.
        def is_leaf_module(self, m, qualname):
            return isinstance(m, _WEIGHT_LAYERS + _BN) or super().is_leaf_module(m, qualname)

    try:
        graph = _Tracer().trace(model)
    except Exception as err:  # any tracing failure means "not supported"
        raise _unsupported(f"{type(model).__name__} cannot be traced by torch.fx ({err})") from err
    modules = dict(model.named_modules())
    acts, current, seen = set(), None, set()
    for node in graph.nodes:
        if node.op == "placeholder":
            if current is not None:
                raise _unsupported("the model takes more than one input")
            acts.add(node)
            current = node
            continue
        if node.op == "get_attr":
            raise _unsupported(f"direct parameter access {node.target!r} in forward")
        if node.op == "output":
            continue
        ins = [a for a in node.all_input_nodes if a in acts]
        name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
        if not ins or (node.op != "call_module" and name in _SHAPE_FNS):
            continue  # shape queries and constants carry no activations
        if len(ins) > 1 or ins[0] is not current:
            raise _unsupported(f"{node.name!r} combines or branches activations (residual/concat)")
        acts.add(node)
        current = node
        if node.op == "call_module":
            if node.target in seen:
                raise _unsupported(f"module {node.target!r} is applied twice")
            seen.add(node.target)
            yield node.target, modules[node.target]
        elif name in _ELEMENTWISE_FNS or name in _LAYOUT_FNS:
            yield node.name, "elementwise"
        elif _is_flatten(node):
            yield node.name, "flatten"
        elif name in _REDUCE_FNS:
            dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
            if not isinstance(dims, (int, tuple, list)):
                raise _unsupported(f"{name!r} ({node.name!r}) over all dims")
            yield node.name, ("reduce", (dims,) if isinstance(dims, int) else tuple(dims))
        else:
            raise _unsupported(f"operation {name or node.target!r} ({node.name!r}) is not supported")


def permutation_spec(model: nn.Module) -> PermutationSpec:
    """Derive the :class:`PermutationSpec` of a chain-structured Linear/Conv network.

    The forward pass is traced with ``torch.fx``, so both ``nn.Sequential`` models and
    plain modules whose forward is one chain (e.g. ``conv -> relu -> ... ->
    x.reshape(B, -1) -> fc``, written with functional ReLU) are accepted. Every
    weight layer except the last gets one permutation of its outputs (units /
    channels), which also acts on its bias, on the following BatchNorm's parameters
    and running stats, and on the next weight layer's input axis. Inputs and logits
    are never permuted.

    Raises
    ------
    NotImplementedError
        For residual/branching models (e.g. ResNets), untraceable forwards, unknown
        operations, grouped convolutions, or a conv after a flatten.
    """
    leaves = list(_chain(model))
    weight_names = [n for n, m in leaves if isinstance(m, _WEIGHT_LAYERS)]
    if not weight_names:
        raise NotImplementedError("permutation_spec: the model has no Linear/Conv layers")
    prefix = (lambda n: f"{n}." if n else "")
    sizes, axes, buffers = {}, {}, set()
    cur, channels, flattened, spatial = None, None, False, 0
    for name, m in leaves:
        pre = prefix(name)
        if isinstance(m, _WEIGHT_LAYERS):
            if getattr(m, "groups", 1) != 1:
                raise NotImplementedError(f"permutation_spec: grouped conv {name!r} is not supported")
            if flattened and not isinstance(m, nn.Linear):
                raise NotImplementedError(f"permutation_spec: conv {name!r} after a Flatten")
            n_in = m.in_features if isinstance(m, nn.Linear) else m.in_channels
            n_out = m.out_features if isinstance(m, nn.Linear) else m.out_channels
            w_axes = []
            if cur is not None:
                if n_in % channels:
                    raise NotImplementedError(f"permutation_spec: {name!r} has {n_in} inputs, "
                                              f"not a multiple of the {channels} preceding units")
                w_axes.append((1, cur, n_in // channels))
            out = None if name == weight_names[-1] else f"P_{len(sizes)}"
            if out is not None:
                sizes[out] = n_out
                w_axes.insert(0, (0, out, 1))
                if m.bias is not None:
                    axes[pre + "bias"] = ((0, out, 1),)
            axes[pre + "weight"] = tuple(w_axes)
            cur, channels, flattened = out, n_out, False
            spatial = {nn.Conv1d: 1, nn.Conv2d: 2}.get(type(m), 0)
        elif isinstance(m, _BN):
            if cur is not None:
                for leaf in ("weight", "bias"):
                    if getattr(m, leaf) is not None:
                        axes[pre + leaf] = ((0, cur, 1),)
                for leaf in ("running_mean", "running_var"):
                    if getattr(m, leaf) is not None:
                        axes[pre + leaf] = ((0, cur, 1),)
                        buffers.add(pre + leaf)
        elif isinstance(m, nn.Flatten) or m == "flatten":
            if isinstance(m, nn.Flatten) and (m.start_dim != 1 or m.end_dim != -1):
                raise NotImplementedError("permutation_spec: only Flatten(start_dim=1) is supported")
            flattened, spatial = True, 0
        elif isinstance(m, tuple):  # ("reduce", dims): global pooling over spatial dims only
            dims = [d + 2 + spatial if d < 0 else d for d in m[1]]
            if cur is not None and not all(2 <= d < 2 + spatial for d in dims):
                raise _unsupported(f"reduction {name!r} over dims {m[1]} touches units")
            spatial -= len(set(dims))
        elif not (m == "elementwise" or isinstance(m, _PASS_THROUGH)):
            raise NotImplementedError(
                f"permutation_spec: layer {name!r} ({type(m).__name__}) is not supported; "
                "supported: Linear, Conv1d, Conv2d, BatchNorm1d/2d, Flatten, Dropout, pooling, "
                "elementwise activations")
    return PermutationSpec(sizes, {k: v for k, v in axes.items() if v}, frozenset(buffers))


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
        Starting permutations (default identity).

    Returns
    -------
    dict
        Perm name → int64 index array; align B with
        ``apply_permutation(spec, perm, params_b)``.
    """
    names = [n for n in spec.axes if n not in spec.buffers and n in params_a and n in params_b]
    a = {n: _np(params_a[n]) for n in names}
    b = {n: _np(params_b[n]) for n in names}
    perm = {p: np.arange(n) for p, n in spec.perm_sizes.items()}
    if init_perm is not None:
        perm.update({p: np.asarray(v, dtype=np.int64) for p, v in init_perm.items()})
    touching = {p: [(n, ax, blk) for n in names for ax, q, blk in spec.axes[n] if q == p]
                for p in spec.perm_sizes}
    rng = np.random.default_rng(seed)
    order = list(spec.perm_sizes)
    for _ in range(max_iter):
        progress = False
        for i in rng.permutation(len(order)):
            p = order[i]
            n = spec.perm_sizes[p]
            cost = np.zeros((n, n))
            for name, axis, _block in touching[p]:
                wb = _permute(spec, perm, name, b[name], except_axis=axis)
                cost += _units(a[name], axis, n) @ _units(wb, axis, n).T
            _, cols = linear_sum_assignment(cost, maximize=True)
            old = cost[np.arange(n), perm[p]].sum()
            new = cost[np.arange(n), cols].sum()
            if new > old + 1e-12 * max(1.0, abs(old)):
                progress = True
                perm[p] = cols.astype(np.int64)
        if not progress:
            break
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
