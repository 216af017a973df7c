"""A study's plan in iterations: the :class:`Study` a config resolves to.

:func:`schedule` is the arithmetic: with the number of training examples known, every step
string becomes an iteration count and every schedule a tuple of steps. It is called by
:func:`stabilitylab.study.resolve.resolve_study`, which first checks what needs the
registries (the model, the dataset and its size, the optimizer, the run kinds) and computes
the study id; every later layer takes the resulting :class:`Study` and never checks again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from stabilitylab.config.checks import MAX_SCHEDULE, MAX_STEPS, need
from stabilitylab.config.schema import Config
from stabilitylab.config.steps import parse_steps
from stabilitylab.core.errors import ConfigError


@dataclass(frozen=True)
class Study:
    """A config resolved once: checked against the registries, every step string turned
    into iterations, its run kinds and its id. Made by
    :func:`stabilitylab.study.resolve.resolve_study`."""

    config: Config
    iterations_per_epoch: int
    total_steps: int  # T
    rewinds: tuple[int, ...]  # sorted, unique
    warmup: int
    milestones: tuple[int, ...]
    eval_every: int
    log_every: int
    record_steps: tuple[int, ...]  # global steps whose weights are recorded
    eval_steps: tuple[int, ...]
    log_steps: tuple[int, ...]
    levels: tuple[int, ...]  # 0..L
    control_levels: tuple[int, ...]
    noise_levels: tuple[int, ...] = ()  # levels with the noise kinds beyond data_order
    kinds: tuple[str, ...] = ("imp", "random_prune", "reinit")  # the store's kind coordinate
    # the trained kinds whose copies each have their own masks (the store keeps replica_masks)
    own_mask_kinds: tuple[str, ...] = ()
    id: str = ""  # the study id (stabilitylab.study.resolve.study_id)
    # the dataset's stabilitylab.data.registry.DatasetInfo (None: built without a lookup)
    info: object = field(default=None, compare=False, repr=False)


def _periodic(every: int, total: int) -> tuple[int, ...]:
    steps = set(range(0, total + 1, every)) if every > 0 else {0}
    steps.add(total)
    return tuple(sorted(steps))


def record_schedule(spec: str, total: int, rewinds: tuple[int, ...], points: int) -> tuple[int, ...]:
    """Global steps to record for a schedule spec.

    ``endpoints`` records only 0, the rewind points and T. ``dense_early`` records every step up to the largest rewind point when that is
    at most 100 steps long, else ~100 evenly spaced steps there, then ``points``
    evenly spaced steps to T. Every rewind point, 0 and T are always included.
    """
    field = "study.record"
    spec = spec.strip()
    short = spec if len(spec) <= 40 else spec[:37] + "..."
    if spec == "endpoints":
        steps: set[int] = set()
    elif spec == "dense_early":
        need(points <= MAX_SCHEDULE, f"study.record_points: at most {MAX_SCHEDULE}, got {points}")
        last = max(rewinds)
        early = min(last, 100)
        steps = {round(i * last / early) for i in range(early + 1)} if last > 0 else {0}
        n = max(points, 1)
        steps |= {last + round(i * (total - last) / n) for i in range(n + 1)}
    elif spec.startswith("every:"):
        bad = f"{field}: bad period in {short!r}; use every:N with N >= 1"
        try:
            every = int(spec[6:]) if len(spec) <= 64 else 0
        except ValueError:
            raise ConfigError(bad) from None
        need(every >= 1, bad)
        need(total // every < MAX_SCHEDULE,
              f"{field}: {short!r} records {total // every + 1} steps; at most {MAX_SCHEDULE}")
        steps = set(range(0, total + 1, every))
    elif spec.startswith("list:"):
        try:
            steps = {int(s) for s in spec[5:].split(",") if s.strip()}
        except ValueError:  # not integers (or absurdly long ones)
            raise ConfigError(f"{field}: bad list {short!r}; use list:0,10,20") from None
        need(all(0 <= s <= total for s in steps), f"{field}: recorded steps must lie in [0, {total}]")
    else:
        raise ConfigError(
            f"{field}: unknown schedule {short!r}; use dense_early, every:N, list:0,10,... or endpoints"
        )
    steps |= set(rewinds) | {0, total}  # always: resume and analysis need them
    return tuple(sorted(steps))



def schedule(cfg: Config, train_size: int, *, kinds_of: Callable[[set], tuple[str, ...]],
             study_id: str = "", info: object = None) -> Study:
    """The :class:`Study` of a checked config whose dataset has ``train_size`` training
    examples. ``kinds_of``: the run kinds trained -> the store's kind coordinate (ordered).
    Raises ConfigError for a step or level that does not fit."""
    t, p, s = cfg.training, cfg.pruning, cfg.study
    need(t.batch_size >= 1, f"training.batch_size: must be >= 1, got {t.batch_size}")
    need(
        t.batch_size <= train_size,
        f"training.batch_size: {t.batch_size} exceeds the {train_size} training examples",
    )
    per_epoch = train_size // t.batch_size
    total = parse_steps(t.steps, per_epoch, field="training.steps")
    need(total >= 1, f"training.steps: must be >= 1 iteration, got {t.steps!r}")
    need(total <= MAX_STEPS, f"training.steps: at most {MAX_STEPS} iterations, got {total}")
    rewinds = tuple(
        sorted({parse_steps(r, per_epoch, field=f"study.rewinds[{i}]") for i, r in enumerate(s.rewinds)})
    )
    need(
        rewinds[-1] < total,
        f"study.rewinds: rewind point {rewinds[-1]} must be < training length T={total}",
    )
    warmup = parse_steps(t.warmup, per_epoch, field="training.warmup")
    need(warmup <= total, f"training.warmup: {warmup} exceeds T={total}")
    milestones = tuple(
        sorted(parse_steps(x, per_epoch, field=f"training.milestones[{i}]") for i, x in enumerate(t.milestones))
    )
    eval_every = parse_steps(t.eval_every, per_epoch, field="training.eval_every")
    log_every = parse_steps(t.log_every, per_epoch, field="training.log_every")
    need(eval_every >= 1, "training.eval_every: must be >= 1 iteration")
    need(log_every >= 1, "training.log_every: must be >= 1 iteration")
    need(total // eval_every < MAX_SCHEDULE,
          f"training.eval_every: evaluates {total // eval_every + 1} times; at most {MAX_SCHEDULE}")
    need(total // log_every < MAX_SCHEDULE,
          f"training.log_every: logs {total // log_every + 1} times; at most {MAX_SCHEDULE}")
    levels = tuple(range(p.levels + 1))
    for lv in s.control_levels:
        need(1 <= lv <= p.levels, f"study.control_levels: level {lv} not in 1..{p.levels}")
    control_levels = tuple(sorted(set(s.control_levels))) or ((p.levels,) if p.levels > 0 else ())
    if not s.controls:
        control_levels = ()
    for lv in s.noise_levels:
        need(0 <= lv <= p.levels, f"study.noise_levels: level {lv} not in 0..{p.levels}")
    noise_kinds = [n for n in s.noise if n != "data_order"]
    noise_levels = (tuple(sorted(set(s.noise_levels))) or levels) if noise_kinds else ()
    return Study(
        config=cfg,
        iterations_per_epoch=per_epoch,
        total_steps=total,
        rewinds=rewinds,
        warmup=warmup,
        milestones=milestones,
        eval_every=eval_every,
        log_every=log_every,
        record_steps=record_schedule(s.record, total, rewinds, s.record_points),
        eval_steps=_periodic(eval_every, total),
        log_steps=tuple(range(0, total, log_every)),
        levels=levels,
        control_levels=control_levels,
        noise_levels=noise_levels,
        kinds=kinds_of({"imp", *(s.controls if control_levels else ()),
                        *(noise_kinds if noise_levels else ())}),
        id=study_id,
        info=info,
    )
