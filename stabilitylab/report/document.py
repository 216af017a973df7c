"""The study report: PNG figures, a self-contained ``index.html`` and a ``report.md``.

    stabilitylab.report.write_report("runs/mnist1d-default.zarr")   # -> reports/mnist1d-default/

The folder is built in a temporary sibling directory and renamed into place, so a
crash never leaves a half-written report. Figures are PNGs of at most ~200 KB
(the resolution is lowered until they fit); the HTML embeds them as data URIs.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
import xarray as xr

from stabilitylab.analysis.barriers import LMC_THRESHOLD, MATCHING_TOLERANCE
from stabilitylab.analysis.pair_noise import label as pair_label
from stabilitylab.core.keys import (
    STATUS_ABSENT,
    STATUS_CODES,
    STATUS_COMPLETE,
    STATUS_DIVERGED,
    STATUS_INCOMPLETE,
    STATUS_PARENT_DIVERGED,
)
from stabilitylab.report import figures as F
from stabilitylab.report import geometry as G

log = logging.getLogger(__name__)

MAX_PNG_BYTES = 200_000
STATUS = {code: name for name, code in STATUS_CODES.items()}
PERCENT = {"accuracy_predicted", "accuracy_oracle", "gap", "accuracy",
           "instability", "cross_level"}  # fractions shown as % / percentage points
CSS = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em}
figure{margin:1.5em 0}img{max-width:100%;height:auto}figcaption{color:#555;font-size:.9em}
table{border-collapse:collapse;font-size:.85em;margin:1em 0}th,td{border:1px solid #ccc;
padding:.25em .6em;text-align:left}th{background:#f3f3f3}.meta{color:#666}"""


# ----------------------------------------------------------------------------- tables
def _num(v):
    """A plain Python number, None for NaN / missing / a negative rewind (−1 = none)."""
    if v is None:
        return None
    v = np.asarray(v).item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


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


def _interval_text(lo, hi, scale: float = 100.0) -> str | None:
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return None
    return f"[{scale * lo:.2f}, {scale * hi:.2f}]"


def summary_table(study: xr.Dataset | None, analysis: xr.Dataset) -> list[dict]:
    """One row per (kind, level, rewind) with results: density, final test accuracy (mean
    over complete replicas and its 95% interval), instability (mean over replica pairs and
    its 95% interval), stable and matching. Fractions stay fractions here; the writers show
    them in percent / percentage points.

    The intervals are :func:`stabilitylab.report.figures.interval`: bootstrap percentile
    with ≥ 3 values (never outside the values' range), min–max with fewer.
    """
    if analysis is None or "final_test_acc" not in analysis:
        return []
    acc = analysis["final_test_acc"].load()
    per_replica = None
    if study is not None and "final_test_acc" in study and "replica" in study["final_test_acc"].dims:
        per_replica = study["final_test_acc"]
        if "status" in study:
            per_replica = per_replica.where(study["status"] == STATUS_COMPLETE)
        per_replica = per_replica.load()
    inst = analysis["instability"].load() if "instability" in analysis else None
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
                        _, lo, hi, _ = F.interval(per_replica.sel(**at).values)
                        row["accuracy_interval"] = _interval_text(float(lo), float(hi))
                    except KeyError:
                        pass
                if inst is not None:
                    values = inst.sel(**at).values
                    if np.isfinite(values).any():
                        m, lo, hi, _ = F.interval(values)
                        row["instability"] = float(m)
                        row["instability_interval"] = _interval_text(float(lo), float(hi))
                if noise.get(str(kind), "data_order") != "data_order":
                    row["pairs"] = pair_label(noise[str(kind)])  # e.g. different-init pairs
                for flag in ("stable", "matching"):
                    if flag in analysis:
                        v = _num(analysis[flag].sel(**at))
                        row[flag] = None if v is None else ("yes" if v else "no")
                row["cross_level"] = G.cross_level_value(analysis, kind, level, k)
                rows.append(row)
    order = {"imp": 0, "random_prune": 1, "reinit": 2}
    rows.sort(key=lambda r: (r["level"], order.get(r["kind"], 9), r["rewind"]))
    return rows


