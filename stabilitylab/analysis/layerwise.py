"""Layer-wise linear paths between two networks (array layer of the ``layerwise`` group).

Adilova, Andriushchenko, Kamp, Fischer & Jaggi, "Layer-wise Linear Mode Connectivity"
(ICLR 2024), §3: interpolate one layer ℓ (its weight tensor with its bias) between the
two networks and hold every other layer at one endpoint,

    W_α^ℓ = (W_b with layer ℓ replaced by αW_a^ℓ + (1 − α)W_b^ℓ),

then take the barrier along that path, max_α E(W_α^ℓ) − mean(E(W_0^ℓ), E(W_1^ℓ)) (the
same form as the LMC barrier of Frankle et al., ICML 2020). Selecting every layer gives
the ordinary linear path αW_a + (1 − α)W_b, and selecting none gives W_b at every α.

A *layer* is a module that owns parameters (``conv1``: ``conv1.weight`` and
``conv1.bias``; a BatchNorm's affine weight and bias form their own layer).
"""

from __future__ import annotations

import numpy as np
import torch


def layer_selectors(stacked) -> dict[str, np.ndarray]:
    """{layer name: (P,) bool}: the flat positions of each module's parameters, in the
    order of the parameter layout."""
    out: dict[str, np.ndarray] = {}
    for s in stacked.param_slots:
        owner = s.name.rpartition(".")[0] or s.name
        sel = out.setdefault(owner, np.zeros(stacked.num_params, bool))
        sel[s.offset:s.offset + s.size] = True
    return out


def layerwise_points(wa: torch.Tensor, wb: torch.Tensor, alphas, selected) -> torch.Tensor:
    """(A, P): W_b with the ``selected`` (P,) bool positions at αW_a + (1 − α)W_b.

    Adilova et al., ICLR 2024, §3. The selected positions use the same two-term sum as
    :func:`stabilitylab.analysis.interpolate.interpolate_flat`, so selecting every position
    gives that path bit for bit.
    """
    from stabilitylab.analysis.interpolate import interpolate_flat

    path = interpolate_flat(wa, wb, alphas)
    sel = torch.as_tensor(np.asarray(selected, bool), device=wa.device)
    return torch.where(sel[None, :], path, wb[None, :].expand_as(path))
