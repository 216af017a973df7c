"""Report phase of make_findings.py: statistics, figures and README.md from results.csv.

Confidence intervals:

* across seeds (one value per seed and condition): Student-t 95% interval of the mean,
  mean ± t(0.975, n−1)·s/√n (n = 3 seeds: t = 4.30, so the intervals are wide by design);
* pooled over studies and levels (Q3): percentile bootstrap over cases (Efron &
  Tibshirani 1993, §13.3), 2000 resamples, seeded;
* proportions (how often a rule picks within 0.2% of the oracle): Wilson score interval
  (``scipy.stats.binomtest(...).proportion_ci(method="wilson")``).
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from common import HERE_STUDIES, MEASURE_LABELS, THRESHOLD, TOLERANCE, Results, fmt, t_ci
from scipy import stats

from stabilitylab.analysis.stats import (
    accuracy_gap,
    oracle_rewind,
    predict_rewind_lmc,
    predict_rewind_measure,
)

# -- loading ---------------------------------------------------------------------------------

def boot_ci(values, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    x = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if x.size < 2:
        return (float(x.mean()) if x.size else math.nan), math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, (n_boot, x.size))].mean(1)
    return float(x.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def wilson(k: int, n: int) -> tuple[float, float, float]:
    if n == 0:
        return math.nan, math.nan, math.nan
    ci = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
    return k / n, float(ci.low), float(ci.high)


# -- figures ---------------------------------------------------------------------------------

def _band(ax, res, conds, labels, quantity, level, kind="imp", scale=100.0, threshold=None):
    x = np.arange(len(res.rewinds))
    for cond in conds:
        per_seed = np.array([res.vs_k(cond, s, quantity, kind, level) for s in res.seeds])
        m, h = zip(*[t_ci(per_seed[:, j])[:2] for j in range(len(x))])
        m, h = np.array(m) * scale, np.nan_to_num(np.array(h) * scale)
        ax.plot(x, m, marker="o", ms=3, label=labels[cond])
        low = m - h if quantity != "instability" else np.maximum(m - h, 0)  # a barrier is >= 0
        ax.fill_between(x, low, m + h, alpha=0.15)
    if threshold is not None:
        ax.axhline(threshold * scale, color="k", lw=0.8, ls="--")
    ax.set_xticks(x, [str(k) for k in res.rewinds])
    ax.set_xlabel("rewind step k")


def figure_curves(res, conds, labels, path: Path, panels: list[tuple]) -> None:
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (quantity, level, title, ylabel, scale, thr) in zip(axes[0], panels):
        _band(ax, res, conds, labels, quantity, level, scale=scale, threshold=thr)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the questions ---------------------------------------------------------------------------

def _density(res, cond, level) -> float:
    return res.get(cond, res.seeds[0], "density", "imp", level, res.rewinds[0])


def stability_table(res, conds, labels) -> tuple[list[str], dict]:
    """Per condition: dense accuracy, instability at k=0, earliest stable k (each seed), IMP
    accuracy at the sparse levels: at k=0 and at the best k of the seed-mean curve."""
    sparse = [lv for lv in res.levels if lv > 0]
    head = ["condition", "dense test acc. (%)", "instability at k=0 (pts)", "earliest stable k per seed",
            *[f"IMP acc. {100 * _density(res, conds[0], lv):.0f}% dens., k=0" for lv in sparse],
            *[f"IMP acc. {100 * _density(res, conds[0], lv):.0f}% dens., best k" for lv in sparse]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    summary = {}
    for cond in conds:
        dense = t_ci(res.get(cond, s, "dense_test_acc") for s in res.seeds)
        inst0 = t_ci(res.get(cond, s, "instability", "imp", 0, 0) for s in res.seeds)
        ks = [predict_rewind_lmc(res.rewinds, res.vs_k(cond, s, "instability", "imp", 0), THRESHOLD)
              for s in res.seeds]
        cells = [labels[cond], fmt(*dense[:2], 100), fmt(*inst0[:2], 100),
                 ", ".join("none" if k is None else str(k) for k in ks)]
        acc0, accb = [], []
        for lv in sparse:
            acc0.append(t_ci(res.get(cond, s, "final_test_acc", "imp", lv, 0) for s in res.seeds))
            curve = np.array([res.vs_k(cond, s, "final_test_acc", "imp", lv) for s in res.seeds])
            j = int(np.nanargmax(np.nanmean(curve, 0)))
            accb.append((*t_ci(curve[:, j])[:2], res.rewinds[j]))
        cells += [fmt(*a[:2], 100) for a in acc0]
        cells += [f"{fmt(a[0], a[1], 100)} (k={a[2]})" for a in accb]
        lines.append("| " + " | ".join(cells) + " |")
        summary[cond] = {"dense": dense, "inst0": inst0, "ks": ks, "acc0": acc0, "accb": accb}
    return lines, summary


def _cases(res, conds, levels):
    for cond in conds:
        for s in res.seeds:
            for lv in levels:
                acc = res.vs_k(cond, s, "final_test_acc", "imp", lv)
                if np.isfinite(acc).sum() >= 3:
                    yield cond, s, lv, acc


def _hit(gap) -> bool:
    return bool(np.isfinite(gap) and gap <= TOLERANCE + 1e-9)


def q3_measures(res, conds, *, from_dense: bool, replicas: int) -> tuple[list[dict], dict]:
    """How well each measure, taken across rewind points, tracks IMP's final accuracy.

    ``from_dense=True``: the measure of the dense copies (level 0, the cheap study: no
    pruning) against the accuracy of the IMP subnetworks at each sparse level, as the
    LMC rule is used. ``False``: measure and accuracy from the same level.
    """
    names = sorted({k[2].split(":", 1)[1] for k in res.v if k[2].startswith("measure:")},
                   key=lambda n: list(MEASURE_LABELS).index(n) if n in MEASURE_LABELS else 99)
    sparse = [lv for lv in res.levels if lv > 0]
    rows = []
    for name in names:
        rhos, hits, n = [], 0, 0
        for cond, s, lv, acc in _cases(res, conds, sparse):
            m = res.vs_k(cond, s, f"measure:{name}", None, 0 if from_dense else lv)
            ok = np.isfinite(m) & np.isfinite(acc)
            if ok.sum() < 3 or np.ptp(m[ok]) == 0 or np.ptp(acc[ok]) == 0:
                continue
            rhos.append(stats.spearmanr(m[ok], acc[ok]).statistic)
            k = predict_rewind_measure(res.rewinds, m)
            gap = accuracy_gap(k, oracle_rewind(res.rewinds, acc), res.rewinds, acc)
            n += 1
            hits += _hit(gap)
        mean, lo, hi = boot_ci(rhos)
        rows.append({"name": name, "rho": mean, "lo": lo, "hi": hi, "cases": len(rhos),
                     "pick": wilson(hits, n), "pick_n": n})
    # baseline: the rewind step itself. Any quantity monotone in k correlates with accuracy
    # as well as k does, so a measure is informative only if it beats this row.
    rhos = []
    for cond, s, lv, acc in _cases(res, conds, sparse):
        ok = np.isfinite(acc)
        if ok.sum() >= 3 and np.ptp(acc[ok]) > 0:
            rhos.append(stats.spearmanr(np.asarray(res.rewinds)[ok], acc[ok]).statistic)
    mean, lo, hi = boot_ci(rhos)
    rows.append({"name": "rewind_k", "rho": mean, "lo": lo, "hi": hi, "cases": len(rhos),
                 "pick": (math.nan, math.nan, math.nan), "pick_n": 0})
    # the LMC rule and naive baselines
    rules = {"LMC rule (instability < 2%)": [0, 0], "always k=0": [0, 0],
             f"always k={res.rewinds[-1]}": [0, 0], "a random k (expected)": [0.0, 0]}
    gaps: dict[str, list[float]] = defaultdict(list)
    noise, spread = [], []
    for cond, s, lv, acc in _cases(res, conds, sparse):
        best_k = oracle_rewind(res.rewinds, acc)
        inst = res.vs_k(cond, s, "instability", "imp", 0 if from_dense else lv)
        picks = {"LMC rule (instability < 2%)": predict_rewind_lmc(res.rewinds, inst, THRESHOLD),
                 "always k=0": res.rewinds[0], f"always k={res.rewinds[-1]}": res.rewinds[-1]}
        for name, k in picks.items():
            gap = accuracy_gap(k, best_k, res.rewinds, acc)
            rules[name][0] += _hit(gap)
            rules[name][1] += 1
            # no stable k: the rule gives no answer; count the gap of the last k instead
            gaps[name].append(gap if np.isfinite(gap) else np.nanmax(acc) - acc[-1])
        finite = acc[np.isfinite(acc)]
        rules["a random k (expected)"][0] += float(np.mean(np.nanmax(acc) - finite <= TOLERANCE + 1e-9))
        rules["a random k (expected)"][1] += 1
        gaps["a random k (expected)"].append(float(np.mean(np.nanmax(acc) - finite)))
        std = res.vs_k(cond, s, "final_test_acc_std", "imp", lv)
        noise.append(np.nanmean(std) / math.sqrt(replicas))
        spread.append(np.nanmax(acc) - np.nanmin(acc))
    extra = {"rules": {k: (*wilson(round(v[0]), v[1]), v[0] / v[1] if v[1] else math.nan, v[1])
                       for k, v in rules.items()},
             "gaps": {k: boot_ci(v) for k, v in gaps.items()},
             "noise_se": float(np.mean(noise)), "spread": float(np.mean(spread)), "cases": len(noise)}
    return rows, extra


def figure_q3(rows, path: Path) -> None:
    rows = sorted(rows, key=lambda r: -abs(r["rho"]) if np.isfinite(r["rho"]) else 0)
    fig, ax = plt.subplots(figsize=(6.4, 0.32 * len(rows) + 1.2))
    y = np.arange(len(rows))[::-1]
    rho = np.array([r["rho"] for r in rows])
    err = np.array([[r["rho"] - r["lo"], r["hi"] - r["rho"]] for r in rows]).T
    base = np.array([r["name"] == "rewind_k" for r in rows])
    for sel, color in ((~base, "C0"), (base, "C3")):
        ax.errorbar(rho[sel], y[sel], xerr=np.nan_to_num(err[:, sel]), fmt="o", ms=4, capsize=2, color=color)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(y, [MEASURE_LABELS.get(r["name"], r["name"]).strip("*") for r in rows], fontsize=8)
    ax.set_xlabel("Spearman ρ, level-0 measure vs IMP accuracy across k\n(mean over cases, 95% bootstrap CI)",
                  fontsize=9)
    ax.set_xlim(-1, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def q4_ratio(res, cond) -> tuple[list[tuple], int]:
    lv = max(res.levels)
    out = [(k, *t_ci(res.get(cond, s, "random_imp_ratio_data_order", None, lv, k) for s in res.seeds))
           for k in res.rewinds]
    return out, lv


def figure_q4(ratio, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    x = np.arange(len(ratio))
    m = np.array([r[1] for r in ratio])
    h = np.nan_to_num(np.array([r[2] for r in ratio]))
    ax.errorbar(x, m, yerr=h, fmt="o-", ms=4, capsize=3, label="MNIST-1D conv net (this study)")
    ax.axhline(2.8, color="C3", ls="--", lw=1, label="LeNet on MNIST (1903.01611): 2.8×")
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_xticks(x, [str(r[0]) for r in ratio])
    ax.set_xlabel("rewind step k")
    ax.set_ylabel("random / IMP data-order L2 distance")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compute(plan: dict, results: Path, out_dir: Path) -> dict:
    """Everything the report states, as numbers (also used by the tests), plus the figures."""
    by_q = {q: [c["name"] for c in plan["condition"] if q in c["questions"]] for q in ("Q1", "Q2", "Q3", "Q4")}
    res = Results(results, conditions={c for q in by_q.values() for c in q})
    labels = {c["name"]: c["label"] for c in plan["condition"]}
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    sparse = [lv for lv in res.levels if lv > 0]
    dens = {lv: _density(res, by_q["Q1"][0], lv) for lv in res.levels}
    out = {"res": res, "labels": labels, "by_q": by_q, "dens": dens}
    # Q1
    out["q1_table"], out["q1"] = stability_table(res, by_q["Q1"], labels)
    figure_curves(res, by_q["Q1"], labels, fig_dir / "q1_stability.png", [
        ("instability", 0, "dense network (level 0)", "instability (error pts)", 100, THRESHOLD)])
    figure_curves(res, by_q["Q1"], labels, fig_dir / "q1_accuracy.png", [
        ("final_test_acc", lv, f"IMP, {100 * dens[lv]:.0f}% density", "final test accuracy (%)", 100, None)
        for lv in sparse])
    # Q2
    out["q2_table"], out["q2"] = stability_table(res, by_q["Q2"], labels)
    out["q2_distance"] = {c: [t_ci(res.get(c, s, "data_order_l2_final", "imp", 0, k) for s in res.seeds)
                              for k in res.rewinds] for c in by_q["Q2"]}
    figure_curves(res, by_q["Q2"], labels, fig_dir / "q2_dropout.png", [
        ("instability", 0, "dense network (level 0)", "instability (error pts)", 100, THRESHOLD),
        ("data_order_l2_final", 0, "data-order distance, level 0", "L2 distance at T", 1.0, None),
        ("final_test_acc", max(res.levels), f"IMP, {100 * dens[max(res.levels)]:.0f}% density",
         "final test accuracy (%)", 100, None)])
    # Q3
    from stabilitylab.config import load_config

    replicas = load_config(HERE_STUDIES / f"{by_q['Q3'][0]}.toml").study.replicas
    out["q3"], out["q3_extra"] = q3_measures(res, by_q["Q3"], from_dense=True, replicas=replicas)
    out["q3_same"], out["q3_same_extra"] = q3_measures(res, by_q["Q3"], from_dense=False, replicas=replicas)
    figure_q3(out["q3"], fig_dir / "q3_measures.png")
    # Q4
    out["q4"], out["q4_level"] = q4_ratio(res, by_q["Q4"][0])
    figure_q4(out["q4"], fig_dir / "q4_ratio.png")
    return out


def tuning_table(plan: dict, tuning: Path) -> tuple[list[str], dict]:
    """The lr sweep as a table (rows: optimizer, columns: lr), and each optimizer's best lr."""
    from stabilitylab.config import load_config

    if not tuning.is_file():
        return [], {}
    acc: dict[str, dict[float, float]] = defaultdict(dict)
    with open(tuning, newline="") as f:
        for r in csv.DictReader(f):
            acc[r["condition"]][float(r["lr"])] = float(r["test_acc"])
    lrs = sorted({lr for d in acc.values() for lr in d})
    labels = {c["name"]: c["label"] for c in plan["condition"]}
    lines = ["| optimizer | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | lr used |",
             "|---|" + "---|" * (len(lrs) + 1)]
    best = {}
    for cond, d in acc.items():
        top = max(d, key=d.get)
        used = load_config(HERE_STUDIES / f"{cond}.toml").training.lr
        best[cond] = (top, used)
        cells = [(f"**{100 * d[lr]:.1f}**" if lr == top else f"{100 * d[lr]:.1f}") if lr in d else ""
                 for lr in lrs]
        lines.append(f"| {labels.get(cond, cond)} | " + " | ".join(cells) + f" | {used:g} |")
    return lines, best


def render(plan: dict, results: Path, out_dir: Path, tuning: Path | None = None) -> None:
    from chaos import compute as compute_q567
    from document import write_report

    numbers = compute(plan, results, out_dir)
    numbers["q567"] = compute_q567(plan, results, out_dir / "figures")
    if numbers["q567"] is not None:
        from dose import compute as compute_dose

        numbers["q567"]["dose"] = compute_dose(plan, results, out_dir / "figures")
    from geometry import compute as compute_geometry

    numbers["geometry"] = compute_geometry(plan, results, out_dir / "figures")
    numbers["tuning_table"], numbers["tuning_best"] = tuning_table(plan, tuning or out_dir / "tuning.csv")
    write_report(plan, numbers, out_dir / "README.md")
    print(f"report: {out_dir / 'README.md'}")
