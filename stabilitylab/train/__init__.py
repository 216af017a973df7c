"""Training: stacked functional models, optimizers, schedules, the batched engine."""
