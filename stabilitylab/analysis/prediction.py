"""From measures to answers: stable/matching flags, correlations with accuracy, predicted k.

For each level, every scalar measure (pair or replica mean, ``imp`` kind) is
correlated with the final test accuracy across rewind points (Spearman and
Kendall, bootstrap CIs). The rewind point is predicted by

- the LMC rule (Frankle et al., ICML 2020): the earliest k with instability < the
  threshold (:data:`stabilitylab.analysis.barriers.LMC_THRESHOLD`, 2% error);
- a measure rule per measure: the earliest k whose value has settled to within
  10% of its value at the largest k (:func:`stabilitylab.analysis.stats.predict_rewind_measure`),

and each prediction is compared with the oracle (the k of best final accuracy).

A subnetwork is *matching* (:func:`paired_matching`) when the one-sided 95% lower bound of
its accuracy minus the dense copies' (paired by data order, same k) is at least
−max(0.2 points, one sd of the dense copies' accuracy).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from stabilitylab.analysis import registry
from stabilitylab.analysis.barriers import MATCHING_CONFIDENCE, MATCHING_TOLERANCE
from stabilitylab.analysis.stats import (
    accuracy_gap,
    oracle_rewind,
    predict_rewind_lmc,
    predict_rewind_measure,
    rank_correlations,
)


def reduce_measure(da: xr.DataArray, dim):
    """Mean over the pair/replica dim ``dim`` (if any), ignoring NaN."""
    if dim is None or dim not in da.dims:
        return da
    with np.errstate(invalid="ignore"):
        return da.mean(dim, skipna=True)


def measure_table(results: dict[str, xr.DataArray], levels, rewinds) -> xr.DataArray:
    """(measure, level, rewind) values for the ``imp`` kind: every registered measure whose
    source variable was computed, in the registry's order."""
    names, rows = [], []
    for name, m in registry.measures().items():
        if m.source not in results:
            continue
        da = reduce_measure(results[m.source], m.reduce)
        if "kind" in da.dims:
            da = da.sel(kind="imp")
        names.append(name)
        rows.append(da.transpose("level", "rewind").values)
    return xr.DataArray(np.array(rows, dtype=float).reshape(len(names), len(levels), len(rewinds)),
                        dims=("measure", "level", "rewind"),
                        coords={"measure": names, "level": levels, "rewind": rewinds})


def predictions(ctx, results: dict, accuracy: xr.DataArray, *, threshold: float,
                n_boot: int = 1000) -> dict[str, xr.DataArray]:
    """Correlations, predicted rewind points and accuracy gaps, per level."""
    table = measure_table(results, ctx.levels, ctx.rewinds)
    acc = accuracy.sel(kind="imp")
    rewinds = np.array(ctx.rewinds)
    corr_names = ("spearman", "spearman_low", "spearman_high", "kendall", "kendall_low",
                  "kendall_high")
    corr = {n: np.full((table.sizes["measure"], len(ctx.levels)), np.nan) for n in corr_names}
    pred_measure = np.full((table.sizes["measure"], len(ctx.levels)), -1, np.int64)
    gap_measure = np.full((table.sizes["measure"], len(ctx.levels)), np.nan)
    pred_lmc = np.full(len(ctx.levels), -1, np.int64)
    oracle = np.full(len(ctx.levels), -1, np.int64)
    gap_lmc = np.full(len(ctx.levels), np.nan)
    instab = table.sel(measure="instability") if "instability" in table.measure else None
    for j, level in enumerate(ctx.levels):
        a = acc.sel(level=level).values
        ok = oracle_rewind(rewinds, a)
        oracle[j] = -1 if ok is None else ok
        if instab is not None:
            k = predict_rewind_lmc(rewinds, instab.sel(level=level).values, threshold)
            pred_lmc[j] = -1 if k is None else k
            gap_lmc[j] = accuracy_gap(k, ok, rewinds, a)
        for i, name in enumerate(table.measure.values):
            m = table.sel(measure=name, level=level).values
            stats = rank_correlations(m, a, n_boot=n_boot, seed=j)
            for n in corr_names:
                corr[n][i, j] = stats[n]
            k = predict_rewind_measure(rewinds, m)
            pred_measure[i, j] = -1 if k is None else k
            gap_measure[i, j] = accuracy_gap(k, ok, rewinds, a)
    dims = ("measure", "level")
    coords = {"measure": table.measure.values, "level": ctx.levels}
    out = {"measure_value": table}
    out.update({n: xr.DataArray(v, dims=dims, coords=coords) for n, v in corr.items()})
    out["predicted_rewind_measure"] = xr.DataArray(pred_measure, dims=dims, coords=coords)
    out["gap_measure"] = xr.DataArray(gap_measure, dims=dims, coords=coords)
    lv = {"level": ctx.levels}
    out["predicted_rewind_lmc"] = xr.DataArray(pred_lmc, dims=("level",), coords=lv)
    out["oracle_rewind"] = xr.DataArray(oracle, dims=("level",), coords=lv)
    out["gap_lmc"] = xr.DataArray(gap_lmc, dims=("level",), coords=lv)
    return out


