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
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
import xarray as xr

from stabilitylab.analysis.barriers import LMC_THRESHOLD
from stabilitylab.report import correlations as C
from stabilitylab.report import figures as F
from stabilitylab.report import geometry as G
from stabilitylab.report import intervals as I
from stabilitylab.report import matching as M
from stabilitylab.report.headline import headline
from stabilitylab.report.render import Render
from stabilitylab.report.tables import (  # noqa: F401 - STATUS, study_name: public names here too
    STATUS,
    SUMMARY_COLUMNS,
    _num,
    cell_text,
    pair_labels,
    prediction_table,
    provenance_rows,
    study_name,
    summary_table,
)

log = logging.getLogger(__name__)

MAX_PNG_BYTES = 200_000
DPI = 150  # with the figures' sizes: ~1200 px wide, sharp on a laptop screen
CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em}
figure{margin:1.5em 0}img{max-width:min(100%,880px);height:auto;display:block}figcaption{color:#555;font-size:.9em}
table{border-collapse:collapse;font-size:.85em;margin:1em 0}th,td{border:1px solid #ccc;
padding:.25em .6em;text-align:left}th{background:#f3f3f3}.meta{color:#666}
#headline{background:#f5f8fc;border:1px solid #c9d7e8;border-radius:6px;padding:.6em 1.2em}
#headline h2{border:0;margin:.3em 0}#headline li{margin:.35em 0}"""


def _counts(study, analysis) -> tuple[int, int]:
    """(replicas, pairs) behind the pair measures of ``analysis``."""
    if analysis is not None and "pair" in analysis.sizes:
        a, b = pair_labels(analysis)
        return int(np.unique(np.concatenate([a, b])).size), int(analysis.sizes["pair"])
    r = int(study.sizes.get("replica", 0)) if study is not None else 0
    return r, r * (r - 1) // 2


def _band(replicas: int) -> str:
    return ("95% CI of the mean, bootstrap over replicas" if replicas >= I.MIN_REPLICAS else
            f"range (min–max) over pairs: {replicas} replicas are too few for a 95% interval")


# ----------------------------------------------------------------------------- figures
def _png(fig, dpi: int) -> bytes:
    """PNG bytes at ``dpi``, quantized to a 256-colour palette (about 3x smaller, no visible
    change for line plots) and lowered in resolution until the file is ≤ MAX_PNG_BYTES.

    The figure is drawn once per resolution by Agg (:func:`_draw`) and its pixels quantized
    straight from the canvas (:func:`_encode`): no full-colour PNG is encoded and decoded on
    the way.
    """
    own = fig.dpi
    try:
        while True:
            data = _encode(_draw(fig, dpi))
            if len(data) <= MAX_PNG_BYTES or dpi <= 50:
                return data
            dpi = int(dpi * 0.85)
    finally:
        fig.set_dpi(own)  # the PDF draws the same figure later


def _draw(fig, dpi: int) -> np.ndarray:
    """``fig`` drawn by Agg at ``dpi``: its (height, width, 3) RGB pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3]


def _encode(rgb: np.ndarray) -> bytes:
    """RGB pixels as a 256-colour palette PNG, quantized by Pillow's fast octree: on the
    default report's figures 7x faster than median cut, and the files are smaller."""
    from PIL import Image  # a matplotlib dependency

    buf = io.BytesIO()
    Image.fromarray(rgb).quantize(256, method=Image.Quantize.FASTOCTREE).save(buf, format="png")
    return buf.getvalue()


def _with_n(caption: str, n: str) -> str:
    """``caption`` with the replicas behind it named (kept as it is when it names them)."""
    return caption if "n = " in caption else f"{caption.rstrip('.')}; {n}."


#: What each Geometry figure is made of, for its caption's n.
GEOMETRY_N = {"trajectory_map.png": "one path per copy, n = {R} replicas",
              "layerwise_barrier.png": "mean over {P} pairs of n = {R} replicas"}


def _geometry_specs(study, analysis) -> list[tuple[str, str, object]]:
    """The Geometry section's figures, each caption naming the copies it shows."""
    R, P = _counts(study, analysis)
    out = []
    for file, caption, build in G.geometry_specs(study, analysis):
        n = GEOMETRY_N.get(file, "n = 1 pair: the first two complete of {R} replicas" if file.startswith(
            "planes") else "n = {R} replicas ({P} pairs)").format(R=R, P=P)
        out.append((file, _with_n(caption, n), build))
    return out


def _figure_specs(study, analysis) -> list[tuple[str, str, object]]:
    """(file name, caption, builder) for every figure the data supports; every caption
    names the replicas and pairs behind it."""
    specs = []
    R, P = _counts(study, analysis)
    n = f"n = {R} replicas ({P} pairs)"
    if analysis is not None:
        levels = analysis["level"].values if "level" in analysis.coords else []
        rewinds = analysis["rewind"].values if "rewind" in analysis.coords else []
        last = levels[-1] if len(levels) else 0
        thr = 100 * float(analysis.attrs.get("threshold", LMC_THRESHOLD))
        specs.append(("instability.png",
                      (f"Instability (test-error barrier along the linear path between replicas, "
                       f"percentage points) vs rewind point k, IMP, one line per level; line: "
                       f"mean over pairs, {n} per point; band: {_band(R)}; dashed: the {thr:g} "
                       "pp stability threshold."),
                      lambda: F.plot_instability(analysis)))
        for kind in ("random_prune", "reinit"):
            if F._finite(F._get(analysis, "instability", kind=kind)):
                specs.append((f"instability_{kind}.png",
                              (f"Instability of the {F.KIND_LABELS[kind]} control (percentage "
                              f"points); line: mean over pairs, {n} per point; band: {_band(R)}."),
                              lambda kind=kind: F.plot_instability(analysis, kind=kind)))
        for kind, what in (("init", "dense copies"),
                           ("init_imp", "copies pruned by IMP on their own runs (own masks)")):
            if kind in analysis["kind"].values and F._finite(
                    F._get(analysis, "instability", kind=kind)):
                specs.append((f"instability_{kind}.png",
                              (f"Barrier between different-init pairs (percentage points): {what} "
                               "from independently seeded W_0, each under its own data order (the "
                               "baseline of Entezari et al. 2022; not data-order instability); "
                               f"{n} per point."),
                              lambda kind=kind: F.plot_instability(analysis, kind=kind)))
        if len(rewinds):
            ks = sorted({rewinds[0], rewinds[-1]})
            specs.append(("interpolation.png",
                          (f"Test error (%) along αW_a + (1−α)W_b at level {last}, earliest and "
                           f"latest rewind point; thin: each pair, thick: their mean; {n}."),
                          lambda: F.plot_interpolation(analysis, level=last, rewind=ks)))
        from stabilitylab.report.curves import curve_specs  # mode-connecting curves, if any

        specs += [(f, _with_n(c, f"thin lines: {P} pairs of n = {R} replicas"), b)
                  for f, c, b in curve_specs(analysis)]
        specs.append(("distances_data_order.png",
                      (f"L2 distance between data-order replicas at level {last}, mean over pairs "
                      f"({n} per line); solid: IMP, dashed: random pruning."),
                      lambda: F.plot_distances(analysis, level=last)))
        if last >= 1 and F._finite(F._get(analysis, "pruning_noise_l2", level=last)):
            specs.append(("distances_pruning_noise.png",
                          (f"Pruning-noise distance at level {last}: the subnetwork vs its dense "
                          "copy, both replica 0 (n = 1 run per line, no interval)."),
                          lambda: F.plot_distances(analysis, level=last, which="pruning_noise")))
    source = study if study is not None and "final_test_acc" in study else analysis
    if source is not None and "final_test_acc" in source and "density" in source:
        specs.append(("accuracy_density.png",
                      (f"Final test accuracy vs density (latest rewind point; error bars: sd over "
                       f"n = {R} replicas); grey band: the single dense run ± 0.2 pp, "
                       "information only (matching compares with the dense copies, see the "
                       "summary)."),
                      lambda: F.plot_accuracy_vs_density(source)))
    if analysis is not None and "measure_value" in analysis:
        K = len(analysis["rewind"]) if "rewind" in analysis.coords else 0
        specs.append(("measure_correlations.png",
                      (f"Each stability measure vs final test accuracy across the {K} rewind "
                       f"points (each point a mean over n = {R} replicas, {P} pairs for pair "
                       f"measures); ρ: Spearman with its 95% bootstrap interval over the {K} "
                       f"points. Grey panels: {C.UNINFORMATIVE}."),
                      lambda: C.plot_measure_correlations(analysis)))
    return specs


# ----------------------------------------------------------------------------- writers
PREDICTION_COLUMNS = {"level": "level", "density": "density", "rule": "rule",
                      "predicted_rewind": "predicted k", "oracle_rewind": "oracle k",
                      "accuracy_predicted": "acc. at predicted (%)",
                      "accuracy_oracle": "acc. at oracle (%)", "gap": "gap (pp)"}


def _html_table(rows, columns: dict, *, table_id: str | None = None) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for t in columns.values())
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell_text(k, r.get(k)))}</td>"
                                    for k in columns)
                   + "</tr>" for r in rows)
    ident = f" id='{table_id}'" if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_table(rows, columns: dict) -> str:
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(cell_text(k, r.get(k))) for k in columns) + " |" for r in rows]
    return "\n".join(lines)


