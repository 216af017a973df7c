"""Collect phase of make_findings.py: every analysed store -> one tidy table (results.csv).

One row per value: condition, seed, quantity, kind, level, rewind, alpha, step, value
(empty where a column does not apply). Everything the report shows is derived from this table,
so it is committed and the report can be re-rendered without the stores.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import xarray as xr
from common import seeds_of, store_path

import stabilitylab

COLUMNS = ("condition", "seed", "quantity", "kind", "level", "rewind", "alpha", "step", "value")

# per (kind, level, rewind), reduced over pairs/replicas as the analysis' measure table does
PER_RUN_SET = {
    "final_test_acc": None,  # already the replica mean
    "final_test_acc_std": None,
    "density": None,
    "instability": "pair",
    "data_order_l2_final": "pair",
    "data_order_angle_final": "pair",
    "divergence_rate": "pair",  # (stores analysed with the divergence group)
    "divergence_time": "pair",
}

# Q5's dose-response (the ``dose`` sweep) and Q8-Q11, for their conditions only (the other conditions' rows stay
# as they were): more barriers per (kind, level, rewind), pair means; ``curve`` and ``layer``
# become quantity suffixes (curve_barrier:bezier, layerwise_barrier:conv2)
GEOMETRY_SET = ("aligned_instability", "repaired_instability", "aligned_repaired_instability",
                "loss_barrier", "loss_barrier_train", "disagreement", "curve_barrier",
                "linear_minus_curve", "layerwise_barrier", "matching", "matching_difference",
                "matching_low")
# the dose-response's pairs apart: ``:ref`` the pairs with replica 0 (for the perturb kind of a
# perturb_reference study, a perturbed copy against the unperturbed one), ``:pp`` the others
DOSE_SET = ("instability", "loss_barrier_train", "data_order_l2_final", "disagreement")
SUFFIX_DIMS = ("measure", "delta", "curve", "layer")


def _rows_from(da: xr.DataArray, condition: str, seed: int, quantity: str) -> list[dict]:
    rows = []
    dims = [d for d in ("kind", "level", "rewind", "alpha", "step", *SUFFIX_DIMS) if d in da.dims]
    extra = set(da.dims) - set(dims)
    if extra:
        raise ValueError(f"{quantity}: unexpected dims {sorted(extra)}")
    da = da.transpose(*dims)
    values = np.asarray(da.values, dtype=float)
    for index in np.ndindex(values.shape):
        row = {"condition": condition, "seed": seed, "quantity": quantity}
        for d, i in zip(dims, index):
            v = da[d].values[i]
            if d in SUFFIX_DIMS:
                row["quantity"] = f"{row['quantity']}:{v}"
            else:
                row[d] = str(v) if d == "kind" else (float(v) if d == "alpha" else int(v))
        row["value"] = values[index]
        rows.append(row)
    return rows


def _pair_mean(da: xr.DataArray) -> xr.DataArray:
    if "pair" not in da.dims:
        return da
    with np.errstate(invalid="ignore"):
        return da.mean("pair", skipna=True)


def study_rows(store: Path, condition: str, seed: int, questions=(), sweep=None) -> list[dict]:
    study = stabilitylab.open_study(store)
    an = stabilitylab.open_analysis(store)
    rows = [{"condition": condition, "seed": seed, "quantity": "dense_test_acc",
             "value": float(an.dense_test_acc)}]
    status = study.status.load()
    trained = (status != 0).any("replica")  # only (kind, level, rewind) cells that were trained
    for name, dim in PER_RUN_SET.items():
        if name not in an:
            continue
        da = an[name]
        if dim is not None:
            with np.errstate(invalid="ignore"):
                da = da.mean(dim, skipna=True)
        da = da.where(trained)
        rows += [r for r in _rows_from(da, condition, seed, name) if np.isfinite(r["value"])]
    if sweep == "dose" or {"Q8", "Q9", "Q10", "Q11"} & set(questions):
        for name in GEOMETRY_SET:
            if name in an:
                da = _pair_mean(an[name].astype(float)).where(trained)
                rows += _rows_from(da, condition, seed, name)
        for name in ("cross_level_barrier", "cross_level_loss_barrier"):  # (level, rewind)
            if name in an:
                with np.errstate(invalid="ignore"):
                    rows += _rows_from(an[name].mean("replica", skipna=True), condition, seed, name)
        if "matching_margin" in an:
            rows += _rows_from(an.matching_margin, condition, seed, "matching_margin")
    if sweep == "dose":
        ref = an.pair_a == 0
        for name in DOSE_SET:
            for tag, pairs in (("ref", ref), ("pp", ~ref)):
                if name in an and bool(pairs.any()):
                    da = _pair_mean(an[name].where(pairs)).where(trained)
                    rows += _rows_from(da, condition, seed, f"{name}:{tag}")
    # the candidate measures (imp), as the analysis tabulates them
    rows += _rows_from(an.measure_value, condition, seed, "measure")
    rows += _rows_from(an.random_imp_ratio_data_order, condition, seed, "random_imp_ratio_data_order")
    # dense-copy interpolation curves (level 0), for the figure
    curve = an.interp_test_error.sel(kind="imp", level=0).mean("pair")
    rows += _rows_from(curve.expand_dims(level=[0]), condition, seed, "interp_test_error")
    if "barrier_at" in an:  # the barrier at k + delta (level-0 copies), pair mean, per kind
        with np.errstate(invalid="ignore"):
            da = an.barrier_at.sel(level=0).mean("pair", skipna=True)
        rows += _rows_from(da.expand_dims(level=[0]), condition, seed, "barrier_at")
    if "divergence_rate" in an:  # studies with noise kinds: distance-growth curves (level 0)
        with np.errstate(invalid="ignore"):
            da = an.data_order_l2.sel(level=0).mean("pair", skipna=True)
        rows += _rows_from(da.expand_dims(level=[0]), condition, seed, "data_order_l2")
    diverged = int((status == 3).sum())
    rows.append({"condition": condition, "seed": seed, "quantity": "diverged_runs", "value": diverged})
    return [r for r in rows if np.isfinite(r["value"])]


def collect(plan: dict, runs: Path, out: Path, only: list[str] | None = None) -> None:
    """Write ``out`` from the stores of every condition, or, with ``only``, replace the rows of
    those conditions and keep the other conditions' rows of the existing ``out``."""
    rows, missing = [], []
    if only:
        unknown = sorted(set(only) - {c["name"] for c in plan["condition"]})
        if unknown:
            raise SystemExit(f"error: --conditions: no condition named {unknown[0]!r}")
        with open(out, newline="") as f:
            for r in csv.DictReader(f):
                if r["condition"] not in only:
                    rows.append({**r, "value": float(r["value"])})
    for cond in plan["condition"]:
        if only and cond["name"] not in only:
            continue
        for seed in seeds_of(plan, cond):
            store = store_path(runs, cond["name"], seed)
            if not (store / "analysis").exists():
                missing.append(store.name)
                continue
            rows += study_rows(store, cond["name"], seed, cond["questions"], cond.get("sweep"))
    if missing:
        raise SystemExit(f"error: {len(missing)} studies are not analysed yet ({', '.join(missing[:4])}...); "
                         "run the 'run' phase first")
    tmp = out.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            v = r["value"]
            w.writerow({**r, "value": "nan" if np.isnan(v) else f"{v:.6g}"})
    tmp.replace(out)
    n = sum(len(seeds_of(plan, c)) for c in plan["condition"] if not only or c["name"] in only)
    print(f"collect: {len(rows)} rows ({n} studies read) -> {out}")
