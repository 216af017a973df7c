"""Does a stability measure predict accuracy? Rank correlations and rewind-point rules.

For each measure: Spearman and Kendall correlation with final test
accuracy across rewind points (``scipy.stats``), with bootstrap confidence
intervals; predict the best rewind point k by the LMC rule (earliest stable k,
Frankle et al., ICML 2020) and by a measure-based rule, and compare both with the
oracle (best k by final accuracy) through the accuracy gap.

Array layer: 1-D inputs over rewind points (average replicas first).
"""

from __future__ import annotations

import numpy as np
from scipy import stats as sps
from scipy.stats import rankdata

from stabilitylab.analysis.barriers import LMC_THRESHOLD

__all__ = [
    "accuracy_gap",
    "oracle_rewind",
    "predict_rewind_lmc",
    "predict_rewind_measure",
    "rank_correlations",
]

_BOOT_BLOCK = 128  # bootstrap resamples per vectorised block (memory ~ block · n² floats)


def _clean(*arrays) -> list[np.ndarray]:
    arrs = [np.asarray(a, dtype=np.float64).reshape(-1) for a in arrays]
    if len({a.size for a in arrs}) != 1:
        raise ValueError(f"inputs must have equal length, got {[a.size for a in arrs]}")
    keep = np.all([np.isfinite(a) for a in arrs], axis=0)
    return [a[keep] for a in arrs]


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman ρ per row: Pearson correlation of average ranks (as scipy.stats.spearmanr)."""
    rx = rankdata(x, axis=-1)
    ry = rankdata(y, axis=-1)
    rx -= rx.mean(-1, keepdims=True)
    ry -= ry.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(-1) / np.sqrt((rx * rx).sum(-1) * (ry * ry).sum(-1))


def _kendall_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall τ-b per row (as scipy.stats.kendalltau): Σ sx·sy / sqrt(Σ sx² · Σ sy²)
    over all ordered pairs, sx = sign(x_i − x_j); tied pairs drop out of Σ sx²."""
    sx = np.sign(x[..., :, None] - x[..., None, :])
    sy = np.sign(y[..., :, None] - y[..., None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sx * sy).sum((-2, -1)) / np.sqrt((sx * sx).sum((-2, -1)) * (sy * sy).sum((-2, -1)))


def rank_correlations(measure, accuracy, n_boot: int = 1000, seed: int = 0,
                      ci: float = 0.95) -> dict:
    """Spearman ρ and Kendall τ-b of a measure against accuracy, with bootstrap CIs.

    Point estimates and p-values come from ``scipy.stats.spearmanr`` and
    ``scipy.stats.kendalltau`` (τ-b). The confidence interval is the percentile
    bootstrap (Efron & Tibshirani 1993, §13.3): resample the (measure, accuracy)
    pairs with replacement ``n_boot`` times, recompute both coefficients
    (vectorised, same definitions), and take the (1 ± ci)/2 quantiles, ignoring
    degenerate resamples (all values tied). Pairs with a NaN are dropped first;
    with fewer than 3 pairs everything is NaN. Cost O(n_boot · n²).

    Returns
    -------
    dict
        n, spearman, spearman_pvalue, spearman_low, spearman_high, kendall,
        kendall_pvalue, kendall_low, kendall_high (floats).
    """
    x, y = _clean(measure, accuracy)
    n = x.size
    keys = ("spearman", "spearman_pvalue", "spearman_low", "spearman_high",
            "kendall", "kendall_pvalue", "kendall_low", "kendall_high")
    out = {"n": n, **{k: float("nan") for k in keys}}
    if n < 3:
        return out
    with np.errstate(invalid="ignore", divide="ignore"):
        sp = sps.spearmanr(x, y)
        kt = sps.kendalltau(x, y)
    out.update(spearman=float(sp.statistic), spearman_pvalue=float(sp.pvalue),
               kendall=float(kt.statistic), kendall_pvalue=float(kt.pvalue))
    if n_boot <= 0:
        return out
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boot_s, boot_k = [], []
    for start in range(0, n_boot, _BOOT_BLOCK):
        i = idx[start:start + _BOOT_BLOCK]
        boot_s.append(_spearman_rows(x[i], y[i]))
        boot_k.append(_kendall_rows(x[i], y[i]))
    q = [50 * (1 - ci), 50 * (1 + ci)]
    for name, boot in (("spearman", np.concatenate(boot_s)), ("kendall", np.concatenate(boot_k))):
        if np.isfinite(boot).any():
            lo, hi = np.nanpercentile(boot, q)
            out[f"{name}_low"], out[f"{name}_high"] = float(lo), float(hi)
    return out


def _sorted(rewinds, values) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(rewinds)
    v = np.asarray(values, dtype=np.float64)
    if r.shape != v.shape or r.ndim != 1:
        raise ValueError(f"rewinds {r.shape} and values {v.shape} must be equal-length 1-D arrays")
    order = np.argsort(r, kind="stable")
    return r[order], v[order]


def _first(r: np.ndarray, hit: np.ndarray):
    where = np.flatnonzero(hit)
    return r[where[0]].item() if where.size else None


def predict_rewind_lmc(rewinds, instability, threshold: float = LMC_THRESHOLD):
    """LMC rule: the earliest rewind point k whose instability is < ``threshold``.

    Frankle et al., "Linear Mode Connectivity and the Lottery Ticket Hypothesis",
    ICML 2020: rewinding works from the point where training becomes stable
    (instability < 2% error). NaN instabilities never count as stable. Returns
    the rewind value, or None when no k is stable. Cost O(K log K).
    """
    r, v = _sorted(rewinds, instability)
    with np.errstate(invalid="ignore"):
        return _first(r, v < threshold)


def predict_rewind_measure(rewinds, measure, *, rule: str = "plateau", tol: float = 0.1,
                           atol: float = 0.0, threshold: float | None = None,
                           direction: str = "below"):
    """Measure-based rule for the rewind point.

    ``rule="plateau"`` (default): the earliest k whose measure is within ``tol``
    (relative) + ``atol`` of its value at the largest k with a finite value,
    |m(k) − m(k_max)| ≤ tol·|m(k_max)| + atol — "the measure has settled".
    ``rule="threshold"``: the earliest k with m(k) < ``threshold`` (``direction=
    "below"``) or m(k) > ``threshold`` (``"above"``), the analogue of the LMC rule.

    Returns the rewind value, or None if no k qualifies. Cost O(K log K).
    """
    r, v = _sorted(rewinds, measure)
    finite = np.isfinite(v)
    if rule == "plateau":
        if not finite.any():
            return None
        ref = v[np.flatnonzero(finite)[-1]]
        return _first(r, finite & (np.abs(v - ref) <= tol * abs(ref) + atol))
    if rule == "threshold":
        if threshold is None:
            raise ValueError("rule='threshold' needs a threshold")
        if direction not in ("below", "above"):
            raise ValueError(f"direction must be 'below' or 'above', got {direction!r}")
        with np.errstate(invalid="ignore"):
            hit = v < threshold if direction == "below" else v > threshold
        return _first(r, hit)
    raise ValueError(f"unknown rule {rule!r}; choose 'plateau' or 'threshold'")


def oracle_rewind(rewinds, accuracy):
    """The rewind point with the highest (finite) accuracy; ties go to the earliest k.
    None if every accuracy is NaN."""
    r, a = _sorted(rewinds, accuracy)
    if not np.isfinite(a).any():
        return None
    return r[int(np.nanargmax(a))].item()


def accuracy_gap(pred_k, oracle_k, rewinds, accuracy) -> float:
    """Accuracy lost by rewinding to ``pred_k`` instead of ``oracle_k``:
    acc(oracle_k) − acc(pred_k) (≥ 0 for the true oracle). NaN when either is None."""
    if pred_k is None or oracle_k is None:
        return float("nan")
    r = np.asarray(rewinds)
    a = np.asarray(accuracy, dtype=np.float64)

    def at(k):
        hit = np.flatnonzero(r == k)
        if not hit.size:
            raise ValueError(f"rewind {k!r} is not among the rewind points")
        return a[hit[0]]

    return float(at(oracle_k) - at(pred_k))
