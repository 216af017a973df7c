"""Report phase, Q5-Q7: noise kinds (is data-order instability just chaos?), cheap probes
for the stability point, and pruning-at-init controls. Numbers from results.csv only.

Intervals: Student-t 95% over seeds (``common.t_ci``); paired differences over seeds
(``stabilitylab.analysis.rewind_target.paired_interval``); hit rates: Wilson intervals.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from common import HERE_STUDIES, THRESHOLD, Results, fmt, t_ci

from stabilitylab.analysis.divergence_measures import DIVERGENCE_WINDOW
from stabilitylab.analysis.rewind_target import (
    earliest_matching_rewind,
    hit_rate,
    matching_rewinds,
    noise_floor,
    paired_interval,
)
from stabilitylab.analysis.stats import predict_rewind_lmc, predict_rewind_measure

NOISE = {"imp": "data order", "perturb": "perturbation (ε = 1e-6)",
         "data_order+perturb": "data order + perturbation"}
PAI = {"imp": "IMP (rewound to W_k)", "random_prune": "random (IMP's layer densities)",
       "shuffle": "IMP mask shuffled within layers", "magnitude_init": "magnitude at init",
       "snip": "SNIP", "grasp": "GraSP", "synflow": "SynFlow"}
PROBE_DELTAS = (25, 50, 100)


def _rewinds(res, cond) -> list[int]:
    return sorted({k[5] for k in res.v if k[0] == cond and k[5] is not None})


def _seeds(res, cond) -> list[int]:
    return sorted({k[1] for k in res.v if k[0] == cond})


def _per_seed(res, cond, quantity, kind, level, rewinds) -> np.ndarray:
    """(seed, rewind) values."""
    return np.array([[res.get(cond, s, quantity, kind, level, k) for k in rewinds]
                     for s in _seeds(res, cond)])


def _ci_row(values) -> list[tuple[float, float, int]]:
    return [t_ci(values[:, j]) for j in range(values.shape[1])]


def _config(cond):
    from stabilitylab.study.resolve import load_study

    return load_study(HERE_STUDIES / f"{cond}.toml")


# -- Q5 -------------------------------------------------------------------------------------------

def q5(res, conds) -> dict:
    out = {}
    for c in conds:
        ks = _rewinds(res, c)
        kinds = [k for k in NOISE if np.isfinite(_per_seed(res, c, "instability", k, 0, ks)).any()]
        row = {"rewinds": ks, "kinds": kinds, "seeds": _seeds(res, c)}
        for q in ("instability", "data_order_l2_final", "divergence_rate"):
            row[q] = {kind: _ci_row(_per_seed(res, c, q, kind, 0, ks)) for kind in kinds}
        base = _per_seed(res, c, "instability", "imp", 0, ks)
        dist = _per_seed(res, c, "data_order_l2_final", "imp", 0, ks)
        if "perturb" in kinds:
            with np.errstate(invalid="ignore", divide="ignore"):
                row["share_instability"] = _ci_row(
                    _per_seed(res, c, "instability", "perturb", 0, ks) / base)
                row["share_distance"] = _ci_row(
                    _per_seed(res, c, "data_order_l2_final", "perturb", 0, ks) / dist)
        levels = sorted({k[4] for k in res.v if k[0] == c and k[4] is not None})
        if max(levels) > 0:
            row["sparse_instability"] = _ci_row(_per_seed(res, c, "instability", "imp",
                                                          max(levels), ks))
            row["sparse_density"] = float(np.nanmean([res.get(c, s, "density", "imp", max(levels), ks[0])
                                                      for s in row["seeds"]]))
        out[c] = row
    return out


def _band(ax, ks, rows, label, scale=1.0):
    m = np.array([r[0] for r in rows]) * scale
    h = np.array([r[1] for r in rows]) * scale
    line, = ax.plot(ks, m, marker="o", label=label)
    ok = np.isfinite(h)
    ax.fill_between(np.array(ks)[ok], (m - h)[ok], (m + h)[ok], alpha=0.2, color=line.get_color())


def figure_q5(numbers: dict, labels: dict, path: Path) -> None:
    fig, axes = plt.subplots(2, len(numbers), figsize=(4.2 * len(numbers), 6.4), squeeze=False)
    for j, (c, row) in enumerate(numbers.items()):
        for kind in row["kinds"]:
            _band(axes[0, j], row["rewinds"], row["instability"][kind], NOISE[kind], 100)
            _band(axes[1, j], row["rewinds"], row["data_order_l2_final"][kind], NOISE[kind])
        axes[0, j].axhline(100 * THRESHOLD, ls="--", c="k", lw=0.8)
        axes[0, j].set_title(labels[c], fontsize=9)
        axes[0, j].set_ylabel("instability at T (error pts)")
        axes[1, j].set_ylabel("L2 distance at T")
        axes[1, j].set_xlabel("rewind step k")
        for ax in axes[:, j]:
            ax.set_xscale("symlog", linthresh=25)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_growth(res, cond, label, path: Path, rewinds=(0, 100)) -> None:
    """Distance between copies against iterations after k, per noise kind (seed mean)."""
    fig, axes = plt.subplots(1, len(rewinds), figsize=(4.4 * len(rewinds), 3.4), squeeze=False)
    for ax, k in zip(axes[0], rewinds):
        for kind, name in NOISE.items():
            curves = [dict(res.step_curves.get((cond, s, "data_order_l2", kind, 0, k), []))
                      for s in _seeds(res, cond)]
            curves = [cv for cv in curves if cv]
            if not curves:
                continue
            steps = sorted(set.intersection(*(set(cv) for cv in curves)))
            steps = [t for t in steps if t > k]
            y = np.array([[cv[t] for t in steps] for cv in curves])
            with np.errstate(divide="ignore", invalid="ignore"):
                ax.plot(np.array(steps) - k, np.exp(np.nanmean(np.log(y), 0)), label=name)
        ax.set_yscale("log")
        ax.set_xscale("log")
        ax.set_title(f"{label}, k = {k}", fontsize=9)
        ax.set_xlabel("iterations after k")
        ax.set_ylabel("L2 distance (geometric mean over seeds)")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- Q6 -------------------------------------------------------------------------------------------

def _lmc(values, ks):
    """Per seed: the earliest k with value < THRESHOLD; None when none is."""
    return [predict_rewind_lmc(ks, row, THRESHOLD) for row in values]


def _plateau(values, ks):
    return [predict_rewind_measure(np.array(ks), row) for row in values]


def q6(res, cond) -> dict:
    """Predictors of the target k (earliest k within noise of the best, by paired intervals
    over seeds), with cost, hit rate and regret."""
    resolved = _config(cond)
    ks = _rewinds(res, cond)
    T, R = resolved.total_steps, resolved.config.study.replicas
    level = max(resolved.levels)
    acc = 100 * _per_seed(res, cond, "final_test_acc", "imp", level, ks)  # points
    target = earliest_matching_rewind(acc, ks)
    match = matching_rewinds(acc, ks)
    k_best = int(match["best"])
    full = len(resolved.levels) * R * sum(T - k for k in ks)  # every IMP copy of the study
    copies_to_T = R * sum(T - k for k in ks)
    inst = {kind: _per_seed(res, cond, "instability", kind, 0, ks) for kind in ("imp", "perturb")}
    preds: dict[str, tuple[list, float]] = {
        "LMC rule, data-order copies to T": (_lmc(inst["imp"], ks),
                                             copies_to_T),
        "LMC rule, perturbed copies to T": (_lmc(inst["perturb"], ks),
                                            copies_to_T),
    }
    for d in PROBE_DELTAS:
        cost = R * sum(min(d, T - k) for k in ks)
        for kind, name in (("imp", "data-order"), ("perturb", "perturbed")):
            b = _per_seed(res, cond, f"barrier_at:{d}", kind, 0, ks)
            preds[f"LMC rule at k + {d}, {name} copies"] = (_lmc(b, ks),
                                                            cost)
    for d in (100,):
        b = _per_seed(res, cond, f"barrier_at:{d}", "imp", 0, ks)
        preds[f"barrier at k + {d}, data-order copies, plateau rule"] = (
            _plateau(b, ks), R * sum(min(d, T - k) for k in ks))
    rate = _per_seed(res, cond, "divergence_rate", "perturb", 0, ks)
    preds[f"divergence rate of perturbed copies (first {DIVERGENCE_WINDOW} it), plateau rule"] = (
        _plateau(rate, ks), R * sum(min(DIVERGENCE_WINDOW, T - k) for k in ks))
    for m in ("data_order_l2", "sign_flips", "disagreement"):
        vals = _per_seed(res, cond, f"measure:{m}", None, 0, ks)
        preds[f"{m} of the data-order copies, plateau rule"] = (_plateau(vals, ks), copies_to_T)
    n = len(_seeds(res, cond))
    preds["always k = 0"] = ([ks[0]] * n, 0.0)
    preds["always the latest k"] = ([ks[-1]] * n, 0.0)
    rows = []
    for name, (p, cost) in preds.items():
        none = sum(x is None for x in p)
        p = [ks[-1] if x is None else int(x) for x in p]  # nothing stable: take the latest k
        hits = [x == target for x in p]
        col = [ks.index(x) for x in p]
        regret = paired_interval([acc[s, ks.index(k_best)] - acc[s, col[s]] for s in range(n)])
        rows.append({"name": name, "cost": cost / full, "hit": hit_rate(hits), "regret": regret,
                     "picks": p, "none": none})
    return {"rewinds": ks, "target": target, "best": k_best, "matches": match,
            "floor": float(np.mean(noise_floor(acc))), "acc": acc, "level": level,
            "density": float(np.nanmean(_per_seed(res, cond, "density", "imp", level, ks))),
            "rows": rows, "n": n, "full": full}


# -- Q7 -------------------------------------------------------------------------------------------

def q7(res, cond) -> dict:
    ks = _rewinds(res, cond)
    levels = sorted({k[4] for k in res.v if k[0] == cond and k[4] is not None})
    level = max(levels)
    imp = 100 * _per_seed(res, cond, "final_test_acc", "imp", level, ks)
    out = {"rewinds": ks, "level": level, "rows": {},
           "density": float(np.nanmean(_per_seed(res, cond, "density", "imp", level, ks)))}
    for kind in PAI:
        a = 100 * _per_seed(res, cond, "final_test_acc", kind, level, ks)
        if not np.isfinite(a).any():
            continue
        out["rows"][kind] = {"acc": _ci_row(a),
                             "vs_imp": [paired_interval(a[:, j] - imp[:, j]) for j in range(len(ks))]}
    return out


def figure_q7(n: dict, path: Path) -> None:
    kinds = list(n["rows"])
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    width = 0.8 / len(n["rewinds"])
    x = np.arange(len(kinds))
    for j, k in enumerate(n["rewinds"]):
        m = [n["rows"][kind]["acc"][j][0] for kind in kinds]
        h = [n["rows"][kind]["acc"][j][1] for kind in kinds]
        ax.bar(x + j * width, m, width, yerr=h, capsize=2, label=f"trained from W_{k}")
    ax.set_xticks(x + width * (len(n["rewinds"]) - 1) / 2, [PAI[k] for k in kinds], rotation=25,
                  ha="right", fontsize=7)
    ax.set_ylabel(f"final test accuracy (%), {100 * n['density']:.0f}% density")
    lo = min(n["rows"][kind]["acc"][j][0] for kind in kinds for j in range(len(n["rewinds"])))
    ax.set_ylim(max(0, lo - 8), None)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- everything -----------------------------------------------------------------------------------

def compute(plan: dict, results: Path, fig_dir: Path) -> dict | None:
    """Q5-Q7 numbers and figures; None when results.csv holds none of their conditions."""
    by_q = {q: [c["name"] for c in plan["condition"] if q in c["questions"] and "sweep" not in c]
            for q in ("Q5", "Q6", "Q7")}  # the dose-response sweep has its own module (dose.py)
    names = {c for q in by_q.values() for c in q}
    res = Results(results, conditions=names)
    if not res.v:
        return None
    labels = {c["name"]: c["label"] for c in plan["condition"]}
    out = {"labels": labels, "by_q": by_q}
    out["q5"] = q5(res, by_q["Q5"])
    figure_q5(out["q5"], labels, fig_dir / "q5_noise.png")
    figure_growth(res, by_q["Q5"][0], labels[by_q["Q5"][0]], fig_dir / "q5_growth.png")
    out["q6"] = q6(res, by_q["Q6"][0])
    out["q7"] = q7(res, by_q["Q7"][0])
    figure_q7(out["q7"], fig_dir / "q7_pai.png")
    return out


def _pt(ci, scale=100.0, digits=1) -> str:
    return fmt(ci[0], ci[1], scale, digits)


def lines(n: dict, notes: dict) -> list[str]:
    """The Q5-Q7 sections of README.md."""
    L: list[str] = []
    w = L.append
    labels = n["labels"]
    # Q5
    w("## Q5. Is data-order instability just chaos?")
    w("")
    w("Copies that differ only by a perturbation of W_k: **perturbation** copies all train under "
      "replica 0's data order from W_k + δ, with ‖δ‖ = 10⁻⁶‖W_k‖ (a seeded Gaussian direction, "
      "one per copy); **data order** copies are the usual ones (same W_k, own data order); "
      "**both** combines them. Level 0 (dense copies), 2 copies per kind, "
      f"{len(n['q5'][next(iter(n['q5']))]['seeds'])} seeds; bands and ± are 95% t-intervals "
      "over seeds.")
    w("")
    w("![Q5 noise kinds](figures/q5_noise.png)")
    w("")
    for c, row in n["q5"].items():
        ks = row["rewinds"]
        w(f"**{labels[c]}** (instability at T in error points; L2 distance at T):")
        w("")
        w("| noise | " + " | ".join(f"k={k}" for k in ks) + " |")
        w("|---|" + "---|" * len(ks))
        for kind in row["kinds"]:
            w(f"| {NOISE[kind]}: instability | " + " | ".join(_pt(x) for x in row["instability"][kind]) + " |")
        for kind in row["kinds"]:
            w(f"| {NOISE[kind]}: distance | " + " | ".join(_pt(x, 1.0, 2) for x in row["data_order_l2_final"][kind]) + " |")
        if "share_distance" in row:
            w("| perturbation / data order: distance | " + " | ".join(_pt(x, 1.0, 2) for x in row["share_distance"]) + " |")
        for kind in row["kinds"]:
            w(f"| {NOISE[kind]}: divergence rate (10⁻³/it) | " + " | ".join(_pt(x, 1e3, 1) for x in row["divergence_rate"][kind]) + " |")
        if "sparse_instability" in row:
            w(f"| IMP at {100 * row['sparse_density']:.0f}% density, data order: instability | "
              + " | ".join(_pt(x) for x in row["sparse_instability"]) + " |")
        w("")
    w(f"The divergence rate is the slope of log-distance over the first {DIVERGENCE_WINDOW} "
      "iterations after k (an empirical finite-time Lyapunov exponent of training; data-order "
      "copies start at distance 0, so their first point is left out). Distance growth after k, "
      f"{labels[n['by_q']['Q5'][0]]}:")
    w("")
    w("![Q5 distance growth](figures/q5_growth.png)")
    w("")
    if n.get("dose"):
        from dose import lines as dose_lines

        L += dose_lines(n["dose"])
    w(notes.get("Q5", ""))
    w("")
    # Q6
    q = n["q6"]
    cond = n["by_q"]["Q6"][0]
    ks = q["rewinds"]
    w("## Q6. Can a cheap probe find the stability point?")
    w("")
    w(f"**Target.** On {labels[cond]} ({q['n']} seeds), the IMP accuracy at "
      f"{100 * q['density']:.0f}% density against k. The best-mean k is {q['best']}; a k is *within "
      f"noise of it* when the 95% paired t-interval over seeds of its accuracy difference to the best "
      f"k reaches 0. The target is the earliest such k: **k = {q['target']}**. "
      f"Noise floor: the per-cell standard error over seeds averages {q['floor']:.2f} points.")
    w("")
    m = q["matches"]
    w("| k | " + " | ".join(str(k) for k in ks) + " |")
    w("|---|" + "---|" * len(ks))
    w("| IMP accuracy (%) | " + " | ".join(
        fmt(*t_ci(q["acc"][:, j])[:2], 1.0, 2) for j in range(len(ks))) + " |")
    w("| paired difference to the best k (points) | " + " | ".join(
        f"{m['mean_diff'][j]:+.2f} [{m['low'][j]:+.2f}, {m['high'][j]:+.2f}]" if np.isfinite(m["low"][j])
        else "0" for j in range(len(ks))) + " |")
    w("| within noise of the best | " + " | ".join("yes" if x else "no" for x in m["matches"]) + " |")
    w("")
    w("**Predictors**, per seed. Cost: replica-steps of the copies each needs, as a share of the "
      f"full IMP study's copies ({q['full']:,} replica-steps; the dense run, which every predictor "
      "needs, is left out). A rule that finds no stable k takes the latest k (counted in *none*). "
      "Hit: the seed's pick equals the target (Wilson 95% interval). Regret: accuracy of the best-"
      "mean k minus the pick's, per seed (points, 95% paired t-interval).")
    w("")
    w("| predictor | cost | picks per seed | none | hit rate | regret (points) |")
    w("|---|---|---|---|---|---|")
    for r in q["rows"]:
        h, g = r["hit"], r["regret"]
        w(f"| {r['name']} | {100 * r['cost']:.1f}% | {', '.join(map(str, r['picks']))} | {r['none']} | "
          f"{100 * h['rate']:.0f}% [{100 * h['low']:.0f}, {100 * h['high']:.0f}] | "
          f"{g['mean']:.2f} [{g['low']:.2f}, {g['high']:.2f}] |")
    w("")
    w(notes.get("Q6", ""))
    w("")
    # Q7
    q = n["q7"]
    w("## Q7. Do pruning-at-init masks match IMP with rewinding here?")
    w("")
    w(f"{labels[n['by_q']['Q7'][0]]}: every mask at IMP's {100 * q['density']:.0f}% density (level "
      f"{q['level']}), trained from W_0 (pruning at init) and from W_100 (rewinding). The pruning-at-"
      "init masks are scored once at W_0 (Lee et al. 2019, SNIP; Wang et al. 2020, GraSP; Tanaka et al. "
      "2020, SynFlow, 100 iterations; magnitude of W_0); *shuffled* is IMP's mask permuted at random "
      "within each layer (Frankle et al. 2021), which draws from the same distribution as *random*: "
      "the two rows are two draws of one control. Accuracy in %, and the paired difference to IMP "
      "(points, 95% t-interval over seeds).")
    w("")
    w("![Q7 pruning at init](figures/q7_pai.png)")
    w("")
    head = " | ".join(f"from W_{k}: accuracy | from W_{k}: vs IMP" for k in q["rewinds"])
    w(f"| mask | {head} |")
    w("|---|" + "---|" * (2 * len(q["rewinds"])))
    for kind, row in q["rows"].items():
        cells = []
        for j in range(len(q["rewinds"])):
            d = row["vs_imp"][j]
            cells.append(_pt(row["acc"][j], 1.0, 1))
            cells.append("—" if kind == "imp" else (
                f"{d['mean']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]" if math.isfinite(d["low"])
                else "n/a"))
        w(f"| {PAI[kind]} | " + " | ".join(cells) + " |")
    w("")
    w(notes.get("Q7", ""))
    w("")
    return L
