"""The Python API for notebooks: record and analyze a study with your own model and data.

    import stabilitylab
    stabilitylab.record_study("mnist1d_default", "runs/mine.zarr", model=make_net,
                              data=(train_x, train_y, test_x, test_y))
    analysis = stabilitylab.analyze_study("runs/mine.zarr")

Neither the model nor the data needs a registry entry. ``model`` is a builder
``(cfg, input_shape, num_classes) -> nn.Module`` (``model.options`` are passed as
keyword arguments) or a factory taking no arguments; ``data`` is a
:class:`~stabilitylab.data.Dataset`, a mapping, or the tuple ``(train_x, train_y,
test_x, test_y)``. Both are registered for this Python session
(:func:`stabilitylab.models.registry.register_session_model`,
:func:`stabilitylab.data.registry.register_session_dataset`); the config records
their names. An importable module-level builder is recorded as its
``module:function`` spec, which any later process resolves by itself. A notebook
function or in-memory data is known only to this process: to analyze such a store
in a new session, pass the same ``model=`` / ``data=`` to :func:`analyze_study`.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable
from pathlib import Path

from stabilitylab.core.errors import ConfigError


def _as_builder(model) -> Callable:
    """A builder ``(cfg, input_shape, num_classes, **options)`` from a builder or a factory."""
    if not callable(model):
        raise ConfigError(f"model: expected a builder or factory function, got {type(model).__name__}")
    try:
        params = inspect.signature(model).parameters.values()
    except (TypeError, ValueError):
        return model
    required = [p for p in params if p.default is p.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if required:
        return model

    def build(cfg, input_shape, num_classes, **options):
        return model(**options)

    build.__wrapped_factory__ = model
    build.__module__ = getattr(model, "__module__", "__main__")
    build.__qualname__ = getattr(model, "__qualname__", "factory") + ".<factory>"
    return build


def _names(model, data) -> dict[str, str]:
    from stabilitylab.data.registry import register_session_dataset
    from stabilitylab.models.registry import register_session_model

    names = {}
    if model is not None:
        names["model"] = model if isinstance(model, str) else register_session_model(_as_builder(model))
    if data is not None:
        names["data"] = data if isinstance(data, str) else register_session_dataset(data)
    return names


def make_config(config=None, *, model=None, data=None, overrides: Iterable[str] = ()):
    """A validated Config from a preset name, TOML path, raw mapping or Config, with
    ``model`` / ``data`` (objects or names) put in as ``model.name`` / ``data.name``."""
    from stabilitylab.config import Config, validate
    from stabilitylab.config.loader import apply_overrides, build_config, read_toml

    names = _names(model, data)
    if isinstance(config, Config):
        if list(overrides):
            raise ConfigError("overrides: apply them to a preset or mapping, not to a Config")
        cfg = config
        if "model" in names:
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=names["model"]))
        if "data" in names:
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, name=names["data"]))
    else:
        if isinstance(config, dict):
            raw, label = config, "config"
        else:
            raw, label = read_toml(config)
        raw = apply_overrides(raw, overrides)
        for section, name in names.items():
            raw.setdefault(section, {})
            raw[section] = {**raw[section], "name": name}
        cfg = build_config(raw, label)
    validate(cfg)
    return cfg


def record_study(config=None, out: str | Path | None = None, *, model=None, data=None,
                 overrides: Iterable[str] = (), **kwargs) -> str:
    """Train and record a study into the store at ``out``; returns ``out``.

    Parameters
    ----------
    config : preset name, path to a TOML file, raw mapping, or a Config (default: the
        MNIST-1D preset).
    model : a builder ``(cfg, input_shape, num_classes, **options) -> nn.Module``, a
        factory with no arguments, or a ``model.name`` string. Optional.
    data : a Dataset, a mapping or ``(train_x, train_y, test_x, test_y)``, or a
        ``data.name`` string. Optional.
    overrides : ``section.key=value`` strings, as ``--set`` on the command line.
    kwargs : ``resume``, ``device``, ``progress``, ``storage_options``,
        ``rewinds_per_task`` (see :func:`stabilitylab.study.runner.record_study`).
    """
    from stabilitylab.study.runner import record_study as _record

    if out is None:
        raise ConfigError("out: give the store path to record into")
    cfg = make_config(config, model=model, data=data, overrides=overrides)
    return _record(cfg, out, **kwargs)


def analyze_study(out, *, model=None, data=None, **kwargs):
    """Analyze the store at ``out`` and return the analysis ``xarray.Dataset``.

    ``model`` / ``data``: the objects given to :func:`record_study`, needed only in a
    new Python session when they were not importable by name. ``kwargs`` go to
    :func:`stabilitylab.analysis.run.analyze_store` (``measures``, ``device``,
    ``alphas``, ``progress``, ``storage_options``, ``n_boot``).
    """
    from stabilitylab.analysis.run import analyze_store

    _names(model, data)
    return analyze_store(str(out), **kwargs)["analysis"]
