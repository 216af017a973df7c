"""Every tensor ``analyze`` starts from is finite, or it stops with one line naming it.

A complete run's final weights and BatchNorm statistics, the dense run's, and the rewind
points' W_k and statistics are what every measure interpolates, evaluates and compares.
``record`` marks a run whose weights go non-finite ``diverged`` (and its dependants
``parent_diverged``), so in a store it wrote these are finite; a NaN here means a damaged
or foreign store. Measured anyway, a NaN statistic poisons every interpolated model
(0 * NaN is NaN) while argmax over NaN logits still gives a finite-looking error.
"""

from __future__ import annotations

import json

import numpy as np

from stabilitylab.errors import StoreError
from stabilitylab.store.schema import STATUS_COMPLETE


def _layout(attrs: dict, key: str) -> list[dict]:
    layout = attrs.get(key) or []
    return json.loads(layout) if isinstance(layout, str) else list(layout)


def _tensor_at(layout: list[dict], index: int) -> str:
    for s in layout:
        if s["offset"] <= index < s["offset"] + s["size"]:
            return s["name"]
    return f"index {index}"


def _check(values: np.ndarray, runs, layout, what: str, where: str) -> None:
    """``values``: (n, width) rows, one per entry of ``runs`` (descriptions)."""
    if values.size == 0:
        return
    bad = ~np.isfinite(values)
    if not bad.any():
        return
    row = int(np.nonzero(bad.any(axis=1))[0][0])
    name = _tensor_at(layout, int(np.nonzero(bad[row])[0][0]))
    n = int(bad[row].sum())
    raise StoreError(f"{where}: {what} of {runs[row]}: tensor {name!r} holds {n} non-finite "
                     f"value{'' if n == 1 else 's'} (NaN or inf) although it is marked complete; "
                     "refused (a damaged or foreign store)")


def check_finite_inputs(ctx, where: str) -> None:
    """StoreError (one line naming the run and the tensor) unless every input is finite:
    final weights and buffers of the complete runs, the complete dense run's final buffers,
    and W_k with its buffers at each rewind point a complete run starts from."""
    ds = ctx.ds
    params, buffers = _layout(ds.attrs, "param_layout"), _layout(ds.attrs, "buffer_layout")
    idx = np.argwhere(ctx.status == STATUS_COMPLETE)
    runs = [f"{ctx.kinds[k]} level {ctx.levels[lv]} rewind {ctx.rewinds[r]} replica "
            f"{ctx.replicas[p]}" for k, lv, r, p in idx]
    if len(idx):
        sel = tuple(idx.T)
        final = np.asarray(ds.weights.isel(step=-1).values)[sel]
        _check(final, runs, params, "the final weights", where)
        _check(np.asarray(ds.final_buffers.values)[sel], runs, buffers, "the final buffers", where)
    dense_done = int(np.asarray(ds.dense_status.values).reshape(-1)[0]) == STATUS_COMPLETE
    if dense_done and "dense_final_buffers" in ds:
        _check(np.asarray(ds.dense_final_buffers.values)[None], ["the dense run"], buffers,
               "the final buffers", where)
    imp = [i for i in idx if ctx.kinds[i[0]] == "imp"]  # the runs that start from W_k
    used = sorted({int(i[2]) for i in imp})
    starts = [f"the dense run at step {ctx.rewinds[r]}" for r in used]
    if "rewind_state_weights" in ds and used:
        _check(np.asarray(ds.rewind_state_weights.values)[used], starts, params, "W_k", where)
    if "rewind_buffers" in ds and used:
        _check(np.asarray(ds.rewind_buffers.values)[used], starts, buffers, "the buffers", where)
