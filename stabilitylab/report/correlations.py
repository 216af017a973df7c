"""The small-multiples figure: each stability measure vs final test accuracy across rewind
points, with Spearman ρ and its interval; a correlation whose interval cannot tell its sign
is drawn grey and says so.

    fig = plot_measure_correlations(stabilitylab.open_analysis("runs/mnist1d-default.zarr"))
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, ScalarFormatter

from stabilitylab.report import glossary as G
from stabilitylab.report.figures import (
    _figure,
    _finite,
    _get,
    _no_data,
    _ordered_colors,
    _styled,
    density_label,
)

#: A correlation is shown grey (not read) when its interval includes 0 and is this wide,
WIDE_INTERVAL = 1.0
#: or when it rests on fewer rewind points than this (a bootstrap of 3 points is no interval).
MIN_POINTS = 5
UNINFORMATIVE = (f"fewer than {MIN_POINTS} rewind points, or a 95% interval of ρ that includes 0 "
                 f"and is wider than {WIDE_INTERVAL:g}: these points cannot tell the sign of the "
                 "correlation")


@_styled
def plot_measure_correlations(analysis: xr.Dataset, *, level=None,
                              measures: Sequence[str] | None = None, ncols: int = 4) -> Figure:
    """Small multiples: each stability measure vs IMP final test accuracy across rewind points.

    Panel titles give Spearman ρ and its bootstrap 95% CI (``spearman_low/high``). Values
    are in the units of :mod:`stabilitylab.report.glossary` (barriers and fractions in
    percentage points), named on each x axis.
    ``level=None`` uses the last level with any finite measure. Measures that are
    all NaN at that level (e.g. ``aligned_instability`` unsupported) are left out.
    """
    values = _get(analysis, "measure_value")
    acc = _get(analysis, "final_test_acc", kind="imp")
    if values is not None and level is None:
        finite = [lv for lv in values["level"].values if _finite(values.sel(level=lv))]
        level = finite[-1] if finite else None
    names = [] if values is None or level is None else [
        str(m) for m in (values["measure"].values if measures is None else measures)
        if m in values["measure"] and _finite(values.sel(measure=m, level=level))]
    if not names or acc is None:
        fig, axes = _figure()
        _no_data(axes[0, 0], "measure_value / final_test_acc")
        axes[0, 0].set_xlabel("measure value")
        axes[0, 0].set_ylabel("final test accuracy (%)")
        return fig
    ncols = min(ncols, len(names))
    nrows = -(-len(names) // ncols)
    # one y axis (the same accuracies in every panel): labelled once per row, which also
    # spares the layout engine most of the tick labels
    fig, axes = _figure(nrows, ncols, figsize=(3.6 * ncols, 3.2 * nrows + 0.7), sharey=True)
    rewinds = values["rewind"].values
    colors = _ordered_colors(len(rewinds))
    y = 100 * acc.sel(level=level).sel(rewind=rewinds).values
    for ax, name in zip(axes.flat, names):
        x = G.scale(name) * values.sel(measure=name, level=level).values  # the report's unit
        ok = np.isfinite(x) & np.isfinite(y)
        rho = _get(analysis, "spearman", measure=name, level=level)
        lo = _get(analysis, "spearman_low", measure=name, level=level)
        hi = _get(analysis, "spearman_high", measure=name, level=level)
        grey = _uninformative(lo, hi) or int(ok.sum()) < MIN_POINTS
        ax.scatter(x[ok], y[ok], c=["0.65" if grey else colors[i] for i in np.flatnonzero(ok)],
                   s=36, zorder=3)
        for i in np.flatnonzero(ok):
            ax.annotate(f"{rewinds[i]:g}", (x[i], y[i]), fontsize=8.5, xytext=(3, 3),
                        textcoords="offset points", color="0.55" if grey else "0.25")
        title = name.replace("_", " ")
        if _finite(rho):
            ci = f" [{float(lo):.2f}, {float(hi):.2f}]" if _finite(lo) and _finite(hi) else ""
            title += f"\nρ = {float(rho):.2f}{ci}, n = {int(ok.sum())}"
        ax.set_title(title, fontsize=10.5, color="0.5" if grey else "black")
        if grey:
            ax.set_facecolor("0.96")
        ax.xaxis.set_major_locator(MaxNLocator(4))  # few, short tick labels: no collisions
        ax.xaxis.set_major_formatter(ScalarFormatter(useOffset=False))  # no "1e-12+7.5e-1"
        ax.set_xlabel(G.axis_label(name), fontsize=10)
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel("final test acc. (%)", fontsize=10)
    for ax in list(axes.flat)[len(names):]:
        ax.remove()
    fig.suptitle(f"Stability measures vs final test accuracy, IMP {density_label(analysis, level)}"
                 "\n(points: rewind k; ρ: Spearman [95% bootstrap CI], n rewind points; grey: too few "
                 "points, or an interval too wide to tell the sign)", fontsize=12)
    return fig


def _uninformative(low, high) -> bool:
    """Whether a correlation's interval [low, high] includes 0 and is wider than
    :data:`WIDE_INTERVAL` (or is missing): its sign cannot be read."""
    if not (_finite(low) and _finite(high)):
        return True
    lo, hi = float(low), float(high)
    return lo <= 0.0 <= hi and hi - lo > WIDE_INTERVAL
