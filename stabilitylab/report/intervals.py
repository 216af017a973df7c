"""Intervals the report shows, honest about their n: a bootstrap over *replicas*, or the range.

    from stabilitylab.report.intervals import pair_interval
    iv = pair_interval(barriers, pair_a, pair_b)     # barriers: one value per replica pair
    iv.text()                                        # 'range [0.20, 1.55], n = 3 replicas (3 pairs)'

The replicas are the independent units of a study: R replicas give R(R−1)/2 pair values
(barriers, distances), but those pairs share replicas, so resampling pairs as if they were
independent makes an interval too narrow. Here the **replicas** are resampled with
replacement (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, §13.3, the
percentile interval; resampling the independent units of a U-statistic as in Davison &
Hinkley, *Bootstrap Methods and their Application*, 1997, §3.8): a resample that draws
replica i c_i times weights pair (i, j) by c_i·c_j, and pairs of a replica with itself are
left out (a copy is trivially stable with itself).

With fewer than :data:`MIN_REPLICAS` replicas a bootstrap has too few distinct resamples to
be a 95% interval (3 replicas give 10), so the report shows the values' min–max and calls
it a **range**. Every interval carries its n, and :meth:`Interval.text` writes it beside.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

MIN_REPLICAS = 5  # below this: the min–max "range", never a bootstrap "95% CI"
N_BOOT = 2000  # bootstrap resamples
CI = "95% CI"
RANGE = "range"


@dataclass(frozen=True)
class Interval:
    """A mean and its interval. ``method`` is :data:`CI` (bootstrap over replicas) or
    :data:`RANGE` (min–max of the values); ``n`` counts replicas, ``pairs`` the pair values
    (None for per-replica values)."""

    mean: float
    low: float
    high: float
    n: int
    method: str
    pairs: int | None = None

    @property
    def finite(self) -> bool:
        return bool(np.isfinite([self.mean, self.low, self.high]).all())

    def n_text(self) -> str:
        """``"n = 3 replicas (3 pairs)"``."""
        text = f"n = {self.n} replica{'s' if self.n != 1 else ''}"
        return text + (f" ({self.pairs} pair{'s' if self.pairs != 1 else ''})"
                       if self.pairs is not None else "")

    def bounds_text(self, scale: float = 100.0, digits: int = 2) -> str:
        """``"range [0.20, 1.55]"`` / ``"95% CI [0.20, 1.55]"``; "–" when undefined."""
        if not self.finite:
            return "–"
        return f"{self.method} [{scale * self.low:.{digits}f}, {scale * self.high:.{digits}f}]"

    def text(self, scale: float = 100.0, digits: int = 2) -> str:
        """The bounds and the n: ``"range [0.20, 1.55], n = 3 replicas (3 pairs)"``."""
        bounds = self.bounds_text(scale, digits)
        return bounds if bounds == "–" else f"{bounds}, {self.n_text()}"


def pair_labels(analysis):
    """(pair_a, pair_b): the two replicas of each pair of ``analysis`` (from the pair labels
    ``"0-1"`` when the coordinates are absent)."""
    if "pair_a" in analysis.coords and "pair_b" in analysis.coords:
        return analysis["pair_a"].values, analysis["pair_b"].values
    labels = [str(p).split("-") for p in analysis["pair"].values]
    return np.array([x[0] for x in labels]), np.array([x[1] for x in labels])


def _draws(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) counts: how often each of n units is drawn in each resample."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    counts = np.zeros((n_boot, n))
    np.add.at(counts, (np.arange(n_boot)[:, None], idx), 1.0)
    return counts


def replica_interval(values, *, n_boot: int = N_BOOT, seed: int = 0) -> Interval:
    """Mean over replicas (one value each, NaN = a run that is missing) and its interval."""
    x = np.asarray(values, dtype=float).ravel()
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return Interval(np.nan, np.nan, np.nan, 0, RANGE)
    if n < MIN_REPLICAS:
        return Interval(float(x.mean()), float(x.min()), float(x.max()), n, RANGE)
    means = _draws(n, n_boot, seed) @ x / n
    low, high = np.percentile(means, [2.5, 97.5])
    return Interval(float(x.mean()), float(low), float(high), n, CI)


def pair_weights(pair_a, pair_b, *, n_boot: int = N_BOOT, seed: int = 0):
    """(replicas, weights): the distinct replicas of the pairs and, for each bootstrap
    resample of them, each pair's weight c_a·c_b, shape (n_boot, pairs)."""
    a, b = np.asarray(pair_a).ravel(), np.asarray(pair_b).ravel()
    replicas = np.unique(np.concatenate([a, b]))
    ia, ib = np.searchsorted(replicas, a), np.searchsorted(replicas, b)
    counts = _draws(replicas.size, n_boot, seed)
    return replicas, counts[:, ia] * counts[:, ib]


