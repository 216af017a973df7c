"""The rewind-point target judged by paired intervals over seeds, and how predictors score.

Array layer: numpy. ``acc`` is ``(seed, rewind)``: the final test accuracy of the IMP
subnetwork at one chosen sparsity, for each seed (an independent study: its own init,
data orders and masks) and each rewind point k in ``rewinds``. Use the same units
throughout (pass accuracy in percent to get regrets in accuracy points).

The argmax of the seed means is a noisy oracle: with a per-cell standard error of half a
point, a k that is truly as good as the best loses the argmax about half the time. The
target here is instead the **earliest k that is within noise of the best**:

- k_best is the k with the highest mean accuracy over seeds (the earliest on ties);
- k *matches* when the upper end of the two-sided ``confidence`` interval of the mean
  paired difference mean_s(acc[s, k] − acc[s, k_best]) is ≥ 0: a paired (Student) t
  interval over seeds, mean ± t_{(1+c)/2, n−1} · sd / √n (scipy.stats.t), i.e. the data
  cannot rule out that k is as good as k_best;
- the target is the earliest matching k (k_best always matches itself).

Seeds where either value is not finite (a diverged run) are left out of that pair; a k
with fewer than two such seeds does not match. The paired interval removes the between-
seed variation that both columns share (each seed's init and data), which is why it is
much tighter than comparing two per-cell intervals.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

__all__ = ["earliest_matching_rewind", "hit", "hit_rate", "matching_rewinds", "noise_floor",
           "paired_interval", "regret"]


def _check(acc, rewinds) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(acc, dtype=np.float64)
    r = np.asarray(rewinds)
    if a.ndim != 2:
        raise ValueError(f"acc must be (seed, rewind), got shape {a.shape}")
    if r.ndim != 1 or r.size != a.shape[1] or r.size == 0:
        raise ValueError(f"rewinds must be 1-D with one entry per column of acc ({a.shape[1]}),"
                         f" got shape {r.shape}")
    if len(set(r.tolist())) != r.size:
        raise ValueError("rewinds must be distinct")
    if a.shape[0] < 2:
        raise ValueError(f"a paired interval over seeds needs >= 2 seeds, got {a.shape[0]}")
    return a, r


def _confidence(confidence: float) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) \
            or not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return float(confidence)


def paired_interval(diff, *, confidence: float = 0.95) -> dict[str, float]:
    """Mean and Student-t interval of paired differences (1-D, one per seed; NaN left out).

    Returns ``{"mean", "low", "high", "se", "n"}``; the bounds are NaN below two finite
    differences and equal to the mean when the differences are all equal.
    """
    c = _confidence(confidence)
    d = np.asarray(diff, dtype=np.float64).ravel()
    d = d[np.isfinite(d)]
    n = int(d.size)
    if n < 2:
        mean = float(d.mean()) if n else math.nan
        return {"mean": mean, "low": math.nan, "high": math.nan, "se": math.nan, "n": n}
    mean = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(n))
    half = float(stats.t.ppf(0.5 + c / 2, n - 1)) * se
    return {"mean": mean, "low": mean - half, "high": mean + half, "se": se, "n": n}


def _best_column(a: np.ndarray, order: np.ndarray) -> int:
    with np.errstate(invalid="ignore"):
        means = np.nanmean(np.where(np.isfinite(a), a, np.nan), axis=0)
    if not np.isfinite(means).any():
        raise ValueError("acc has no finite value")
    ranked = means[order]
    return int(order[np.nanargmax(ranked)])  # the earliest of equal best means


def matching_rewinds(acc, rewinds, *, confidence: float = 0.95) -> dict[str, np.ndarray]:
    """Per rewind point (in the order given): the paired difference to k_best and whether it
    matches. Returns ``{"rewind", "mean_diff", "low", "high", "matches", "best"}`` where
    ``best`` is k_best's rewind value (a 0-d array)."""
    a, r = _check(acc, rewinds)
    c = _confidence(confidence)
    order = np.argsort(r, kind="stable")
    best = _best_column(a, order)
    rows = [paired_interval(a[:, j] - a[:, best], confidence=c) for j in range(r.size)]
    mean = np.array([x["mean"] for x in rows])
    low = np.array([x["low"] for x in rows])
    high = np.array([x["high"] for x in rows])
    matches = np.isfinite(high) & (high >= 0)
    matches[best] = True  # its paired differences are all 0 (where its values are finite)
    return {"rewind": r, "mean_diff": mean, "low": low, "high": high, "matches": matches,
            "best": np.asarray(r[best])}


def earliest_matching_rewind(acc, rewinds, *, confidence: float = 0.95):
    """The earliest rewind point whose accuracy is within noise of the best (module doc):
    the smallest k whose paired ``confidence`` interval of mean(acc[:, k] − acc[:, k_best])
    reaches 0 or above. Returns an element of ``rewinds``."""
    m = matching_rewinds(acc, rewinds, confidence=confidence)
    r = m["rewind"]
    return r[m["matches"]].min().item()


def regret(k_pred, acc, rewinds, *, confidence: float = 0.95) -> dict[str, float]:
    """Accuracy lost by rewinding to ``k_pred`` instead of the best-mean k.

    Per seed: acc[s, k_best] − acc[s, k_pred]; returns their mean, paired t interval
    (``low``, ``high``), ``se`` and ``n`` (as :func:`paired_interval`), in acc's units.
    """
    a, r = _check(acc, rewinds)
    hits = np.nonzero(r == k_pred)[0]
    if hits.size == 0:
        raise ValueError(f"predicted rewind {k_pred!r} is not among the rewind points")
    best = _best_column(a, np.argsort(r, kind="stable"))
    return paired_interval(a[:, best] - a[:, hits[0]], confidence=confidence)


def hit(k_pred, target) -> np.ndarray:
    """Whether each prediction equals its target (elementwise; NaN or None never hits)."""
    p = np.asarray(k_pred, dtype=object)
    t = np.asarray(target, dtype=object)
    out = np.vectorize(lambda a, b: a is not None and b is not None and a == b, otypes=[bool])(p, t)
    return out if out.ndim else bool(out)


def hit_rate(hits, *, confidence: float = 0.95) -> dict[str, float]:
    """Fraction of hits with its Wilson score interval (scipy.stats.binomtest)."""
    h = np.asarray(hits, dtype=bool).ravel()
    if h.size == 0:
        raise ValueError("hit_rate needs at least one prediction")
    ci = stats.binomtest(int(h.sum()), int(h.size)).proportion_ci(
        confidence_level=_confidence(confidence), method="wilson")
    return {"rate": float(h.mean()), "low": float(ci.low), "high": float(ci.high),
            "n": int(h.size)}


def noise_floor(acc) -> np.ndarray:
    """Per-cell standard error of the mean accuracy over seeds, sd / √n (one per rewind).

    The resolution of any statement about a single (rewind, sparsity) cell: differences of
    means much below it are noise. Non-finite values are left out.
    """
    a = np.asarray(acc, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"acc must be (seed, rewind), got shape {a.shape}")
    finite = np.isfinite(a)
    n = finite.sum(0)
    if a.shape[0] < 2 or (n < 2).any():
        raise ValueError(f"the noise floor needs >= 2 seeds per rewind point, got "
                         f"{int(n.min()) if n.size else 0}")
    with np.errstate(invalid="ignore"):
        sd = np.nanstd(np.where(finite, a, np.nan), axis=0, ddof=1)
    return sd / np.sqrt(n)
