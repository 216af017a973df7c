"""Report phase, Q5's dose-response at k = 0: how large a perturbation of W_0 must be before the
copies it separates stop being linearly connected. Numbers from results.csv only.

The ``dose`` sweep of findings.toml: one study per (net, noise) tag and seed, each with 3 data-order
copies and 3 ``perturb`` copies from W_0, replica 0 of the latter unperturbed
(``study.perturb_reference``). The perturbation is Gaussian noise relative to each layer's init
scale (``study.perturbation = "init_scale"``: δ_i = ε σ_l z_i), which is the σ of Kwok et al.
(ICML 2025, "The Butterfly Effect", Sec. 3; σ = 1 is the init scale), or one flipped bit
(Summers & Dinneen, ICML 2021). The pairs (0, 1) and (0, 2), a perturbed copy against the
unperturbed one, are the paper's comparison (``:ref`` rows of results.csv).

Intervals: Student-t 95% over seeds of the per-seed pair mean (``common.t_ci``).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from common import THRESHOLD, Results, fmt, seeds_of, t_ci

NETS = {"c25": "conv1d, 25 channels, T = 1,000", "c100": "conv1d, 100 channels, T = 1,000",
        "c25T3000": "conv1d, 25 channels, T = 3,000", "c25ln": "conv1d + LayerNorm, 25 channels, T = 1,000"}
#: (quantity in results.csv, label, scale, digits)
QUANTITIES = (("instability", "error barrier (pts)", 100.0, 1),
              ("loss_barrier_train", "train-loss barrier (nats)", 1.0, 3),
              ("data_order_l2_final", "L2 at T", 1.0, 1),
              ("disagreement", "disagreement (%)", 100.0, 1))
BIT_X = 1e-8  # where the figure puts the bit flip (left of every ε)


def noise_size(tag: str) -> float:
    """``e1e-6`` -> 1e-6; ``bitflip`` -> 0 (sorts first: smaller than any ε here)."""
    return 0.0 if tag == "bitflip" else float(tag[1:])


def noise_label(tag: str) -> str:
    return "one bit flip" if tag == "bitflip" else f"ε = {noise_size(tag):g}"


def _present(res: Results, cond: str, seeds: list[int]) -> list[int]:
    return [s for s in seeds if np.isfinite(res.get(cond, s, "instability:ref", "perturb", 0, 0))]


def compute(plan: dict, results: Path, fig_dir: Path) -> dict | None:
    """Per net: one row per noise tag (the perturbed-vs-unperturbed pairs), the data-order row,
    and where the barrier switches on; None when results.csv holds no dose study."""
    conds = [c for c in plan["condition"] if c.get("sweep") == "dose"]
    res = Results(results, conditions={c["name"] for c in conds})
    if not res.v:
        return None
    nets: dict[str, dict] = {}
    for c in conds:
        net, tag = c["axes"]["net"], c["axes"]["noise"]
        seeds = _present(res, c["name"], seeds_of(plan, c))
        if not seeds:
            continue
        d = nets.setdefault(net, {"rows": {}, "data_order": {q: {} for q, *_ in QUANTITIES}})
        row = {}
        for q, *_ in QUANTITIES:
            row[q] = t_ci([res.get(c["name"], s, f"{q}:ref", "perturb", 0, 0) for s in seeds])
            # the data-order copies do not depend on the perturbation: every study of the net
            # trains the same ones (seed -> values, checked alike below)
            for s in seeds:
                d["data_order"][q].setdefault(s, []).append(res.get(c["name"], s, q, "imp", 0, 0))
        row["pp"] = t_ci([res.get(c["name"], s, "instability:pp", "perturb", 0, 0) for s in seeds])
        per_seed = [res.get(c["name"], s, "instability:ref", "perturb", 0, 0) for s in seeds]
        row["above"] = (sum(v >= THRESHOLD for v in per_seed), len(per_seed))
        d["rows"][tag] = row
    out = {"nets": {}, "threshold": THRESHOLD}
    for net in sorted(nets, key=list(NETS).index):
        d = nets[net]
        spread = max((np.ptp(v) for vals in d["data_order"].values() for v in vals.values()),
                     default=0.0)
        data_order = {q: t_ci([float(np.mean(v)) for v in d["data_order"][q].values()])
                      for q, *_ in QUANTITIES}
        tags = sorted(d["rows"], key=noise_size)
        eps = [t for t in tags if t != "bitflip"]
        on = next((t for t in eps if d["rows"][t]["instability"][0] >= THRESHOLD), None)
        reliably = next((t for t in eps if d["rows"][t]["above"][0] == d["rows"][t]["above"][1]), None)
        half = next((t for t in eps if d["rows"][t]["instability"][0]
                     >= 0.5 * data_order["instability"][0]), None)
        out["nets"][net] = {"tags": tags, "rows": d["rows"], "data_order": data_order,
                            "data_order_spread": float(spread), "switch_on": on,
                            "every_seed": reliably, "half_data_order": half}
    figure(out, fig_dir / "q5_dose.png")
    return out


def figure(n: dict, path: Path) -> None:
    """Left: the error barrier against ε per net (the bit flip apart, at the left edge);
    right: the L2 distance at T as a share of the data-order copies'. Dotted: data order."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for net, d in n["nets"].items():
        for ax, q in zip(axes, ("instability", "data_order_l2_final")):
            base = d["data_order"][q][0]
            scale = 100.0 if q == "instability" else 1.0 / base
            m = np.array([d["rows"][t][q][0] for t in d["tags"]]) * scale
            h = np.array([d["rows"][t][q][1] for t in d["tags"]]) * scale
            h = np.where(np.isfinite(h), h, 0.0)
            eps = [i for i, t in enumerate(d["tags"]) if t != "bitflip"]
            line = ax.errorbar([noise_size(d["tags"][i]) for i in eps], m[eps], yerr=h[eps],
                               marker="o", ms=4, capsize=2, label=NETS.get(net, net))[0]
            bit = [i for i, t in enumerate(d["tags"]) if t == "bitflip"]
            if bit:
                ax.errorbar([BIT_X], m[bit], yerr=h[bit], marker="s", ms=4, capsize=2, ls="none",
                            color=line.get_color())
            ax.axhline(base * scale, ls=":", lw=1, color=line.get_color())
    axes[0].axhline(100 * n["threshold"], ls="--", c="k", lw=0.8)
    axes[0].set_ylabel("error barrier at T, perturbed vs unperturbed (pts)")
    axes[1].set_ylabel("L2 at T / the data-order copies' L2")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks([BIT_X, 1e-6, 1e-4, 1e-2, 1.0], ["1 bit", "1e-6", "1e-4", "0.01", "1"])
        ax.set_xlabel("ε: noise per weight / its layer's init std (Kwok et al.'s σ)")
    axes[0].legend(fontsize=7)
    axes[0].set_title("dotted: data-order copies; dashed: the 2-point threshold", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cell(ci, scale, digits) -> str:
    return fmt(ci[0], ci[1], scale, digits)


def lines(n: dict) -> list[str]:
    """The dose-response part of Q5's section."""
    L: list[str] = []
    w = L.append
    w("### The dose-response at k = 0")
    w("")
    w("Copies from W_0 under one data order, one of them unperturbed and two moved by a "
      "perturbation: Gaussian noise of ε times each layer's init std per weight (the σ of Kwok et "
      "al. 2025, whose scripts use σ ∈ {0.01, 0.1, 0.5} and whose Fig. 1 goes down to a single "
      "weight), or the last mantissa bit of one weight flipped. Each row: the two "
      "perturbed-vs-unperturbed pairs, mean per seed, then the mean and 95% t-interval over "
      "seeds. *seeds ≥ 2 pts*: seeds whose mean error barrier reaches the LMC threshold. The "
      "data-order row is the same study's 3 data-order copies from W_0 (no perturbation).")
    w("")
    w("![Q5 dose-response](figures/q5_dose.png)")
    w("")
    for net, d in n["nets"].items():
        w(f"**{NETS.get(net, net)}**")
        w("")
        w("| noise | " + " | ".join(label for _, label, *_ in QUANTITIES)
          + " | seeds ≥ 2 pts | barrier between the two perturbed copies (pts) |")
        w("|---|" + "---|" * (len(QUANTITIES) + 2))
        for t in d["tags"]:
            r = d["rows"][t]
            w(f"| {noise_label(t)} | " + " | ".join(_cell(r[q], s, dg) for q, _, s, dg in QUANTITIES)
              + f" | {r['above'][0]}/{r['above'][1]} | {_cell(r['pp'], 100.0, 1)} |")
        w("| different data orders | " + " | ".join(_cell(d["data_order"][q], s, dg)
                                                   for q, _, s, dg in QUANTITIES) + " | | |")
        w("")
        spread = d["data_order_spread"]
        w("The data-order row's copies are " + ("bitwise the same in every study of this net "
          "(recording is deterministic)." if spread == 0 else
          f"the same copies in every study of this net up to {spread:.2g} (float arithmetic)."))
        w("")
        on, every, half = d["switch_on"], d["every_seed"], d["half_data_order"]
        w(f"The mean barrier first reaches 2 points at {noise_label(on) if on else 'no ε tested'}; "
          f"every seed does at {noise_label(every) if every else 'no ε tested'}; half the "
          f"data-order barrier is reached at {noise_label(half) if half else 'no ε tested'}.")
        w("")
    return L
