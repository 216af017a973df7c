"""Learning-rate schedule: linear warmup, then step milestones with gamma.

``lr(t) = lr * min(1, (t + 1) / warmup) * gamma ** #{m in milestones : m <= t}``.
Warmup uses ``t + 1`` so the first step already moves (a zero-lr step would be a
wasted iteration). Each replica may sit at its own schedule position t.
"""

from __future__ import annotations

import bisect


def learning_rate(step: int, base_lr: float, warmup: int, milestones: tuple[int, ...], gamma: float) -> float:
    factor = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    return base_lr * factor * gamma ** bisect.bisect_right(milestones, step)


def schedule_for(resolved):
    """A function ``step -> lr`` for a resolved study."""
    t = resolved.config.training

    def lr_at(step: int) -> float:
        return learning_rate(step, t.lr, resolved.warmup, resolved.milestones, t.gamma)

    return lr_at
