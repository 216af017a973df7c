"""What each scalar stability measure is, in which unit the report shows it, and which way
is more stable. Used by the figures (axis labels, scaling) and the report's glossary.

Every error-type barrier and every fraction is shown in **percentage points** (pp), the
unit of instability in Frankle et al. (ICML 2020), so one number means the same thing on
every figure and table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MeasureInfo:
    description: str
    unit: str  # as shown in the report
    scale: float  # stored value × scale = shown value
    stable: str  # which direction is more stable


PP = "percentage points"

MEASURES: dict[str, MeasureInfo] = {
    "instability": MeasureInfo(
        "test-error barrier on the linear path between two replicas trained from the same W_k "
        "under different data orders: max over α of the error minus the endpoints' mean "
        "(Frankle et al., ICML 2020, eq. 1)", PP, 100.0, "lower"),
    "instability_train": MeasureInfo(
        "the same barrier on the fixed train subset", PP, 100.0, "lower"),
    "loss_barrier": MeasureInfo(
        "the same barrier on test cross-entropy loss", "nats", 1.0, "lower"),
    "above_line_barrier": MeasureInfo(
        "max over α of the test error above the straight line between the endpoint errors "
        "(Entezari et al., ICLR 2022)", PP, 100.0, "lower"),
    "aligned_instability": MeasureInfo(
        "test-error barrier after permuting one replica's units to match the other's "
        "(weight matching, Ainsworth et al., ICLR 2023)", PP, 100.0, "lower"),
    "disagreement": MeasureInfo(
        "share of test examples on which the two replicas predict different classes",
        PP, 100.0, "lower"),
    "data_order_l2": MeasureInfo(
        "L2 distance between the two replicas' final weights ‖W_a − W_b‖ (Frankle et al., "
        "arXiv 1903.01611)", "weight L2 norm", 1.0, "lower"),
    "data_order_angle": MeasureInfo(
        "angle between the two replicas' final weight vectors", "radians", 1.0, "lower"),
    "mask_jaccard": MeasureInfo(
        "Jaccard overlap of the masks IMP would draw from each replica's final weights",
        PP, 100.0, "higher"),
    "sign_flips": MeasureInfo(
        "share of surviving weights whose sign differs between W_k and W_T", PP, 100.0,
        "lower"),
    "early_bird": MeasureInfo(
        "Hamming distance between magnitude masks of consecutive recorded steps, mean over "
        "the first steps after k, as a share of prunable weights (You et al., ICLR 2020)",
        PP, 100.0, "lower"),
    "rhat": MeasureInfo(
        "split-R̂ across replicas of per-example test losses over the last recorded steps "
        "(median over examples; Gelman et al., Bayesian Data Analysis, 3rd ed., §11.4)",
        "ratio (≥ 1)", 1.0,
        "lower (closer to 1)"),
    "gradient_noise_scale": MeasureInfo(
        "simple gradient noise scale B_simple = tr(Σ)/|G|² of minibatch gradients at W_k "
        "(McCandlish et al., arXiv 1812.06162, eq. 2.9)", "examples", 1.0,
        "no fixed direction (a candidate measure)"),
}


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
