"""Stability analysis: distances, barriers, interpolation, alignment, measures, statistics.

Two layers (ArviZ style): array functions with explicit axes in the submodules
below, and thin xarray wrappers keyed by dim name in :mod:`stabilitylab.analysis.xr`.
What ``analyze`` computes and writes (groups, variables, measures) is declared in
:mod:`stabilitylab.analysis.registry`.
"""

from stabilitylab.analysis.barriers import (
    LMC_THRESHOLD,
    MATCHING_TOLERANCE,
    above_line_barrier,
    alpha_grid,
    instability,
    is_matching,
    is_stable,
    loss_barrier,
)
from stabilitylab.analysis.distances import (
    angle,
    data_order_distance,
    l2_distance,
    pairwise_distance,
    pruning_noise_distance,
    random_imp_ratio,
)
from stabilitylab.analysis.measures import (
    chance_jaccard,
    disagreement,
    early_bird_distance,
    gradient_noise_scale,
    mask_hamming,
    mask_jaccard,
    sign_flips,
    split_rhat,
)
from stabilitylab.analysis.stats import (
    accuracy_gap,
    oracle_rewind,
    predict_rewind_lmc,
    predict_rewind_measure,
    rank_correlations,
)

__all__ = [
    "LMC_THRESHOLD",
    "MATCHING_TOLERANCE",
    "above_line_barrier",
    "accuracy_gap",
    "alpha_grid",
    "angle",
    "chance_jaccard",
    "data_order_distance",
    "disagreement",
    "early_bird_distance",
    "gradient_noise_scale",
    "instability",
    "is_matching",
    "is_stable",
    "l2_distance",
    "loss_barrier",
    "mask_hamming",
    "mask_jaccard",
    "oracle_rewind",
    "pairwise_distance",
    "predict_rewind_lmc",
    "predict_rewind_measure",
    "pruning_noise_distance",
    "random_imp_ratio",
    "rank_correlations",
    "sign_flips",
    "split_rhat",
]
