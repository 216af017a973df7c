"""Permutation alignment by activation matching.

Ainsworth, Hayase & Srinivasa, "Git Re-Basin", ICLR 2023, §3.1 (and Entezari, Sedghi,
Saukh & Neyshabur, "The Role of Permutation Invariance in Linear Mode Connectivity of
Neural Networks", ICLR 2022): match the units of model B to those of model A by the
correlation of their activations on the same training examples. For each permutation p
of the spec, the cross-correlation matrix

    C_p[i, j] = corr(z^A_i, z^B_j)     (pooled over examples, positions and sites)

pools every module whose output units p permutes (a residual stream: the stem, every
block output and shortcut of a stage), and P_p = argmax_P ⟨C_p, P⟩ is one
``scipy.optimize.linear_sum_assignment``. Unlike weight matching, the permutations do not
interact, so there is no coordinate descent.

The activations are the outputs of the Linear/Conv and normalisation layers (pre-
activations), with BatchNorm normalising by the batch's statistics (the recomputed ones)
and dropout off. Cost: two forward passes over the examples plus one n_p×n_p assignment
per permutation; memory O(Σ n_p²) for the accumulated moments.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from stabilitylab.analysis.permutation_spec import AlignmentError, PermutationSpec
from stabilitylab.analysis.repair import _bn_train_only, _channel_axis
from stabilitylab.train.functional import StackedModel

__all__ = ["activation_matching", "training_examples"]

_UNIT_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.modules.batchnorm._BatchNorm,
                 nn.LayerNorm, nn.GroupNorm)


def training_examples(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` training examples drawn without replacement by ``seed`` (the study's)."""
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(x.shape[0], generator=g)[:n]
    return x[idx.to(x.device)]


def _unit_sites(template: nn.Module, spec: PermutationSpec) -> dict[str, str]:
    """Module name → the perm acting on its output units."""
    out = {}
    for name, m in template.named_modules():
        if not isinstance(m, _UNIT_MODULES):
            continue
        pre = f"{name}." if name else ""
        for leaf in ("weight", "running_mean", "bias"):
            for axis, p, _ in spec.axes.get(pre + leaf, ()):
                if axis == 0:
                    out[name] = p
            if name in out:
                break
    return out


@torch.no_grad()
def activation_matching(stacked: StackedModel, spec: PermutationSpec, w_a: torch.Tensor,
                        w_b: torch.Tensor, x: torch.Tensor, *, batch_size: int = 250) -> dict:
    """Permutations of B's units that best match A's by activation correlation.

    Parameters
    ----------
    stacked : StackedModel
        The architecture.
    spec : PermutationSpec
        Of that architecture.
    w_a, w_b : torch.Tensor
        (P,) flat weights of A and B.
    x : torch.Tensor
        Training examples (e.g. :func:`training_examples`).

    Returns
    -------
    dict
        Perm name → int64 index array, as :func:`stabilitylab.analysis.align.weight_matching`
        returns (apply with ``apply_permutation``).
    """
    sites = _unit_sites(stacked.template, spec)
    missing = sorted(set(spec.perm_sizes) - set(sites.values()))
    if missing:
        raise AlignmentError(f"activation matching: no Linear/Conv/norm output carries the "
                             f"units of {missing[0]}")
    models = []
    for w in (w_a, w_b):
        m = stacked.module_at(stacked.unflatten(w[None]), {}, 0, device=w.device)
        _bn_train_only(m)
        models.append(m)
    moments = {p: [0.0, 0.0, 0.0, 0.0, 0.0, 0] for p in spec.perm_sizes}  # Σa Σb Σa² Σb² Σab n
    found: list[dict] = [{}, {}]
    handles = []
    for which, m in enumerate(models):
        mods = dict(m.named_modules())
        for name in sites:
            def keep(mod, _i, out, name=name, which=which):
                z = torch.movedim(out, _channel_axis(mod) % out.dim(), -1)
                found[which][name] = z.reshape(-1, z.shape[-1]).double()
            handles.append(mods[name].register_forward_hook(keep))
    try:
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size]
            for which, m in enumerate(models):
                m(xb)
            for name, p in sites.items():
                za, zb = found[0][name], found[1][name]
                acc = moments[p]
                acc[0] = acc[0] + za.sum(0)
                acc[1] = acc[1] + zb.sum(0)
                acc[2] = acc[2] + (za * za).sum(0)
                acc[3] = acc[3] + (zb * zb).sum(0)
                acc[4] = acc[4] + za.T @ zb
                acc[5] += za.shape[0]
    finally:
        for h in handles:
            h.remove()
    perm = {}
    for p, (sa, sb, saa, sbb, sab, n) in moments.items():
        # Summing the per-site correlations = correlating the stacked sites' activations
        # after each site is standardised; with the sums pooled, the pooled correlation.
        ma, mb = sa / n, sb / n
        cov = sab / n - torch.outer(ma, mb)
        std_a = torch.sqrt(torch.clamp(saa / n - ma * ma, min=0)) + 1e-12
        std_b = torch.sqrt(torch.clamp(sbb / n - mb * mb, min=0)) + 1e-12
        corr = (cov / torch.outer(std_a, std_b)).cpu().numpy()
        perm[p] = linear_sum_assignment(np.nan_to_num(corr), maximize=True)[1].astype(np.int64)
    return perm
