"""The report's "Geometry" section: where the copies went in weight space.

    from stabilitylab.report.geometry import geometry_specs
    specs = geometry_specs(study, analysis)   # [(file name, caption, builder), ...]

Each figure is registered by a *spec function* ``(study, analysis) -> [(file, caption,
builder)]`` decorated with :func:`section_figures`; the section shows them in registration
order (a new geometry measure adds one function here or in its own module, nothing else).
Plot functions take the analysis first and keyword-only options after, and return a
Figure (the conventions of :mod:`stabilitylab.report.figures`). A spec function returns
nothing when its variables are absent or all NaN, so the section shrinks with the data.
"""

from __future__ import annotations

from collections.abc import Callable

import matplotlib
import numpy as np
import xarray as xr

from stabilitylab.report import figures as F

#: The spec functions of the section, in order (see :func:`section_figures`).
SECTION_FIGURES: list[Callable] = []
TITLE = "Geometry"
INTRO = ("Where the copies went in weight space: their paths in the PCA view, the test error "
         "on planes through W_k and two copies' final weights, which layers carry the barrier, "
         "and whether consecutive IMP levels are linearly connected (the cross-level barrier "
         "column of the summary table).")
_LI = "Li et al., NeurIPS 2018, §7"
_GARIPOV = "Garipov et al., NeurIPS 2018, Fig. 1"
_ADILOVA = "Adilova et al., ICLR 2024"


def section_figures(fn: Callable) -> Callable:
    """Decorator: add a spec function to the Geometry section."""
    SECTION_FIGURES.append(fn)
    return fn


def geometry_specs(study, analysis) -> list[tuple[str, str, Callable]]:
    """(file name, caption, builder) of every Geometry figure the analysis supports."""
    if analysis is None:
        return []
    out = []
    for fn in SECTION_FIGURES:
        out += fn(study, analysis)
    return out


def _map_level(analysis) -> int:
    return int(analysis["level"].values[0])


def _plane_ks(analysis, kind: str, level) -> list[tuple[str, int]]:
    if "plane_rewind" not in analysis:
        return []
    ks = analysis["plane_rewind"].sel(kind=kind, level=level).load()
    return [(str(p), int(k)) for p, k in zip(ks["plane"].values, ks.values) if int(k) >= 0]


# ----------------------------------------------------------------------------- trajectory maps
@F._styled
def plot_trajectory_map(analysis: xr.Dataset, *, level, rewinds, kind: str = "imp") -> F.Figure:
    """Each copy's path from W_k in the PC1–PC2 plane of its (kind, level, k), coloured by
    step, over the test-error contour of that plane where the ``plane`` group computed it."""
    fig, axes = F._figure(1, len(rewinds), figsize=(3.6 * len(rewinds) + 0.8, 3.6))
    cmap = matplotlib.colormaps["viridis"]
    planes = {k: p for p, k in _plane_ks(analysis, kind, level)}
    scatter = None
    for ax, k in zip(axes[0], rewinds):
        path = F._get(analysis, "trajectory_map_path", kind=kind, level=level, rewind=k)
        share = F._get(analysis, "trajectory_map_explained", kind=kind, level=level, rewind=k)
        if not F._finite(path):
            F._no_data(ax, f"trajectory map k={k}")
            continue
        if k in planes and F._finite(F._get(analysis, "map_test_error", kind=kind, level=level,
                                            plane=planes[k])):
            at = {"kind": kind, "level": level, "plane": planes[k]}
            err = analysis["map_test_error"].sel(at).values
            cs = ax.contourf(analysis["map_x_coord"].sel(at).values,
                             analysis["map_y_coord"].sel(at).values, 100 * err, levels=12,
                             cmap="Greys", alpha=0.55)
            fig.colorbar(cs, ax=ax, label="test error (%)", shrink=0.8)
        steps = path["step"].values
        for r in path["replica"].values:
            p = path.sel(replica=r).values
            ok = np.isfinite(p).all(-1)
            ax.plot(p[ok, 0], p[ok, 1], color="0.6", lw=0.6, zorder=2)
            scatter = ax.scatter(p[ok, 0], p[ok, 1], c=steps[ok], cmap=cmap, s=6, zorder=3,
                                 vmin=min(rewinds), vmax=steps.max())  # one scale: all panels
        start = analysis["trajectory_map_start"].sel(kind=kind, level=level, rewind=k).values
        ax.plot(*start, marker="*", color="#D55E00", ms=11, zorder=4, ls="none", label="W_k")
        s1, s2 = (100 * float(v) for v in share.values)
        ax.set_xlabel(f"PC1 ({s1:.0f}% of variance)")
        ax.set_ylabel(f"PC2 ({s2:.0f}%)")
        ax.set_title(f"k = {k}")
        ax.legend(loc="best")
    if scatter is not None:
        fig.colorbar(scatter, ax=axes[0, -1], label="step")
    fig.suptitle(f"{F.KIND_LABELS.get(kind, kind)}, {F.density_label(analysis, level)}")
    return fig


