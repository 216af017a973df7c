"""Pruning: magnitude masks (global, layerwise) and the random-pruning control."""

from stabilitylab.prune.masks import (
    density,
    global_magnitude_masks,
    layerwise_magnitude_masks,
    prune,
    random_masks_like,
)

__all__ = ["density", "global_magnitude_masks", "layerwise_magnitude_masks", "prune",
           "random_masks_like"]