SUMMARY_COLUMNS = {"level": "level", "kind": "kind", "rewind": "k", "density": "density",
                   "accuracy": "final test acc. (%)",
                   "accuracy_interval": "acc. 95% interval (%)",
                   "instability": "instability (pp)",
                   "instability_interval": "instability 95% interval (pp)",
                   "stable": "stable", "matching": "matching",
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
    from stabilitylab.train.optim import OPTIMIZERS

    t = cfg.training
    own = {f"training.{f}" for o in OPTIMIZERS.values() for f in o.fields}  # one optimizer's
    if key in own:
        return key.split(".", 1)[1] in OPTIMIZERS[t.optimizer].fields
    rules = {
        "data.root": False,  # where record read the data; placement, not part of the study
        "data.num_samples": cfg.data.name == "mnist1d",
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


def config_rows(config: dict, *, device=None, resolved=None) -> list[dict]:
    """Rows ``{"section": "config", "key", "value"}``: every setting that applies to this
    study, resolved (step strings as iterations, the control levels that actually ran, the
    number of recorded steps); settings that do not apply (Adam's betas under SGD, the
    sample count of a fixed-size dataset, ...) are left out; a model's or dataset's
    ``options`` are its own, so they always apply. A config that does not load or validate is
    shown as stored. ``resolved``: the store's Study when the caller has it (analyze), so it
    is not resolved again."""
    from stabilitylab.config import config_to_dict
    from stabilitylab.study.resolve import study_from_dict

    try:
        r = resolved if resolved is not None else study_from_dict(config)
        cfg = r.config
    except Exception:  # noqa: BLE001 - an old or foreign config: show it as it is
        return [{"section": "config", "key": k, "value": json.dumps(v) if isinstance(v, list)
                 else v} for k, v in _flatten(config)]
    flat = _flatten(config_to_dict(cfg))  # every field, defaults included

    def listed(values) -> str:
        return ", ".join(str(v) for v in values) if values else "none"

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
            value = listed(value) if isinstance(value, (list, tuple)) else value
        else:
            value = resolved.get(key, getattr(getattr(cfg, section), field, None))
        rows.append({"section": "config", "key": key, "value": value})
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
    rows = [{"section": "provenance", "key": k, "value": a[k]} for k in
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
        for k in ("threshold", "matching_tolerance", "bn_recompute", "created_at", "analysis_seconds"):
            if k in analysis.attrs:
                rows.append({"section": "analysis", "key": k, "value": analysis.attrs[k]})
        rows += [{"section": "analysis", "key": "skipped", "value": line}
                 for line in _lines(analysis.attrs.get("skipped"))]
    return rows


# ----------------------------------------------------------------------------- figures
def _png(fig, dpi: int) -> bytes:
    """PNG bytes at ``dpi``, quantized to a 256-colour palette (about 3x smaller, no visible
    change for line plots) and lowered in resolution until the file is ≤ MAX_PNG_BYTES."""
    from PIL import Image  # a matplotlib dependency

    while True:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        buf.seek(0)
        with Image.open(buf) as im:
            small = io.BytesIO()
            im.convert("RGB").quantize(256).save(small, format="png", optimize=True)
        data = min(buf.getvalue(), small.getvalue(), key=len)
        if len(data) <= MAX_PNG_BYTES or dpi <= 50:
            return data
        dpi = int(dpi * 0.85)


def _figure_specs(study, analysis) -> list[tuple[str, str, object]]:
    """(file name, caption, builder) for every figure the data supports."""
    specs = []
    if analysis is not None:
        levels = analysis["level"].values if "level" in analysis.coords else []
        rewinds = analysis["rewind"].values if "rewind" in analysis.coords else []
        last = levels[-1] if len(levels) else 0
        thr = 100 * float(analysis.attrs.get("threshold", LMC_THRESHOLD))
        specs.append(("instability.png",
                      (f"Instability (test-error barrier along the linear path between replicas, "
                       f"percentage points) vs rewind point, IMP; band: 95% bootstrap interval "
                       f"over replica pairs; dashed: the {thr:g} pp stability threshold."),
                      lambda: F.plot_instability(analysis)))
        for kind in ("random_prune", "reinit"):
            if F._finite(F._get(analysis, "instability", kind=kind)):
                specs.append((f"instability_{kind}.png",
                              f"Instability of the {F.KIND_LABELS[kind]} control.",
                              lambda kind=kind: F.plot_instability(analysis, kind=kind)))
        if "init" in analysis["kind"].values and F._finite(
                F._get(analysis, "instability", kind="init")):
            specs.append(("instability_init.png",
                          "Barrier between different-init pairs: dense copies from independently "
                          "seeded W_0, each under its own data order (the baseline of Entezari "
                          "et al. 2022; not data-order instability).",
                          lambda: F.plot_instability(analysis, kind="init")))
        if len(rewinds):
            ks = sorted({rewinds[0], rewinds[-1]})
            specs.append(("interpolation.png",
                          (f"Test error along αW_a + (1−α)W_b at level {last}, earliest and "
                           "latest rewind point (thin: each replica pair)."),
                          lambda: F.plot_interpolation(analysis, level=last, rewind=ks)))
        from stabilitylab.report.curves import curve_specs  # mode-connecting curves, if any

        specs += curve_specs(analysis)
        specs.append(("distances_data_order.png",
                      f"L2 distance between data-order replicas (pair mean) at level {last}.",
                      lambda: F.plot_distances(analysis, level=last)))
        if last >= 1 and F._finite(F._get(analysis, "pruning_noise_l2", level=last)):
            specs.append(("distances_pruning_noise.png",
                          f"Pruning-noise distance at level {last} (subnetwork vs dense copy).",
                          lambda: F.plot_distances(analysis, level=last, which="pruning_noise")))
    source = study if study is not None and "final_test_acc" in study else analysis
    if source is not None and "final_test_acc" in source and "density" in source:
        specs.append(("accuracy_density.png",
                      ("Final test accuracy vs density (latest rewind point; error bars: sd over "
                       "replicas); grey band: dense accuracy ± the matching tolerance (not an sd)."),
                      lambda: F.plot_accuracy_vs_density(source)))
    if analysis is not None and "measure_value" in analysis:
        specs.append(("measure_correlations.png",
                      "Each stability measure vs final test accuracy across rewind points.",
                      lambda: F.plot_measure_correlations(analysis)))
    return specs


# ----------------------------------------------------------------------------- writers
def _fmt(key: str, v) -> str:
    v = _num(v) if isinstance(v, (float, np.floating, np.integer)) else v
    if v is None:
        return "unknown" if key == "density" else "–"
    if key in PERCENT and isinstance(v, float):
        return f"{100 * v:.2f}"
    if key == "density" and isinstance(v, float):
        return f"{100 * v:.3g}%"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


PREDICTION_COLUMNS = {"level": "level", "density": "density", "rule": "rule",
                      "predicted_rewind": "predicted k", "oracle_rewind": "oracle k",
                      "accuracy_predicted": "acc. at predicted (%)",
                      "accuracy_oracle": "acc. at oracle (%)", "gap": "gap (pp)"}


def _html_table(rows, columns: dict, *, table_id: str | None = None) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for t in columns.values())
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(k, r.get(k)))}</td>" for k in columns)
                   + "</tr>" for r in rows)
    ident = f" id='{table_id}'" if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_table(rows, columns: dict) -> str:
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(_fmt(k, r.get(k))) for k in columns) + " |" for r in rows]
    return "\n".join(lines)


