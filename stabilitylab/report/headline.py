"""The report's opening answer: a few lines a reader needs before any table.

    items = headline(study, analysis)   # [("Study", "..."), ("Stability point", "..."), ...]

In order: the study in one line; the stability point per level (the LMC rule, Frankle et
al., ICML 2020: the earliest rewind point k whose mean instability over replica pairs is
below the threshold) with its spread (:func:`stabilitylab.report.intervals.stability_point`);
the rewind point recommended at the sparsest level, what it gives up against the best k
and what finding it cost; whether IMP beats the controls at the sparsest level; and every
run that diverged or is missing. Accuracies are in percent, differences in percentage
points (pp).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from stabilitylab.analysis.barriers import LMC_THRESHOLD
from stabilitylab.core.keys import (
    STATUS_ABSENT,
    STATUS_COMPLETE,
    STATUS_DIVERGED,
    STATUS_INCOMPLETE,
)
from stabilitylab.report import figures as F
from stabilitylab.report import intervals as I
from stabilitylab.report import tables as T


def _density(analysis, level) -> str:
    d = F._get(analysis, "density", kind="imp", level=level)
    return f"{100 * float(np.nanmean(np.asarray(d, float))):.3g}%" if F._finite(d) else "?"


def study_line(study: xr.Dataset | None, analysis: xr.Dataset | None,
               total: int | None = None) -> str:
    """``"mnist1d-default: conv1d on mnist1d, sgd lr 0.1, T = 1500 iterations, ..."``
    (``total``: T if the caller has it, else resolved from the study's config)."""
    cfg = T._config(study.attrs) if study is not None else {}
    data, model = cfg.get("data", {}), cfg.get("model", {})
    train, prune, st = cfg.get("training", {}), cfg.get("pruning", {}), cfg.get("study", {})
    source = study if study is not None else analysis
    rewinds = [int(k) for k in source["rewind"].values] if "rewind" in source.coords else []
    levels = [int(v) for v in source["level"].values] if "level" in source.coords else []
    replicas = int(source.sizes["replica"]) if "replica" in source.sizes else st.get("replicas")
    if total is None:
        total = _total_steps(study) if study is not None else 0
    steps = f"{total:,} iterations" if total else train.get("steps", "?")
    parts = [f"{model.get('name', '?')} on {data.get('name', '?')}",
             f"{str(train.get('optimizer', '?')).upper()}, lr {train.get('lr', '?')}, T = {steps}",
             f"{replicas} replicas from each rewind point k = {T.plain_value(rewinds)}"]
    if levels and analysis is not None:
        parts.append(f"IMP levels {levels[0]}–{levels[-1]} (density {_density(analysis, levels[0])}"
                     f" → {_density(analysis, levels[-1])}, pruning {prune.get('fraction', '?')} "
                     "per level)")
    controls = [F.KIND_LABELS.get(c, c) for c in st.get("controls", [])]
    if controls and analysis is not None and "kind" in analysis.coords:
        present = [c for c in st.get("controls", []) if c in analysis["kind"].values]
        if present:
            parts.append("controls: " + ", ".join(F.KIND_LABELS.get(c, c) for c in present))
    name = st.get("name") or (study.attrs.get("study_id") if study is not None else "analysis")
    dense = _dense(analysis)
    tail = f"; dense test accuracy {100 * dense:.2f}%" if dense is not None else ""
    return f"{name}: " + "; ".join(parts) + tail + "."


def _dense(analysis):
    if analysis is None or "dense_test_acc" not in analysis:
        return None
    return T._num(np.nanmean(np.asarray(analysis["dense_test_acc"].values, float)))


def stability_points(analysis: xr.Dataset) -> dict[int, I.RewindInterval]:
    """The LMC rule's k per level of IMP, with its spread over replicas."""
    if analysis is None or "instability" not in analysis:
        return {}
    threshold = float(analysis.attrs.get("threshold", LMC_THRESHOLD))
    inst = analysis["instability"].sel(kind="imp").transpose("level", "rewind", "pair").load()
    pair_a, pair_b = T.pair_labels(analysis)
    return {int(lv): I.stability_point(inst["rewind"].values, inst.sel(level=lv).values,
                                       pair_a, pair_b, threshold)
            for lv in inst["level"].values}


def _later_above(analysis, level, k) -> str:
    """``"; k = 50 is above the threshold again (2.40 pp): ..."`` or ''."""
    if k is None:
        return ""
    threshold = float(analysis.attrs.get("threshold", LMC_THRESHOLD))
    mean = analysis["instability"].sel(kind="imp", level=level).mean("pair", skipna=True)
    later = [(int(r), float(m)) for r, m in zip(mean["rewind"].values, mean.values)
             if r > k and np.isfinite(m) and m >= threshold]
    if not later:
        return ""
    shown = ", ".join(f"k = {r} ({100 * m:.2f} pp)" for r, m in later)
    return (f"; later above the threshold again: {shown}, which does not move the point (the "
            "rule takes the earliest stable k, as in Frankle et al.)")


def _replica_steps(study: xr.Dataset | None, total: int) -> int | None:
    """Replica-steps the study trained: (T − k) for every run present, plus the dense run."""
    if study is None or "status" not in study or total <= 0:
        return None
    present = (study["status"] != STATUS_ABSENT).load()
    per_run = total - present["rewind"]
    return int((present * per_run).sum()) + total


def _recommendation(study, analysis, points, total: int) -> str | None:
    if not points:
        return None
    level = max(points)
    point = points[level]
    if point.k is None:
        return (f"none: no rewind point is stable at level {level} (density "
                f"{_density(analysis, level)}); try later k.")
    acc = T._accuracy_at(analysis, level, point.k)
    oracle = T._num(analysis["oracle_rewind"].sel(level=level)) if "oracle_rewind" in analysis \
        else None
    text = (f"k = {point.k} at level {level} (density {_density(analysis, level)}), by the LMC "
            "rule")
    if acc is not None:
        text += f"; its accuracy {100 * acc:.2f}%"
    if oracle is not None and oracle >= 0 and acc is not None:
        best = T._accuracy_at(analysis, level, int(oracle))
        if best is not None and int(oracle) == point.k:
            text += ", the best of all k (the highest mean accuracy)"
        elif best is not None:
            text += (f" is {100 * (best - acc):.2f} pp below the best k (k = {int(oracle)}, "
                     f"{100 * best:.2f}%, the highest mean accuracy)")
    rewinds = [int(k) for k in analysis["rewind"].values]
    copies = point.n * sum(total - k for k in rewinds) if total else None
    study_steps = _replica_steps(study, total)
    if copies and study_steps:
        text += (f". Finding it took the {point.n} data-order copies of every k at that level: "
                 f"{copies:,} replica-steps, {100 * copies / study_steps:.0f}% of the study's "
                 f"{study_steps:,}")
    return text + "."


def _total_steps(study, resolved=None) -> int:
    """T in iterations: the store's own record, else the resolved study's (0 if unknown)."""
    if int(study.attrs.get("total_steps", 0) or 0):
        return int(study.attrs["total_steps"])
    if resolved is not None:
        return int(resolved.total_steps)
    from stabilitylab.study.resolve import study_from_dict

    try:
        return int(study_from_dict(T._config(study.attrs)).total_steps)
    except Exception:  # noqa: BLE001 - a foreign config: the cost is left out
        return 0


def _controls(study, analysis, prefer=None) -> str | None:
    """IMP vs each control at the sparsest level with controls, at rewind point ``prefer``
    (the recommended k) when every kind has results there, else at the latest such k."""
    if analysis is None or "final_test_acc" not in analysis or "kind" not in analysis.coords:
        return None
    controls = [c for c in analysis["kind"].values if c != "imp"]
    acc = analysis["final_test_acc"]
    levels = [lv for lv in acc["level"].values
              if any(F._finite(acc.sel(kind=c, level=lv)) for c in controls)]
    if not controls or not levels:
        return None
    level = levels[-1]
    has = [int(k) for k in acc["rewind"].values
           if all(F._finite(acc.sel(kind=c, level=level, rewind=k)) for c in ("imp", *controls))]
    if not has:
        return None
    k = prefer if prefer in has else has[-1]
    per_replica = T.replica_accuracy(study)

    def interval(kind):
        if per_replica is None:
            v = T._num(acc.sel(kind=kind, level=level, rewind=k))
            return None if v is None else I.Interval(v, v, v, 0, I.RANGE)
        return I.replica_interval(per_replica.sel(kind=kind, level=level, rewind=k).values)

    imp = interval("imp")
    parts, beats = [], []
    for c in controls:
        iv = interval(c)
        if iv is None or not iv.finite:
            continue
        diff = 100 * (imp.mean - iv.mean)
        if imp.low > iv.high:
            verdict, won = "beats it", True
        elif imp.high < iv.low:
            verdict, won = "is below it", False
        else:
            verdict, won = "within noise (the intervals overlap)", False
        beats.append(won)
        parts.append(f"{F.KIND_LABELS.get(str(c), c)} {100 * iv.mean:.2f}% ({diff:+.2f} pp; IMP "
                     f"{verdict})")
    if not parts:
        return None
    answer = "yes" if all(beats) else ("no" if not any(beats) else "partly")
    return (f"{answer}. At density {_density(analysis, level)} (level {level}, k = {k}): IMP "
            f"{100 * imp.mean:.2f}% ({imp.text()}) vs " + "; ".join(parts) + ".")


def _runs(study, analysis) -> str:
    if study is None or "status" not in study:
        return "unknown (no study)"
    status = study["status"].load()
    present = int((status != STATUS_ABSENT).sum())
    bad = status.where(status.isin([STATUS_INCOMPLETE, STATUS_DIVERGED])).to_series().dropna()
    div = study["diverged_step"].load() if "diverged_step" in study else None
    items = []
    for (kind, level, rewind, replica), code in bad.items():
        what = T.STATUS[int(code)]
        if code == STATUS_DIVERGED and div is not None:
            what += f" at step {int(div.sel(kind=kind, level=level, rewind=rewind, replica=replica))}"
        items.append(f"{kind} level {level} k = {rewind} replica {replica} {what}")
    if "dense_status" in study and \
            int(np.asarray(study["dense_status"].values).ravel()[0]) != STATUS_COMPLETE:
        items.append(f"the dense run is {T.STATUS.get(int(np.asarray(study['dense_status']).ravel()[0]))}")
    if not items:
        return f"all {present} runs complete (plus the dense run); none diverged."
    shown = items if len(items) <= 6 else items[:6] + [f"and {len(items) - 6} more"]
    return (f"{len(items)} of {present} runs not usable: " + "; ".join(shown)
            + ". They are left out of every number in this report.")


def headline(study: xr.Dataset | None, analysis: xr.Dataset | None, *,
             resolved=None) -> list[tuple[str, object]]:
    """(label, text) pairs for the top of the report: ``text`` a sentence, or a list of
    them (the stability point, one per level). ``resolved``: the study's Study, if the
    caller has it (else the stored config is resolved once here)."""
    total = _total_steps(study, resolved) if study is not None else 0
    items = [("Study", study_line(study, analysis, total))] if (study is not None
                                                         or analysis is not None) else []
    if analysis is None:
        return items + [("Runs", _runs(study, analysis))]
    points = stability_points(analysis)
    threshold = 100 * float(analysis.attrs.get("threshold", LMC_THRESHOLD))
    if points:
        per_level = [f"level {lv} (density {_density(analysis, lv)}): "
                     + (f"stable from k = {p.k}" if p.k is not None else "no k is stable")
                     + f"; {p.text()}" + _later_above(analysis, lv, p.k)
                     for lv, p in points.items()]
        items.append((f"Stability point (earliest k with instability < {threshold:g} pp)",
                      per_level))
    rec = _recommendation(study, analysis, points, total)
    if rec:
        items.append(("Recommended rewind point", rec))
    last = points.get(max(points)) if points else None
    ctl = _controls(study, analysis, prefer=last.k if last is not None else None)
    if ctl:
        items.append(("IMP vs the controls at the sparsest level", ctl))
    items.append(("Diverged or missing runs", _runs(study, analysis)))
    return items