def paired_matching(sub, dense, *, tolerance: float = MATCHING_TOLERANCE,
                    confidence: float = MATCHING_CONFIDENCE) -> dict[str, np.ndarray]:
    """The matching test on accuracies paired by data order (replica axis last).

    Frankle et al. (LMC, ICML 2020) call a subnetwork *matching* when it trains to the
    full network's accuracy: within one standard deviation of it (Sec. 4, with the full
    network's accuracy as a mean over runs), and in Sec. 4.4 within a drop of 0.2
    percentage points. One run of the full network is a noisy reference (a standard error
    near 0.8 points on a 1,000-example test set), so here the reference is the dense copies
    themselves, each paired with the subnetwork copy that shares its data order:

    - d_j = sub_j − dense_j over the replicas j where both are finite, n of them;
    - the margin is max(``tolerance``, sd_j(dense_j)) (sd with n − 1 dof over the finite
      dense copies);
    - the one-sided ``confidence`` lower bound of the mean difference is
      mean(d) − t_{confidence, n−1} · sd(d) / √n (Student's t, :func:`scipy.stats.t.ppf`);
    - *matching* when that bound is ≥ −margin.

    ``sub`` (..., R) and ``dense`` (..., R) broadcast against each other; NaN marks a copy
    that is missing. With fewer than 2 pairs the bound is undefined: ``low`` is NaN and
    ``matching`` False (the report says "undefined", never "no").

    Returns ``difference`` (mean d), ``low`` (its lower bound), ``margin``, ``n`` (pairs)
    and ``matching`` (bool), each of shape ``...``.
    """
    from scipy.stats import t as student_t

    sub, dense = np.broadcast_arrays(np.asarray(sub, float), np.asarray(dense, float))
    ok = np.isfinite(sub) & np.isfinite(dense)
    n = ok.sum(-1)
    d = np.where(ok, sub - dense, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, d.sum(-1) / np.maximum(n, 1), np.nan)
        var = np.where(ok, (d - mean[..., None]) ** 2, 0.0).sum(-1) / (n - 1)
        se = np.sqrt(np.where(n > 1, var, np.nan) / n)
        quantile = student_t.ppf(confidence, np.where(n > 1, n - 1, 1))
        low = np.where(n > 1, mean - quantile * se, np.nan)
        finite_dense = np.isfinite(dense)
        nd = finite_dense.sum(-1)
        dense_mean = np.where(finite_dense, dense, 0.0).sum(-1) / np.maximum(nd, 1)
        dense_sd = np.sqrt(np.where(finite_dense, (dense - dense_mean[..., None]) ** 2, 0.0)
                           .sum(-1) / (nd - 1))
        margin = np.fmax(tolerance, np.where(nd > 1, dense_sd, np.nan))
        matching = low >= -margin
    return {"difference": mean, "low": low, "margin": margin, "n": n, "matching": matching}


def matching(per_replica: xr.DataArray, *, tolerance: float = MATCHING_TOLERANCE,
             confidence: float = MATCHING_CONFIDENCE) -> dict[str, xr.DataArray]:
    """:func:`paired_matching` for every (kind, level, rewind) of ``per_replica`` (the final
    test accuracy per replica, NaN where a run is not complete), against the level-0 ``imp``
    copies at the same k: replica j against replica j, which shares its data order u_j for
    every kind that trains copy j under u_j (``perturb`` copies all train under u_0, so
    theirs are paired by index only). The dense copies against themselves give d = 0:
    matching. Variables ``matching``, ``matching_difference``, ``matching_low``,
    ``matching_pairs`` and (per k) ``matching_margin``; all NaN / False when the study has
    no level-0 ``imp`` copies."""
    acc = per_replica.transpose("kind", "level", "rewind", "replica")
    if "imp" in acc.kind.values and 0 in acc.level.values:
        dense = acc.sel(kind="imp", level=0).values[None, None]  # (1, 1, rewind, replica)
    else:
        dense = np.full((1, 1) + acc.shape[2:], np.nan)
    out = paired_matching(acc.values, dense, tolerance=tolerance, confidence=confidence)
    klr = acc.isel(replica=0, drop=True)
    names = {"matching": "matching", "difference": "matching_difference",
             "low": "matching_low", "n": "matching_pairs"}
    res = {v: klr.copy(data=out[k].astype(bool if k == "matching" else
                                          np.int64 if k == "n" else float))
           for k, v in names.items()}
    res["matching_margin"] = xr.DataArray(out["margin"][0, 0], dims=("rewind",),
                                          coords={"rewind": acc.rewind.values})
    return res


def flags(results: dict, per_replica: xr.DataArray, *, threshold: float,
          tolerance: float) -> dict[str, xr.DataArray]:
    """Stable: mean instability < threshold. Matching: :func:`matching` (paired with the
    dense copies; one dense run is only information, ``dense_test_acc``)."""
    with np.errstate(invalid="ignore"):
        mean_instability = results["instability"].mean("pair", skipna=True)
    return {"stable": mean_instability < threshold, **matching(per_replica, tolerance=tolerance)}