@section_figures
def _trajectory_map_specs(study, analysis):
    if not F._finite(F._get(analysis, "trajectory_map_path", kind="imp")):
        return []
    level = _map_level(analysis)
    rewinds = [int(k) for k in analysis["rewind"].values]
    ks = sorted({rewinds[0], rewinds[-1]} | {k for _, k in _plane_ks(analysis, "imp", level)})
    contour = ("over the test-error contour of that plane" if "map_test_error" in analysis else
               "(the test-error contour of the plane needs `--measures plane`)")
    return [("trajectory_map.png",
             (f"Trajectory maps, {F.density_label(analysis, level)}: each copy's recorded "
              f"weights from W_k (star) to T projected on the first two principal components "
              f"of all copies' paths from k to T, coloured by step, {contour} ({_LI})."),
             lambda: plot_trajectory_map(analysis, level=level, rewinds=ks))]


# ----------------------------------------------------------------------------- planes
@F._styled
def plot_planes(analysis: xr.Dataset, *, level, kind: str = "imp", which: str = "error"):
    """Contours of test error (or loss) on each default plane of (kind, level), with the
    three points and the segment between the two copies marked."""
    planes = _plane_ks(analysis, kind, level)
    fig, axes = F._figure(1, max(len(planes), 1), figsize=(3.8 * max(len(planes), 1) + 0.6, 3.6))
    var = "plane_test_error" if which == "error" else "plane_test_loss"
    for ax, (plane, k) in zip(axes[0], planes):
        at = {"kind": kind, "level": level, "plane": plane}
        z = analysis[var].sel(at).values
        if not np.isfinite(z).any():
            F._no_data(ax, f"plane at k={k}")
            continue
        scale = 100 if which == "error" else 1
        cs = ax.contourf(analysis["plane_x_coord"].sel(at).values,
                         analysis["plane_y_coord"].sel(at).values, scale * z, levels=14,
                         cmap="viridis")
        fig.colorbar(cs, ax=ax, label="test error (%)" if which == "error" else "test loss",
                     shrink=0.8)
        ax_, ay_ = (analysis[f"plane_anchor_{c}"].sel(at).values for c in ("x", "y"))
        ax.plot(ax_[:2], ay_[:2], color="white", lw=1.5, ls="--")
        for x, y, label, off in zip(ax_, ay_, ("copy 0", "copy 1", "W_k"),
                                    ((-30, -12), (4, -12), (4, 4))):
            ax.plot(x, y, "o", color="#D55E00", mec="white", ms=7)
            ax.annotate(label, (x, y), textcoords="offset points", xytext=off, color="white",
                        fontsize=8)
        ax.set_title(f"{plane} k = {k}")
        ax.set_xlabel("distance along W_b − W_a")
        ax.set_ylabel("distance towards W_k")
        ax.set_aspect("equal", adjustable="datalim")
    fig.suptitle(f"{F.KIND_LABELS.get(kind, kind)}, {F.density_label(analysis, level)}")
    return fig


