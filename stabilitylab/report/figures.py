"""Report figures: each takes xarray data first, keyword-only options after, returns a Figure.

    from stabilitylab.report import figures
    fig = figures.plot_instability(stabilitylab.open_analysis("runs/mnist1d-default.zarr"))
    fig.savefig("instability.png", dpi=100)

Figures are built with the object-oriented API (``matplotlib.figure.Figure``, no
pyplot), so they never open a window and render with Agg when saved. Missing or
all-NaN data is skipped (logged), never an error: a panel with nothing to show says so.
Colors: Okabe & Ito (2008) for categories, viridis for ordered values (colorblind-safe).
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from stabilitylab.analysis.barriers import LMC_THRESHOLD, MATCHING_TOLERANCE
from stabilitylab.analysis.pair_noise import barrier_name, pair_noise
from stabilitylab.analysis.pair_noise import label as pair_label
from stabilitylab.report import intervals as I
from stabilitylab.study.kinds import REGISTRY

log = logging.getLogger(__name__)

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000")


class _KindAttr(Mapping):
    """``{kind: its attribute}`` read live from the run-kind registry (kinds whose attribute
    is None are left out): each kind declares its label, colour and line style."""

    def __init__(self, attr: str):
        self.attr = attr

    def _items(self) -> dict:
        return {n: v for n, k in REGISTRY.items() if (v := getattr(k, self.attr)) is not None}

    def __getitem__(self, kind):
        return self._items()[kind]

    def __iter__(self):
        return iter(self._items())

    def __len__(self):
        return len(self._items())


KIND_COLORS = _KindAttr("color")
KIND_LABELS = _KindAttr("label")
KIND_STYLES = _KindAttr("line")
STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9.5,
         "xtick.labelsize": 10, "ytick.labelsize": 10, "axes.grid": True, "grid.alpha": 0.3,
         "lines.markersize": 6, "pdf.fonttype": 42}
FIGSIZE = (8.0, 5.0)  # inches: 1200 × 750 px at the report's 150 dpi, a page width in a PDF


def _styled(fn):
    """Build the figure under the report's rcParams (fonts are fixed when artists are made)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)
    return wrapper


def _figure(nrows: int = 1, ncols: int = 1, *, figsize=FIGSIZE, sharey=False):
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey)
    return fig, axes


def _ordered_colors(n: int) -> list:
    """Colors for n ordered values (levels, rewind points): up to 7 the Okabe–Ito colors,
    which stay apart where neighbours of a sequential map (k = 50, 100, 200) blur; more:
    viridis."""
    if n <= len(OKABE_ITO):
        return list(OKABE_ITO[:n])
    cmap = matplotlib.colormaps["viridis"]
    return [cmap(x) for x in np.linspace(0.0, 0.85, max(n, 1))][:n]


def _as_list(x) -> list:
    if isinstance(x, (str, bytes)) or not isinstance(x, Sequence | np.ndarray):
        return [x]
    return list(x)


def _get(ds: xr.Dataset, name: str, **sel) -> xr.DataArray | None:
    """``ds[name].sel(**sel)`` over the dims it has, or None if the variable/label is absent."""
    if name not in ds:
        log.info("report: %s not in the dataset; skipped", name)
        return None
    da = ds[name]
    try:
        return da.sel({k: v for k, v in sel.items() if k in da.dims}).load()
    except KeyError:
        log.info("report: %s has no %s; skipped", name, sel)
        return None


def _finite(da) -> bool:
    return da is not None and bool(np.isfinite(np.asarray(da, dtype=float)).any())


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no data: {what}", ha="center", va="center", transform=ax.transAxes,
            color="0.4")


def density_label(ds: xr.Dataset, level, kind: str = "imp") -> str:
    """``"level 1 (density 80.0%)"``, or ``"level 1"`` when the density is unknown."""
    d = _get(ds, "density", kind=kind, level=level)
    if _finite(d):
        return f"level {level} (density {100 * float(np.nanmean(np.asarray(d, float))):.3g}%)"
    return f"level {level}"


