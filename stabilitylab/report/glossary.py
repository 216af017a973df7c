"""What each scalar stability measure is, in which unit the report shows it, and which way
is more stable. Used by the figures (axis labels, scaling) and the report's glossary.

Built from the measure registry (:mod:`stabilitylab.analysis.registry`), so a new measure
appears here without an edit. Every error-type barrier and every fraction is shown in
**percentage points** (pp), the unit of instability in Frankle et al. (ICML 2020), so one
number means the same thing on every figure and table.
"""

from __future__ import annotations

from dataclasses import dataclass

from stabilitylab.analysis import registry


@dataclass(frozen=True)
class MeasureInfo:
    description: str
    unit: str  # as shown in the report
    scale: float  # stored value × scale = shown value
    stable: str  # which direction is more stable


PP = "percentage points"


def _info(m: registry.Measure) -> MeasureInfo:
    unit, scale = (PP, 100.0) if m.unit == "fraction" else (m.unit, 1.0)
    return MeasureInfo(m.description, unit, scale, m.direction)


MEASURES: dict[str, MeasureInfo] = {name: _info(m) for name, m in registry.measures().items()}


def scale(name: str) -> float:
    """Factor from the stored value of measure ``name`` to the unit the report shows."""
    info = MEASURES.get(name)
    return info.scale if info is not None else 1.0


def axis_label(name: str) -> str:
    """``"instability (pp)"``-style label for measure ``name``."""
    info = MEASURES.get(name)
    if info is None:
        return name
    unit = "pp" if info.unit == PP else info.unit
    return f"{name} ({unit})"
