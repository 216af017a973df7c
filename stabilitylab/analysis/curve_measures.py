"""The ``curve`` measure group: mode-connecting curves between the copies of each pair.

    stabilitylab analyze runs/mnist1d-default.zarr --measures default curve

An opt-in group: on the default study it took 14 s of an 85 s ``analyze`` (2-core CPU),
which would take the default analysis past 1.5× its time before the geometry groups.

For each (kind, level) a quadratic Bézier curve and a polygonal chain with one bend
(Garipov et al., NeurIPS 2018, §3, Eqs. 2–6; Draxler et al., ICML 2018) are trained
between the final weights of every pair, all pairs and both families as one
replica-batched run (:func:`stabilitylab.analysis.curves.train_curves`). To bound the
cost only three rewind points get curves: the first k, the last k and the LMC-rule k of
the level (the earliest k with mean instability < 2%, Frankle et al., ICML 2020), and
only IMP and the noise kinds (``init``, ``perturb``): the other k and the control kinds
(random pruning, reinit, pruning-at-init masks) stay NaN. Each curve is evaluated on the
test set at the α grid of the linear path (t = α; t = 0 is W_b, t = 1 is W_a), with
BatchNorm statistics recomputed at every point on the fixed train subset.

- ``curve_barrier`` / ``curve_loss_barrier``: the linear barrier's definition applied
  along the curve, max_t E(φ(t)) − mean(E(W_a), E(W_b)) on test error / loss;
- ``curve_length``: L2 arc length of the curve in weight space;
- ``linear_minus_curve`` / ``linear_minus_curve_loss``: the linear barrier minus the
  curve barrier. A pair with a large linear barrier and a curve barrier near 0 is
  linearly unstable but still in one connected valley (Garipov et al.; Draxler et al.).

Pairs whose two copies are identical have no curve to train: their values are NaN
(one log line); if no pair of the study has a curve the variables are listed in
``attrs["absent"]``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import xarray as xr

from stabilitylab.analysis.barriers import LMC_THRESHOLD, alpha_grid, instability
from stabilitylab.analysis.curves import SHAPES, curve_lengths, evaluate_curves, train_curves
from stabilitylab.analysis.registry import Variable, allocate, group
from stabilitylab.analysis.stats import predict_rewind_lmc
from stabilitylab.core.seeds import derive_seed
from stabilitylab.study.kinds import control_names

log = logging.getLogger(__name__)

#: Optimizer steps per curve run (one run per (kind, level)). On the default study 200
#: steps bring the Bézier barrier to the endpoint-error floor; see docs/analysis-schema.md.
CURVE_STEPS = 200

_PATH = ("kind", "level", "rewind", "pair", "curve", "alpha")
_PAIR = ("kind", "level", "rewind", "pair", "curve")
_GARIPOV = "Garipov et al., NeurIPS 2018"
NAMES = ("curve_test_error", "curve_test_loss", "curve_barrier", "curve_loss_barrier",
         "curve_length", "linear_minus_curve", "linear_minus_curve_loss")

CURVE_VARIABLES = (
    Variable("curve_test_error", _PATH, "test error along a trained curve φ(t) from W_b (t = 0) "
             f"to W_a (t = 1), t on the α grid; `curve` = bezier or polychain ({_GARIPOV}); "
             "only at the first, last and LMC-rule k", "fraction"),
    Variable("curve_test_loss", _PATH, "test cross-entropy along the same curve", "nats"),
    Variable("curve_barrier", _PAIR, "error barrier along the curve: max_t E(φ(t)) − "
             "mean(E(W_a), E(W_b)), the linear barrier's definition", "fraction"),
    Variable("curve_loss_barrier", _PAIR, "the same on test loss", "nats"),
    Variable("curve_length", _PAIR, "L2 arc length of the curve in weight space (the straight "
             "segment has length ‖W_a − W_b‖)", "weight L2 norm"),
    Variable("linear_minus_curve", _PAIR, "instability (linear barrier) − curve_barrier: large "
             "when linearly unstable copies still sit in one connected valley", "fraction"),
    Variable("linear_minus_curve_loss", _PAIR, "loss_barrier − curve_loss_barrier", "nats"),
)


def curve_rewinds(ctx, instability_imp: xr.DataArray | None) -> dict[int, list[int]]:
    """The rewind points that get curves, per level: first, last and the LMC-rule k."""
    out = {}
    for level in ctx.levels:
        ks = {ctx.rewinds[0], ctx.rewinds[-1]}
        if instability_imp is not None:
            k = predict_rewind_lmc(np.array(ctx.rewinds),
                                   instability_imp.sel(level=level).values, LMC_THRESHOLD)
            if k is not None:
                ks.add(int(k))
        out[level] = sorted(ks)
    return out


def _work(ctx) -> int:
    """Progress units: one per training step of each (kind, level) run, one for its evaluation."""
    return len({(kind, level) for kind, level, _ in ctx.combos()}) * (CURVE_STEPS + 1)


@group("curve", reads="function", variables=CURVE_VARIABLES, phase="curves", work=_work,
       needs=("interpolation",), rank=35, default=False)
def compute_curves(ctx, results, options, progress=None) -> dict[str, xr.DataArray]:
    return curve_measures(ctx, results, n_alphas=options.alphas, progress=progress)


def curve_measures(ctx, results, *, n_alphas: int = 30, steps: int = CURVE_STEPS,
                   progress=None) -> dict[str, xr.DataArray]:
    """Train and evaluate the curves of every (kind, level); the variables above."""
    alphas = alpha_grid(n_alphas)
    out = {name: allocate(ctx, name, curve=list(SHAPES), alpha=alphas) for name in NAMES}
    inst = results.get("instability")
    inst_imp = None
    if inst is not None and "imp" in ctx.kinds:
        inst_imp = inst.sel(kind="imp").mean("pair", skipna=True)
    chosen = curve_rewinds(ctx, inst_imp)
    n_train = ctx.cfg.data.train_eval_size
    bn_x = ctx.data.train_x[:n_train] if ctx.stacked.buffer_slots else None
    trained = 0
    controls = set(control_names())  # no curves for controls: kept within analyze's budget
    for kind, level in dict.fromkeys((kd, lv) for kd, lv, _ in ctx.combos()):
        jobs = _jobs(ctx, kind, level, chosen[level]) if kind not in controls else []  # [(k, pair label, start, end, mask)]
        if jobs:
            trained += len(jobs)
            _run(ctx, out, kind, level, jobs, alphas, steps, bn_x, progress)
        elif progress is not None:
            progress(steps)
        if progress is not None:
            progress(1)
    _barriers(out, results)
    if not trained:
        for name in NAMES:
            out[name].attrs["absent"] = ("no pair of distinct, finite copies at the chosen "
                                         "rewind points: no curve to train")
    return out


def _jobs(ctx, kind, level, rewinds) -> list:
    jobs = []
    for k in rewinds:
        if k not in ctx.rewinds:
            continue
        reps = ctx.complete_replicas(kind, level, k)
        if len(reps) < 2:
            continue
        finals = torch.from_numpy(ctx.final_weights(kind, level, k))
        mask = torch.from_numpy(ctx.mask(kind, level, k))
        for p, (a, b) in enumerate(ctx.pairs):
            if a not in reps or b not in reps:
                continue
            label = ctx.pair_labels[p]
            if not (torch.isfinite(finals[a]).all() and torch.isfinite(finals[b]).all()):
                continue  # the interpolation group already logged the damaged run
            if torch.equal(finals[a], finals[b]):
                log.warning("curve (%s, level %s, k=%s, pair %s): the two copies are identical; "
                            "no curve to train, its curve measures are NaN", kind, level, k, label)
                continue
            jobs.append((k, label, finals[b], finals[a], mask))
    return jobs


def _run(ctx, out, kind, level, jobs, alphas, steps, bn_x, progress=None) -> None:
    """One batched run for every (job, curve family) of this (kind, level)."""
    dev = ctx.device
    n = len(jobs)
    starts = torch.stack([j[2] for j in jobs] * len(SHAPES)).to(dev)
    ends = torch.stack([j[3] for j in jobs] * len(SHAPES)).to(dev)
    masks = torch.stack([j[4] for j in jobs] * len(SHAPES)).to(dev)
    shapes = [s for s in SHAPES for _ in range(n)]
    seed = derive_seed(ctx.cfg.study.seed, "curve", kind, level)
    controls = train_curves(ctx.stacked, starts, ends, shapes, ctx.data.train_x,
                            ctx.data.train_y, ctx.cfg.training, steps=steps, masks=masks,
                            seed=seed, progress=None if progress is None else _per_step(progress))
    res = evaluate_curves(ctx.stacked, starts, controls, ends, shapes, alphas, ctx.data.test_x,
                          ctx.data.test_y, bn_recompute_x=bn_x)
    lengths = curve_lengths(starts.cpu(), controls.cpu(), ends.cpu(), shapes)
    for r, shape in enumerate(shapes):
        k, label = jobs[r % n][0], jobs[r % n][1]
        at = {"kind": kind, "level": level, "rewind": k, "pair": label, "curve": shape}
        out["curve_test_error"].loc[at] = res["error"][r]
        out["curve_test_loss"].loc[at] = res["loss"][r]
        out["curve_length"].loc[at] = lengths[r]


def _per_step(progress):
    return lambda curve_steps: progress(1)  # train_curves reports R curve-steps per step


def _barriers(out, results) -> None:
    for name, source in (("curve_barrier", "curve_test_error"),
                         ("curve_loss_barrier", "curve_test_loss")):
        out[name].values[...] = instability(out[source].values)  # NaN curves stay NaN
    for name, linear, curve in (("linear_minus_curve", "instability", "curve_barrier"),
                                ("linear_minus_curve_loss", "loss_barrier",
                                 "curve_loss_barrier")):
        if linear in results:
            out[name].values[...] = (results[linear] - out[curve]).transpose(*out[name].dims).values