def _step_axis(ax, ticks, label: str, *, fixed: bool = True) -> None:
    """Symlog x axis (k includes 0), linear below the smallest positive tick; ``fixed``
    puts the ticks at the given values (rewind points), else at 0 and the decades from 10
    (a "1" next to "0" would collide). The limits leave room for the end markers."""
    ticks = np.asarray(sorted(set(np.asarray(ticks).tolist())))
    positive = ticks[ticks > 0]
    linthresh = float(positive.min()) if positive.size else 1.0
    ax.set_xscale("symlog", linthresh=linthresh, linscale=0.5 if fixed else 0.4)
    ax.set_xlabel(label)
    if fixed and 0 < ticks.size <= 12:
        shown = ticks
    else:
        top = float(ticks.max()) if ticks.size else 1.0
        decades = [10.0 ** e for e in range(1, int(np.floor(np.log10(max(top, 1.0)))) + 1)]
        shown = np.array(([0.0] if ticks.size and ticks.min() <= 0 else []) + decades
                         if decades else ticks)
    if shown.size:
        ax.xaxis.set_major_locator(FixedLocator(shown))
        ax.set_xticklabels([f"{t:g}" for t in shown])
        ax.xaxis.set_minor_locator(NullLocator())
    if ticks.size > 1:  # pad 3% of the axis in display space on both sides
        tr = ax.xaxis.get_transform()
        lo, hi = tr.transform([ticks.min(), ticks.max()])
        pad = 0.03 * (hi - lo)
        ax.set_xlim(*tr.inverted().transform([lo - pad, hi + pad]))


@_styled
def plot_instability(analysis: xr.Dataset, *, kind: str = "imp", threshold: float | None = None,
                     variable: str = "instability") -> Figure:
    """Error barrier (Frankle et al. 2020, eq. 1) vs rewind step k, one line per level.

    Line: mean over replica pairs; band: :func:`stabilitylab.report.intervals.pair_interval`,
    the 95% CI from resampling replicas (not pairs) with enough replicas, else the range
    over pairs; the legend title says which, with n. Percentage points. ``threshold``
    defaults to ``analysis.attrs["threshold"]``. ``variable`` may be any barrier with dims
    (kind, level, rewind, pair), e.g. ``instability_train`` or ``aligned_instability``.
    """
    threshold = float(analysis.attrs.get("threshold", LMC_THRESHOLD) if threshold is None else threshold)
    fig, axes = _figure()
    ax = axes[0, 0]
    da = _get(analysis, variable, kind=kind)
    rewinds = analysis["rewind"].values if "rewind" in analysis.coords else []
    levels = da["level"].values if da is not None and "level" in da.dims else []
    colors = _ordered_colors(len(levels))
    pair_a, pair_b = I.pair_labels(analysis) if da is not None else (None, None)
    shown, drawn = None, 0
    for color, level in zip(colors, levels):
        vals = da.sel(level=level).transpose("rewind", "pair").values
        if not np.isfinite(vals).any():
            continue
        ivs = I.pair_intervals(vals, pair_a, pair_b)
        mean, low, high = (np.array([getattr(iv, f) for iv in ivs]) for f in ("mean", "low", "high"))
        shown = max((iv for iv in ivs if iv.finite), key=lambda iv: iv.n, default=shown)
        ok = np.isfinite(mean)
        ax.plot(rewinds[ok], 100 * mean[ok], "o-", color=color, clip_on=False, zorder=3,
                label=density_label(analysis, level, kind))
        ax.fill_between(rewinds[ok], 100 * low[ok], 100 * high[ok], color=color, alpha=0.18, lw=0)
        drawn += 1
    ax.axhline(100 * threshold, color="0.2", ls="--", lw=1, label=f"threshold {100 * threshold:g} pp")
    _step_axis(ax, rewinds, "rewind step k (iterations)")
    what = variable.replace("_", " ")
    noise = pair_noise(analysis.attrs, [kind])[kind]
    init_pairs = barrier_name(noise) != "instability"  # e.g. different-init pairs
    if init_pairs and variable == "instability":  # not data-order instability
        what = barrier_name(noise)
    ax.set_ylabel(f"{what}: error barrier (percentage points)" if "loss" not in variable
                  else f"{what} (nats)")
    ax.set_title(f"{what.capitalize()} of {KIND_LABELS.get(kind, kind)} vs rewind point")
    if not drawn:
        _no_data(ax, f"{variable} for kind={kind}")
    band = "none" if shown is None else (f"{shown.method}, {shown.n_text()}")
    pairs = pair_label(noise) if init_pairs else "pairs"
    ax.legend(title=f"mean over {pairs}; band: {band}", loc="best", framealpha=0.9)
    return fig


