"""The report's tables as rows of plain values: the summary per (kind, level, k), the
rewind-point predictions, the configuration that applies, provenance and run status.

    rows = summary_table(stabilitylab.open_study(url), stabilitylab.open_analysis(url))

Fractions stay fractions in the rows; the writers (:mod:`stabilitylab.report.document`)
show accuracies in percent and errors in percentage points. Intervals are
:mod:`stabilitylab.report.intervals` objects, which carry their n.
"""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import xarray as xr

from stabilitylab.analysis.barriers import LMC_THRESHOLD
from stabilitylab.analysis.pair_noise import label as pair_label
from stabilitylab.core.keys import (
    STATUS_ABSENT,
    STATUS_CODES,
    STATUS_COMPLETE,
    STATUS_DIVERGED,
    STATUS_INCOMPLETE,
    STATUS_PARENT_DIVERGED,
)
from stabilitylab.data.registry import declared_facts
from stabilitylab.report import figures as F
from stabilitylab.report import geometry as G
from stabilitylab.report import intervals as I
from stabilitylab.report import matching as M
from stabilitylab.report.intervals import pair_labels

STATUS = {code: name for name, code in STATUS_CODES.items()}

# ----------------------------------------------------------------------------- tables
def _num(v):
    """A plain Python number, None for NaN / missing / a negative rewind (−1 = none)."""
    if v is None:
        return None
    v = np.asarray(v).item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


PERCENT = {"accuracy_predicted", "accuracy_oracle", "gap", "accuracy",
           "instability", "cross_level"}  # fractions shown as % / percentage points


def cell_text(key: str, v) -> str:
    """One table cell as text: intervals as written, fractions in PERCENT as %, unknowns as
    a dash (density: 'unknown')."""
    if isinstance(v, I.Interval):
        return v.text()
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    v = _num(v) if isinstance(v, (float, np.floating, np.integer)) else v
    if v is None:
        return "unknown" if key == "density" else "–"
    if key in PERCENT and isinstance(v, float):
        return f"{100 * v:.2f}"
    if key == "density" and isinstance(v, float):
        return f"{100 * v:.3g}%"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _accuracy_at(analysis: xr.Dataset, level, rewind):
    if rewind is None or "final_test_acc" not in analysis:
        return None
    try:
        return _num(analysis["final_test_acc"].sel(kind="imp", level=level, rewind=rewind))
    except KeyError:
        return None


def prediction_table(analysis: xr.Dataset) -> list[dict]:
    """Predicted rewind point per (level, rule) vs the oracle, with the accuracy gap.

    One row for the LMC rule (earliest k with mean instability < threshold) and one per
    stability measure with finite values at that level. Keys: ``level``, ``density``,
    ``rule``, ``predicted_rewind``, ``oracle_rewind``, ``accuracy_predicted``,
    ``accuracy_oracle``, ``gap`` (accuracy(oracle) − accuracy(predicted)); None where
    a rule predicts nothing.
    """
    if "oracle_rewind" not in analysis:
        return []
    threshold = float(analysis.attrs.get("threshold", LMC_THRESHOLD))
    rows = []

    def k_or_none(v):
        v = _num(v)
        return None if v is None or v < 0 else v

    for level in analysis["level"].values:
        oracle = k_or_none(analysis["oracle_rewind"].sel(level=level))
        density = F._get(analysis, "density", kind="imp", level=level)
        base = {"level": int(level), "oracle_rewind": oracle,
                "density": _num(np.nanmean(density.values)) if F._finite(density) else None,
                "accuracy_oracle": _accuracy_at(analysis, level, oracle)}
        rules = []
        if "predicted_rewind_lmc" in analysis:
            rules.append((f"LMC: instability < {100 * threshold:g} pp",
                          analysis["predicted_rewind_lmc"].sel(level=level),
                          F._get(analysis, "gap_lmc", level=level)))
        if "predicted_rewind_measure" in analysis:
            for m in analysis["measure"].values:
                values = F._get(analysis, "measure_value", measure=m, level=level)
                if values is not None and not F._finite(values):
                    continue  # the measure was not computed here (e.g. unsupported alignment)
                rules.append((f"measure: {m}",
                              analysis["predicted_rewind_measure"].sel(measure=m, level=level),
                              F._get(analysis, "gap_measure", measure=m, level=level)))
        for rule, pred, gap in rules:
            pred = k_or_none(pred)
            acc = _accuracy_at(analysis, level, pred)
            gap = _num(gap) if gap is not None else None
            if gap is None and acc is not None and base["accuracy_oracle"] is not None:
                gap = base["accuracy_oracle"] - acc
            rows.append({**base, "rule": rule, "predicted_rewind": pred,
                         "accuracy_predicted": acc, "gap": gap})
    return rows


