"""Resolve a config once: the registry checks, the plan in iterations, the kinds, the id.

A :class:`~stabilitylab.config.Config` says what a study is; :func:`resolve_study` turns it
into a :class:`~stabilitylab.config.Study`: the model, dataset, optimizer and run kinds it
names exist (the model is built on the meta device, a model the package does not ship
must pass the batched-engine check), the dataset's size turns every step string into
iterations (:func:`stabilitylab.config.schedule.schedule`), and the study id is computed.
Every command resolves once (``record``, ``record --dry-run``, ``record --probe``,
``analyze``, ``report``, the Python API); the layers below take the ``Study`` and never
check again.

:func:`load_study` loads a preset or TOML file, applies ``--set`` overrides and resolves:
the one call for "a study, fully checked". :func:`stabilitylab.config.load_config` alone
checks only the config's own types and ranges.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

from stabilitylab.config import Config, Study, check_config
from stabilitylab.config import loader as _loader
from stabilitylab.config.checks import need
from stabilitylab.config.schedule import schedule
from stabilitylab.core.errors import StabilityLabError
from stabilitylab.core.options import builder_options, canonical, effective_options
from stabilitylab.data.registry import dataset_info, is_shipped, plugin_target
from stabilitylab.models.registry import MODELS, resolve_builder
from stabilitylab.study.kinds import REGISTRY, control_names, noise_names, store_kinds


def resolve_study(cfg: Config | Study, *, min_replicas: int = 2) -> Study:
    """The :class:`Study` of ``cfg`` (a ``Study`` is returned as it is). Raises
    :class:`~stabilitylab.core.errors.ConfigError` with one line on the first bad value.

    ``min_replicas``: 2 for a study to train (pairs need two copies); an imported or
    analyzed store may hold one replica (its pair measures are then absent)."""
    if isinstance(cfg, Study):
        return cfg
    check_config(cfg, min_replicas=min_replicas)  # a Config built in code is not checked yet
    return _resolved(cfg)


def load_study(source: str | Path | None = None, overrides: Iterable[str] = ()) -> Study:
    """Load a preset name or TOML path (default: the MNIST-1D study), apply
    ``section.key=value`` overrides and resolve it: every check, once."""
    raw, label = _loader.read_toml(source)
    return resolve_study(_loader.build_config(_loader.apply_overrides(raw, overrides), label))


def study_from_dict(raw: dict, *, min_replicas: int = 1) -> Study:
    """Build and resolve a study from a plain mapping (e.g. one read back from a store, which
    may hold one imported replica; ``record`` resolves with two before it trains)."""
    return resolve_study(_loader.build_config(raw, "config"), min_replicas=min_replicas)


def _resolved(cfg: Config) -> Study:
    cfg = _drop_unused_legacy(cfg)
    if cfg.model.name not in MODELS.shipped:  # mistyped model and dataset names: said
        resolve_builder(cfg.model.name)       # before torch (a shipped builder is not imported)
    t, s = cfg.training, cfg.study
    controls = control_names()
    bad_controls = [c for c in s.controls if c not in controls]
    need(not bad_controls, f"study.controls: unknown control {bad_controls[:1]}; choose from "
          f"{', '.join(controls)}")
    noise = ("data_order", *noise_names())
    need(all(n in noise for n in s.noise),
          f"study.noise: choose from {', '.join(noise)} (each once), got {list(s.noise)}")
    info = dataset_info(cfg.data)  # a plugin dataset without stated sizes is loaded here, once
    # torch (the optimizer table) only once needed
    from stabilitylab.train.optim import OPTIMIZERS

    need(t.optimizer in OPTIMIZERS,
          f"training.optimizer: unknown {t.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
    _check_model(cfg.model, info)
    if s.perturb_modules:  # names the model has, said before anything trains
        _check_perturb_modules(cfg, info)
    study = schedule(cfg, info.train_size(cfg.data), kinds_of=store_kinds,
                     study_id=study_id(cfg), info=info)
    return _own_masks(study)


def _own_masks(study: Study) -> Study:
    """``study`` with its own-mask kinds named. Such a kind's level L prunes its own level
    L-1 copies, so it needs every noise level from 0 up."""
    own = tuple(k for k in study.kinds if k in REGISTRY and REGISTRY[k].own_masks)
    levels = study.noise_levels
    for name in own:
        need(levels == tuple(range(levels[-1] + 1)),
             f"study.noise_levels: {name} copies prune their own earlier levels, so they need "
             f"every level from 0 to {levels[-1]}, got {list(levels)}")
    return dataclasses.replace(study, own_mask_kinds=own) if own else study


def _check_perturb_modules(cfg: Config, info) -> None:
    from stabilitylab.models import build_model
    from stabilitylab.train.perturb import in_modules

    model = build_model(cfg.model, info.input_shape, info.num_classes, device="meta")
    in_modules(dict(model.named_parameters()), cfg.study.perturb_modules)


def _check_model(m, info) -> None:
    """Build the model on the meta device (names, options, input rank); a model the
    package does not ship must also pass the batched-engine check."""
    from stabilitylab.models import build_model  # torch-backed

    build_model(m, info.input_shape, info.num_classes, device="meta")
    if m.name not in MODELS.shipped:
        from stabilitylab.train.check import check_batched  # builds a StackedModel: torch

        check_batched(m, info.input_shape, info.num_classes)


def _drop_unused_legacy(cfg: Config) -> Config:
    """A config of the first schema lists every flat ``[model]`` field (now in
    ``model.options``) whichever model it names; drop those its builder does not take."""
    legacy = [k for k in cfg.model.options if k in _loader.LEGACY_FIELDS]
    if not legacy:
        return cfg
    try:
        takes, var_kw = builder_options(resolve_builder(cfg.model.name))
    except StabilityLabError:
        return cfg  # a bad model name: _check_model says so
    unused = [k for k in legacy if k not in takes and not var_kw]
    if not unused:
        return cfg
    options = {k: v for k, v in cfg.model.options.items() if k not in unused}
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, options=options))


def _effective(cfg: Config, section: str) -> dict:
    """The ``model.options`` / ``data.options`` entries that differ from the builder's
    (loader's) own defaults."""
    options = getattr(cfg, section).options
    if not options:
        return {}
    builder, positional = None, 3
    try:
        if section == "model":
            builder = resolve_builder(cfg.model.name)
        elif not is_shipped(cfg.data.name) and not cfg.data.name.startswith("python:"):
            target = plugin_target(cfg.data.name)
            builder, positional = (target, 1) if callable(target) else (None, 1)
    except StabilityLabError:
        builder = None
    return canonical(effective_options(builder, options, positional))


def non_default_settings(cfg: Config) -> dict:
    """The settings that differ from the defaults, as ``{"section.key": value}`` (see
    :func:`stabilitylab.config.loader.non_default_settings`)."""
    return _loader.non_default_settings(_drop_unused_legacy(cfg), _effective)


def study_id(cfg: Config | Study) -> str:
    """A stable 12-hex-digit id: the hash of the non-default settings (an option counts
    when it differs from the builder's default; ``study.name``, ``study.device``,
    ``data.root`` and ``training.compile`` are left out). A ``Study`` carries its own."""
    if isinstance(cfg, Study):
        return cfg.id
    return _loader.settings_id(_drop_unused_legacy(cfg), _effective)