@_styled
def plot_interpolation(analysis: xr.Dataset, *, level, rewind, kind: str = "imp",
                       split: str = "test", quantity: str = "error") -> Figure:
    """Error (or loss) along the linear path αW_a + (1−α)W_b, one line per replica pair.

    ``level`` / ``rewind`` may be lists: every (level, rewind) combination gets its own
    color, its pairs thin lines and its pair mean a thick one.
    """
    if split not in ("test", "train") or quantity not in ("error", "loss"):
        raise ValueError(f"split must be test|train and quantity error|loss, got {split!r}, {quantity!r}")
    name = f"interp_{split}_{quantity}"
    scale = 100.0 if quantity == "error" else 1.0
    combos = list(itertools.product(_as_list(level), _as_list(rewind)))
    fig, axes = _figure()
    ax = axes[0, 0]
    drawn = 0
    for c, (lv, k) in enumerate(combos):
        da = _get(analysis, name, kind=kind, level=lv, rewind=k)
        if not _finite(da):
            continue
        da = da.transpose("pair", "alpha")
        alpha = da["alpha"].values
        single = len(combos) == 1
        for p, pair in enumerate(da["pair"].values):
            y = scale * da.sel(pair=pair).values
            color = OKABE_ITO[p % len(OKABE_ITO)] if single else OKABE_ITO[c % len(OKABE_ITO)]
            label = f"replicas {pair}" if single else (f"level {lv}, k = {k}" if p == 0 else None)
            ax.plot(alpha, y, "-", color=color, lw=1.5 if single else 0.8,
                    alpha=1.0 if single else 0.5, label=label)
        if not single:
            ax.plot(alpha, scale * da.mean("pair").values, "-", lw=2.5,
                    color=OKABE_ITO[c % len(OKABE_ITO)])
        drawn += 1
    ax.set_xlabel("interpolation coefficient α (weight on W_a)")
    ax.set_ylabel(f"{split} {quantity}" + (" (%)" if quantity == "error" else " (nats)"))
    what = (f"level {combos[0][0]}, k = {combos[0][1]}" if len(combos) == 1
            else f"{len(combos)} (level, rewind) settings; thick: pair mean")
    ax.set_title(f"Linear interpolation, {KIND_LABELS.get(kind, kind)}: {what}")
    if drawn:
        ax.legend(loc="best")
    else:
        _no_data(ax, f"{name} for kind={kind}, level={level}, rewind={rewind}")
    return fig


@_styled
def plot_distances(analysis: xr.Dataset, *, level, which: str = "data_order",
                   metric: str = "l2", rewind=None,
                   kinds: Sequence[str] = ("imp", "random_prune")) -> Figure:
    """Weight distance vs training step, IMP vs controls.

    ``which="data_order"``: between the pair's replicas (pair mean); ``"pruning_noise"``:
    between the subnetwork and the dense copy, over surviving weights (levels ≥ 1).
    ``rewind=None``: one color per rewind point, line style per kind; a rewind value:
    one line per kind at that k.
    """
    if which not in ("data_order", "pruning_noise") or metric not in ("l2", "angle"):
        raise ValueError(f"which must be data_order|pruning_noise, metric l2|angle; got {which!r}, {metric!r}")
    name = f"{which}_{metric}"
    fig, axes = _figure()
    ax = axes[0, 0]
    rewinds = analysis["rewind"].values if rewind is None else np.asarray(_as_list(rewind))
    colors = _ordered_colors(len(rewinds))
    drawn, steps = 0, []
    for (color, k), kind in itertools.product(zip(colors, rewinds), kinds):
        da = _get(analysis, name, kind=kind, level=level, rewind=k)
        if not _finite(da):
            continue
        if "pair" in da.dims:
            da = da.mean("pair", skipna=True)
        ok = np.isfinite(da.values)
        x = da["step"].values[ok]
        steps.extend(x.tolist())
        if rewind is None:
            label = f"k = {k}" if kind == kinds[0] else None
            ax.plot(x, da.values[ok], ls=KIND_STYLES.get(kind, "-"), color=color, label=label)
        else:
            ax.plot(x, da.values[ok], ls=KIND_STYLES.get(kind, "-"),
                    color=KIND_COLORS.get(kind, "k"), label=f"{KIND_LABELS.get(kind, kind)}, k = {k}")
        drawn += 1
    if rewind is None and drawn:  # line-style key for the kinds
        for kind in kinds:
            ax.plot([], [], ls=KIND_STYLES.get(kind, "-"), color="0.3", label=KIND_LABELS.get(kind, kind))
    _step_axis(ax, steps or [0, 1], "training step t (iterations)", fixed=False)
    pair = "‖W_a − W_b‖" if which == "data_order" else "‖m⊙W_dense − m⊙W_sub‖"
    ax.set_ylabel(f"L2 distance {pair}" if metric == "l2" else "angle between weights (rad)")
    what = "data-order distance (pair mean)" if which == "data_order" else "pruning-noise distance"
    ax.set_title(f"{what.capitalize()}, {density_label(analysis, level)}")
    if drawn:
        ax.legend(loc="best", ncols=2)
    else:
        _no_data(ax, f"{name} at level {level}")
    return fig