def replica_accuracy(study: xr.Dataset | None):
    """The study's per-replica final test accuracy, NaN where a run is not complete."""
    if study is None or "final_test_acc" not in study or "replica" not in study["final_test_acc"].dims:
        return None
    acc = study["final_test_acc"]
    if "status" in study:
        acc = acc.where(study["status"] == STATUS_COMPLETE)
    return acc.load()


def summary_table(study: xr.Dataset | None, analysis: xr.Dataset) -> list[dict]:
    """One row per (kind, level, rewind) with results: density, final test accuracy (mean
    over complete replicas and its interval), instability (mean over replica pairs and its
    interval), stable and matching. Fractions stay fractions here; the writers show them in
    percent / percentage points.

    The intervals are :mod:`stabilitylab.report.intervals` objects: a bootstrap over
    replicas with enough of them, else the range, each with its n.
    """
    if analysis is None or "final_test_acc" not in analysis:
        return []
    acc = analysis["final_test_acc"].load()
    per_replica = replica_accuracy(study)
    inst = analysis["instability"].load() if "instability" in analysis else None
    pair_a, pair_b = pair_labels(analysis) if inst is not None else (None, None)
    noise = analysis.attrs.get("pair_noise") or {}
    rows = []
    for kind in acc["kind"].values:
        for level in acc["level"].values:
            for k in acc["rewind"].values:
                mean = _num(acc.sel(kind=kind, level=level, rewind=k))
                if mean is None:
                    continue
                at = {"kind": kind, "level": level, "rewind": k}
                row = {"kind": str(kind), "level": int(level), "rewind": int(k), "accuracy": mean,
                       "density": _num(F._get(analysis, "density", **at)),
                       "accuracy_interval": None, "instability": None,
                       "instability_interval": None, "stable": None, "matching": None}
                if per_replica is not None:
                    try:
                        row["accuracy_interval"] = I.replica_interval(per_replica.sel(**at).values)
                    except KeyError:
                        pass
                if inst is not None:
                    values = inst.sel(**at).values
                    if np.isfinite(values).any():
                        iv = I.pair_interval(values, pair_a, pair_b)
                        row["instability"] = iv.mean
                        row["instability_interval"] = iv
                if noise.get(str(kind), "data_order") != "data_order":
                    row["pairs"] = pair_label(noise[str(kind)])  # e.g. different-init pairs
                if "stable" in analysis:
                    v = _num(analysis["stable"].sel(**at))
                    row["stable"] = None if v is None else ("yes" if v else "no")
                row["matching"] = M.flag_text(analysis, at)
                row[M.COLUMN[0]] = M.difference_text(analysis, at)
                if "loss_barrier_train" in analysis:  # Kwok et al. 2025's headline barrier
                    with np.errstate(invalid="ignore"), warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)  # no pairs: NaN
                        row["loss_barrier_train"] = _num(np.nanmean(
                            analysis["loss_barrier_train"].sel(**at).values))
                row["cross_level"] = G.cross_level_value(analysis, kind, level, k)
                rows.append(row)
    order = {"imp": 0, "random_prune": 1, "reinit": 2}
    rows.sort(key=lambda r: (r["level"], order.get(r["kind"], 9), r["rewind"]))
    return rows


SUMMARY_COLUMNS = {"level": "level", "kind": "kind", "rewind": "k", "density": "density",
                   "accuracy": "final test acc. (%)",
                   "accuracy_interval": "acc. interval (%), n",
                   "instability": "instability (pp)",
                   "instability_interval": "instability interval (pp), n",
                   "loss_barrier_train": "train-loss barrier (nats)",
                   "stable": "stable", "matching": "matching", M.COLUMN[0]: M.COLUMN[1],
                   G.CROSS_LEVEL_COLUMN[0]: G.CROSS_LEVEL_COLUMN[1]}