def _sections(provenance: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in provenance:
        out.setdefault(row["section"], []).append(row)
    return out


SECTION_TITLES = {"provenance": "Provenance", "runs": "Runs", "issues": "Skipped or diverged runs",
                  "analysis": "Analysis settings", "config": "Configuration"}


def _summary_columns(summary) -> dict:
    """The summary columns, with "pairs" when some kind's pairs are not data-order pairs."""
    if any("pairs" in row for row in summary):
        return {**SUMMARY_COLUMNS, "pairs": "pairs"}
    return SUMMARY_COLUMNS


def _summary_note(analysis) -> str:
    attrs = analysis.attrs if analysis is not None else {}
    thr = 100 * float(attrs.get("threshold", LMC_THRESHOLD))
    tol = 100 * float(attrs.get("matching_tolerance", MATCHING_TOLERANCE))
    dense = _num(analysis["dense_test_acc"]) if analysis is not None and \
        "dense_test_acc" in analysis else None
    dense_text = f"{100 * dense:.2f}%" if dense is not None else "unknown"
    return (f"Dense test accuracy {dense_text}. Accuracy: mean over complete replicas; "
            "instability: test-error barrier, mean over replica pairs, in percentage points (pp). "
            "Intervals: 95% bootstrap percentile interval of the mean (min–max with fewer than "
            f"3 values), never outside the values' range. Stable: instability < {thr:g} pp "
            f"(Frankle et al., ICML 2020). Matching: accuracy within the matching tolerance of "
            f"{tol:g} pp of the dense accuracy (at least dense − {tol:g} pp)."
            + (" " + G.CROSS_LEVEL_NOTE if analysis is not None
               and "cross_level_barrier" in analysis else "")
            + _pair_noise_note(attrs))


def _pair_noise_note(attrs) -> str:
    kinds = sorted(k for k, v in (attrs.get("pair_noise") or {}).items() if v == "init")
    if not kinds:
        return ""
    return (f" The replicas of {', '.join(kinds)} are different-init pairs (initialised "
            "independently, e.g. OpenLTH replicates with their own init, data order and "
            "masks): their barrier is the barrier between independently trained networks, "
            "not the data-order instability of copies of one W_k; the aligned barrier "
            "(weight matching) is the comparable figure where it is available.")


def _glossary_rows() -> list[dict]:
    from stabilitylab.report.glossary import MEASURES

    return [{"measure": name, "what": info.description, "unit": info.unit,
             "stable": info.stable} for name, info in MEASURES.items()]


GLOSSARY_COLUMNS = {"measure": "measure", "what": "what it is", "unit": "unit in this report",
                    "stable": "more stable when"}


def _write_documents(folder: Path, title: str, meta: str, images, predictions, provenance,
                     summary=(), summary_note: str = "", geometry=()) -> None:
    kv = {"key": "key", "value": "value"}
    h = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
         f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
         f"<p class='meta'>{html.escape(meta)}</p>"]
    md = [f"# {title}", "", meta, ""]
    if summary:
        h.append("<h2>Summary per level and rewind point</h2>"
                 f"<p>{html.escape(summary_note)}</p>"
                 + _html_table(summary, _summary_columns(summary), table_id="summary"))
        md += ["## Summary per level and rewind point", "", summary_note, "",
               _md_table(summary, _summary_columns(summary)), ""]
    for name, caption, data in images:
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        h.append(f"<figure><img src='{uri}' alt='{html.escape(caption)}'>"
                 f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        md += [f"![{caption}]({name})", "", f"*{caption}*", ""]
    if geometry:  # report.geometry's section: its own figures, in its order
        h.append(f"<h2>{G.TITLE}</h2><p>{html.escape(G.INTRO)}</p>")
        md += [f"## {G.TITLE}", "", G.INTRO, ""]
        for name, caption, data in geometry:
            uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
            h.append(f"<figure><img src='{uri}' alt='{html.escape(caption)}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
            md += [f"![{caption}]({name})", "", f"*{caption}*", ""]
    if predictions:
        h.append("<h2>Rewind-point prediction</h2>" + _html_table(predictions, PREDICTION_COLUMNS))
        md += ["## Rewind-point prediction", "", _md_table(predictions, PREDICTION_COLUMNS), ""]
    if summary or predictions:
        glossary = _glossary_rows()
        h.append("<h2>Glossary of measures</h2>" + _html_table(glossary, GLOSSARY_COLUMNS))
        md += ["## Glossary of measures", "", _md_table(glossary, GLOSSARY_COLUMNS), ""]
    for section, rows in _sections(provenance).items():
        t = SECTION_TITLES.get(section, section)
        h.append(f"<h2>{html.escape(t)}</h2>" + _html_table(rows, kv))
        md += [f"## {t}", "", _md_table(rows, kv), ""]
    h.append("</body></html>")
    (folder / "index.html").write_text("\n".join(h), encoding="utf-8")
    (folder / "report.md").write_text("\n".join(md), encoding="utf-8")


@contextlib.contextmanager
def _atomic_folder(out: Path):
    """Yield a temporary sibling folder; on success it replaces ``out`` in one rename."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_report_from(study: xr.Dataset | None, analysis: xr.Dataset | None, out,
                      *, dpi: int = 100, resolved=None) -> Path:
    """Write the report for in-memory Datasets into folder ``out`` (replaced atomically).

    Either Dataset may be None (e.g. a study not yet analysed). ``resolved``: the study's
    :class:`~stabilitylab.config.Study` if the caller already has it. A figure that fails is
    logged and left out; the rest of the report is still written. Returns ``out``.
    """
    out = Path(out)
    images, geometry, notes = [], [], []
    for target, specs in ((images, _figure_specs(study, analysis)),
                          (geometry, G.geometry_specs(study, analysis))):
        for name, caption, build in specs:
            try:
                fig = build()
                target.append((name, caption, _png(fig, dpi)))
            except Exception as e:  # one broken figure must not lose the report
                log.warning("report: figure %s failed: %s", name, e, exc_info=True)
                notes.append({"section": "analysis", "key": f"figure {name}",
                              "value": f"failed: {e}"})
    predictions = prediction_table(analysis) if analysis is not None else []
    summary = summary_table(study, analysis) if analysis is not None else []
    provenance = (provenance_rows(study, analysis, resolved=resolved)
                  if study is not None else []) + notes
    attrs = study.attrs if study is not None else {}
    name = study_name(study) if study is not None else "analysis"
    title = f"stabilitylab report: {name}"
    meta = (f"study {attrs.get('study_id', '?')}, created {attrs.get('created_at', '?')}, "
            f"device {attrs.get('device', '?')}")
    if analysis is not None and analysis.attrs.get("partial"):  # said first, never silently
        title = f"PARTIAL {title}"
        meta = ("PARTIAL analysis: made while runs were unfinished, so their rows are missing "
                "or unknown" + ("; the study has finished since: run `stabilitylab analyze` "
                                "again" if attrs.get("complete") is True else "") + ". " + meta)
    with _atomic_folder(out) as folder:
        for file, _, data in images + geometry:
            (folder / file).write_bytes(data)
        _write_documents(folder, title, meta, images, predictions, provenance, summary,
                         _summary_note(analysis), geometry)
    log.info("report: wrote %s (%d figures)", out, len(images) + len(geometry))
    return out


def write_report(store_url, *, out=None, dpi: int = 100, trust_plugins: bool = False,
                 resolved=None) -> Path:
    """Open a study store (and its analysis, if any) and write its report.

    ``out`` defaults to ``reports/<config.study.name>``. Returns the report folder. A
    ``package.module:function`` model or dataset the store names is refused (StoreError, one
    line) unless ``trust_plugins``: reading the store's config must not run a module's code.
    ``resolved``: the store's Study when the caller has it (``analyze`` then ``report``).
    """
    from stabilitylab.core.registry import check_trusted, untrusted
    from stabilitylab.store import open_study
    from stabilitylab.store.schema import describe

    study = open_study(store_url)
    where = describe(store_url)
    check_trusted(study.attrs.get("config"), where, trust_plugins)
    with untrusted(where, trust_plugins):
        return _write_report_of(study, store_url, out, dpi, resolved)


def _write_report_of(study, store_url, out, dpi: int, resolved=None) -> Path:
    from stabilitylab.core.errors import StoreError
    from stabilitylab.store import open_analysis

    try:
        analysis = open_analysis(store_url)
    except StoreError as e:
        log.warning("report: %s; writing the study-only report", e)
        analysis = None
    out = Path("reports") / study_name(study) if out is None else Path(out)
    return write_report_from(study, analysis, out, dpi=dpi, resolved=resolved)
