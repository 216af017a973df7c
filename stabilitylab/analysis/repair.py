"""REPAIR: undo the variance collapse of interpolated networks.

Jordan, Sedghi, Saukh, Entezari & Neyshabur, "REPAIR: REnormalizing Permuted
Activations for Interpolation Repair", ICLR 2023, §4. At a point W_α = α·W_a + (1−α)·W_b
of the linear path, the per-channel statistics of the hidden pre-activations shrink. REPAIR
resets every channel's mean and standard deviation to the interpolation of the endpoints'
statistics, measured on training examples:

    μ_target = α·μ_a + (1−α)·μ_b,    σ_target = α·σ_a + (1−α)·σ_b,
    z ↦ (z − μ_α) / √(σ_α² + ε) · σ_target + μ_target        (per channel, ε = 1e-5)

where (μ_α, σ_α) are the channel's statistics in W_α *after* every earlier layer has been
corrected (the correction is fitted layer by layer, in forward order, in one pass).

Sites (:func:`repair_sites`): the outputs of the normalisation layers (BatchNorm,
LayerNorm, GroupNorm), and of the Linear/Conv layers that no normalisation layer follows;
never the logits. For BatchNorm nets the BN statistics are recomputed at W_α first (as
:func:`~stabilitylab.analysis.interpolate.evaluate_points` does), so REPAIR extends that
recompute with the correction of the BN outputs; for nets without normalisation the
correction is the per-channel affine map above, inserted in the forward pass.

How: :class:`RepairedModel` is a copy of the architecture whose site modules carry two
extra parameters (``repair_scale``, ``repair_shift``) applied by a forward hook, so a
repaired point is one flat vector and is evaluated, batched, by ``evaluate_points``.
Cost: one forward pass of the endpoints and one of the points over the repair examples
(memory ~ ``group`` points × examples × activations).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, vmap

from stabilitylab.train.functional import StackedModel

__all__ = ["EPS", "RepairedModel", "repair_sites"]

EPS = 1e-5  # as BatchNorm's
_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _channel_axis(module: nn.Module) -> int:
    """The channel axis of the module's output: a module may declare ``channel_axis``
    (e.g. the length-major MatmulConv1d); Linear and LayerNorm: last; conv and norm: 1."""
    declared = getattr(module, "channel_axis", None)
    if declared is not None:
        return int(declared)
    return -1 if isinstance(module, (nn.Linear, nn.LayerNorm)) else 1


def _channels(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return module.out_channels
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[-1]
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    return module.num_features


def repair_sites(model: nn.Module) -> list[str]:
    """Qualified names of the modules whose outputs REPAIR corrects (module docstring).

    A Linear/Conv layer followed (in registration order) by a norm layer of the same width
    is not a site: the norm layer is. The last Linear (the logits) is never one.
    """
    leaves = [(n, m) for n, m in model.named_modules() if isinstance(m, _WEIGHTED + _NORMS)]
    last_linear = max((i for i, (_, m) in enumerate(leaves) if isinstance(m, nn.Linear)),
                      default=None)
    sites = []
    for i, (name, m) in enumerate(leaves):
        if i == last_linear:
            continue
        if isinstance(m, _WEIGHTED) and i + 1 < len(leaves) and isinstance(
                leaves[i + 1][1], _NORMS) and _channels(leaves[i + 1][1]) == _channels(m):
            continue
        sites.append(name)
    return sites


def _hook(module, _inputs, out):
    mode = module._repair_mode
    axis = module._repair_axis % out.dim()
    shape = [1] * out.dim()
    shape[axis] = -1
    if mode == "apply":
        return out * module.repair_scale.view(shape) + module.repair_shift.view(shape)
    dims = [d for d in range(out.dim()) if d != axis]
    mean, var = out.mean(dims), out.var(dims, unbiased=False)
    if mode == "measure":
        module._repair_found.append((mean, var.sqrt()))
        return out
    # "fit": repair_scale / repair_shift hold the target std / mean
    scale = module.repair_scale / torch.sqrt(var + EPS)
    shift = module.repair_shift - mean * scale
    module._repair_found.append((scale, shift))
    return out * scale.view(shape) + shift.view(shape)


def _bn_train_only(module: nn.Module) -> None:
    module.eval()
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()


class RepairedModel:
    """The architecture of ``stacked`` with a REPAIR correction at every site.

    Attributes
    ----------
    stacked : StackedModel
        Of the corrected architecture; pass it to ``evaluate_points`` with
        :meth:`points`.
    sites : list of str
    """

    def __init__(self, stacked: StackedModel):
        self.base = stacked
        template = copy.deepcopy(stacked.template)
        modules = dict(template.named_modules())
        self.sites = repair_sites(template)
        if not self.sites:
            from stabilitylab.analysis.permutation_spec import AlignmentError

            raise AlignmentError(f"REPAIR: {type(template).__name__} has no hidden layer to "
                                 "correct")
        for name in self.sites:
            m = modules[name]
            n = _channels(m)
            m.register_parameter("repair_scale", nn.Parameter(torch.ones(n, device="meta")))
            m.register_parameter("repair_shift", nn.Parameter(torch.zeros(n, device="meta")))
            m._repair_mode, m._repair_axis, m._repair_found = "apply", _channel_axis(m), []
            m.register_forward_hook(_hook)
        self.stacked = StackedModel(template)
        base_offsets = {s.name: s for s in stacked.param_slots}
        index = []
        for s in self.stacked.param_slots:
            if s.name.rsplit(".", 1)[-1] in ("repair_scale", "repair_shift"):
                index.append(torch.full((s.size,), -1, dtype=torch.long))
            else:
                b = base_offsets[s.name]
                index.append(torch.arange(b.offset, b.offset + b.size))
        self._index = torch.cat(index)
        self._scale_pos = [self._slot(f"{n}.repair_scale") for n in self.sites]
        self._shift_pos = [self._slot(f"{n}.repair_shift") for n in self.sites]
        self.widths = [p.stop - p.start for p in self._scale_pos]

    def _slot(self, name: str) -> slice:
        s = next(s for s in self.stacked.param_slots if s.name == name)
        return slice(s.offset, s.offset + s.size)

    def points(self, base_points: torch.Tensor, scales: list, shifts: list) -> torch.Tensor:
        """(N, P') flat points of the corrected net: the base weights (N, P) with per-site
        ``scales`` / ``shifts`` ((N, C_site) each)."""
        index = self._index.to(base_points.device)
        out = base_points[:, index.clamp(min=0)].clone()
        for pos, t in zip(self._scale_pos, scales, strict=True):
            out[:, pos] = t
        for pos, t in zip(self._shift_pos, shifts, strict=True):
            out[:, pos] = t
        return out

    def _pass(self, mode: str, points: torch.Tensor, x: torch.Tensor, scales=None,
              shifts=None) -> list:
        """One vmapped forward of the points over ``x``: the per-site pairs the hooks found."""
        template = copy.deepcopy(self.stacked.template)
        _bn_train_only(template)  # BN: batch statistics = the recomputed ones; no dropout
        found: list = []
        modules = dict(template.named_modules())
        for name in self.sites:
            modules[name]._repair_mode, modules[name]._repair_found = mode, found
        n = points.shape[0]
        if scales is None:
            scales = [torch.ones(n, w, dtype=points.dtype, device=points.device)
                      for w in self.widths]
            shifts = [torch.zeros_like(t) for t in scales]
        params = self.stacked.unflatten(self.points(points, scales, shifts))
        buffers = {s.name: torch.full((n, *s.shape), 1.0 if s.name.endswith("running_var")
                                      else 0.0, dtype=points.dtype, device=points.device)
                   for s in self.stacked.buffer_slots}

        def run(p, b):
            found.clear()
            functional_call(template, (p, b), (x,))
            return tuple(t for pair in found for t in pair)

        flat = vmap(run, randomness="different")(params, buffers)
        return [(flat[2 * i], flat[2 * i + 1]) for i in range(len(self.sites))]

    @torch.no_grad()
    def statistics(self, points: torch.Tensor, x: torch.Tensor) -> list:
        """Per-site (mean, std), each (N, C), of the uncorrected networks ``points`` on ``x``
        (BatchNorm with the batch's statistics)."""
        return self._pass("measure", points, x)

    @torch.no_grad()
    def repair(self, points: torch.Tensor, target_mean: list, target_std: list,
               x: torch.Tensor, *, group: int = 8) -> torch.Tensor:
        """Corrected flat points (N, P'): each site's channel statistics on ``x`` set to the
        targets (per site, (N, C)), fitted in forward order, ``group`` points at a time."""
        outs = []
        for start in range(0, points.shape[0], group):
            sl = slice(start, start + group)
            fits = self._pass("fit", points[sl], x, [t[sl] for t in target_std],
                              [t[sl] for t in target_mean])
            outs.append(self.points(points[sl], [s for s, _ in fits], [b for _, b in fits]))
        return torch.cat(outs)

    @torch.no_grad()
    def repaired_path(self, w_a: torch.Tensor, w_b: torch.Tensor, alphas, x: torch.Tensor, *,
                      group: int = 8) -> torch.Tensor:
        """The repaired points α·w_a + (1−α)·w_b of the path (Jordan et al. 2023, §4):
        (A, P') flat vectors of :attr:`stacked`, targets from the endpoints on ``x``."""
        from stabilitylab.analysis.interpolate import interpolate_flat

        ends = self.statistics(torch.stack([w_a, w_b]), x)
        a = torch.as_tensor(list(alphas), dtype=w_a.dtype, device=w_a.device)[:, None]
        mean = [a * m[0] + (1 - a) * m[1] for m, _ in ends]
        std = [a * s[0] + (1 - a) * s[1] for _, s in ends]
        return self.repair(interpolate_flat(w_a, w_b, alphas), mean, std, x, group=group)
