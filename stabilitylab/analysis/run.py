"""``analyze``: every measure of a recorded study, written back to the store and to CSV.

    stabilitylab analyze runs/mnist1d-default.zarr

Results go to the store's ``analysis`` group (see docs/analysis-schema.md; any
earlier one is replaced, so re-running is idempotent) and to tidy CSV files in
``<store>.analysis/``. Incomplete and diverged runs are skipped, one line each.
"""

from __future__ import annotations

import datetime
import logging
import time
import warnings

import numpy as np
import xarray as xr

from stabilitylab.analysis import registry
from stabilitylab.analysis.barriers import (
    LMC_THRESHOLD,
    MATCHING_CONFIDENCE,
    MATCHING_TOLERANCE,
)
from stabilitylab.analysis.context import load_context
from stabilitylab.analysis.pair_noise import (
    absent_pair_measures,
    annotate,
    barrier_name,
    pair_noise,
)
from stabilitylab.analysis.pair_noise import label as pair_label
from stabilitylab.analysis.prediction import flags, predictions, reduce_measure
from stabilitylab.core.errors import StabilityLabError
from stabilitylab.core.keys import STATUS_ABSENT, STATUS_COMPLETE

log = logging.getLogger(__name__)

#: ``--alphas adaptive``: coarse grid, then refinement around each maximum (opt-in).
ADAPTIVE = "adaptive"
MAX_ALPHAS = 10_000  # interpolation points: beyond this a value is a typo (memory, hours)
#: The measure groups in the order they are computed (from the registry).
MEASURE_GROUPS = registry.groups()
#: Each scalar measure -> the group that computes it (from the registry).
MEASURE_GROUP = {name: m.group for name, m in registry.measures().items()}


def measure_groups(measures) -> tuple[str, ...]:
    """The measure groups to compute for ``measures``: group names and measure names (a
    measure selects its whole group) in any mix; None or empty = every group."""
    return registry.select(measures)


def _accuracy(ctx):
    """(mean, std over replicas, per replica) of the complete runs' final test accuracy, and
    the densities: one dask computation, which reads each of their chunks once (each
    separately read them again, about 0.07 s a read)."""
    import dask

    acc = ctx.ds.final_test_acc.where(ctx.ds.status == STATUS_COMPLETE)
    with np.errstate(invalid="ignore"):
        return dask.compute(acc.mean("replica", skipna=True), acc.std("replica", skipna=True),
                            acc, ctx.ds.density)


def _csv_base(url: str) -> str:
    return url.rstrip("/") + ".analysis"


def write_csv(url: str, analysis: xr.Dataset, storage_options=None) -> str:
    """Tidy CSV files next to the store: summary, correlations, predictions."""
    import fsspec

    base = _csv_base(url)
    fs, path = fsspec.core.url_to_fs(base, **(storage_options or {}))
    fs.makedirs(path, exist_ok=True)
    summary_vars = ["density", "final_test_acc", "final_test_acc_std", "stable", "matching",
                    "matching_difference", "matching_low", "matching_pairs"]
    frame = analysis[summary_vars].to_dataframe()
    for name, m in registry.measures().items():  # per-kind measures, pair/replica mean
        if m.source in analysis and "kind" in analysis[m.source].dims:
            frame[name] = reduce_measure(analysis[m.source], m.reduce).to_series()
    frame = frame.reset_index()
    noise = analysis.attrs.get("pair_noise") or {}
    if "kind" in frame:  # what each kind's pairs differ in (data order, init, ...)
        frame["pair_noise"] = [noise.get(str(k), "data_order") for k in frame["kind"]]
        frame["pairs"] = [pair_label(v) for v in frame["pair_noise"]]
    corr = analysis[["spearman", "spearman_low", "spearman_high", "kendall", "kendall_low",
                     "kendall_high", "predicted_rewind_measure", "gap_measure"]].to_dataframe()
    pred = analysis[["predicted_rewind_lmc", "oracle_rewind", "gap_lmc"]].to_dataframe()
    for name, df in (("summary", frame), ("correlations", corr.reset_index()),
                     ("predictions", pred.reset_index())):
        with fs.open(f"{path}/{name}.csv", "w") as f:
            df.to_csv(f, index=False)
    return base


def _percent(value: float, digits: int) -> str:
    """``value`` as a percentage, or 'unknown' (NaN: never trained, diverged, not yet written)."""
    return f"{100 * value:.{digits}f}%" if np.isfinite(value) else "unknown"


def _pp(value: float) -> str:
    """A fraction in percentage points, or 'unknown' (NaN)."""
    return f"{100 * value:.2f} pp" if np.isfinite(value) else "unknown"


