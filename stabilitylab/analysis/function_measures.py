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
import warnings

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr

from stabilitylab.analysis.barriers import above_line_barrier, alpha_grid, instability
from stabilitylab.analysis.cells import Cells
from stabilitylab.analysis.context import LAST_STEPS
from stabilitylab.analysis.endpoints import (
    bn_recompute_x,
    endpoint_eval,
    evaluate_paths,
    finals,
    splits,
)
from stabilitylab.analysis.interpolate import evaluate_points
from stabilitylab.analysis.measures import (
    disagreement,
    gradient_noise_scale,
    minibatch_gradients,
    split_rhat,
)
from stabilitylab.analysis.registry import Group, Measure, Variable, group, register
from stabilitylab.core.seeds import derive_seed

log = logging.getLogger(__name__)

RHAT_STEPS = LAST_STEPS  # last recorded steps used as draws for split-R-hat (the shared view)
GNS_BATCHES = 8  # K minibatch gradients for the noise scale

_CURVE = ("kind", "level", "rewind", "pair", "alpha")
_PAIR = ("kind", "level", "rewind", "pair")
_LMC = "Frankle et al., ICML 2020"
_ENTEZARI = "Entezari et al., ICLR 2022, Eq. 1"


INTERPOLATION_VARIABLES = (
    Variable("interp_test_error", _CURVE, "test-set error along the linear path αW_a + (1−α)W_b "
             "between the pair's final weights", "fraction"),
    Variable("interp_test_loss", _CURVE, "test-set cross-entropy along the same path", "nats"),
    Variable("interp_train_error", _CURVE, "error on the fixed train subset along the path",
             "fraction"),
    Variable("interp_train_loss", _CURVE, "loss on the fixed train subset along the path",
             "nats"),
    Variable("instability", _PAIR, "LMC error barrier on test error: max_α E_α − mean(E_0, E_1) "
             f"({_LMC})", "fraction"),
    Variable("instability_train", _PAIR, "the same on the train subset", "fraction"),
    Variable("loss_barrier", _PAIR, "the same form on test loss", "nats"),
    Variable("loss_barrier_train", _PAIR, "the same form on the train-subset loss (the "
             "headline barrier of Kwok et al., ICML 2025)", "nats"),
    Variable("above_line_barrier", _PAIR, "max_α [E_α − ((1−α)E_b + αE_a)] on test error "
             f"({_ENTEZARI})", "fraction"),
    Variable("above_line_loss_barrier", _PAIR, "the same above-the-line form on test loss; 0 "
             "when the loss is convex along the path (softmax regression)", "nats"),
)
INTERPOLATION_MEASURES = (
    Measure("instability", "instability", "pair", "fraction", False,
            "test-error barrier on the linear path between two replicas trained from the same "
            "W_k under different data orders: max over α of the error minus the endpoints' "
            "mean", f"{_LMC}, eq. 1", label="barrier (instability, test error)", rank=0),
    Measure("instability_train", "instability_train", "pair", "fraction", False,
            "the same barrier on the fixed train subset", label="barrier on train error", rank=1),
    Measure("loss_barrier", "loss_barrier", "pair", "nats", False,
            "the same barrier on test cross-entropy loss", label="loss barrier", rank=2),
    Measure("loss_barrier_train", "loss_barrier_train", "pair", "nats", False,
            "the same barrier on the cross-entropy loss of the fixed train subset",
            "Kwok et al., ICML 2025", label="loss barrier on train", rank=2),
    Measure("above_line_barrier", "above_line_barrier", "pair", "fraction", False,
            "max over α of the test error above the straight line between the endpoint errors",
            "Entezari et al., ICLR 2022", label="barrier above the chord", rank=3),
    Measure("above_line_loss_barrier", "above_line_loss_barrier", "pair", "nats", False,
            "the same above-the-line barrier on test cross-entropy loss",
            "Entezari et al., ICLR 2022", label="loss barrier above the chord", rank=4),
)
register(Group(
    name="aligned", reads="function", compute=None, part_of="interpolation",
    phase="weight matching", rank=30,
    variables=(
        Variable("aligned_test_error", _CURVE, "test error along the path after weight matching "
                 "W_b to W_a", "fraction"),
        Variable("aligned_instability", _PAIR, "error barrier after weight matching (Ainsworth "
                 "et al., ICLR 2023); NaN where the architecture is not supported", "fraction"),
    ),
    measures=(Measure("aligned_instability", "aligned_instability", "pair", "fraction", False,
                      "test-error barrier after permuting one replica's units to match the "
                      "other's by weight matching", "Ainsworth et al., ICLR 2023",
                      label="aligned barrier (weight matching)", rank=5),),
))


