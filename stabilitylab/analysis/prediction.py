"""From measures to answers: stable/matching flags, correlations with accuracy, predicted k.

For each level, every scalar measure (pair or replica mean, ``imp`` kind) is
correlated with the final test accuracy across rewind points (Spearman and
Kendall, bootstrap CIs). The rewind point is predicted by

- the LMC rule (Frankle et al., ICML 2020): the earliest k with instability < the
  threshold (:data:`stabilitylab.analysis.barriers.LMC_THRESHOLD`, 2% error);
- a measure rule per measure: the earliest k whose value has settled to within
  10% of its value at the largest k (:func:`stabilitylab.analysis.stats.predict_rewind_measure`),

and each prediction is compared with the oracle (the k of best final accuracy).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from stabilitylab.analysis import registry
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


def flags(results: dict, accuracy: xr.DataArray, dense_acc: float, *, threshold: float,
          tolerance: float) -> dict[str, xr.DataArray]:
    """Stable: mean instability < threshold. Matching: accuracy within tolerance of dense."""
    with np.errstate(invalid="ignore"):
        mean_instability = results["instability"].mean("pair", skipna=True)
        return {"stable": mean_instability < threshold,
                "matching": accuracy >= dense_acc - tolerance}
