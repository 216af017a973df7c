"""Collect phase of make_findings.py: every analysed store -> one tidy table (results.csv).

One row per value: condition, seed, quantity, kind, level, rewind, alpha, value (empty
where a column does not apply). Everything the report shows is derived from this table,
so it is committed and the report can be re-rendered without the stores.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import xarray as xr
from common import store_path

import stabilitylab

COLUMNS = ("condition", "seed", "quantity", "kind", "level", "rewind", "alpha", "value")

# per (kind, level, rewind), reduced over pairs/replicas as the analysis' measure table does
PER_RUN_SET = {
    "final_test_acc": None,  # already the replica mean
    "final_test_acc_std": None,
    "density": None,
    "instability": "pair",
    "data_order_l2_final": "pair",
    "data_order_angle_final": "pair",
}


def _rows_from(da: xr.DataArray, condition: str, seed: int, quantity: str) -> list[dict]:
    rows = []
    dims = [d for d in ("kind", "level", "rewind", "alpha", "measure") if d in da.dims]
    extra = set(da.dims) - set(dims)
    if extra:
        raise ValueError(f"{quantity}: unexpected dims {sorted(extra)}")
    da = da.transpose(*dims)
    values = np.asarray(da.values, dtype=float)
    for index in np.ndindex(values.shape):
        row = {"condition": condition, "seed": seed, "quantity": quantity}
        for d, i in zip(dims, index):
            v = da[d].values[i]
            if d == "measure":
                row["quantity"] = f"{quantity}:{v}"
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
    diverged = int((status == 3).sum())
    rows.append({"condition": condition, "seed": seed, "quantity": "diverged_runs", "value": diverged})
    return [r for r in rows if np.isfinite(r["value"])]


def collect(plan: dict, runs: Path, out: Path) -> None:
    rows, missing = [], []
    for cond in plan["condition"]:
        for seed in plan["seeds"]:
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
    print(f"collect: {len(rows)} rows from {len(plan['condition']) * len(plan['seeds'])} studies -> {out}")
