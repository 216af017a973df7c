"""Layer-wise barriers: which layers carry the barrier between two copies (``layerwise``).

Adilova, Andriushchenko, Kamp, Fischer & Jaggi, "Layer-wise Linear Mode Connectivity"
(ICLR 2024), §3: for each replica pair's final weights W_a, W_b and each layer ℓ, the
path that interpolates layer ℓ alone (weight and bias) and holds every other layer at
W_b (:func:`stabilitylab.analysis.layerwise.layerwise_points`); its barrier has the form of
the LMC barrier (Frankle et al., ICML 2020): max_α E_α − mean(E_0, E_1), on test error
and on test loss, with :data:`LAYERWISE_ALPHAS` points. The path's α = 1 end is a hybrid
(W_b with W_a's layer ℓ), not a trained network, so the barrier is at least half the gap
between the hybrid's error and W_b's (:func:`~stabilitylab.analysis.barriers.instability`). Computed for the ``imp`` kind
(controls stay NaN), which keeps ``analyze``'s default cost within budget.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from stabilitylab.analysis.barriers import alpha_grid, instability
from stabilitylab.analysis.layerwise import evaluate_in_chunks, layer_selectors, layerwise_points
from stabilitylab.analysis.registry import Variable, allocate, group

LAYERWISE_ALPHAS = 7  # 0, 1/6, ..., 1 (0.5 included); analyze's time budget, issue #20
LAYERWISE_KINDS = ("imp",)
_DIMS = ("kind", "level", "rewind", "pair", "layer")
_ADILOVA = "Adilova et al., ICLR 2024"


def _work(ctx) -> int:
    return sum(1 for kind, _, _ in ctx.combos() if kind in LAYERWISE_KINDS)


@group("layerwise", reads="function", phase="layer-wise barriers", rank=35, work=_work,
       variables=(
           Variable("layerwise_barrier", _DIMS, "test-error barrier along the path that "
                    "interpolates one layer (weight and bias) between the pair's final weights "
                    f"and holds the others at W_b ({_ADILOVA}; {LAYERWISE_ALPHAS} points; "
                    "`imp` only, NaN for the controls). Its α = 1 end is W_b with W_a's layer, a "
                    "hybrid network: a bad hybrid alone raises the barrier by half its excess "
                    "error", "fraction"),
           Variable("layerwise_loss_barrier", _DIMS, "the same on test loss", "nats"),
           Variable("layerwise_hybrid_error", _DIMS, "test error of that path's α = 1 end: W_b "
                    "with W_a's layer", "fraction"),
       ))
def compute(ctx, results, options, progress=None) -> dict[str, xr.DataArray]:
    """One stacked evaluation per (imp, level, k): every pair × layer × α point."""
    selectors = layer_selectors(ctx.stacked)
    layers = list(selectors)
    err = allocate(ctx, "layerwise_barrier", layer=layers)
    loss = allocate(ctx, "layerwise_loss_barrier", layer=layers)
    hybrid = allocate(ctx, "layerwise_hybrid_error", layer=layers)
    alphas = alpha_grid(LAYERWISE_ALPHAS)
    data = ctx.data
    bn_x = data.train_x[:ctx.cfg.data.train_eval_size] if ctx.stacked.buffer_slots else None
    for kind, level, k in list(ctx.combos()):
        if kind not in LAYERWISE_KINDS:
            continue
        reps = ctx.complete_replicas(kind, level, k)
        finals = torch.from_numpy(ctx.final_weights(kind, level, k)).to(ctx.device)
        pairs = [(p, a, b) for p, (a, b) in enumerate(ctx.pairs)
                 if a in reps and b in reps and torch.isfinite(finals[[a, b]]).all()]
        if pairs:
            # α = 0 is W_b for every layer: evaluated once per pair, then the α > 0 points
            pts = torch.cat([finals[[b for _, _, b in pairs]]]
                            + [layerwise_points(finals[a], finals[b], alphas[1:], selectors[name])
                               for _, a, b in pairs for name in layers])
            res = evaluate_in_chunks(ctx.stacked, pts, data.test_x, data.test_y,
                                     bn_recompute_x=bn_x)
            shape = (len(pairs), len(layers), len(alphas) - 1)

            curves = _paths(res["error"], shape)
            e, lo = instability(curves), instability(_paths(res["loss"], shape))
            at = {"kind": kind, "level": level, "rewind": k}
            for i, (p, _, _) in enumerate(pairs):
                err.loc[{**at, "pair": ctx.pair_labels[p]}] = e[i]
                loss.loc[{**at, "pair": ctx.pair_labels[p]}] = lo[i]
                hybrid.loc[{**at, "pair": ctx.pair_labels[p]}] = curves[i, :, -1]
        if progress is not None:
            progress(1)
    return {"layerwise_barrier": err, "layerwise_loss_barrier": loss,
            "layerwise_hybrid_error": hybrid}


def _paths(values: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """(pair, layer, alpha) paths from one evaluation: the first ``pair`` values are each
    pair's W_b (α = 0 for every layer), the rest each layer's α > 0 points."""
    n, layers = shape[0], shape[1]
    start = np.broadcast_to(values[:n, None, None], (n, layers, 1))
    return np.concatenate([start, values[n:].reshape(shape)], axis=-1)