def _sections(provenance: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in provenance:
        out.setdefault(row["section"], []).append(row)
    return out


SECTION_TITLES = {"provenance": "Provenance", "runs": "Runs", "issues": "Skipped or diverged runs",
                  "analysis": "Analysis settings", "config": "Configuration"}


def _summary_note(analysis) -> str:
    attrs = analysis.attrs if analysis is not None else {}
    thr = 100 * float(attrs.get("threshold", LMC_THRESHOLD))
    dense = _num(analysis["dense_test_acc"]) if analysis is not None and \
        "dense_test_acc" in analysis else None
    dense_text = f"{100 * dense:.2f}%" if dense is not None else "unknown"
    return (f"Dense test accuracy {dense_text}. Accuracy: mean over complete replicas, in "
            "percent; instability: test-error barrier, mean over replica pairs, in percentage "
            "points (pp). Intervals: with at least "
            f"{I.MIN_REPLICAS} replicas, the 95% CI (bootstrap percentile interval) of the mean "
            "from resampling replicas, not pairs (pairs share replicas, so they are not "
            "independent); with fewer, the min–max over the values, labelled \"range\". n "
            f"counts the independent replicas. "
            + ("Train-loss barrier: the same barrier on the cross-entropy of the fixed train "
               "subset, in nats, mean over pairs (the headline barrier of Kwok et al., ICML "
               "2025). " if analysis is not None and "loss_barrier_train" in analysis else "")
            + f"Stable: instability < {thr:g} pp "
            "(Frankle et al., ICML 2020). " + M.rule_note(analysis)
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


def _summary_columns(summary) -> dict:
    """The summary columns, with "pairs" when some kind's pairs are not data-order pairs."""
    if any("pairs" in row for row in summary):
        return {**SUMMARY_COLUMNS, "pairs": "pairs"}
    return SUMMARY_COLUMNS


def _headline_html(items) -> str:
    def body(text) -> str:
        if isinstance(text, str):
            return " " + html.escape(text)
        return "<ul>" + "".join(f"<li>{html.escape(t)}</li>" for t in text) + "</ul>"

    lis = "".join(f"<li><b>{html.escape(label)}:</b>{body(text)}</li>" for label, text in items)
    return f"<section id='headline'><h2>Summary</h2><ul>{lis}</ul></section>"


def _headline_md(items) -> list[str]:
    md = ["## Summary", ""]
    for label, text in items:
        if isinstance(text, str):
            md.append(f"- **{label}:** {text}")
        else:
            md += [f"- **{label}:**", *(f"  - {t}" for t in text)]
    return md + [""]


def _glossary_rows(present=None) -> list[dict]:
    """The glossary entries, only those of ``present`` (the analysis's measures and
    variables) when given: an opt-in group not computed is not explained."""
    from stabilitylab.report.glossary import MEASURES

    return [{"measure": name, "what": info.description, "unit": info.unit,
             "stable": info.stable} for name, info in MEASURES.items()
            if present is None or name in present]


def _present(analysis) -> set[str] | None:
    """The measures and variables an analysis holds (None: no analysis)."""
    if analysis is None:
        return None
    measures = analysis["measure"].values if "measure" in analysis.coords else []
    return {str(m) for m in measures} | {str(v) for v in analysis.data_vars}


GLOSSARY_COLUMNS = {"measure": "measure", "what": "what it is", "unit": "unit in this report",
                    "stable": "more stable when"}


def _write_documents(folder: Path, title: str, meta: str, images, predictions, provenance,
                     summary=(), summary_note: str = "", head=(), geometry=(),
                     present=None) -> None:
    kv = {"key": "key", "value": "value"}
    h = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
         f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
         f"<p class='meta'>{html.escape(meta)}</p>"]
    md = [f"# {title}", "", meta, ""]
    if head:
        h.append(_headline_html(head))
        md += _headline_md(head)
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
        glossary = _glossary_rows(present)
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


def _in_memory(ds: xr.Dataset | None, skip: frozenset = frozenset(),
               skip_names: frozenset = frozenset()) -> xr.Dataset | None:
    """``ds`` with every variable the report may read loaded once, in one dask compute (the
    figures and tables select from them hundreds of times): all but those along a dim in
    ``skip`` or named in ``skip_names``, which stay lazy."""
    if ds is None:
        return None
    small = [n for n, v in ds.data_vars.items()
             if not skip & set(v.dims) and n not in skip_names]
    return ds.assign(ds[small].load().data_vars)


#: Study variables the report never reads: the weights and buffers, and the per-step
#: metric curves (it reads the final metrics, statuses and densities).
STUDY_LAZY_DIMS = frozenset({"param", "buffer", "step", "log_step", "eval_step"})
#: Per-run final metrics the report does not show (one store chunk per run each: on the
#: default study, reading them took ~0.4 s of the report's ~1 s of small study arrays).
#: They stay lazy, so a figure that wants one still reads it.
STUDY_LAZY_NAMES = frozenset({"final_test_loss", "final_train_eval_acc",
                              "final_train_eval_loss"})


#: Figures drawn first when two processes draw them: the measure-correlation grid (one
#: panel per measure, ~2 s on a 2-core Zen 3 for the default study, as long as five other
#: figures) started last would end the report on its own.
SLOW_FIGURES = frozenset({"measure_correlations.png"})


def write_report_from(study: xr.Dataset | None, analysis: xr.Dataset | None, out,
                      *, dpi: int = DPI, pdf: bool = False, resolved=None) -> Path:
    """Write the report for in-memory Datasets into folder ``out`` (replaced atomically).

    Either Dataset may be None (e.g. a study not yet analysed). A figure that fails is
    logged and left out; the rest of the report is still written. ``resolved``: the
    study's :class:`~stabilitylab.config.Study` if the caller already has it. ``pdf``: also
    ``report.pdf`` (:mod:`stabilitylab.report.pdf`, vector figures). Returns ``out``.
    """
    out = Path(out)
    study, analysis = _in_memory(study, STUDY_LAZY_DIMS, STUDY_LAZY_NAMES), _in_memory(analysis)
    images, geometry, notes, figures = [], [], [], []
    specs = [(images, spec) for spec in _figure_specs(study, analysis)] + \
            [(geometry, spec) for spec in _geometry_specs(study, analysis)]
    # The figures are drawn on two processes where they can be (stabilitylab.report.render)
    # while this process writes the tables; for a PDF, which draws the same Figure objects
    # again, here and in order.
    slow = [i for i, (_, (name, _, _)) in enumerate(specs) if name in SLOW_FIGURES]
    with Render([] if pdf else [build for _, (_, _, build) in specs],
                lambda fig: _png(fig, dpi), first=slow) as drawing:
        predictions = prediction_table(analysis) if analysis is not None else []
        summary = summary_table(study, analysis) if analysis is not None else []
        head = (headline(study, analysis, resolved=resolved)
                if (study is not None or analysis is not None) else [])
        made = drawing.collect()
    if pdf:
        for _, (_, caption, build) in specs:
            try:
                fig = build()
                made.append(_png(fig, dpi))
                figures.append((caption, fig))
            except Exception as e:  # noqa: BLE001 - logged below, the figure left out
                made.append(e)
    for (target, (name, caption, _)), data in zip(specs, made):
        if isinstance(data, Exception):  # one broken figure must not lose the report
            log.warning("report: figure %s failed: %s", name, data, exc_info=data)
            notes.append({"section": "analysis", "key": f"figure {name}",
                          "value": f"failed: {data}"})
        else:
            target.append((name, caption, data))
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
                         _summary_note(analysis), head, geometry, _present(analysis))
        if pdf:
            from stabilitylab.report.pdf import write_pdf

            write_pdf(folder / "report.pdf", title, meta, head, figures, summary,
                      _summary_note(analysis))
    log.info("report: wrote %s (%d figures)", out, len(images) + len(geometry))
    return out