def _config(attrs: dict) -> dict:
    cfg = attrs.get("config", attrs.get("config_json", {}))
    if isinstance(cfg, str):
        try:
            cfg = json.loads(cfg)
        except json.JSONDecodeError:
            return {"config": cfg}
    return cfg if isinstance(cfg, dict) else {}


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _applies(key: str, cfg) -> bool:
    """Whether config field ``key`` affects a study with config ``cfg``."""
    from stabilitylab.train.optimizers import OPTIMIZERS  # each declares its ``fields``

    t = cfg.training
    own = {f"training.{f}" for o in OPTIMIZERS.values() for f in o.fields}  # one optimizer's
    if key in own:
        return key.split(".", 1)[1] in OPTIMIZERS[t.optimizer].fields
    rules = {
        "data.root": False,  # where record read the data; placement, not part of the study
        "data.num_samples": "num_samples" in declared_facts(cfg.data.name).get("fields", ()),
        "training.lookahead_steps": t.lookahead, "training.lookahead_alpha": t.lookahead,
        "training.gamma": bool(t.milestones),
        "pruning.strategy": cfg.pruning.levels > 0, "pruning.fraction": cfg.pruning.levels > 0,
        "pruning.ignore": cfg.pruning.levels > 0,
        "study.record_points": cfg.study.record == "dense_early",
        "study.control_levels": bool(cfg.study.controls) and cfg.pruning.levels > 0,
        "study.controls": cfg.pruning.levels > 0,
    }
    return rules.get(key, True)


def _iterations(spec, n: int) -> str:
    return str(spec) if str(spec) == f"{n}it" else f"{spec} = {n} iterations"


def plain_value(v):
    """A value as a person writes it: lists and tuples comma-separated ("none" when empty),
    tables as ``key = value`` pairs, booleans yes/no; numbers and text unchanged."""
    if isinstance(v, (list, tuple)):
        return ", ".join(str(plain_value(x)) for x in v) if v else "none"
    if isinstance(v, dict):
        return "; ".join(f"{k} = {plain_value(x)}" for k, x in v.items()) if v else "none"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    return v


def analysis_settings(attrs: dict) -> list[dict]:
    """The analysis' settings as people read them: thresholds in percentage points
    (the store keeps fractions), durations in seconds."""
    rows = []
    for key, show in (("threshold", lambda v: f"{100 * float(v):g} pp (stable: instability "
                                              "below it)"),
                      ("matching_tolerance", lambda v: f"{100 * float(v):g} pp (the least "
                                                       "matching margin below the dense copies)"),
                      ("matching_confidence", lambda v: f"{100 * float(v):g}% (one-sided, "
                                                        "paired t bound of matching)"),
                      ("bn_recompute", plain_value), ("created_at", str),
                      ("analysis_seconds", lambda v: f"{float(v):.1f} s")):
        if key in attrs:
            rows.append({"section": "analysis", "key": key, "value": show(attrs[key])})
    return rows


