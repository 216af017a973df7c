"""The config's own checks: types, ranges and choices, one line per bad value.

:func:`check_config` raises :class:`ConfigError` on the first bad value, naming the field
and what is allowed. It needs nothing but the config: the checks that need the model,
dataset, optimizer or run-kind registries, and the step strings turned into iterations,
belong to :func:`stabilitylab.study.resolve.resolve_study` (one layer up).
"""

from __future__ import annotations

import math

from stabilitylab.config.schema import Config
from stabilitylab.core.errors import ConfigError

STRATEGIES = ("global", "layerwise")
PRECISIONS = ("fp32", "bf16")
COMPILE_CHOICES = ("auto", "on", "off")  # stabilitylab.train.step.use_compile
PERTURBATIONS = ("gaussian", "bit_flip", "init_scale", "single_weight", "batch")  # train.perturb
PAI_FROM = ("init", "rewind")
DEVICES = ("auto", "cpu", "cuda")

# Sanity bounds: beyond these a value is a typo, and materializing its schedule
# (a tuple of every recorded/logged step) would exhaust memory before anything ran.
MAX_STEPS = 10**9  # training length T, in iterations
MAX_SCHEDULE = 10**6  # entries of any recorded / evaluated / logged step schedule
MAX_LEVELS = 100  # IMP levels


def need(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)



def check_config(cfg: Config, *, min_replicas: int = 2) -> None:
    """Check every field's type, range and choice that the config alone decides.

    Raises :class:`ConfigError` with one line. What needs a registry (the model, the
    dataset and its size, the optimizer and control names) is checked by
    :func:`stabilitylab.study.resolve.resolve_study`.
    """
    d, m, t, p, s = cfg.data, cfg.model, cfg.training, cfg.pruning, cfg.study
    need(isinstance(d.name, str) and d.name != "", "data.name: must be a non-empty string")
    need(d.train_eval_size >= 1, f"data.train_eval_size: must be >= 1, got {d.train_eval_size}")
    need(isinstance(m.name, str) and m.name != "", "model.name: must be a non-empty string")
    need(math.isfinite(p.fraction), f"pruning.fraction: must be a finite number, got {p.fraction}")
    need(0.0 <= m.dropout < 1.0, f"model.dropout: must be in [0, 1), got {m.dropout}")
    need(isinstance(t.optimizer, str) and t.optimizer != "",
          "training.optimizer: must be a non-empty string")
    for name in ("lr", "momentum", "beta1", "beta2", "eps", "weight_decay", "lookahead_alpha", "gamma"):
        value = getattr(t, name)
        need(math.isfinite(value), f"training.{name}: must be a finite number, got {value}")
    need(t.lr > 0, f"training.lr: must be > 0, got {t.lr}")
    need(0.0 <= t.momentum < 1.0, f"training.momentum: must be in [0, 1), got {t.momentum}")
    need(not t.nesterov or t.momentum > 0, "training.nesterov: needs training.momentum > 0")
    need(0.0 <= t.beta1 < 1.0, f"training.beta1: must be in [0, 1), got {t.beta1}")
    need(0.0 <= t.beta2 < 1.0, f"training.beta2: must be in [0, 1), got {t.beta2}")
    need(t.eps > 0, f"training.eps: must be > 0, got {t.eps}")
    need(t.weight_decay >= 0, f"training.weight_decay: must be >= 0, got {t.weight_decay}")
    need(t.lookahead_steps >= 1, f"training.lookahead_steps: must be >= 1, got {t.lookahead_steps}")
    need(0 < t.lookahead_alpha <= 1, f"training.lookahead_alpha: must be in (0, 1], got {t.lookahead_alpha}")
    need(t.gamma > 0, f"training.gamma: must be > 0, got {t.gamma}")
    need(t.precision in PRECISIONS, f"training.precision: choose from {', '.join(PRECISIONS)}, got {t.precision!r}")
    need(t.compile in COMPILE_CHOICES,
          f"training.compile: choose from {', '.join(COMPILE_CHOICES)}, got {t.compile!r}")
    need(p.strategy in STRATEGIES, f"pruning.strategy: unknown {p.strategy!r}; choose from {', '.join(STRATEGIES)}")
    need(0.0 < p.fraction < 1.0, f"pruning.fraction: must be in (0, 1), got {p.fraction}")
    need(0 <= p.levels <= MAX_LEVELS, f"pruning.levels: must be in 0..{MAX_LEVELS}, got {p.levels}")
    need(s.replicas >= min_replicas,
         f"study.replicas: need >= {min_replicas} data-order replicas, got {s.replicas}")
    need(s.device in DEVICES, f"study.device: choose from {', '.join(DEVICES)}, got {s.device!r}")
    need(s.record_points >= 1, f"study.record_points: must be >= 1, got {s.record_points}")
    need(len(s.rewinds) >= 1, "study.rewinds: need at least one rewind point")
    need(len(set(s.noise)) == len(s.noise) and all(isinstance(n, str) for n in s.noise),
          f"study.noise: each noise kind once, got {list(s.noise)}")
    need("data_order" in s.noise, "study.noise: must include data_order (the IMP copies, "
          "whose replica 0 carries the masks of the next level)")
    need(s.perturbation in PERTURBATIONS,
          f"study.perturbation: choose from {', '.join(PERTURBATIONS)}, got {s.perturbation!r}")
    need(math.isfinite(s.epsilon) and s.epsilon > 0,
          f"study.epsilon: must be a finite number > 0, got {s.epsilon}")
    need(math.isfinite(s.perturb_fraction) and 0 < s.perturb_fraction <= 1,
          f"study.perturb_fraction: must be in (0, 1], got {s.perturb_fraction}")
    need(s.perturb_fraction == 1 or s.perturbation in ("init_scale", "batch"),
          "study.perturb_fraction: applies to the init_scale and batch perturbations only, "
          f"not {s.perturbation!r}")
    need(all(isinstance(m, str) and m for m in s.perturb_modules),
          f"study.perturb_modules: module names (non-empty strings), got {list(s.perturb_modules)}")
    need(p.pai_from in PAI_FROM, f"pruning.pai_from: choose from {', '.join(PAI_FROM)}, "
          f"got {p.pai_from!r}")