def _accuracy_table(data: xr.Dataset):
    """(mean, std, density, dense accuracy, tolerance) from a study or an analysis Dataset."""
    acc = data["final_test_acc"]
    tol = float(data.attrs.get("matching_tolerance", MATCHING_TOLERANCE))
    if "replica" in acc.dims:  # a study: complete runs only
        if "status" in data:
            acc = acc.where(data["status"] == 2)
        acc = acc.load()
        mean, std = acc.mean("replica", skipna=True), acc.std("replica", skipna=True)
    else:
        mean = acc
        std = data["final_test_acc_std"] if "final_test_acc_std" in data else xr.zeros_like(acc)
    dense = np.nan
    if "dense_test_acc" in data:
        d = np.asarray(data["dense_test_acc"].values, dtype=float).ravel()
        d = d[np.isfinite(d)]
        dense = float(d[-1]) if d.size else np.nan
    return mean.load(), std.load(), data["density"].load(), dense, tol


@_styled
def plot_accuracy_vs_density(study_or_analysis: xr.Dataset, *, rewind=None,
                             kinds: Sequence[str] = ("imp", "random_prune", "reinit")) -> Figure:
    """Final test accuracy vs density (log x, sparser to the right), IMP and controls.

    Accepts the study (mean/std over complete replicas) or the analysis Dataset.
    ``rewind=None`` uses the latest rewind point with IMP results. The grey band is
    the dense accuracy ± the matching tolerance (0.2 percentage points by default).
    """
    fig, axes = _figure()
    ax = axes[0, 0]
    mean, std, density, dense, tol = _accuracy_table(study_or_analysis)
    if rewind is None:
        has = np.isfinite(mean.sel(kind="imp").values).any(axis=0) if "imp" in mean["kind"] else []
        rewind = mean["rewind"].values[np.flatnonzero(has)[-1]] if np.any(has) else None
    xs = []
    for kind in kinds:
        if rewind is None or kind not in mean["kind"] or rewind not in mean["rewind"]:
            continue
        m, s = mean.sel(kind=kind, rewind=rewind).values, std.sel(kind=kind, rewind=rewind).values
        d = density.sel(kind=kind, rewind=rewind).values
        ok = np.isfinite(m) & np.isfinite(d) & (d > 0)
        if not ok.any():
            continue
        ax.errorbar(d[ok], 100 * m[ok], yerr=100 * np.nan_to_num(s[ok]), fmt="o" + KIND_STYLES[kind]
                    if kind in KIND_STYLES else "o-", color=KIND_COLORS.get(kind), capsize=3,
                    label=KIND_LABELS.get(kind, kind))
        xs.extend(d[ok].tolist())
    if np.isfinite(dense):
        ax.axhspan(100 * (dense - tol), 100 * (dense + tol), color="0.6", alpha=0.35, lw=0,
                   label=f"dense {100 * dense:.2f}%; band: ± {100 * tol:g} pp matching tolerance")
        ax.axhline(100 * dense, color="0.4", lw=1)
    ax.set_xscale("log")
    if xs:
        ticks = np.unique(np.round(xs, 6))
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.set_xticklabels([f"{100 * t:.3g}" for t in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlim(ticks.max() * 1.15, ticks.min() / 1.15)  # decreasing density to the right
    else:
        ax.invert_xaxis()
        _no_data(ax, "final_test_acc / density")
    ax.set_xlabel("density: kept fraction of prunable weights (%)")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title(f"Accuracy vs density at rewind k = {rewind}" + ("" if "replica" not in
                 study_or_analysis["final_test_acc"].dims else " (mean ± sd over replicas)"))
    if xs or np.isfinite(dense):
        ax.legend(loc="lower left")
    return fig