def resampled_pair_means(values, weights) -> np.ndarray:
    """Weighted pair means per resample: ``values`` (..., pairs), ``weights`` (n_boot, pairs)
    -> (n_boot, ...); NaN where a resample holds no finite pair."""
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v)
    num = np.tensordot(weights, np.where(ok, v, 0.0), axes=([1], [-1]))
    den = np.tensordot(weights, ok.astype(float), axes=([1], [-1]))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _replicas_of(values, pair_a, pair_b):
    v = np.asarray(values, dtype=float).ravel()
    ok = np.isfinite(v)
    a, b = np.asarray(pair_a).ravel()[ok], np.asarray(pair_b).ravel()[ok]
    return v[ok], a, b, int(np.unique(np.concatenate([a, b])).size)


def pair_interval(values, pair_a, pair_b, *, n_boot: int = N_BOOT, seed: int = 0) -> Interval:
    """Mean over replica pairs (one value per pair; NaN = a pair with a missing run) and its
    interval: the replica bootstrap with ≥ :data:`MIN_REPLICAS` replicas, else the range."""
    v, a, b, n = _replicas_of(values, pair_a, pair_b)
    if v.size == 0:
        return Interval(np.nan, np.nan, np.nan, n, RANGE, 0)
    if n < MIN_REPLICAS:
        return Interval(float(v.mean()), float(v.min()), float(v.max()), n, RANGE, int(v.size))
    _, w = pair_weights(a, b, n_boot=n_boot, seed=seed)
    means = resampled_pair_means(v, w)
    low, high = np.nanpercentile(means, [2.5, 97.5])
    return Interval(float(v.mean()), float(low), float(high), n, CI, int(v.size))


def pair_intervals(values, pair_a, pair_b, **kw) -> list[Interval]:
    """:func:`pair_interval` for each row of ``values`` (rows, pairs)."""
    v = np.asarray(values, dtype=float)
    return [pair_interval(row, pair_a, pair_b, **kw) for row in v.reshape(-1, v.shape[-1])]


@dataclass(frozen=True)
class RewindInterval:
    """The earliest stable k and how far it moves: ``low``/``high`` are rewind points (None
    = no k is stable), ``method`` :data:`CI` (over replica resamples) or :data:`RANGE`
    (over single pairs)."""

    k: int | None
    low: int | None
    high: int | None
    n: int
    pairs: int
    method: str

    def text(self) -> str:
        """``"range over single pairs [k = 25, 100], n = 3 replicas (3 pairs)"``."""
        def k(v):
            return "none" if v is None else f"{v}"

        n = (f"n = {self.n} replica{'s' if self.n != 1 else ''} ({self.pairs} pair"
             f"{'s' if self.pairs != 1 else ''})")
        if self.method == RANGE and self.low == self.high and self.pairs > 1:
            return f"every single pair gives k = {k(self.low)}, {n}"
        where = "over replicas resampled" if self.method == CI else "over single pairs"
        return f"{self.method} {where} [k = {k(self.low)}, {k(self.high)}], {n}"


def _earliest(rewinds, means, threshold) -> np.ndarray:
    """Index of the earliest k with mean < threshold along the last axis; len = none."""
    with np.errstate(invalid="ignore"):
        hit = np.asarray(means) < threshold
    return np.where(hit.any(-1), hit.argmax(-1), len(rewinds))


def stability_point(rewinds, values, pair_a, pair_b, threshold: float, *,
                    n_boot: int = N_BOOT, seed: int = 0) -> RewindInterval:
    """The LMC rule (Frankle et al., ICML 2020: the earliest rewind point k whose mean
    instability over pairs is < ``threshold``) on ``values`` (rewinds, pairs), with its
    spread: the 2.5th–97.5th percentile of the rule's k over replica resamples
    (≥ :data:`MIN_REPLICAS` replicas), else the range of the k each single pair gives."""
    r = np.asarray(rewinds)
    order = np.argsort(r, kind="stable")
    r, v = r[order], np.asarray(values, dtype=float)[order]
    k_of = [*(int(x) for x in r), None]
    with warnings.catch_warnings():  # a k with no finite pair: NaN, never stable
        warnings.simplefilter("ignore", RuntimeWarning)
        point = k_of[int(_earliest(r, np.nanmean(v, axis=-1), threshold))]
    usable = np.isfinite(v).any(axis=0)
    a, b = np.asarray(pair_a)[usable], np.asarray(pair_b)[usable]
    n = int(np.unique(np.concatenate([a, b])).size)
    v = v[:, usable]
    if v.shape[1] == 0:
        return RewindInterval(point, None, None, 0, 0, RANGE)
    if n < MIN_REPLICAS:
        ks = _earliest(r, v.T, threshold)  # one k per pair
        return RewindInterval(point, k_of[int(ks.min())], k_of[int(ks.max())], n, v.shape[1],
                              RANGE)
    _, w = pair_weights(a, b, n_boot=n_boot, seed=seed)
    ks = _earliest(r, resampled_pair_means(v, w), threshold)  # (n_boot,)
    low = int(np.percentile(ks, 2.5, method="lower"))
    high = int(np.percentile(ks, 97.5, method="higher"))
    return RewindInterval(point, k_of[low], k_of[high], n, v.shape[1], CI)
