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


def _rows_from(da: xr.DataArray, condition: str, seed: int, quantity: str) -> list[dict]:
    rows = []
    dims = [d for d in ("kind", "level", "rewind", "alpha", "step", "measure", "delta")
            if d in da.dims]
    extra = set(da.dims) - set(dims)
    if extra:
        raise ValueError(f"{quantity}: unexpected dims {sorted(extra)}")
    da = da.transpose(*dims)
    values = np.asarray(da.values, dtype=float)
    for index in np.ndindex(values.shape):
        row = {"condition": condition, "seed": seed, "quantity": quantity}
        for d, i in zip(dims, index):
            v = da[d].values[i]
            if d in ("measure", "delta"):
                row["quantity"] = f"{row['quantity']}:{v}"
            else:
                row[d] = str(v) if d == "kind" else (float(v) if d == "alpha" else int(v))
        row["value"] = values[index]
        rows.append(row)
    return rows


def study_rows(store: Path, condition: str, seed: int) -> list[dict]:
    study = stabilitylab.open_study(store)
    an = stabilitylab.open_analysis(store)
    rows = [{"condition": condition, "seed": seed, "quantity": "dense_test_acc",
             "value": float(an.dense_test_acc)}]
    status = study.status.load()
    for name, dim in PER_RUN_SET.items():
        if name not in an:
            continue
        da = an[name]
        if dim is not None:
            with np.errstate(invalid="ignore"):
                da = da.mean(dim, skipna=True)
        # only (kind, level, rewind) cells that were trained
        da = da.where((status != 0).any("replica"))
        rows += [r for r in _rows_from(da, condition, seed, name) if np.isfinite(r["value"])]
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
            rows += study_rows(store, cond["name"], seed)
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