def _lines(ctx, analysis: xr.Dataset) -> list[str]:
    """The summary analyze prints: accuracies in percent, barriers and gaps in percentage
    points (pp), densities in percent, rewind points in iterations."""
    lines = [f"dense test accuracy: {100 * float(analysis.dense_test_acc):.2f}%"]
    threshold = 100 * analysis.attrs["threshold"]
    noise = (analysis.attrs.get("pair_noise") or {}).get("imp", "data_order")
    if len(ctx.replicas) < 2:
        lines.append("one replica: no pairs, so the pair measures (barriers, distances "
                     "between copies) are absent, and matching is undefined (its paired "
                     "bound needs at least 2 replicas)")
    elif noise != "data_order":
        lines.append(f"the replicas of kind imp are {pair_label(noise)}: their barrier is "
                     + ("not the data-order instability of copies of one W_k"
                        if noise == "init" else f"under {noise} noise"))
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no pairs: a mean over nothing
        inst = analysis.instability.mean("pair", skipna=True)
        aligned = analysis.aligned_instability.mean("pair", skipna=True) \
            if noise == "init" and "aligned_instability" in analysis else None
    for level in ctx.levels:
        d = analysis.density.sel(kind="imp", level=level).values
        density = float(np.nanmean(d)) if np.isfinite(d).any() else float("nan")
        values = ", ".join(
            f"k={k}: {_pp(float(inst.sel(kind='imp', level=level, rewind=k)))}"
            for k in ctx.rewinds)
        if len(ctx.replicas) < 2:
            acc = float(analysis.final_test_acc.sel(kind="imp", level=level).mean())
            lines.append(f"level {level} (density {_percent(density, 1)}) test accuracy "
                         f"{_percent(acc, 2)}")
            continue
        lines.append(f"level {level} (density {_percent(density, 1)}) {barrier_name(noise)}: "
                     f"{values}")
        if aligned is not None and np.isfinite(aligned.sel(kind="imp", level=level).values).any():
            lines.append("  after weight matching: " + ", ".join(
                f"k={k}: {_pp(float(aligned.sel(kind='imp', level=level, rewind=k)))}"
                for k in ctx.rewinds))
        if noise == "init":  # the LMC rule reads data-order instability; these pairs are not
            lines.append("  LMC rule: not applicable (different-init pairs)")
            continue
        pk = int(analysis.predicted_rewind_lmc.sel(level=level))
        ok = int(analysis.oracle_rewind.sel(level=level))
        gap = float(analysis.gap_lmc.sel(level=level))
        gap_text = _pp(gap)
        lines.append(f"  LMC rule (earliest k with instability < {threshold:g} pp): "
                     f"k={'none' if pk < 0 else pk}; oracle (best accuracy) "
                     f"k={'none' if ok < 0 else ok}; accuracy gap {gap_text}")
    if ctx.levels == [0]:
        pk = int(analysis.predicted_rewind_lmc.sel(level=0))
        lines.append("recommended rewind point (dense copies only): "
                     + ("none is stable; try later k" if pk < 0 else f"k={pk}"))
    return lines + _noise_kind_lines(analysis) + ctx.skipped


def _noise_kind_lines(analysis: xr.Dataset) -> list[str]:
    """One line per (noise kind, level) with pairs: its barrier per k, labelled by what its
    pairs are (e.g. different-init pairs), and after weight matching when computed."""
    from stabilitylab.study.kinds import noise_names

    pair_noise = analysis.attrs.get("pair_noise") or {}
    lines = []
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for kind in analysis["kind"].values:
            if kind not in noise_names():
                continue
            for level in analysis["level"].values:
                at = {"kind": kind, "level": level}
                inst = analysis.instability.sel(at).mean("pair", skipna=True)
                if not np.isfinite(inst.values).any():
                    continue
                lines.append(f"{kind} copies ({pair_label(pair_noise.get(kind, kind))}), level "
                             f"{level}, barrier: " + ", ".join(
                                 f"k={int(k)}: {_pp(float(v))}"
                                 for k, v in zip(inst["rewind"].values, inst.values)))
                if "aligned_instability" in analysis:
                    al = analysis.aligned_instability.sel(at).mean("pair", skipna=True)
                    lines.append("  after weight matching: " + ", ".join(
                        f"k={int(k)}: {_pp(float(v))}"
                        for k, v in zip(al["rewind"].values, al.values)))
    return lines


