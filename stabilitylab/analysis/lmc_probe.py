"""``record --probe`` (the LMC probe): the stability point from copies trained only Δ steps past each k.

The LMC rule (Frankle et al. 2020, "Linear Mode Connectivity and the Lottery Ticket
Hypothesis", ICML) trains R copies from every rewind point k to T and calls k stable when
the test-error barrier between them is below 2%. The probe applies the same rule to copies
stopped at k + Δ: the dense run is trained to the last rewind point (its states at every k
kept in memory), then for each k the R data-order copies from W_k train Δ steps (one
batched group per k) and the barrier between each pair is measured at k + Δ. Nothing is
written. The learning-rate schedule (warmup and step milestones) does not depend on T, so a
copy stopped at k + Δ follows exactly the first Δ steps of the full copy's schedule.

On the findings' MNIST-1D conv net (reports/findings, Q6: 5 seeds) the rule at k + 50
picked the target k (the earliest k within noise of the best IMP accuracy at 16%) in 3 of 5
seeds, against 2 of 5 for the rule on copies trained to T, at 1.9% of the full study's copy
cost instead of 33%; both intervals are wide (5 seeds).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from stabilitylab.analysis.barriers import LMC_THRESHOLD, alpha_grid, instability
from stabilitylab.analysis.divergence_measures import BARRIER_ALPHAS
from stabilitylab.analysis.interpolate import evaluate_interpolation
from stabilitylab.core.errors import ConfigError
from stabilitylab.core.keys import RunKey
from stabilitylab.study.context import RewindPoint, TaskContext
from stabilitylab.study.execution import all_kept, dense_plan, group_plan, keep_snapshots
from stabilitylab.study.plan import Task
from stabilitylab.train.engine import train_group

DEFAULT_DELTA = 50  # the probe of the findings' Q6 (LMC rule at k + 50)


def _truncated(resolved, total: int):
    """``resolved`` trained to ``total`` instead of T (nothing recorded, one evaluation)."""
    return dataclasses.replace(
        resolved, total_steps=total, record_steps=(),
        eval_steps=(total,), log_steps=tuple(s for s in resolved.log_steps if s < total))


def probe_rewinds(cfg, *, delta: int = DEFAULT_DELTA, device=None, progress=None) -> dict:
    """The LMC rule on copies stopped at k + ``delta`` for every rewind point of ``cfg``.

    Returns ``{"rewinds", "barrier": (K, pairs) fractions, "weights": (K, R, P) at k + delta,
    "stable_from": k or None,
    "replica_steps", "full_replica_steps", "lines"}``: the copies' replica-steps, and those
    of the same copies trained to T (level 0) for comparison.
    """
    from stabilitylab.study.resolve import resolve_study

    if isinstance(delta, bool) or not isinstance(delta, int) or delta < 1:
        raise ConfigError(f"--probe-steps: must be an integer >= 1, got {delta!r}")
    resolved = resolve_study(cfg)
    cfg = resolved.config
    T, ks, R = resolved.total_steps, list(resolved.rewinds), cfg.study.replicas
    ctx = TaskContext(resolved, device)
    tick = progress or (lambda n: None)

    # The dense run to the last rewind point, keeping W_k, buffers and optimizer state.
    points: dict[int, RewindPoint] = {}

    last = max(ks)
    if last > 0:
        train_group(ctx.stacked, dense_plan(ctx, ks), ctx.data, _truncated(ctx.resolved, last + 1),
                    on_snapshot=keep_snapshots(points), on_progress=tick,
                    augment=ctx.augment)
    if 0 in ks and 0 not in points:
        points[0] = RewindPoint(ctx.init_weights, {n: t[0] for n, t in ctx.init_buffers.items()},
                                None)
    missing = [k for k in ks if k not in points]
    if missing:
        raise RuntimeError(f"the dense run kept no state at rewind points {missing}")

    alphas = alpha_grid(BARRIER_ALPHAS)
    pairs = [(a, b) for a in range(R) for b in range(a + 1, R)]
    bn_x = ctx.data.train_x[:cfg.data.train_eval_size] if ctx.stacked.buffer_slots else None
    ones = all_kept(ctx)
    barrier = np.full((len(ks), len(pairs)), np.nan)
    weights = []
    steps = 0
    for i, k in enumerate(ks):
        end = min(k + delta, T)
        runs = [RunKey("imp", 0, k, r) for r in range(R)]
        group = group_plan(ctx, Task(0, (k,)), runs, {k: points[k]}, {("imp", k): ones})
        result = train_group(ctx.stacked, group, ctx.data, _truncated(ctx.resolved, end),
                             on_progress=tick, augment=ctx.augment)
        steps += R * (end - k)
        finals = ctx.stacked.flatten(result.params)
        weights.append(finals.cpu().numpy())
        for p, (a, b) in enumerate(pairs):
            if torch.isfinite(finals[[a, b]]).all():
                res = evaluate_interpolation(ctx.stacked, finals[a], finals[b], alphas,
                                             ctx.data.test_x, ctx.data.test_y, bn_recompute_x=bn_x)
                barrier[i, p] = float(instability(np.asarray(res["error"])))
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(barrier, axis=1)
    stable = [k for k, m in zip(ks, mean) if np.isfinite(m) and m < LMC_THRESHOLD]
    full = R * sum(T - k for k in ks)
    lines = probe_lines(ks, mean, delta=delta, replicas=R)
    lines.append(f"cost: {steps:,} replica-steps, {100 * steps / full:.1f}% of the same copies "
                 f"trained to T ({full:,}), plus the dense run to k={last}")
    return {"rewinds": ks, "barrier": barrier, "weights": np.stack(weights), "stable_from": stable[0] if stable else None,
            "replica_steps": steps, "full_replica_steps": full, "lines": lines}


def probe_lines(rewinds, mean, *, delta: int, replicas: int,
                threshold: float = LMC_THRESHOLD) -> list[str]:
    """The probe's report: the barrier per k (percentage points), then the answer, the rule
    that produced it and why a later k above the threshold does not change it."""
    thr = 100 * threshold
    lines = [(f"probe: {replicas} data-order copies from each k, trained {delta} steps (to "
             f"k + {delta}); mean test-error barrier between them at k + {delta}:")]
    lines += [f"  k={k}: {100 * m:.2f} pp" + ("" if m < threshold else f" (≥ {thr:g} pp)")
              for k, m in zip(rewinds, mean)]
    stable = [k for k, m in zip(rewinds, mean) if np.isfinite(m) and m < threshold]
    rule = (f"rule: the LMC rule (Frankle et al., ICML 2020), the earliest k whose barrier is "
            f"below {thr:g} pp")
    if not stable:
        return lines + [f"no rewind point is stable at k + {delta}; try later k ({rule})"]
    later = [k for k, m in zip(rewinds, mean) if k > stable[0] and not m < threshold]
    lines.append(f"stable from k≈{stable[0]} ({rule})")
    if later:
        lines.append(
            f"  later k above {thr:g} pp ({', '.join(f'k={k}' for k in later)}) do not change "
            "it: the rule takes the earliest stable k, as in the paper (if a later k matters, "
            f"rerun with more than {replicas} replicas, study.replicas, to see whether it holds)")
    return lines
