"""Pruning: magnitude masks (global, layerwise) and the random-pruning control
(:mod:`~stabilitylab.prune.masks`); the pruning-at-init scores and masks, magnitude at
init, SNIP, GraSP, SynFlow and the within-layer shuffle (:mod:`~stabilitylab.prune.pai`)."""

from stabilitylab.prune.masks import (
    density,
    global_magnitude_masks,
    layerwise_magnitude_masks,
    prune,
    random_masks_like,
)

__all__ = ["density", "global_magnitude_masks", "layerwise_magnitude_masks", "prune",
           "random_masks_like"]