def _absent_trajectory_measures(ctx, results: dict) -> list[str]:
    """With endpoints only (0, k, T) the trajectory measures are not defined: set them to
    NaN and name them. Distances and barriers at T are endpoint measures and stay."""
    T = ctx.resolved.total_steps
    if not {int(s) for s in ctx.steps} <= {0, T, *ctx.rewinds}:
        return []
    absent = []
    for name, var in registry.variables().items():
        if var.needs_trajectory and name in results:
            results[name] = xr.full_like(results[name], np.nan)
            absent.append(name)
    return absent


def _passes(groups) -> list[str]:
    """The groups whose compute function runs: the selected ones, and the pass of each
    selected group that is computed as part of another."""
    wanted = {registry.GROUPS[g].part_of or g for g in groups}
    return [g for g in registry.groups() if g in wanted]


def _partial_note(ctx, url) -> str:
    """One line when runs are not finished yet (the analysis is then partial), else ''."""
    from stabilitylab.core.keys import STATUS_DIVERGED, STATUS_INCOMPLETE

    incomplete = int((ctx.status == STATUS_INCOMPLETE).sum())
    dense = int(np.asarray(ctx.ds.dense_status.values).reshape(-1)[0])
    if not incomplete and dense != STATUS_INCOMPLETE:
        return ""
    planned = int((ctx.status != STATUS_ABSENT).sum())
    diverged = int((ctx.status == STATUS_DIVERGED).sum())
    why = "they are not finished"
    from stabilitylab.store.schema import local_path

    path = local_path(url)
    if path is not None:
        from stabilitylab.store.lock import describe_owner, held_by_other

        owner = held_by_other(path)
        if owner is not None:
            why = f"the store is still being written by {describe_owner(owner)}"
    return (f"partial analysis: skipped {incomplete} of {planned} runs as incomplete ({why})"
            + (f" and {diverged} diverged" if diverged else "")
            + ("; the dense run is incomplete too" if dense == STATUS_INCOMPLETE else "")
            + "; analyze again when record has finished to replace it")


class _Phases:
    """Seconds per phase of ``analyze``: reading the store (``loading``, wherever a group
    waits on a read through the context) and building the compiled evaluation forward
    (:data:`~stabilitylab.analysis.interpolate.COMPILE_PHASE`, in the first group that
    evaluates) are rows of their own, never counted in the group that asked. The trajectory
    group's weight blocks are the exception: its pipelines read each block and compute it
    (``StudyContext.read_cells``), so their reading is in its row."""

    def __init__(self):
        self.rows: dict[str, float] = {}

    def add(self, phase: str, seconds: float) -> None:
        self.rows[phase] = self.rows.get(phase, 0.0) + seconds

    def run(self, phase: str, ctx, fn, *args, **kwargs):
        from stabilitylab.analysis.interpolate import COMPILE_PHASE, compile_seconds

        loaded, compiled = ctx.load_seconds, compile_seconds(ctx.stacked)
        started = time.perf_counter()
        out = fn(*args, **kwargs)
        reading = ctx.load_seconds - loaded
        building = compile_seconds(ctx.stacked) - compiled
        self.add(phase, time.perf_counter() - started - reading - building)
        self.add("loading", reading)
        if building:
            self.add(COMPILE_PHASE, building)
        return out


def profile_table(profile: dict[str, float]) -> list[str]:
    """The phase table ``analyze --profile`` prints (Markdown)."""
    total = sum(profile.values())
    rows = ["| phase | seconds | share |", "|---|---|---|"]
    rows += [f"| {name} | {sec:.2f} | {100 * sec / total:.0f}% |"
             for name, sec in sorted(profile.items(), key=lambda kv: -kv[1])]
    return rows + [f"| total | {total:.2f} | 100% |"]


def _resolve_compile(ctx, alphas: int) -> None:
    """``--compile auto`` for this study: on where the barriers alone evaluate at least
    :data:`~stabilitylab.analysis.interpolate.AUTO_COMPILE_EXAMPLES` network-examples
    (pairs × cells × α × test examples; the default study's 2.7M), so the compilation,
    done once, also serves the groups that run before the interpolation; off below."""
    from stabilitylab.analysis.interpolate import _COMPILE, AUTO_COMPILE_EXAMPLES

    if _COMPILE.get() != "auto":
        return
    work = len(ctx.pairs) * int(ctx.cells().sum()) * alphas * len(ctx.data.test_x)
    _COMPILE.set("on" if work >= AUTO_COMPILE_EXAMPLES else "off")


