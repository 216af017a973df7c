"""The matching rule as the report shows it: the paired difference to the dense copies and
its one-sided bound, the rule in words, and the single dense run as information only.

The rule itself is :func:`stabilitylab.analysis.prediction.paired_matching` (Frankle et al.,
ICML 2020, Sec. 4 and 4.4, made a one-sided paired test).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from stabilitylab.analysis.barriers import MATCHING_CONFIDENCE, MATCHING_TOLERANCE

#: The summary column: "−0.41 (≥ −1.02), n = 3".
COLUMN = ("matching_difference", "acc. − dense copies (pp), one-sided 95% bound")

UNDEFINED = "undefined (fewer than 2 replicas)"


def _value(analysis: xr.Dataset, name: str, at: dict):
    if name not in analysis:
        return None
    try:
        v = analysis[name].sel(**at).values
    except (KeyError, ValueError):
        return None
    return v.item() if v.ndim == 0 else None


def difference_text(analysis: xr.Dataset, at: dict) -> str | None:
    """The paired difference in percentage points with its lower bound and n, e.g.
    ``"−0.41 (≥ −1.02), n = 3"``; ``"+0.10 (bound undefined), n = 1"``; None without it."""
    diff = _value(analysis, "matching_difference", at)
    if diff is None or not np.isfinite(diff):
        return None
    low = _value(analysis, "matching_low", at)
    n = _value(analysis, "matching_pairs", at)
    bound = f"≥ {100 * low:+.2f}" if low is not None and np.isfinite(low) else "bound undefined"
    return f"{100 * diff:+.2f} ({bound})" + (f", n = {int(n)}" if n is not None else "")


def flag_text(analysis: xr.Dataset, at: dict) -> str | None:
    """``"yes"``, ``"no"`` or :data:`UNDEFINED` (the bound needs two pairs); None without a
    matching flag."""
    flag = _value(analysis, "matching", at)
    if flag is None:
        return None
    low = _value(analysis, "matching_low", at)
    if "matching_low" in analysis and (low is None or not np.isfinite(low)):
        return UNDEFINED
    return "yes" if flag else "no"


def rule_note(analysis: xr.Dataset | None) -> str:
    """The rule in one paragraph, with the margins used and the dense run as information."""
    attrs = analysis.attrs if analysis is not None else {}
    tol = 100 * float(attrs.get("matching_tolerance", MATCHING_TOLERANCE))
    conf = 100 * float(attrs.get("matching_confidence", MATCHING_CONFIDENCE))
    if analysis is None or "matching_low" not in analysis:  # an analysis from before the rule
        return (f"Matching: accuracy at least the dense run's − {tol:g} pp (Frankle et al., "
                "ICML 2020).")
    margins = analysis["matching_margin"].values if "matching_margin" in analysis else []
    finite = [100 * m for m in np.asarray(margins, float) if np.isfinite(m)]
    span = (f"{min(finite):.2f}–{max(finite):.2f} pp over k" if finite and
            max(finite) > min(finite) else f"{finite[0]:.2f} pp" if finite else "unknown")
    dense = _value(analysis, "dense_test_acc", {})
    info = (f" The single dense pretraining run ended at {100 * dense:.2f}%; it is information "
            "only, not the reference." if dense is not None and np.isfinite(dense) else "")
    return (f"Matching (Frankle et al., ICML 2020: within one sd of the full network, Sec. 4; "
            f"a drop under {tol:g} points, Sec. 4.4), as a paired test: each copy j is compared "
            "with the dense copy j (level 0, the same k and data order); matching when the "
            f"one-sided {conf:g}% lower bound of the mean difference (Student's t, n − 1 dof) "
            f"is at least −max({tol:g} pp, one sd of the dense copies' accuracy) (here "
            f"{span}). \"no\" means not shown at this confidence (with few replicas the t "
            "quantile is large: 2.92 for 3), not that the subnetwork is worse. With one "
            f"replica the bound is undefined.{info}")