def write_report(store_url, *, out=None, dpi: int = DPI, pdf: bool = False,
                 trust_plugins: bool = False, resolved=None) -> Path:
    """Open a study store (and its analysis, if any) and write its report.

    ``out`` defaults to ``reports/<config.study.name>``; ``pdf`` adds ``report.pdf``.
    Returns the report folder. A ``package.module:function`` model or dataset the store
    names is refused (StoreError, one line) unless ``trust_plugins``: reading the store's
    config must not run a module's code. ``resolved``: the store's Study when the caller
    has it (``analyze`` then ``report``).
    """
    from stabilitylab.core.registry import check_trusted, untrusted
    from stabilitylab.store import open_study
    from stabilitylab.store.schema import describe

    study = open_study(store_url)
    where = describe(store_url)
    check_trusted(study.attrs.get("config"), where, trust_plugins)
    with untrusted(where, trust_plugins):
        return _write_report_of(study, store_url, out, dpi, pdf, resolved)


def _write_report_of(study, store_url, out, dpi: int, pdf: bool, resolved=None) -> Path:
    from stabilitylab.core.errors import StoreError
    from stabilitylab.store import open_analysis

    try:
        analysis = open_analysis(store_url)
    except StoreError as e:
        log.warning("report: %s; writing the study-only report", e)
        analysis = None
    out = Path("reports") / study_name(study) if out is None else Path(out)
    return write_report_from(study, analysis, out, dpi=dpi, pdf=pdf, resolved=resolved)
