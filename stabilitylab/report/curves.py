"""Report pieces for mode-connecting curves (the ``curve`` measure group).

    from stabilitylab.report import curves
    fig = curves.plot_curve_paths(analysis, level=2, rewind=[0, 400])
    rows = curves.curve_rows(analysis)          # one row per (level, rewind) with curves

Garipov et al., NeurIPS 2018 (Bézier curves and one-bend chains between two networks);
Draxler et al., ICML 2018. :func:`curve_specs` gives the (file, caption, builder) triples
of the report's figure list; :data:`CURVE_COLUMNS` the table's columns.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from stabilitylab.report import figures as F

CURVE_LABELS = {"linear": "straight line", "bezier": "Bézier curve",
                "polychain": "one-bend chain"}
CURVE_COLORS = {"linear": "#000000", "bezier": "#0072B2", "polychain": "#E69F00"}
CURVE_COLUMNS = {"level": "level", "rewind": "k", "linear": "linear barrier (pp)",
                 "bezier": "Bézier barrier (pp)", "polychain": "chain barrier (pp)",
                 "linear_minus_curve": "linear − Bézier (pp)",
                 "length_ratio": "Bézier length / straight"}
CITATION = "Garipov et al., NeurIPS 2018; Draxler et al., ICML 2018"


def _pair_mean(da: xr.DataArray) -> xr.DataArray:
    with np.errstate(invalid="ignore"):
        return da.mean("pair", skipna=True)


def curve_rewinds(analysis: xr.Dataset, *, kind: str = "imp", level=None) -> list:
    """Rewind points with at least one finite curve barrier (at ``level``, or any level)."""
    if "curve_barrier" not in analysis:
        return []
    da = analysis["curve_barrier"].sel(kind=kind)
    if level is not None:
        da = da.sel(level=level)
    finite = np.isfinite(da).any([d for d in da.dims if d != "rewind"])
    return [k.item() for k in da["rewind"][finite.values]]


@F._styled
def plot_curve_paths(analysis: xr.Dataset, *, level, rewind, kind: str = "imp"):
    """Test error along the straight line, the Bézier curve and the one-bend chain between
    the replicas of each pair (thin: each pair; thick: pair mean), one panel per rewind."""
    ks = F._as_list(rewind)
    fig, axes = F._figure(1, len(ks), figsize=(4.2 * len(ks), 3.8))
    for ax, k in zip(axes[0], ks):
        at = {"kind": kind, "level": level, "rewind": k}
        paths = {"linear": F._get(analysis, "interp_test_error", **at)}
        for shape in ("bezier", "polychain"):
            paths[shape] = F._get(analysis, "curve_test_error", **at, curve=shape)
        drawn = False
        for name, da in paths.items():
            if not F._finite(da):
                continue
            da = da.transpose("pair", "alpha")
            t = da["alpha"].values
            for pair in da["pair"].values:
                ax.plot(t, 100 * da.sel(pair=pair).values, "-", lw=0.7, alpha=0.4,
                        color=CURVE_COLORS[name])
            ax.plot(t, 100 * _pair_mean(da).values, "-", lw=2.2, color=CURVE_COLORS[name],
                    label=CURVE_LABELS[name])
            drawn = True
        ax.set_xlabel("t (α on the straight line; 1 = W_a)")
        ax.set_ylabel("test error (%)")
        ax.set_title(f"level {level}, k = {k}")
        if drawn:
            ax.legend(loc="best")
        else:
            F._no_data(ax, f"curves for kind={kind}, level={level}, rewind={k}")
    fig.suptitle(f"Paths between replicas, {F.KIND_LABELS.get(kind, kind)}")
    return fig


def curve_rows(analysis: xr.Dataset, *, kind: str = "imp") -> list[dict]:
    """Pair-mean barriers per (level, rewind) that has curves: fractions (shown in pp)."""
    if "curve_barrier" not in analysis:
        return []
    rows = []
    for level in analysis["level"].values:
        for k in curve_rewinds(analysis, kind=kind, level=level):
            at = {"kind": kind, "level": level, "rewind": k}
            barrier = _pair_mean(analysis["curve_barrier"].sel(**at))
            row = {"level": int(level), "rewind": int(k),
                   "linear": float(_pair_mean(analysis["instability"].sel(**at))),
                   "bezier": float(barrier.sel(curve="bezier")),
                   "polychain": float(barrier.sel(curve="polychain")),
                   "linear_minus_curve": float(_pair_mean(
                       analysis["linear_minus_curve"].sel(**at, curve="bezier"))),
                   "length_ratio": None}
            if "data_order_l2_final" in analysis:  # ‖W_a − W_b‖, the straight line's length
                ratio = (analysis["curve_length"].sel(**at, curve="bezier")
                         / analysis["data_order_l2_final"].sel(**at))
                row["length_ratio"] = float(_pair_mean(ratio))
            rows.append(row)
    return rows


def curve_specs(analysis: xr.Dataset | None) -> list[tuple[str, str, object]]:
    """(file name, caption, builder) of the curve figures the analysis supports."""
    if analysis is None or "curve_test_error" not in analysis:
        return []
    levels = [lv for lv in analysis["level"].values if curve_rewinds(analysis, level=lv)]
    if not levels:
        return []
    gain = analysis["linear_minus_curve"].sel(kind="imp", curve="bezier")
    gain = [float(np.nanmax(gain.sel(level=lv).values, initial=-np.inf)) for lv in levels]
    level = levels[int(np.argmax(gain))]  # where a curve avoids most of the linear barrier
    ks = curve_rewinds(analysis, level=level)
    ks = sorted({ks[0], ks[-1]})
    caption = (f"Test error along the straight line, a trained quadratic Bézier curve and a "
               f"one-bend polygonal chain between the replicas of each pair, level {level} (the "
               f"level where a curve avoids most of the linear barrier), "
               f"earliest and latest rewind point with curves (thin: each pair, thick: mean). "
               f"A low curve over a high straight line: linearly unstable copies that still "
               f"share one connected valley ({CITATION}).")
    return [("curves.png", caption, lambda: plot_curve_paths(analysis, level=level, rewind=ks))]