@group("interpolation", reads="function", variables=INTERPOLATION_VARIABLES,
       measures=INTERPOLATION_MEASURES, phase="interpolation", rank=20)
def compute_interpolation(ctx, results, options, progress=None) -> dict[str, xr.DataArray]:
    """The interpolation group, and the aligned one in the same pass when it is selected
    (``aligned_*`` stay NaN otherwise)."""
    return interpolation_measures(ctx, n_alphas=options.alphas,
                                  aligned="aligned" in options.groups, progress=progress,
                                  adaptive=options.adaptive)


def interpolation_measures(ctx, *, n_alphas: int = 30, aligned: bool = True,
                           progress=None, adaptive: bool = False) -> dict[str, xr.DataArray]:
    """Interpolation curves and every barrier form, for each pair of complete replicas.

    ``adaptive``: the curves are on the coarse grid of :mod:`.adaptive_alphas` and every
    barrier is refined around its maximum there (``n_alphas`` is then not used).

    Every pair of every cell is one stack of points: the interior α points of all pairs go
    through :func:`~stabilitylab.analysis.interpolate.evaluate_points` together (in blocks
    of at most :data:`~.endpoints.POINTS_BUDGET_BYTES` of weights), and the endpoints (α = 0 and 1)
    come from the shared evaluation of each final network (:mod:`.endpoints`). An aligned
    path is evaluated only where weight matching moved some unit: elsewhere it is the plain
    path, point for point (61 of the default study's 90 pairs).
    """
    if adaptive:
        from stabilitylab.analysis.adaptive_alphas import COARSE_ALPHAS

        n_alphas = COARSE_ALPHAS
    alphas = alpha_grid(n_alphas)
    dims = ("kind", "level", "rewind", "pair", "alpha")
    cells = Cells.of(ctx)
    w = finals(ctx, cells)  # (cell, replica, P)
    complete = ctx.completed.values[cells.kind, cells.level, cells.rewind]
    finite = np.isfinite(w).all(-1)
    for c, r in zip(*np.nonzero(complete & ~finite)):  # damaged or hostile content
        log.warning("run (%s, %s, %s, %s) has non-finite final weights: its interpolation "
                    "and aligned measures are NaN", cells.coord("kind").values[c],
                    cells.coord("level").values[c], cells.coord("rewind").values[c],
                    ctx.replicas[r])
    ok = complete & finite
    a, b = ctx.pair_sides
    cell_i, pair_i = np.nonzero(ok[:, a] & ok[:, b])  # the pairs to evaluate, (n,)
    end_a, end_b = (cell_i, a[pair_i]), (cell_i, b[pair_i])
    wa = torch.from_numpy(w[end_a]).to(ctx.device)
    wb = torch.from_numpy(w[end_b]).to(ctx.device)
    bn_x = bn_recompute_x(ctx)
    curves = {}
    for split, (x, y) in splits(ctx).items():
        ends = endpoint_eval(ctx, split)
        res = evaluate_paths(ctx, wa, wb, alphas[1:-1], x, y, bn_x)
        for q in ("error", "loss"):
            curves[f"interp_{split}_{q}"] = np.concatenate(
                [ends[q][end_b][:, None], res[q], ends[q][end_a][:, None]], 1)
        if progress is not None:
            progress(len(cells) // 3)
    from stabilitylab.analysis.align import flat_aligner  # scipy.optimize: when aligning

    align = flat_aligner(ctx.stacked, "aligned barrier") if aligned else None
    aligned_curve = np.full((len(cell_i), len(alphas)), np.nan)
    if align is not None and len(cell_i):
        wa_np, wb_np = wa.cpu().numpy(), wb.cpu().numpy()
        other_np = np.stack([align(wa_np[i], wb_np[i]) for i in range(len(wa_np))])
        other = torch.as_tensor(other_np, device=ctx.device)
        # Where matching keeps every unit in place (often so for late rewinds), the aligned
        # path is the plain one, point for point: its curve is copied, not evaluated again.
        moved = ~(other_np == wb_np).all(1)
        aligned_curve = curves["interp_test_error"].copy()
        if moved.any():
            rows = torch.from_numpy(moved).to(ctx.device)
            res = evaluate_paths(ctx, wa[rows], other[rows], alphas[:-1],
                                 *splits(ctx)["test"], bn_x)
            ends = endpoint_eval(ctx, "test")
            aligned_curve[moved] = np.concatenate(
                [res["error"], ends["error"][end_a][moved][:, None]], 1)
    curves["aligned_test_error"] = aligned_curve
    out = {}
    for name, values in curves.items():
        full = np.full((len(cells), len(ctx.pairs), len(alphas)), np.nan)
        full[cell_i, pair_i] = values
        out[name] = cells.scatter(ctx, name, full, alpha=alphas)
    if progress is not None:
        progress(len(cells) - 2 * (len(cells) // 3))
    # The curve runs from W_b (alpha = 0) to W_a (alpha = 1); barriers reduce over alpha.
    barriers = {
        "instability": instability(out["interp_test_error"].values),
        "instability_train": instability(out["interp_train_error"].values),
        "loss_barrier": instability(out["interp_test_loss"].values),
        "loss_barrier_train": instability(out["interp_train_loss"].values),
        "above_line_barrier": _above_line(out["interp_test_error"].values, alphas),
        "above_line_loss_barrier": _above_line(out["interp_test_loss"].values, alphas),
        "aligned_instability": instability(out["aligned_test_error"].values),
    }
    if adaptive and len(cell_i):
        at = (cells.kind[cell_i], cells.level[cell_i], cells.rewind[cell_i], pair_i)
        for name, values in _refined(ctx, out, at, wa, wb, bn_x,
                                     other if align is not None else None).items():
            barriers[name][at] = values
    coords = out["interp_test_error"].isel(alpha=0, drop=True).coords
    for name, values in barriers.items():
        out[name] = xr.DataArray(values, dims=dims[:-1], coords=coords)
    if align is None:
        out["aligned_instability"].attrs["note"] = "weight matching not supported for this model"
    return out


def _refined(ctx, out, at, wa, wb, bn_x, aligned_other) -> dict[str, np.ndarray]:
    """The barriers of the evaluated pairs (positions ``at``) by the adaptive α search."""
    from stabilitylab.analysis.adaptive_alphas import refine_paths

    def coarse(split):
        return {q: out[f"interp_{split}_{q}"].values[at] for q in ("error", "loss")}

    test_x, test_y = splits(ctx)["test"]
    test = refine_paths(ctx.stacked, wa, wb, test_x, test_y, bn_x, coarse("test"),
                        ("error", "loss"))
    train = refine_paths(ctx.stacked, wa, wb, *splits(ctx)["train"], bn_x, coarse("train"),
                         ("error", "loss"))
    result = {"instability": test["error_barrier"], "loss_barrier": test["loss_barrier"],
              "above_line_barrier": test["error_above_line"],
              "above_line_loss_barrier": test["loss_above_line"],
              "instability_train": train["error_barrier"],
              "loss_barrier_train": train["loss_barrier"]}
    if aligned_other is not None:
        curves = {"error": out["aligned_test_error"].values[at]}
        result["aligned_instability"] = refine_paths(
            ctx.stacked, wa, aligned_other, test_x, test_y, bn_x, curves,
            ("error",))["error_barrier"]
    return result


def _above_line(curves: np.ndarray, alphas) -> np.ndarray:
    finite = np.isfinite(curves).all(-1)
    result = np.full(curves.shape[:-1], np.nan)
    if finite.any():
        result[finite] = above_line_barrier(curves[finite], alphas)
    return result


#: Test examples per forward of :func:`_test_logits_and_losses`. 100 (as in
#: :func:`~stabilitylab.analysis.interpolate.evaluate_points`) keeps the activations of a
#: block of networks in cache: 2.7x faster than 1000 for the conv1d net on CPU, with the
#: same logits to the bit (each example's row of every GEMM is computed alike).
EXAMPLES_PER_FORWARD = 100


def _test_logits_and_losses(ctx, flat: torch.Tensor, buffers: torch.Tensor | None):
    """Test logits (N, example, class) and per-example losses (N, example) of N networks:
    the shared evaluation machinery (:func:`~stabilitylab.analysis.interpolate.evaluate_points`:
    bounded memory, both cores, the compiled forward where ``analyze --compile`` allows it)
    in chunks of :data:`EXAMPLES_PER_FORWARD` examples. ``buffers`` (N, Q): each network's
    BatchNorm statistics, used as they are."""
    x, y = ctx.data.test_x, ctx.data.test_y
    res = evaluate_points(ctx.stacked, flat, x, y,
                          buffers=buffers if buffers is not None and buffers.numel() else None,
                          batch_size=EXAMPLES_PER_FORWARD, return_logits=True)
    logits = res["logits"]  # (N, example, class) float32 on the CPU
    return logits.float().numpy(), _example_losses(logits, y)


def _example_losses(logits: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """(N, example) float32 cross-entropy of (N, example, class) test logits, each row alone
    (so a network's losses do not depend on the others in the call)."""
    with torch.no_grad():
        losses = F.cross_entropy(logits.flatten(0, 1), y.cpu().repeat(logits.shape[0]),
                                 reduction="none").view(logits.shape[0], -1)
    return losses.float().numpy()


@group("replica", reads="function", phase="replica measures", rank=40,
       variables=(
           Variable("disagreement", _PAIR, "fraction of test examples whose predicted class "
                    "differs between the pair at T", "fraction"),
           Variable("rhat", ("kind", "level", "rewind"), "split-R̂ across replicas of "
                    f"per-example test losses over the last {RHAT_STEPS} recorded steps (median "
                    "over examples)", "ratio (≥ 1)", needs_trajectory=True),
       ),
       measures=(
           Measure("disagreement", "disagreement", "pair", "fraction", False,
                   "share of test examples on which the two replicas predict different classes",
                   label="disagreement", rank=6),
           Measure("rhat", "rhat", None, "ratio (≥ 1)", False,
                   "split-R̂ across replicas of per-example test losses over the last recorded "
                   "steps, median over examples",
                   "Gelman et al., Bayesian Data Analysis, 3rd ed., §11.4", label="R-hat",
                   rank=12, stable_note="closer to 1"),
       ))
def compute_replica(ctx, results, options, progress=None) -> dict[str, xr.DataArray]:
    return replica_measures(ctx, progress=progress)


def replica_measures(ctx, progress=None) -> dict[str, xr.DataArray]:
    """Disagreement between pairs at T and split-R̂ of per-example test losses, for every
    cell at once."""
    cells = Cells.of(ctx)
    complete = ctx.completed.values[cells.kind, cells.level, cells.rewind]  # (cell, replica)
    pairs_ok = ctx.pair_completed().values[cells.kind, cells.level, cells.rewind]
    a, b = ctx.pair_sides
    logits = _final_test_logits(ctx, cells)  # (cell, replica, example, class)
    agree = disagreement(logits[:, a], logits[:, b])  # (cell, pair)
    out = {"disagreement": cells.scatter(ctx, "disagreement",
                                         np.where(pairs_ok, agree, np.nan))}
    out["rhat"] = cells.scatter(ctx, "rhat", _rhat(ctx, cells, complete))
    if progress is not None:
        progress(len(cells))
    return out


def _final_test_logits(ctx, cells) -> np.ndarray:
    """Test logits of every final network: the shared endpoint evaluation, or (BatchNorm
    nets, evaluated with their stored running statistics) a forward of its own."""
    if not ctx.stacked.buffer_slots:
        return endpoint_eval(ctx, "test")["logits"]
    w = finals(ctx, cells)
    buffers = cells.take(ctx.load("final_buffers")).transpose("cell", "replica", "buffer").values
    flat = torch.from_numpy(w.reshape(-1, w.shape[-1])).to(ctx.device)
    bufs = torch.from_numpy(buffers.reshape(-1, buffers.shape[-1])).to(ctx.device)
    logits, _ = _test_logits_and_losses(ctx, flat, bufs)
    return logits.reshape(*w.shape[:2], *logits.shape[1:])


def _rhat(ctx, cells, complete: np.ndarray) -> np.ndarray:
    """(cell,) split-R̂ of per-example test losses, chains = complete replicas, draws = the
    last recorded steps ≥ k (at most RHAT_STEPS; NaN with fewer than 4 or one chain).
    BatchNorm nets use their final running statistics at every draw.

    Where the last draw is step T (the store records T last) and the net has no BatchNorm,
    that draw is the final network, whose test logits the shared endpoint evaluation holds
    (:func:`~stabilitylab.analysis.endpoints.endpoint_eval`, which the disagreement reads
    too): they are taken from there, not evaluated again (the same logits, since a
    network's do not depend on what it is evaluated with)."""
    out = np.full(len(cells), np.nan)
    steps = np.asarray(ctx.steps)
    n_late = np.minimum((steps[None, :] >= cells.coord("rewind").values[:, None]).sum(1),
                        RHAT_STEPS)
    usable = (complete.sum(1) >= 2) & (n_late >= 4)
    if not usable.any():
        return out
    late = ctx.load("last_weights")  # (kind, level, rewind, replica, step, param)
    late = cells.take(late).transpose("cell", "replica", "step", "param").values
    buffers = None
    if ctx.stacked.buffer_slots:
        buffers = cells.take(ctx.load("final_buffers")).transpose(
            "cell", "replica", "buffer").values
    ends = None
    if not ctx.stacked.buffer_slots and int(steps[-1]) == ctx.resolved.total_steps:
        ends = endpoint_eval(ctx, "test")  # (cell, replica, example, class) logits
    # Cells alike in their complete replicas and number of draws are one stack.
    keys = [(tuple(np.flatnonzero(complete[c])), int(n_late[c])) if usable[c] else None
            for c in range(len(cells))]
    for key in sorted({k for k in keys if k is not None}):
        rows = np.array([k == key for k in keys])
        reps, n = list(key[0]), key[1]
        w = late[rows][:, reps][:, :, -n:]  # (cells, chains, draws, P)
        final = None  # the last draw's losses, from the final networks' logits
        if ends is not None and ends["ok"][rows][:, reps].all():
            held = torch.from_numpy(ends["logits"][rows][:, reps])  # (cells, chains, ex, class)
            final = _example_losses(held.flatten(0, 1), ctx.data.test_y)
            final = final.reshape(*w.shape[:2], 1, -1)
            w = w[:, :, :-1]
        flat = torch.from_numpy(np.ascontiguousarray(w.reshape(-1, w.shape[-1]))).to(ctx.device)
        b = None
        if buffers is not None:
            b = torch.from_numpy(buffers[rows][:, reps]).to(ctx.device)
            b = b.reshape(-1, b.shape[-1]).repeat_interleave(n, 0)
        _, losses = _test_logits_and_losses(ctx, flat, b)
        losses = losses.reshape(*w.shape[:3], -1)  # (cells, chain, draw, example)
        if final is not None:
            losses = np.concatenate([losses, final], axis=2)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_example = split_rhat(losses, chain_axis=1, draw_axis=2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows stay NaN
            out[rows] = np.nanmedian(per_example, axis=-1)
    return out


def _gradient_work(ctx):
    return sum(ctx.complete("imp", lv, k, 0) for lv in ctx.levels for k in ctx.rewinds)


@group("gradient", reads="function", phase="gradient noise", work=_gradient_work, rank=50,
       preload=("torch._dynamo",),  # torch.func.grad imports it on first use
       variables=(
           Variable("gradient_noise_scale", ("level", "rewind"), "simple noise scale of "
                    f"K = {GNS_BATCHES} minibatch gradients at the rewind point (imp, m⊙W_k)",
                    "examples"),
           Variable("gradient_snr", ("level", "rewind"), "signal-to-noise ratio of the same "
                    "gradients: squared norm of their mean over its variance", "ratio"),
       ),
       measures=(
           Measure("gradient_noise_scale", "gradient_noise_scale", None, "examples", None,
                   "simple gradient noise scale B_simple = tr(Σ)/|G|² of minibatch gradients "
                   "at W_k", "McCandlish et al., arXiv 1812.06162, eq. 2.9",
                   label="gradient noise scale", rank=13, stable_note="a candidate measure"),
       ))
def compute_gradient(ctx, results, options, progress=None) -> dict[str, xr.DataArray]:
    return gradient_measures(ctx, progress=progress)


def gradient_measures(ctx, progress=None) -> dict[str, xr.DataArray]:
    """Gradient noise scale and SNR at each rewind point, for the IMP start m⊙W_k.

    One vmapped gradient evaluation per (level, k) (each with its own seeded minibatches);
    weights and masks come from the context's shared views.
    """
    imp = np.zeros(ctx.cells().shape, bool)
    imp[ctx.kinds.index("imp")] = True
    cells = Cells.of(ctx, where=imp & ctx.completed.values[..., 0])
    start = cells.take(ctx.load("start_weights").isel(replica=0, drop=True)).values  # (cell, P)
    masks = cells.take(ctx.load("masks")).values  # (cell, P)
    batch = ctx.cfg.training.batch_size
    data = ctx.data
    values = np.full((len(cells), 2), np.nan)
    for c, (level, k) in enumerate(zip(cells.coord("level").values, cells.coord("rewind").values)):
        g = torch.Generator().manual_seed(derive_seed(ctx.cfg.study.seed, "gns", int(level),
                                                      int(k)))
        grads = minibatch_gradients(ctx.stacked, torch.from_numpy(start[c]).to(ctx.device), None,
                                    data.train_x, data.train_y, batch, GNS_BATCHES, g,
                                    mask=torch.from_numpy(masks[c]).to(ctx.device))
        res = gradient_noise_scale(grads.cpu().numpy(), batch)
        values[c] = float(res["b_simple"]), float(res["snr"])
        if progress is not None:
            progress(1)
    return {name: cells.scatter(ctx, name, values[:, i], drop="kind")
            for i, name in enumerate(("gradient_noise_scale", "gradient_snr"))}
