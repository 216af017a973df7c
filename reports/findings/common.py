"""What every phase of make_findings.py shares: store paths, labels, the thresholds, ``fmt``.

Imported by ``make_findings``, ``collect``, ``render`` and ``document``, and importing none of
them, so the phases import in one direction only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stabilitylab.analysis import registry
from stabilitylab.analysis.barriers import LMC_THRESHOLD, MATCHING_TOLERANCE

# The studies are analysed with the library's constants (each store's analysis records them
# in attrs["threshold"] / attrs["matching_tolerance"]); results.csv keeps only the values.
THRESHOLD = LMC_THRESHOLD  # LMC: instability < 2 percentage points of error
TOLERANCE = MATCHING_TOLERANCE  # "within 0.2% of the oracle's accuracy"

#: Each measure's short label (from the measure registry), plus the baseline row.
MEASURE_LABELS = {name: m.label or name for name, m in registry.measures().items()}
MEASURE_LABELS["rewind_k"] = "*baseline: the rewind step k itself*"


def seeds_of(plan: dict, cond: dict) -> list[int]:
    """A condition's seeds: its own ``seeds`` list in findings.toml, else the plan's."""
    return list(cond.get("seeds", plan["seeds"]))


def store_path(runs: Path, condition: str, seed: int) -> Path:
    return runs / f"{condition}-s{seed}.zarr"


def fmt(mean, half, scale=1.0, digits=1, unit="") -> str:
    if not np.isfinite(mean):
        return "n/a"
    if not np.isfinite(half):
        return f"{mean * scale:.{digits}f}{unit}"
    return f"{mean * scale:.{digits}f} ± {half * scale:.{digits}f}{unit}"