@section_figures
def _plane_specs(study, analysis):
    out = []
    if not F._finite(F._get(analysis, "plane_test_error", kind="imp")):
        return out
    for level in (int(v) for v in analysis["level"].values):
        if _plane_ks(analysis, "imp", level):
            out.append((f"planes_level{level}.png",
                        (f"Test error on the plane through two copies' final weights and W_k, "
                         f"IMP {F.density_label(analysis, level)}, at the first k, the last k "
                         "and the LMC rule's k (dashed: the straight segment between the copies, "
                         f"whose barrier is the instability; distances are true L2) "
                         f"({_GARIPOV})."),
                        lambda level=level: plot_planes(analysis, level=level)))
    return out


# ----------------------------------------------------------------------------- layer-wise
@F._styled
def plot_layerwise(analysis: xr.Dataset, *, kind: str = "imp"):
    """Heat map of the layer-wise test-error barrier (pair mean), layer × k, one panel per
    level."""
    levels = [int(v) for v in analysis["level"].values]
    fig, axes = F._figure(1, len(levels), figsize=(3.2 * len(levels) + 0.8, 3.0))
    data = analysis["layerwise_barrier"].sel(kind=kind).mean("pair", skipna=True).load()
    vmax = max(float(np.nanmax(100 * data.values)) if np.isfinite(data.values).any() else 1, 1e-9)
    mesh = None
    for ax, level in zip(axes[0], levels):
        z = 100 * data.sel(level=level).transpose("layer", "rewind").values
        mesh = ax.imshow(z, aspect="auto", cmap="magma_r", vmin=0, vmax=vmax)
        ax.set_xticks(range(z.shape[1]), [str(int(k)) for k in data["rewind"].values])
        ax.set_yticks(range(z.shape[0]), [str(v) for v in data["layer"].values])
        ax.set_xlabel("rewind point k")
        ax.set_title(F.density_label(analysis, level, kind))
        ax.grid(False)
        for (i, j), v in np.ndenumerate(z):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7,
                        color="white" if v > 0.6 * vmax else "black")
    if mesh is not None:
        fig.colorbar(mesh, ax=axes[0, -1], label="barrier (pp)")
    return fig


@section_figures
def _layerwise_specs(study, analysis):
    if not F._finite(F._get(analysis, "layerwise_barrier", kind="imp")):
        return []
    return [("layerwise_barrier.png",
             ("Layer-wise barriers, IMP: the test-error barrier (percentage points, mean over "
              "copy pairs) when one layer (weight and bias) is interpolated between two copies' "
              "final weights and the others are held at one copy; the path's far end is that "
              "copy with the other's layer, a hybrid network, so a bad hybrid alone raises the "
              f"barrier ({_ADILOVA})."),
             lambda: plot_layerwise(analysis))]


# ----------------------------------------------------------------------------- summary column
def cross_level_value(analysis, kind, level, rewind) -> float | None:
    """Replica mean of ``cross_level_barrier`` at (level, k) for ``imp`` rows, else None."""
    if analysis is None or "cross_level_barrier" not in analysis or str(kind) != "imp":
        return None
    try:
        v = analysis["cross_level_barrier"].sel(level=level, rewind=rewind).values
    except KeyError:
        return None
    v = np.asarray(v, float)
    return float(np.nanmean(v)) if np.isfinite(v).any() else None


CROSS_LEVEL_COLUMN = ("cross_level", "cross-level barrier (pp)")
CROSS_LEVEL_NOTE = ("Cross-level barrier: test-error barrier between the level's and the "
                    "previous level's final weights (same copy, same k), mean over copies; "
                    "consecutive IMP solutions are linearly connected when the level is "
                    "matching (Paul et al., ICLR 2023).")