def analyze_store(url, *, measures=None, device=None, alphas: int | str = 30, progress=None,
                  storage_options=None, n_boot: int = 1000, data_root=None,
                  trust_plugins: bool = False, compile: str = "auto") -> dict:
    """Analyze the study at ``url``; returns ``{"analysis": Dataset, "lines": [...], "csv": path,
    "study": the store's resolved Study, "profile": {phase: seconds}}`` (:func:`profile_table`
    formats the profile).

    ``alphas``: points of the evenly spaced α grid (endpoints included), or ``"adaptive"``:
    the interpolation and aligned barriers by :mod:`~stabilitylab.analysis.adaptive_alphas`
    (its resolution is ``attrs["alpha_resolution"]``; the other groups keep 30 points).

    ``data_root``: where the dataset is (default ``$STABILITYLAB_DATA`` or
    :func:`stabilitylab.data.default_data_root`; never the ``data.root`` saved in the store).

    ``compile``: "auto", "on" or "off", whether the evaluation forward of the CPU may be
    compiled by inductor (:func:`~stabilitylab.analysis.interpolate.compile_policy`; used only
    where it gives the eager logits bit for bit).
    """
    from stabilitylab.analysis.interpolate import check_compile_policy, compile_policy

    check_compile_policy(compile)  # before the lock and any reading
    groups = measure_groups(measures)
    adaptive = alphas == ADAPTIVE
    if adaptive:
        alphas = 30
    elif isinstance(alphas, str) or not isinstance(alphas, (int, np.integer)):
        raise StabilityLabError(f"--alphas: a number of points or {ADAPTIVE!r}, got {alphas!r}")
    if alphas < 2:
        raise StabilityLabError(f"--alphas: need at least 2 points (the endpoints), got {alphas}")
    if alphas > MAX_ALPHAS:
        raise StabilityLabError(f"--alphas: at most {MAX_ALPHAS} interpolation points, got {alphas}")
    from stabilitylab.store.lock import ANALYSIS_LOCK_NAME, acquire
    from stabilitylab.store.schema import describe, local_path

    path = local_path(url)  # two analyzes of one local store: the second refuses, one line
    lock = None if path is None or not path.is_dir() else acquire(path, describe(url),
                                                                  ANALYSIS_LOCK_NAME)
    from stabilitylab.core.memory import long_lived_frozen, small_pages

    try:
        with compile_policy(compile), small_pages(), long_lived_frozen():
            return _analyze(url, groups, measures=measures, device=device, alphas=alphas,
                            adaptive=adaptive,
                            progress=progress, storage_options=storage_options,
                            n_boot=n_boot, data_root=data_root, trust_plugins=trust_plugins)
    finally:
        if lock is not None:
            lock.release()


