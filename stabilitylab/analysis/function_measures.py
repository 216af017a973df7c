"""Measures that need forward (or backward) passes through the recorded networks.

- interpolation curves and barriers between replica pairs (Frankle et al., LMC,
  ICML 2020; above-the-line form of Entezari et al. 2022, Eq. 1, on test error and
  on test loss), on test and train subset;
- the same barrier after weight matching (Ainsworth et al., Git Re-Basin, 2023);
- prediction disagreement between replicas;
- split-R̂ of per-example test losses over the last recorded steps;
- gradient noise scale at the rewind point (McCandlish et al. 2018).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr

from stabilitylab.analysis.barriers import above_line_barrier, alpha_grid, instability
from stabilitylab.analysis.interpolate import evaluate_interpolation
from stabilitylab.analysis.measures import (
    disagreement,
    gradient_noise_scale,
    minibatch_gradients,
    split_rhat,
)
from stabilitylab.train.seeds import derive_seed

log = logging.getLogger(__name__)

RHAT_STEPS = 10  # last recorded steps used as draws for split-R-hat
GNS_BATCHES = 8  # K minibatch gradients for the noise scale


def _nan(ctx, dims, extra=None):
    coords = {"kind": ctx.kinds, "level": ctx.levels, "rewind": ctx.rewinds,
              "pair": ctx.pair_labels, **(extra or {})}
    return xr.DataArray(np.full(tuple(len(coords[d]) for d in dims), np.nan), dims=dims,
                        coords={d: coords[d] for d in dims})


def _aligner(ctx):
    """Weight matching for this architecture, or None (with the reason logged)."""
    from stabilitylab.analysis.align import align_flat, permutation_spec

    try:
        spec = permutation_spec(ctx.stacked.template)
    except NotImplementedError as exc:
        log.info("aligned barrier skipped: %s", exc)
        return None
    return lambda ref, other: align_flat(ctx.stacked, ref, other, spec=spec)[0]


def interpolation_measures(ctx, *, n_alphas: int = 30, aligned: bool = True,
                           progress=None) -> dict[str, xr.DataArray]:
    """Interpolation curves and every barrier form, for each pair of complete replicas."""
    alphas = alpha_grid(n_alphas)
    dims = ("kind", "level", "rewind", "pair", "alpha")
    out = {name: _nan(ctx, dims, {"alpha": alphas}) for name in (
        "interp_test_error", "interp_test_loss", "interp_train_error", "interp_train_loss",
        "aligned_test_error")}
    data = ctx.data
    n_train = ctx.cfg.data.train_eval_size
    splits = {"test": (data.test_x, data.test_y),
              "train": (data.train_x[:n_train], data.train_y[:n_train])}
    bn_x = data.train_x[:n_train] if ctx.stacked.buffer_slots else None
    align = _aligner(ctx) if aligned else None
    for kind, level, k in list(ctx.combos()):
        reps = ctx.complete_replicas(kind, level, k)
        final_np = ctx.final_weights(kind, level, k)
        bad = [r for r in reps if not np.isfinite(final_np[r]).all()]
        for r in bad:  # damaged or hostile content: NaN measures for its pairs, one line
            log.warning("run (%s, %s, %s, %s) has non-finite final weights: its interpolation "
                        "and aligned measures are NaN", kind, level, k, ctx.replicas[r])
        reps = [r for r in reps if r not in bad]
        finals = torch.from_numpy(final_np).to(ctx.device)
        for p, (a, b) in enumerate(ctx.pairs):
            if a not in reps or b not in reps:
                continue
            at = {"kind": kind, "level": level, "rewind": k, "pair": ctx.pair_labels[p]}
            for split, (x, y) in splits.items():
                res = evaluate_interpolation(ctx.stacked, finals[a], finals[b], alphas, x, y,
                                             bn_recompute_x=bn_x)
                out[f"interp_{split}_error"].loc[at] = res["error"]
                out[f"interp_{split}_loss"].loc[at] = res["loss"]
            if align is not None:
                other = align(finals[a].cpu().numpy(), finals[b].cpu().numpy())
                res = evaluate_interpolation(ctx.stacked, finals[a],
                                             torch.as_tensor(other, device=ctx.device), alphas,
                                             *splits["test"], bn_recompute_x=bn_x)
                out["aligned_test_error"].loc[at] = res["error"]
        if progress is not None:
            progress(1)
    # The curve runs from W_b (alpha = 0) to W_a (alpha = 1); barriers reduce over alpha.
    barriers = {
        "instability": instability(out["interp_test_error"].values),
        "instability_train": instability(out["interp_train_error"].values),
        "loss_barrier": instability(out["interp_test_loss"].values),
        "above_line_barrier": _above_line(out["interp_test_error"].values, alphas),
        "above_line_loss_barrier": _above_line(out["interp_test_loss"].values, alphas),
        "aligned_instability": instability(out["aligned_test_error"].values),
    }
    coords = out["interp_test_error"].isel(alpha=0, drop=True).coords
    for name, values in barriers.items():
        out[name] = xr.DataArray(values, dims=dims[:-1], coords=coords)
    if align is None:
        out["aligned_instability"].attrs["note"] = "weight matching not supported for this model"
    return out


def _above_line(curves: np.ndarray, alphas) -> np.ndarray:
    finite = np.isfinite(curves).all(-1)
    result = np.full(curves.shape[:-1], np.nan)
    if finite.any():
        result[finite] = above_line_barrier(curves[finite], alphas)
    return result


@torch.no_grad()
def _test_logits_and_losses(ctx, flat: torch.Tensor, buffers: torch.Tensor | None):
    params = ctx.stacked.unflatten(flat)
    bufs = ctx.stacked.unflatten_buffers(buffers) if buffers is not None and buffers.numel() else {}
    x, y = ctx.data.test_x, ctx.data.test_y
    logits = torch.cat([ctx.stacked.forward(params, bufs, x[i:i + 1000], train=False,
                                            shared_input=True) for i in range(0, len(x), 1000)], 1)
    losses = F.cross_entropy(logits.flatten(0, 1), y.repeat(flat.shape[0]),
                             reduction="none").view(flat.shape[0], -1)
    return logits.float().cpu().numpy(), losses.float().cpu().numpy()


def replica_measures(ctx, progress=None) -> dict[str, xr.DataArray]:
    """Disagreement between pairs at T and split-R̂ of per-example test losses."""
    out = {"disagreement": _nan(ctx, ("kind", "level", "rewind", "pair")),
           "rhat": _nan(ctx, ("kind", "level", "rewind"))}
    has_bn = bool(ctx.stacked.buffer_slots)
    for kind, level, k in list(ctx.combos()):
        reps = ctx.complete_replicas(kind, level, k)
        at = {"kind": kind, "level": level, "rewind": k}
        finals = torch.from_numpy(ctx.final_weights(kind, level, k)).to(ctx.device)
        buffers = torch.from_numpy(ctx.final_buffers(kind, level, k)).to(ctx.device) if has_bn else None
        logits, _ = _test_logits_and_losses(ctx, finals, buffers)
        for p, (a, b) in enumerate(ctx.pairs):
            if a in reps and b in reps:
                out["disagreement"].loc[{**at, "pair": ctx.pair_labels[p]}] = disagreement(
                    logits[a], logits[b])
        # R-hat: chains = replicas, draws = the last recorded steps (BN nets: final stats).
        if len(reps) >= 2:
            late = [s for s in ctx.steps if s >= k][-RHAT_STEPS:]
            if len(late) >= 4:
                w = ctx.ds.weights.sel(kind=kind, level=level, rewind=k, step=late).values
                w = torch.from_numpy(w[reps].reshape(-1, w.shape[-1])).to(ctx.device)
                b = None
                if has_bn:
                    b = buffers[reps].repeat_interleave(len(late), 0)
                _, losses = _test_logits_and_losses(ctx, w, b)
                losses = losses.reshape(len(reps), len(late), -1)  # (chain, draw, example)
                with np.errstate(invalid="ignore", divide="ignore"):
                    per_example = split_rhat(losses, chain_axis=0, draw_axis=1)
                out["rhat"].loc[at] = float(np.nanmedian(per_example))
        if progress is not None:
            progress(1)
    return out


def gradient_measures(ctx, progress=None) -> dict[str, xr.DataArray]:
    """Gradient noise scale and SNR at each rewind point, for the IMP start m⊙W_k."""
    out = {"gradient_noise_scale": _nan(ctx, ("level", "rewind")),
           "gradient_snr": _nan(ctx, ("level", "rewind"))}
    batch = ctx.cfg.training.batch_size
    data = ctx.data
    for level in ctx.levels:
        for k in ctx.rewinds:
            if not ctx.complete("imp", level, k, 0):
                continue
            w = ctx.ds.weights.sel(kind="imp", level=level, rewind=k, replica=0, step=k).values
            flat = torch.from_numpy(np.asarray(w, np.float32)).to(ctx.device)
            mask = torch.from_numpy(ctx.mask("imp", level, k)).to(ctx.device)
            g = torch.Generator().manual_seed(derive_seed(ctx.cfg.study.seed, "gns", level, k))
            grads = minibatch_gradients(ctx.stacked, flat, None, data.train_x, data.train_y,
                                        batch, GNS_BATCHES, g, mask=mask)
            res = gradient_noise_scale(grads.cpu().numpy(), batch)
            out["gradient_noise_scale"].loc[{"level": level, "rewind": k}] = float(res["b_simple"])
            out["gradient_snr"].loc[{"level": level, "rewind": k}] = float(res["snr"])
            if progress is not None:
                progress(1)
    return out