def config_rows(config: dict, *, device=None, resolved=None) -> list[dict]:
    """Rows ``{"section": "config", "key", "value"}``: every setting that applies to this
    study, resolved (step strings as iterations, the control levels that actually ran, the
    number of recorded steps); settings that do not apply (Adam's betas under SGD, the
    sample count of a fixed-size dataset, ...) are left out; a model's or dataset's
    ``options`` are its own, so they always apply. A config that does not load or validate is
    shown as stored."""
    from stabilitylab.config import config_to_dict
    from stabilitylab.study.resolve import study_from_dict

    try:
        r = resolved if resolved is not None else study_from_dict(config)
        cfg = r.config
    except Exception:  # noqa: BLE001 - an old or foreign config: show it as it is
        return [{"section": "config", "key": k, "value": plain_value(v)}
                for k, v in _flatten(config)]
    flat = _flatten(config_to_dict(cfg))  # every field, defaults included
    listed = plain_value

    resolved = {
        "training.steps": f"{_iterations(cfg.training.steps, r.total_steps)} (T)",
        "training.warmup": _iterations(cfg.training.warmup, r.warmup),
        "training.eval_every": _iterations(cfg.training.eval_every, r.eval_every),
        "training.log_every": _iterations(cfg.training.log_every, r.log_every),
        "training.milestones": listed(r.milestones) + (" (iterations)" if r.milestones else ""),
        "study.rewinds": "k = " + listed(r.rewinds) + " (iterations)",
        "study.control_levels": listed(r.control_levels)
        + (" (the last level, by default)" if not cfg.study.control_levels and r.control_levels
           else ""),
        "study.controls": listed(cfg.study.controls),
        "study.record": f"{cfg.study.record}: {len(r.record_steps)} recorded steps",
        "pruning.levels": f"{cfg.pruning.levels} (densities "
        + ", ".join(f"{100 * (1 - cfg.pruning.fraction) ** lv:.3g}%" for lv in r.levels) + ")",
        "pruning.ignore": listed(cfg.pruning.ignore),
    }
    if device:
        resolved["study.device"] = f"{cfg.study.device} (ran on {device})"
    rows = []
    for key, _ in flat:
        if key.split(".")[0] not in ("data", "model", "training", "pruning", "study"):
            continue
        if not _applies(key, cfg):
            continue
        section, field = key.split(".", 1)
        if field.startswith("options."):  # a model's or dataset's own option (a free table)
            value = resolved.get(key, getattr(cfg, section).options.get(field.split(".", 1)[1]))
        else:
            value = resolved.get(key, getattr(getattr(cfg, section), field, None))
        rows.append({"section": "config", "key": key, "value": plain_value(value)})
    return rows


def study_name(study: xr.Dataset) -> str:
    """``config.study.name`` (else the study_id), safe as a folder name."""
    name = _config(study.attrs).get("study", {}).get("name") or study.attrs.get("study_id") or "study"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "study"


def _lines(v) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [ln for ln in v.splitlines() if ln.strip()]
    return [str(x) for x in np.atleast_1d(v).tolist()]


def provenance_rows(study: xr.Dataset, analysis: xr.Dataset | None = None, *,
                    resolved=None) -> list[dict]:
    """Rows ``{"section", "key", "value"}``: provenance, config (dotted keys), run counts,
    every incomplete or diverged run, and the analysis' settings and skipped runs."""
    a = study.attrs
    rows = [{"section": "provenance", "key": k, "value": plain_value(a[k])} for k in
            ("study_id", "created_at", "creation_library", "schema_version", "seed", "device",
             "complete") if k in a]
    versions = a.get("versions", {})
    if isinstance(versions, str):
        versions = json.loads(versions) if versions.startswith("{") else {"versions": versions}
    rows += [{"section": "provenance", "key": f"versions.{k}", "value": v} for k, v in versions.items()]
    rows += config_rows(_config(a), device=a.get("device"), resolved=resolved)
    if "status" in study:
        status = study["status"].load()
        for kind in status["kind"].values:
            codes, counts = np.unique(status.sel(kind=kind).values, return_counts=True)
            text = ", ".join(f"{n} {STATUS.get(int(c), c)}" for c, n in zip(codes, counts)
                             if c != STATUS_ABSENT)
            rows.append({"section": "runs", "key": str(kind), "value": text or "none"})
        if "dense_status" in study:
            dense = int(np.asarray(study["dense_status"].values).ravel()[0])
            text = STATUS.get(dense, dense)
            if dense == STATUS_DIVERGED and "dense_diverged_step" in study:
                text = f"{text} at step {int(np.asarray(study['dense_diverged_step'].values).ravel()[0])}"
            rows.append({"section": "runs", "key": "dense", "value": text})
        div = study["diverged_step"].load() if "diverged_step" in study else None
        bad = status.where(status.isin([STATUS_INCOMPLETE, STATUS_DIVERGED,
                                        STATUS_PARENT_DIVERGED])).to_series().dropna()
        for (kind, level, rewind, replica), code in bad.items():
            text = STATUS[int(code)]
            if code == STATUS_DIVERGED and div is not None:
                text += f" at step {int(div.sel(kind=kind, level=level, rewind=rewind, replica=replica))}"
            rows.append({"section": "issues", "value": text,
                         "key": f"{kind} level {level} k={rewind} replica {replica}"})
    if analysis is not None:
        rows += analysis_settings(analysis.attrs)
        rows += [{"section": "analysis", "key": "skipped", "value": line}
                 for line in _lines(analysis.attrs.get("skipped"))]
    return rows