def _analyze(url, groups, *, measures, device, alphas, adaptive, progress, storage_options,
             n_boot, data_root, trust_plugins) -> dict:
    from stabilitylab.progress import Progress

    started = time.perf_counter()
    from stabilitylab.store.validate import require_chunks

    require_chunks(url, storage_options=storage_options)  # a lost chunk stops us, never zeros
    ctx = load_context(url, device=device, storage_options=storage_options, data_root=data_root,
                       trust_plugins=trust_plugins)
    from stabilitylab.analysis.context import VIEWS

    ctx.prefetch(*VIEWS)  # the shared reads, in one pass over their chunks
    _resolve_compile(ctx, alphas)
    passes = _passes(groups)
    import importlib

    from stabilitylab.core.memory import long_lived_imports

    with long_lived_imports():
        for module in dict.fromkeys(m for g in passes for m in registry.GROUPS[g].preload):
            importlib.import_module(module)  # a group's first-use imports: loading, not the group
    partial = _partial_note(ctx, url)
    from stabilitylab.analysis.inputs import exclude_nonfinite_inputs

    damaged = exclude_nonfinite_inputs(ctx)  # a NaN input: one line naming it, never numbers
    phases = _Phases()
    # store, model, data, shared views and their check for non-finite values
    phases.add("loading", time.perf_counter() - started)
    if partial:
        log.warning("%s", partial)
    from stabilitylab.store.schema import check_writable

    check_writable(url, storage_options=storage_options)  # before minutes of work, not after
    bar = Progress(sum(registry.GROUPS[g].units(ctx) for g in passes), desc="analyze",
                   unit="tasks", enabled=progress)
    options = registry.Options(groups=groups, alphas=alphas, adaptive=adaptive)
    results: dict[str, xr.DataArray] = {}
    from stabilitylab.analysis.interpolate import on_compile

    def compiling(started: bool) -> None:  # the line says why the count stands still
        bar.set(compiling="the evaluation forward" if started else None, announce=started)

    with on_compile(compiling):
        for name in passes:
            g = registry.GROUPS[name]
            joined = [registry.GROUPS[c].phase for c in groups
                      if registry.GROUPS[c].part_of == name]
            bar.set(phase=" + ".join([g.phase, *joined]), announce=True)
            results.update(phases.run(g.phase, ctx, g.compute, ctx, results, options,
                                      progress=bar.update))
    bar.close()
    finishing = time.perf_counter()
    absent = _absent_trajectory_measures(ctx, results)
    from stabilitylab.analysis.context import orphaned_runs

    orphans = [f"{kind} level {lv} rewind {k} replica {r} (parent diverged)"
               for kind, lv, k, r in orphaned_runs(ctx.status, ctx.kinds, ctx.levels, ctx.rewinds)]
    # A group marks a variable it could not compute at all (NaN) with attrs["absent"] = why.
    why_absent = {n: v.attrs.pop("absent") for n, v in results.items() if "absent" in v.attrs}
    trajectory_absent = list(absent)
    absent += [n for n in why_absent if n not in absent]
    absent += [n for n in absent_pair_measures(ctx, results) if n not in absent]
    accuracy, accuracy_std, per_replica, density = _accuracy(ctx)
    results["final_test_acc"] = accuracy
    results["final_test_acc_std"] = accuracy_std
    results["density"] = density
    dense_acc = float(ctx.ds.dense_final_test_acc.values.reshape(-1)[0]) \
        if "dense_final_test_acc" in ctx.ds else float("nan")
    results["dense_test_acc"] = xr.DataArray(dense_acc)
    if "instability" in results:
        results.update(flags(results, per_replica, threshold=LMC_THRESHOLD,
                             tolerance=MATCHING_TOLERANCE))
        results.update(predictions(ctx, results, accuracy, threshold=LMC_THRESHOLD,
                                   n_boot=n_boot))
    analysis = xr.Dataset({k: v.drop_vars([c for c in v.coords if c not in v.dims])
                           for k, v in results.items()})
    analysis = annotate(analysis, pair_noise(ctx.ds.attrs, ctx.ds.kind.values))
    # Variable-length strings: the only string type with a Zarr v3 specification.
    analysis = analysis.assign_coords({c: analysis[c].values.astype(object)
                                       for c in analysis.coords if analysis[c].dtype.kind == "U"})
    if "pair" in analysis.dims:  # the two replicas of each pair, as in xr.pairwise
        analysis = analysis.assign_coords(
            pair_a=("pair", np.array([ctx.replicas[a] for a, _ in ctx.pairs], np.int64)),
            pair_b=("pair", np.array([ctx.replicas[b] for _, b in ctx.pairs], np.int64)))
    analysis.attrs.update({
        "threshold": LMC_THRESHOLD, "matching_tolerance": MATCHING_TOLERANCE,
        "matching_confidence": MATCHING_CONFIDENCE, "alphas": alphas,
        "bn_recompute": bool(ctx.stacked.buffer_slots), "measures": list(groups),
        "skipped": list(ctx.skipped), "absent": absent + orphans + damaged, "partial": bool(partial),
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "analysis_seconds": round(time.perf_counter() - started, 2),
    })
    if adaptive:  # only then: the default analysis keeps its attrs
        from stabilitylab.analysis.adaptive_alphas import COARSE_ALPHAS, resolution

        analysis.attrs.update({"alphas": ADAPTIVE, "alpha_coarse": COARSE_ALPHAS,
                               "alpha_resolution": resolution()})
    from stabilitylab.store.writer import write_analysis

    phases.add("accuracy, flags, correlations", time.perf_counter() - finishing)
    writing = time.perf_counter()
    write_analysis(url, analysis, storage_options=storage_options)
    csv = write_csv(str(url), analysis, storage_options) if "instability" in analysis else None
    phases.add("writing", time.perf_counter() - writing)
    lines = _lines(ctx, analysis) if "instability" in analysis else list(ctx.skipped)
    if partial:  # said first, never silently
        lines.insert(0, "PARTIAL analysis: runs were unfinished when it was made; analyze again "
                        "when record has finished")
    pair_absent = [n for n in absent if n not in trajectory_absent and n not in why_absent]
    if trajectory_absent or pair_absent:
        lines.append("absent (" + ("one replica, or " if len(ctx.replicas) < 2 else "")
                     + "the store records only steps 0, the rewind points and T, e.g. an "
                     "OpenLTH import): " + ", ".join(trajectory_absent + pair_absent))
    for why in dict.fromkeys(why_absent.values()):
        lines.append(f"absent ({why}): "
                     + ", ".join(n for n, w in why_absent.items() if w == why))
    return {"analysis": analysis, "lines": lines, "csv": csv, "study": ctx.resolved,
            "profile": phases.rows}
