"""Every tensor ``analyze`` starts from is finite, or its run is absent, with one line naming it.

A complete run's final weights and BatchNorm statistics, the dense run's, and the rewind
points' W_k and statistics are what every measure interpolates, evaluates and compares.
``record`` marks a run whose weights go non-finite ``diverged`` (and its dependants
``parent_diverged``), so in a store it wrote these are finite; a NaN here means a damaged
or foreign store: the run is then analyzed as absent (NaN), never measured. Measured anyway,
a NaN statistic poisons every interpolated model (0 * NaN is NaN) while argmax over NaN
logits still gives a finite-looking error.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from stabilitylab.core.keys import STATUS_COMPLETE, STATUS_DIVERGED

log = logging.getLogger(__name__)


def _layout(attrs: dict, key: str) -> list[dict]:
    layout = attrs.get(key) or []
    return json.loads(layout) if isinstance(layout, str) else list(layout)


def _tensor_at(layout: list[dict], index: int) -> str:
    for s in layout:
        if s["offset"] <= index < s["offset"] + s["size"]:
            return s["name"]
    return f"index {index}"


def _bad(values: np.ndarray, layout) -> tuple[str, int] | None:
    """(first tensor holding a non-finite value, how many there) of one flat row, or None."""
    bad = ~np.isfinite(values)
    if not bad.any():
        return None
    return _tensor_at(layout, int(np.nonzero(bad)[0][0])), int(bad.sum())


def exclude_nonfinite_inputs(ctx) -> list[str]:
    """Every complete run whose inputs are not all finite is analyzed as absent (NaN): one
    warning each, naming the run and the tensor. Inputs: its final weights and buffers and,
    for IMP runs (which start from it), W_k and its buffers. Returns the runs, described as
    in ``attrs["absent"]``. A NaN buffer would otherwise give NaN logits whose argmax still
    looks like a prediction, so a disagreement or error would come out finite and wrong."""
    ds = ctx.ds
    params, buffers = _layout(ds.attrs, "param_layout"), _layout(ds.attrs, "buffer_layout")
    idx = [tuple(int(v) for v in i) for i in np.argwhere(ctx.status == STATUS_COMPLETE)]
    if not idx:
        return []
    sel = tuple(np.array(idx).T)
    if int(ctx.steps[-1]) == ctx.resolved.total_steps:  # the shared views, read already
        final = ctx.load("final_weights").transpose(..., "param").values[sel]
    else:
        final = np.asarray(ds.weights.isel(step=-1).values)[sel]
    final_buffers = np.asarray(ctx.load("final_buffers").values)[sel]
    starts = {}
    for r in {i[2] for i in idx if ctx.kinds[i[0]] == "imp"}:
        w_k = np.asarray(ds.rewind_state_weights.values[r]) if "rewind_state_weights" in ds \
            else np.zeros(0)
        b_k = np.asarray(ds.rewind_buffers.values[r]) if "rewind_buffers" in ds else np.zeros(0)
        starts[r] = _bad(w_k, params) or _bad(b_k, buffers)
    absent = []
    for row, i in enumerate(idx):
        run = (f"{ctx.kinds[i[0]]} level {ctx.levels[i[1]]} rewind {ctx.rewinds[i[2]]} "
               f"replica {ctx.replicas[i[3]]}")
        found = [(what, hit) for what, hit in (
            ("final weights", _bad(final[row], params)),
            ("final buffers", _bad(final_buffers[row], buffers)),
            (f"start W_{ctx.rewinds[i[2]]}", starts.get(i[2]) if ctx.kinds[i[0]] == "imp" else None),
        ) if hit is not None]
        if not found:
            continue
        what, (name, n) = found[0]
        log.warning("run %s is marked complete but its %s hold %d non-finite value%s in tensor "
                    "%r: analyzed as absent (NaN)", run, what, n, "" if n == 1 else "s", name)
        ctx.status[i] = STATUS_DIVERGED  # every measure skips it
        ctx.skipped.append(f"skipped {run}: non-finite {what} (tensor {name!r})")
        absent.append(f"{run} (non-finite inputs)")
    return absent
