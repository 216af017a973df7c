"""Check a config and resolve it to iteration counts.

:func:`validate` raises :class:`ConfigError` on the first bad value, with one line
naming the field and what is allowed. :func:`resolve` turns step strings into the
integers the engine uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from stabilitylab.config.schema import Config
from stabilitylab.config.steps import parse_steps
from stabilitylab.core.errors import ConfigError

STRATEGIES = ("global", "layerwise")
PRECISIONS = ("fp32", "bf16")
COMPILE_CHOICES = ("auto", "on", "off")  # stabilitylab.train.step.use_compile
NOISE = ("data_order", "perturb", "data_order+perturb")  # beyond data_order: run kinds
PERTURBATIONS = ("gaussian", "bit_flip")  # stabilitylab.train.perturb
PAI_FROM = ("init", "rewind")
DEVICES = ("auto", "cpu", "cuda")

# Sanity bounds: beyond these a value is a typo, and materializing its schedule
# (a tuple of every recorded/logged step) would exhaust memory before anything ran.
MAX_STEPS = 10**9  # training length T, in iterations
MAX_SCHEDULE = 10**6  # entries of any recorded / evaluated / logged step schedule
MAX_LEVELS = 100  # IMP levels


@dataclass(frozen=True)
class Resolved:
    """A validated config with every step string turned into iterations."""

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


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


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
        _need(points <= MAX_SCHEDULE, f"study.record_points: at most {MAX_SCHEDULE}, got {points}")
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
        _need(every >= 1, bad)
        _need(total // every < MAX_SCHEDULE,
              f"{field}: {short!r} records {total // every + 1} steps; at most {MAX_SCHEDULE}")
        steps = set(range(0, total + 1, every))
    elif spec.startswith("list:"):
        try:
            steps = {int(s) for s in spec[5:].split(",") if s.strip()}
        except ValueError:  # not integers (or absurdly long ones)
            raise ConfigError(f"{field}: bad list {short!r}; use list:0,10,20") from None
        _need(all(0 <= s <= total for s in steps), f"{field}: recorded steps must lie in [0, {total}]")
    else:
        raise ConfigError(
            f"{field}: unknown schedule {short!r}; use dense_early, every:N, list:0,10,... or endpoints"
        )
    steps |= set(rewinds) | {0, total}  # always: resume and analysis need them
    return tuple(sorted(steps))


def _check_model(m, info) -> None:
    """Build the model on the meta device (names, options, input rank); a model the
    package does not ship must also pass the batched-engine check."""
    from stabilitylab.models import build_model
    from stabilitylab.models.registry import MODEL_BUILDERS

    build_model(m, info.input_shape, info.num_classes, device="meta")
    if m.name not in MODEL_BUILDERS:
        from stabilitylab.train.check import check_batched

        check_batched(m, info.input_shape, info.num_classes)


def validate(cfg: Config) -> Resolved:
    """Check every field; return the resolved study. Raises ConfigError."""
    d, m, t, p, s = cfg.data, cfg.model, cfg.training, cfg.pruning, cfg.study
    _need(isinstance(d.name, str) and d.name != "", "data.name: must be a non-empty string")
    _need(d.num_samples >= 50 and d.num_samples % 10 == 0,
          f"data.num_samples: must be a multiple of 10 (mnist1d makes N/10 per class) and >= 50,"
          f" got {d.num_samples}")
    _need(d.train_eval_size >= 1, f"data.train_eval_size: must be >= 1, got {d.train_eval_size}")
    _need(isinstance(m.name, str) and m.name != "", "model.name: must be a non-empty string")
    _need(math.isfinite(p.fraction), f"pruning.fraction: must be a finite number, got {p.fraction}")
    _need(0.0 <= m.dropout < 1.0, f"model.dropout: must be in [0, 1), got {m.dropout}")
    for name in ("lr", "momentum", "beta1", "beta2", "eps", "weight_decay", "lookahead_alpha", "gamma"):
        value = getattr(t, name)
        _need(math.isfinite(value), f"training.{name}: must be a finite number, got {value}")
    _need(t.lr > 0, f"training.lr: must be > 0, got {t.lr}")
    _need(0.0 <= t.momentum < 1.0, f"training.momentum: must be in [0, 1), got {t.momentum}")
    _need(not t.nesterov or t.momentum > 0, "training.nesterov: needs training.momentum > 0")
    _need(0.0 <= t.beta1 < 1.0, f"training.beta1: must be in [0, 1), got {t.beta1}")
    _need(0.0 <= t.beta2 < 1.0, f"training.beta2: must be in [0, 1), got {t.beta2}")
    _need(t.eps > 0, f"training.eps: must be > 0, got {t.eps}")
    _need(t.weight_decay >= 0, f"training.weight_decay: must be >= 0, got {t.weight_decay}")
    _need(t.lookahead_steps >= 1, f"training.lookahead_steps: must be >= 1, got {t.lookahead_steps}")
    _need(0 < t.lookahead_alpha <= 1, f"training.lookahead_alpha: must be in (0, 1], got {t.lookahead_alpha}")
    _need(t.gamma > 0, f"training.gamma: must be > 0, got {t.gamma}")
    _need(t.precision in PRECISIONS, f"training.precision: choose from {', '.join(PRECISIONS)}, got {t.precision!r}")
    _need(t.compile in COMPILE_CHOICES,
          f"training.compile: choose from {', '.join(COMPILE_CHOICES)}, got {t.compile!r}")
    _need(p.strategy in STRATEGIES, f"pruning.strategy: unknown {p.strategy!r}; choose from {', '.join(STRATEGIES)}")
    _need(0.0 < p.fraction < 1.0, f"pruning.fraction: must be in (0, 1), got {p.fraction}")
    _need(0 <= p.levels <= MAX_LEVELS, f"pruning.levels: must be in 0..{MAX_LEVELS}, got {p.levels}")
    _need(s.replicas >= 2, f"study.replicas: need >= 2 data-order replicas, got {s.replicas}")
    _need(s.device in DEVICES, f"study.device: choose from {', '.join(DEVICES)}, got {s.device!r}")
    _need(s.record_points >= 1, f"study.record_points: must be >= 1, got {s.record_points}")
    _need(len(s.rewinds) >= 1, "study.rewinds: need at least one rewind point")
    _need(len(set(s.noise)) == len(s.noise) and all(n in NOISE for n in s.noise),
          f"study.noise: choose from {', '.join(NOISE)} (each once), got {list(s.noise)}")
    _need("data_order" in s.noise, "study.noise: must include data_order (the IMP copies, "
          "whose replica 0 carries the masks of the next level)")
    _need(s.perturbation in PERTURBATIONS,
          f"study.perturbation: choose from {', '.join(PERTURBATIONS)}, got {s.perturbation!r}")
    _need(math.isfinite(s.epsilon) and s.epsilon > 0,
          f"study.epsilon: must be a finite number > 0, got {s.epsilon}")
    _need(p.pai_from in PAI_FROM, f"pruning.pai_from: choose from {', '.join(PAI_FROM)}, "
          f"got {p.pai_from!r}")

    # The checks above need no registry; those below import torch (seconds on a busy
    # machine), so a typo in a plain value is reported before that.
    from stabilitylab.train.optim import OPTIMIZERS  # the optimizer table

    _need(t.optimizer in OPTIMIZERS, f"training.optimizer: unknown {t.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
    from stabilitylab.study.kinds import control_names  # the run-kind registry

    controls = control_names()
    bad_controls = [c for c in s.controls if c not in controls]
    _need(not bad_controls, f"study.controls: unknown control {bad_controls[:1]}; choose from {', '.join(controls)}")
    from stabilitylab.data.registry import dataset_info

    info = dataset_info(d)  # a plugin dataset without stated sizes is loaded here, once
    _check_model(m, info)
    train_size = info.train_size(d)
    _need(t.batch_size >= 1, f"training.batch_size: must be >= 1, got {t.batch_size}")
    _need(
        t.batch_size <= train_size,
        f"training.batch_size: {t.batch_size} exceeds the {train_size} training examples",
    )
    per_epoch = train_size // t.batch_size
    total = parse_steps(t.steps, per_epoch, field="training.steps")
    _need(total >= 1, f"training.steps: must be >= 1 iteration, got {t.steps!r}")
    _need(total <= MAX_STEPS, f"training.steps: at most {MAX_STEPS} iterations, got {total}")
    rewinds = tuple(
        sorted({parse_steps(r, per_epoch, field=f"study.rewinds[{i}]") for i, r in enumerate(s.rewinds)})
    )
    _need(
        rewinds[-1] < total,
        f"study.rewinds: rewind point {rewinds[-1]} must be < training length T={total}",
    )
    warmup = parse_steps(t.warmup, per_epoch, field="training.warmup")
    _need(warmup <= total, f"training.warmup: {warmup} exceeds T={total}")
    milestones = tuple(
        sorted(parse_steps(x, per_epoch, field=f"training.milestones[{i}]") for i, x in enumerate(t.milestones))
    )
    eval_every = parse_steps(t.eval_every, per_epoch, field="training.eval_every")
    log_every = parse_steps(t.log_every, per_epoch, field="training.log_every")
    _need(eval_every >= 1, "training.eval_every: must be >= 1 iteration")
    _need(log_every >= 1, "training.log_every: must be >= 1 iteration")
    _need(total // eval_every < MAX_SCHEDULE,
          f"training.eval_every: evaluates {total // eval_every + 1} times; at most {MAX_SCHEDULE}")
    _need(total // log_every < MAX_SCHEDULE,
          f"training.log_every: logs {total // log_every + 1} times; at most {MAX_SCHEDULE}")
    levels = tuple(range(p.levels + 1))
    for lv in s.control_levels:
        _need(1 <= lv <= p.levels, f"study.control_levels: level {lv} not in 1..{p.levels}")
    control_levels = tuple(sorted(set(s.control_levels))) or ((p.levels,) if p.levels > 0 else ())
    if not s.controls:
        control_levels = ()
    for lv in s.noise_levels:
        _need(0 <= lv <= p.levels, f"study.noise_levels: level {lv} not in 0..{p.levels}")
    noise_kinds = [n for n in s.noise if n != "data_order"]
    noise_levels = (tuple(sorted(set(s.noise_levels))) or levels) if noise_kinds else ()
    from stabilitylab.store.schema import store_kinds

    kinds = store_kinds({"imp", *(s.controls if control_levels else ()),
                         *(noise_kinds if noise_levels else ())})
    return Resolved(
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
        kinds=kinds,
    )


resolve = validate
