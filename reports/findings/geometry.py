"""Report phase, Q8-Q11: past the straight line between two copies. Numbers from results.csv.

- Q8, permutations: the raw, aligned (weight matching, Ainsworth et al., ICLR 2023), REPAIRed
  (Jordan et al., ICLR 2023) and aligned+REPAIRed barriers of data-order copies from W_k,
  against copies from independent inits (the ``init`` kind), at level 0 over k.
- Q9, curves: the barrier along a trained quadratic Bézier curve (Garipov et al., NeurIPS 2018)
  against the linear barrier, for the IMP copies at every level and k.
- Q10, layers: the barrier of the path that moves one layer only (Adilova et al., ICLR 2024),
  per layer, over k and density.
- Q11, consecutive levels: the linear barrier between level L−1's and level L's copy trained
  from the same k (Paul et al., ICLR 2023), against whether level L is matching (the paired
  rule of ``stabilitylab.analysis.prediction.paired_matching``).

Intervals: Student-t 95% over seeds (``common.t_ci``); agreement rates: Wilson intervals.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from common import THRESHOLD, Results, fmt, seeds_of, t_ci

from stabilitylab.analysis.rewind_target import hit_rate

Q8_BARRIERS = (("instability", "raw"), ("aligned_instability", "aligned"),
               ("repaired_instability", "REPAIR"), ("aligned_repaired_instability", "aligned + REPAIR"))
Q8_KINDS = (("imp", "data order, same W_k"), ("init", "independent inits"))
CURVE = "bezier"


def _suffixes(res: Results, cond: str, prefix: str) -> list[str]:
    """The suffixes of ``prefix:...`` quantities of ``cond``, in first-seen order."""
    seen: dict[str, None] = {}
    for key in res.v:
        if key[0] == cond and key[2].startswith(prefix + ":"):
            seen.setdefault(key[2].split(":", 1)[1], None)
    return list(seen)


def _ci(res, cond, seeds, quantity, kind, level, k):
    return t_ci([res.get(cond, s, quantity, kind, level, k) for s in seeds])


def _cond_numbers(res: Results, cond: str, seeds: list[int]) -> dict:
    ks = sorted({key[5] for key in res.v if key[0] == cond and key[5] is not None})
    levels = sorted({key[4] for key in res.v if key[0] == cond and key[4] is not None})
    density = {lv: float(np.nanmean([res.get(cond, s, "density", "imp", lv, ks[0]) for s in seeds]))
               for lv in levels}
    out = {"ks": ks, "levels": levels, "density": density, "seeds": seeds}
    # Q8
    out["q8"] = {(kind, q): [_ci(res, cond, seeds, q, kind, 0, k) for k in ks]
                 for kind, _ in Q8_KINDS for q, _ in Q8_BARRIERS}
    # Q9
    curve = f"curve_barrier:{CURVE}"
    out["q9"] = {lv: {"linear": [_ci(res, cond, seeds, "instability", "imp", lv, k) for k in ks],
                      "curve": [_ci(res, cond, seeds, curve, "imp", lv, k) for k in ks]}
                 for lv in levels}
    cells = [(res.get(cond, s, "instability", "imp", lv, k), res.get(cond, s, curve, "imp", lv, k))
             for s in seeds for lv in levels for k in ks]
    cells = [(a, b) for a, b in cells if np.isfinite(a) and np.isfinite(b)]
    out["q9_cells"] = {"n": len(cells),
                       "unstable": sum(a >= THRESHOLD for a, _ in cells),
                       "curve_connected": sum(a >= THRESHOLD and b < THRESHOLD for a, b in cells),
                       "max_curve": max((b for _, b in cells), default=np.nan)}
    # Q10
    layers = _suffixes(res, cond, "layerwise_barrier")
    out["layers"] = layers
    out["q10"] = {lv: {layer: [_ci(res, cond, seeds, f"layerwise_barrier:{layer}", "imp", lv, k)
                               for k in ks] for layer in layers} for lv in levels}
    out["q10_stable_from"] = {lv: {layer: next((k for k, ci in zip(ks, out["q10"][lv][layer])
                                                if ci[0] < THRESHOLD), None) for layer in layers}
                              for lv in levels}
    out["q10_linear_stable_from"] = {lv: next((k for k, ci in zip(ks, out["q9"][lv]["linear"])
                                               if ci[0] < THRESHOLD), None) for lv in levels}
    # Q11: per seed, level L >= 1 and k: the cross-level barrier and level L's matching flag
    rows = []
    for s in seeds:
        for lv in levels[1:]:
            for k in ks:
                barrier = res.get(cond, s, "cross_level_barrier", None, lv, k)
                low = res.get(cond, s, "matching_low", "imp", lv, k)
                margin = res.get(cond, s, "matching_margin", None, None, k)
                diff = res.get(cond, s, "matching_difference", "imp", lv, k)
                if np.isfinite(barrier) and np.isfinite(low) and np.isfinite(margin):
                    rows.append({"seed": s, "level": lv, "k": k, "barrier": barrier,
                                 "connected": barrier < THRESHOLD, "matching": low >= -margin,
                                 "near": diff >= -margin, "difference": diff})
    out["q11_rows"] = rows
    out["q11_table"] = {lv: [(_ci(res, cond, seeds, "cross_level_barrier", None, lv, k),
                              sum(r["matching"] for r in rows if r["level"] == lv and r["k"] == k),
                              sum(1 for r in rows if r["level"] == lv and r["k"] == k),
                              _ci(res, cond, seeds, "matching_difference", "imp", lv, k))
                             for k in ks] for lv in levels[1:]}
    if rows:  # the paired rule, and its point estimate alone (no confidence bound)
        for rule in ("matching", "near"):
            out[f"q11_agree_{rule}"] = hit_rate([r["connected"] == r[rule] for r in rows])
            out[f"q11_counts_{rule}"] = {(c, m): sum(r["connected"] == c and r[rule] == m for r in rows)
                                         for c in (True, False) for m in (True, False)}
    return out


def compute(plan: dict, results: Path, fig_dir: Path) -> dict | None:
    """Q8-Q11 numbers and figures; None when results.csv holds none of their conditions."""
    conds = [c for c in plan["condition"] if {"Q8", "Q9", "Q10", "Q11"} & set(c["questions"])]
    res = Results(results, conditions={c["name"] for c in conds})
    if not res.v:
        return None
    out = {"labels": {c["name"]: c["label"] for c in conds}, "conds": {}}
    for c in conds:
        seeds = [s for s in seeds_of(plan, c) if (c["name"], s, "dense_test_acc", None, None, None) in res.v]
        if seeds:
            out["conds"][c["name"]] = _cond_numbers(res, c["name"], seeds)
    figure_q8(out, fig_dir / "q8_alignment.png")
    figure_q9(out, fig_dir / "q9_curves.png")
    figure_q10(out, fig_dir / "q10_layers.png")
    return out


def _band(ax, ks, cis, label, scale=100.0, **kw):
    m = np.array([c[0] for c in cis]) * scale
    h = np.array([c[1] for c in cis]) * scale
    line, = ax.plot(ks, m, marker="o", ms=3, label=label, **kw)
    ok = np.isfinite(h) & np.isfinite(m)
    ax.fill_between(np.array(ks)[ok], (m - h)[ok], (m + h)[ok], alpha=0.15, color=line.get_color())


def _axes(n: int, rows: int = 1, height: float = 3.4):
    fig, axes = plt.subplots(rows, n, figsize=(4.6 * n, height * rows), squeeze=False)
    return fig, axes


def _finish(fig, axes, path: Path) -> None:
    for ax in axes.ravel():
        ax.set_xscale("symlog", linthresh=25)
        ax.axhline(100 * THRESHOLD, ls="--", c="k", lw=0.7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_q8(n: dict, path: Path) -> None:
    fig, axes = _axes(len(n["conds"]))
    for ax, (c, d) in zip(axes[0], n["conds"].items()):
        for (kind, klabel), style in zip(Q8_KINDS, ("-", ":")):
            for q, qlabel in Q8_BARRIERS:
                _band(ax, d["ks"], d["q8"][(kind, q)], f"{klabel}: {qlabel}", ls=style)
        ax.set_title(n["labels"][c], fontsize=9)
        ax.set_xlabel("rewind step k")
        ax.set_ylabel("error barrier at T, level 0 (pts)")
    axes[0, 0].legend(fontsize=6)
    _finish(fig, axes, path)


def figure_q9(n: dict, path: Path) -> None:
    fig, axes = _axes(len(n["conds"]))
    for ax, (c, d) in zip(axes[0], n["conds"].items()):
        for lv in d["levels"]:
            label = f"{100 * d['density'][lv]:.1f}%"
            _band(ax, d["ks"], d["q9"][lv]["linear"], f"linear, {label}")
            _band(ax, d["ks"], d["q9"][lv]["curve"], f"Bézier, {label}", ls=":",
                  color=ax.lines[-1].get_color())
        ax.set_title(n["labels"][c], fontsize=9)
        ax.set_xlabel("rewind step k")
        ax.set_ylabel("error barrier at T (pts)")
    axes[0, 0].legend(fontsize=6, ncol=2)
    _finish(fig, axes, path)


def figure_q10(n: dict, path: Path) -> None:
    conds = list(n["conds"].items())
    fig, axes = plt.subplots(2, len(conds), figsize=(4.6 * len(conds), 6.0), squeeze=False)
    for j, (c, d) in enumerate(conds):
        for i, lv in enumerate((d["levels"][0], d["levels"][-1])):
            grid = np.array([[ci[0] for ci in d["q10"][lv][layer]] for layer in d["layers"]]) * 100
            ax = axes[i, j]
            im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0)
            ax.set_xticks(range(len(d["ks"])), [str(k) for k in d["ks"]])
            ax.set_yticks(range(len(d["layers"])), d["layers"], fontsize=7)
            ax.set_title(f"{n['labels'][c]}, {100 * d['density'][lv]:.1f}% density", fontsize=8)
            ax.set_xlabel("rewind step k")
            fig.colorbar(im, ax=ax, label="one-layer barrier (pts)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pt(ci, scale=100.0, digits=1) -> str:
    return fmt(ci[0], ci[1], scale, digits)


def _k_header(ks, first="") -> list[str]:
    return [f"| {first} | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]


def lines(n: dict, notes: dict) -> list[str]:
    """The Q8-Q11 sections of README.md."""
    L: list[str] = []
    w = L.append
    labels = n["labels"]
    seeds = next(iter(n["conds"].values()))["seeds"]
    w("## Q8. Is the instability at k = 0 a permutation?")
    w("")
    w(f"Level-0 copies of the conv net without and with LayerNorm ({len(seeds)} seeds, 3 copies, "
      "95% t-intervals over seeds): *data order* copies share W_k and differ in data order; "
      "*independent inits* copies start from independently seeded W_0, each with its own data "
      "order, and train from step 0 to T (a baseline that does not depend on k; each k column "
      "has its own set of such copies). Barriers in error points: raw (the linear path), after "
      "weight matching, after REPAIR (per-channel statistics of the interpolated net reset to "
      "the endpoints' interpolation) and after both.")
    w("")
    w("![Q8 alignment](figures/q8_alignment.png)")
    w("")
    for c, d in n["conds"].items():
        w(f"**{labels[c]}**")
        w("")
        L += _k_header(d["ks"], "copies: barrier")
        for kind, klabel in Q8_KINDS:
            for q, qlabel in Q8_BARRIERS:
                w(f"| {klabel}: {qlabel} | " + " | ".join(_pt(x) for x in d["q8"][(kind, q)]) + " |")
        w("")
    w(notes.get("Q8", ""))
    w("")
    w("## Q9. Are unstable copies connected by a curve?")
    w("")
    w("The IMP copies (level 0: dense) at every density: the linear barrier against the barrier "
      "along a quadratic Bézier curve trained between the two copies (200 steps, `analyze "
      "--measures curve`). `analyze` trains curves at the first and the last k and at the LMC "
      "rule's k of each level, to bound its cost; the other Bézier cells are n/a. Error points, "
      "95% t-intervals over seeds.")
    w("")
    w("![Q9 curves](figures/q9_curves.png)")
    w("")
    for c, d in n["conds"].items():
        cells = d["q9_cells"]
        w(f"**{labels[c]}**: of {cells['n']} (seed, density, k) cells, {cells['unstable']} are "
          f"linearly unstable (≥ 2 points); the curve connects {cells['curve_connected']} of "
          f"them (< 2 points); the largest curve barrier is {100 * cells['max_curve']:.1f} points.")
        w("")
        L += _k_header(d["ks"], "density: path")
        for lv in d["levels"]:
            dens = f"{100 * d['density'][lv]:.1f}%"
            w(f"| {dens}: linear | " + " | ".join(_pt(x) for x in d["q9"][lv]["linear"]) + " |")
            w(f"| {dens}: Bézier | " + " | ".join(_pt(x) for x in d["q9"][lv]["curve"]) + " |")
        w("")
    w(notes.get("Q9", ""))
    w("")
    w("## Q10. Which layers carry the barrier?")
    w("")
    w("The barrier of the path that moves one layer (its weight and bias) from copy b to copy a "
      "and keeps the others at copy b, per layer, seed mean in error points. Top: dense copies; "
      "bottom: the sparsest level.")
    w("")
    w("![Q10 layers](figures/q10_layers.png)")
    w("")
    for c, d in n["conds"].items():
        w(f"**{labels[c]}**: the earliest k at which each layer's one-layer barrier is under 2 "
          "points (seed mean); last column: the whole network's linear barrier.")
        w("")
        w("| density | " + " | ".join(d["layers"]) + " | whole network |")
        w("|---|" + "---|" * (len(d["layers"]) + 1))
        for lv in d["levels"]:
            cells = [str(d["q10_stable_from"][lv][layer]) if d["q10_stable_from"][lv][layer] is not None
                     else "none" for layer in d["layers"]]
            whole = d["q10_linear_stable_from"][lv]
            w(f"| {100 * d['density'][lv]:.1f}% | " + " | ".join(cells)
              + f" | {whole if whole is not None else 'none'} |")
        w("")
        lv = d["levels"][0]
        w("Dense copies, one-layer barrier (points):")
        w("")
        L += _k_header(d["ks"], "layer")
        for layer in d["layers"]:
            w(f"| {layer} | " + " | ".join(_pt(x) for x in d["q10"][lv][layer]) + " |")
        w("")
    w(notes.get("Q10", ""))
    w("")
    w("## Q11. Are consecutive IMP levels linearly connected exactly when they match?")
    w("")
    w("For each level L ≥ 1 and k: the linear barrier between the level L−1 copy and the level L "
      "copy trained from the same k (replica by replica, then the mean), and whether level L is "
      "*matching*: the one-sided 95% lower bound of its accuracy difference to the dense copies "
      "at the same k, paired by data order, is at least −max(0.2 points, one sd of the dense "
      "copies' accuracy). *Connected* means a barrier under 2 points.")
    w("")
    for c, d in n["conds"].items():
        if "q11_agree_matching" not in d:
            continue
        w(f"**{labels[c]}**:")
        w("")
        for rule, text in (("matching", "matching (the paired rule)"),
                           ("near", "the mean difference alone within the margin (no bound)")):
            a, cnt = d[f"q11_agree_{rule}"], d[f"q11_counts_{rule}"]
            w(f"- connected and {text} agree in {cnt[(True, True)] + cnt[(False, False)]} of "
              f"{a['n']} (seed, level, k) cells, {100 * a['rate']:.0f}% [{100 * a['low']:.0f}%, "
              f"{100 * a['high']:.0f}%]: both {cnt[(True, True)]}, neither {cnt[(False, False)]}, "
              f"connected only {cnt[(True, False)]}, matching only {cnt[(False, True)]}.")
        w("")
        L += _k_header(d["ks"], "density")
        for lv, row in d["q11_table"].items():
            w(f"| {100 * d['density'][lv]:.1f}%: barrier to the level before | "
              + " | ".join(_pt(b) for b, *_ in row) + " |")
            w(f"| {100 * d['density'][lv]:.1f}%: accuracy − dense (pts) | "
              + " | ".join(_pt(diff) for *_, diff in row) + " |")
            w(f"| {100 * d['density'][lv]:.1f}%: seeds matching | "
              + " | ".join(f"{m}/{t}" for _, m, t, _ in row) + " |")
        w("")
    w(notes.get("Q11", ""))
    w("")
    return L
