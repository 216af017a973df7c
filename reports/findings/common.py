"""What every phase of make_findings.py shares: store paths, labels, the thresholds, ``fmt``.

Imported by ``make_findings``, ``collect``, ``render`` and ``document``, and importing none of
them, so the phases import in one direction only.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

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


HERE_STUDIES = Path(__file__).resolve().parent / "studies"


class Results:
    """results.csv, indexed: value(condition, seed, quantity, kind, level, rewind)."""

    def __init__(self, path: Path, conditions=None):
        self.v: dict[tuple, float] = {}
        self.curves: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
        self.step_curves: dict[tuple, list[tuple[int, float]]] = defaultdict(list)
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                if conditions is not None and r["condition"] not in conditions:
                    continue
                key = (r["condition"], int(r["seed"]), r["quantity"], r["kind"] or None,
                       int(r["level"]) if r["level"] else None, int(r["rewind"]) if r["rewind"] else None)
                if r["alpha"]:
                    self.curves[key].append((float(r["alpha"]), float(r["value"])))
                elif r.get("step"):
                    self.step_curves[key].append((int(r["step"]), float(r["value"])))
                else:
                    self.v[key] = float(r["value"])
        self.rewinds = sorted({k[5] for k in self.v if k[5] is not None})
        self.levels = sorted({k[4] for k in self.v if k[4] is not None})
        self.seeds = sorted({k[1] for k in self.v})

    def get(self, cond, seed, quantity, kind=None, level=None, rewind=None) -> float:
        return self.v.get((cond, seed, quantity, kind, level, rewind), math.nan)

    def vs_k(self, cond, seed, quantity, kind=None, level=None) -> np.ndarray:
        return np.array([self.get(cond, seed, quantity, kind, level, k) for k in self.rewinds])


def t_ci(values) -> tuple[float, float, int]:
    """Mean and the half-width of its Student-t 95% interval (NaN half-width for n < 2)."""
    x = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    n = x.size
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(x[0]), math.nan, 1
    return float(x.mean()), float(stats.t.ppf(0.975, n - 1) * x.std(ddof=1) / math.sqrt(n)), n
