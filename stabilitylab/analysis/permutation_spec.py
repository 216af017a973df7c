"""Permutation specs: which tensor axes each hidden-unit permutation acts on.

Ainsworth, Hayase & Srinivasa, "Git Re-Basin: Merging Models modulo Permutation
Symmetries", ICLR 2023, §2 and Appendix A: the hidden units (channels) of a network can
be permuted without changing its function, provided every tensor that reads or writes
those units is permuted alike. For a chain (MLP, LeNet, conv1d, VGG) every hidden layer
has its own permutation. A residual connection ``y = f(x) + x`` forces f's output units
and x's units into one permutation, so a ResNet has one permutation per residual stream
(a stage: the stem, every block output and the 1×1 shortcut convolutions of that stage),
plus one per block interior — Ainsworth et al.'s ResNet spec.

:func:`permutation_spec` takes the spec a model declares (a ``permutation_spec()``
method returning a :class:`PermutationSpec` or a dict of its fields, as
:class:`stabilitylab.models.resnet.CifarResNet` does), or derives it from a
``torch.fx`` trace: every Linear/Conv output opens a unit space; norm layers
(BatchNorm, LayerNorm over the unit axis, GroupNorm with 1 or C groups), elementwise
functions, pooling, dropout and layout ops keep it; an addition (or product) of two
activations merges their spaces (union-find); flatten turns a space into blocks of
features. Spaces that reach the input or the logits are never permuted. Anything else
raises :class:`AlignmentError`, one line naming the module or operation.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

from torch import nn

from stabilitylab.core.errors import StabilityLabError

__all__ = ["AlignmentError", "PermutationSpec", "derive_spec", "permutation_spec"]


class AlignmentError(StabilityLabError, NotImplementedError):
    """An architecture whose permutation spec cannot be declared or derived, or two models
    that cannot be aligned (one line)."""


@dataclass(frozen=True)
class PermutationSpec:
    """Which axes of which tensors each hidden-unit permutation acts on.

    Attributes
    ----------
    perm_sizes : dict
        Permutation name → number of units.
    axes : dict
        Tensor name → tuple of (axis, perm name, block). ``block`` > 1 means the axis holds
        ``n·block`` entries in contiguous blocks of ``block`` per unit (a Linear after a
        flatten of conv channels).
    buffers : frozenset
        Tensor names that are buffers (BN running stats): permuted by ``apply_permutation``,
        never used in the matching objective.
    """

    perm_sizes: dict
    axes: dict
    buffers: frozenset = frozenset()

    def canonical(self) -> frozenset:
        """The spec with perm names replaced by their member tensors (compare two specs)."""
        members = {p: tuple(sorted((n, ax) for n, axs in self.axes.items()
                                   for ax, q, _ in axs if q == p)) for p in self.perm_sizes}
        return frozenset((n, tuple((ax, members[p], blk) for ax, p, blk in axs))
                         for n, axs in self.axes.items())


_WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_PASS_THROUGH = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.ELU, nn.SiLU,
                 nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.MaxPool1d, nn.MaxPool2d,
                 nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
_ELEMENTWISE = {"relu", "relu_", "leaky_relu", "tanh", "sigmoid", "gelu", "elu", "silu",
                "dropout", "dropout1d", "dropout2d", "contiguous", "max_pool1d", "max_pool2d",
                "avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
                "transpose", "permute", "float", "to", "type_as", "clone", "neg",
                "softmax", "log_softmax", "log", "exp", "abs"}
_SHAPE = {"getattr", "size", "dim"}
_REDUCE = {"mean", "sum", "amax", "amin"}
_MERGE = {"add", "iadd", "sub", "mul", "__add__", "__iadd__", "__sub__", "__mul__", "add_"}
_MERGE_FNS = {operator.add, operator.iadd, operator.sub, operator.mul}


def permutation_spec(model: nn.Module) -> PermutationSpec:
    """The model's declared spec (its ``permutation_spec()`` method), else :func:`derive_spec`.

    Raises
    ------
    AlignmentError
        One line naming the module or operation that breaks the derivation.
    """
    declared = getattr(model, "permutation_spec", None)
    if callable(declared):
        spec = declared()
        if isinstance(spec, dict):
            spec = PermutationSpec(dict(spec["perm_sizes"]), dict(spec["axes"]),
                                   frozenset(spec.get("buffers", ())))
        if not isinstance(spec, PermutationSpec):
            raise AlignmentError(f"{type(model).__name__}.permutation_spec() returned a "
                                 f"{type(spec).__name__}, not a PermutationSpec or dict")
        return spec
    return derive_spec(model)


def _trace(model: nn.Module):
    from torch import fx

    class _Tracer(fx.Tracer):
        # Subclasses of Linear/Conv/norm layers (e.g. MatmulConv1d) are layers, not code.
        def is_leaf_module(self, m, qualname):
            return isinstance(m, _WEIGHT_LAYERS + _BN + (nn.LayerNorm, nn.GroupNorm)) \
                or super().is_leaf_module(m, qualname)

    try:
        return _Tracer().trace(model)
    except Exception as err:  # noqa: BLE001 - any tracing failure means "cannot derive"
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise AlignmentError(f"permutation spec: {type(model).__name__} cannot be traced by "
                             f"torch.fx ({first[:120]}); declare a permutation_spec() method"
                             ) from None


class _Spaces:
    """Union-find over unit spaces; space 0 is the fixed space (input and logits)."""

    def __init__(self):
        self.parent, self.size = [0], [0]

    def new(self, n: int) -> int:
        self.parent.append(len(self.parent))
        self.size.append(n)
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[max(a, b)] = min(a, b)  # the fixed space 0 always wins


def _fail(where: str, why: str) -> AlignmentError:
    return AlignmentError(f"permutation spec: {where}: {why}; declare a permutation_spec() "
                          "method on the model")


def _name(node) -> str:
    if node.op == "call_method":
        return node.target
    return getattr(node.target, "__name__", str(node.target))


def _is_flatten(node) -> bool:
    name, args = _name(node), list(node.args[1:])
    if name == "flatten":
        start = node.kwargs.get("start_dim", args[0] if args else 0)
        return start == 1 and node.kwargs.get("end_dim", args[1] if len(args) > 1 else -1) == -1
    if name in ("reshape", "view"):
        shape = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
        return len(shape) == 2 and shape[1] == -1
    return False


def derive_spec(model: nn.Module) -> PermutationSpec:
    """Derive the spec from a ``torch.fx`` trace of ``model`` (module docstring)."""
    graph = _trace(model)
    modules = dict(model.named_modules())
    spaces = _Spaces()
    act: dict = {}  # fx node -> (space, flattened, units)
    raw: list = []  # (tensor name, axis, space, block, is_buffer)
    for node in graph.nodes:
        if node.op == "placeholder":
            act[node] = (0, False, None)
            continue
        if node.op == "output":
            for a in node.all_input_nodes:
                if a in act:
                    spaces.union(act[a][0], 0)
            continue
        ins = [a for a in node.all_input_nodes if a in act]
        name = _name(node)
        if not ins or (node.op != "call_module" and name in _SHAPE):
            continue
        if node.op == "get_attr":
            raise _fail(repr(node.target), "the forward reads a parameter directly")
        if node.op == "call_module":
            m = modules[node.target]
            act[node] = _module(node.target, m, act[ins[0]], spaces, raw)
            continue
        if len(ins) > 1:
            if name not in _MERGE and node.target not in _MERGE_FNS:
                raise _fail(f"operation {name!r} ({node.name})", "combines activations in a way "
                            "that has no permutation rule (e.g. concatenation)")
            first = act[ins[0]]
            for other in ins[1:]:
                if act[other][1] != first[1]:
                    raise _fail(node.name, "adds a flattened and an unflattened activation")
                spaces.union(first[0], act[other][0])
            act[node] = first
        elif name in _ELEMENTWISE or node.target in _MERGE_FNS or name in _MERGE:
            act[node] = act[ins[0]]
        elif _is_flatten(node):
            space, _, units = act[ins[0]]
            act[node] = (space, True, units)
        elif name in _REDUCE:
            dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
            dims = (dims,) if isinstance(dims, int) else dims
            if not isinstance(dims, (tuple, list)) or (1 in dims and act[ins[0]][0] != 0):
                raise _fail(f"{name!r} ({node.name})", "reduces over the unit axis (global "
                            "pooling must name the spatial dims)")
            act[node] = act[ins[0]]
        else:
            raise _fail(f"operation {name!r} ({node.name})", "has no permutation rule")
    return _build(spaces, raw)


def _module(qual: str, m: nn.Module, inp, spaces: _Spaces, raw: list):
    """The activation a leaf module makes from ``inp``; records its tensors' axes."""
    space, flat, units = inp
    pre = f"{qual}." if qual else ""
    if isinstance(m, _WEIGHT_LAYERS):
        if getattr(m, "groups", 1) != 1:
            raise _fail(f"module {qual!r} ({type(m).__name__})", "grouped convolution")
        if flat and not isinstance(m, nn.Linear):
            raise _fail(f"module {qual!r} ({type(m).__name__})", "convolution after a flatten")
        n_in = m.in_features if isinstance(m, nn.Linear) else m.in_channels
        n_out = m.out_features if isinstance(m, nn.Linear) else m.out_channels
        if space != 0:
            if n_in % units:
                raise _fail(f"module {qual!r}", f"{n_in} inputs are not blocks of the "
                            f"{units} preceding units")
            raw.append((pre + "weight", 1, space, n_in // units, False))
        out = spaces.new(n_out)
        raw.append((pre + "weight", 0, out, 1, False))
        if m.bias is not None:
            raw.append((pre + "bias", 0, out, 1, False))
        return out, False, n_out
    if isinstance(m, (_BN, nn.LayerNorm, nn.GroupNorm)):
        if flat:
            raise _fail(f"module {qual!r} ({type(m).__name__})", "normalises flattened features")
        if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) != 1:
            raise _fail(f"module {qual!r} (LayerNorm)", "normalises over more than the unit axis")
        if isinstance(m, nn.GroupNorm) and m.num_groups not in (1, m.num_channels):
            raise _fail(f"module {qual!r} (GroupNorm)", f"{m.num_groups} groups tie units "
                        "into groups (only 1 or one per channel have a permutation rule)")
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            if getattr(m, leaf, None) is not None:
                raw.append((pre + leaf, 0, space, 1, leaf.startswith("running")))
        return inp
    if isinstance(m, nn.Flatten):
        if m.start_dim != 1 or m.end_dim != -1:
            raise _fail(f"module {qual!r} (Flatten)", "only Flatten(start_dim=1) is supported")
        return space, True, units
    if isinstance(m, _PASS_THROUGH):
        return inp
    raise _fail(f"module {qual!r} ({type(m).__name__})", "has no permutation rule (supported: "
                "Linear, Conv1d/2d, BatchNorm, LayerNorm, GroupNorm, pooling, dropout, "
                "elementwise activations, flatten, residual additions)")


def _build(spaces: _Spaces, raw: list) -> PermutationSpec:
    names: dict[int, str] = {}
    sizes, axes, buffers = {}, {}, set()
    for tensor, axis, space, block, is_buffer in raw:
        root = spaces.find(space)
        if root == 0:
            continue
        if root not in names:
            names[root] = f"P_{len(names)}"
            sizes[names[root]] = spaces.size[root]
        axes.setdefault(tensor, [])
        if not any(a == axis for a, _, _ in axes[tensor]):
            axes[tensor].append((axis, names[root], block))
        if is_buffer:
            buffers.add(tensor)
    if not sizes:
        raise AlignmentError("permutation spec: the model has no hidden units to permute")
    return PermutationSpec(sizes, {n: tuple(sorted(a)) for n, a in axes.items()},
                           frozenset(buffers))
