"""Model registry: every model name a config may use, and how to build it.

A builder has the signature ``(cfg, input_shape, num_classes, **options) -> nn.Module``:
``cfg`` is the :class:`~stabilitylab.config.schema.ModelConfig` (``cfg.dropout`` is
shared by every model), ``options`` is the free ``model.options`` table, passed as
keyword arguments. ``stabilitylab.models.build_model`` builds the module on the meta
device and then initializes every tensor from one generator, so a builder's own
initialization never matters.

``model.name`` may be

- a shipped name (:data:`MODEL_BUILDERS`);
- ``"package.module:function"``, any importable builder (a plugin);
- a name an installed package registers in the entry-point group ``stabilitylab.models``;
- ``"python:..."``, a builder handed to :func:`stabilitylab.record_study` in this
  Python session (:func:`register_session_model`).

The batched engine trains stacked copies with ``torch.func.functional_call`` +
``vmap``, so models must be functional in their parameters and buffers;
:func:`stabilitylab.models.check.check_batched` refuses the ones that are not.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
from collections.abc import Callable
from importlib import metadata

from stabilitylab.errors import ConfigError

ENTRY_POINT_GROUP = "stabilitylab.models"
SESSION_PREFIX = "python:"

MODEL_NAMES: tuple[str, ...] = (
    "mlp",
    "lenet_300_100",
    "conv1d",
    "resnet20",
    "resnet32",
    "resnet56",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
)

# name -> "module:function" building an *uninitialized* module.
MODEL_BUILDERS: dict[str, str] = {
    "mlp": "stabilitylab.models.mlp:build_mlp",
    "lenet_300_100": "stabilitylab.models.mlp:build_lenet_300_100",
    "conv1d": "stabilitylab.models.conv1d:build_conv1d",
    "resnet20": "stabilitylab.models.resnet:build_resnet20",
    "resnet32": "stabilitylab.models.resnet:build_resnet32",
    "resnet56": "stabilitylab.models.resnet:build_resnet56",
    "vgg11": "stabilitylab.models.vgg:build_vgg11",
    "vgg13": "stabilitylab.models.vgg:build_vgg13",
    "vgg16": "stabilitylab.models.vgg:build_vgg16",
    "vgg19": "stabilitylab.models.vgg:build_vgg19",
}
assert tuple(MODEL_BUILDERS) == MODEL_NAMES

# Before model.options existed, ModelConfig had these flat fields (with these defaults).
# The loader still accepts them and moves each into model.options when the named model
# takes that option; for other models the field was documented as ignored, so it is dropped.
LEGACY_FIELDS: dict[str, object] = {"hidden": (300, 100), "channels": 25, "width": 1}

# Keyword names a builder's options may not use (they are its positional arguments or
# ModelConfig fields, and options are hashed into the study id as ``model.<key>``).
RESERVED_OPTIONS = frozenset({"cfg", "input_shape", "num_classes", "name", "dropout", "options"})

_SESSION: dict[str, Callable] = {}


def is_spec(name: str) -> bool:
    """True for a ``"package.module:function"`` spec."""
    module, sep, fn = name.partition(":")
    return bool(sep) and bool(module) and bool(fn) and not name.startswith(SESSION_PREFIX)


TRUST_ENV = "STABILITYLAB_TRUST_PLUGINS"


def check_trusted(config: dict, where: str, trust: bool = False) -> None:
    """Refuse a stored config (a dict, before it is parsed: parsing resolves builders) whose
    model or dataset is a ``package.module:function`` spec.

    Importing such a name runs that module's code, and a store's content must not decide
    what code runs (a crafted store could name any module on the path). Shipped names,
    installed entry points and names registered in this session are fine; a spec needs
    ``trust`` (``analyze --trust-plugins``) or ``$STABILITYLAB_TRUST_PLUGINS=1``.
    Raises :class:`~stabilitylab.errors.StoreError` (one line).
    """
    if trust or os.environ.get(TRUST_ENV, "") not in ("", "0"):
        return
    for section in ("model", "data"):
        name = (config.get(section) or {}).get("name") if isinstance(config, dict) else None
        if isinstance(name, str) and is_spec(name):
            from stabilitylab.errors import StoreError

            raise StoreError(f"store at {where} names the plugin {section}.name {name!r}; "
                             f"importing it runs that module's code: pass --trust-plugins (or "
                             f"set {TRUST_ENV}=1) if you trust this store")


def import_spec(spec: str, field: str) -> object:
    """The object a ``"package.module:attr"`` spec names; ConfigError (one line) otherwise."""
    module, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"{field}: cannot import module {module!r} ({exc.__class__.__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    except Exception as exc:  # noqa: BLE001 - a plugin module that fails on import
        raise ConfigError(f"{field}: importing {module!r} failed: "
                          f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                          ) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{field}: module {module!r} has no {attr!r}") from None
    return obj


def entry_points(group: str) -> dict[str, str]:
    """``{name: "module:attr"}`` registered by installed packages in ``group``."""
    try:
        found = metadata.entry_points(group=group)
    except Exception:  # noqa: BLE001 - a broken installed distribution must not stop us
        return {}
    return {ep.name: ep.value for ep in found}


def available_models() -> dict[str, str]:
    """Every model name a config can use without a ``module:function`` spec, and its target."""
    out = dict(MODEL_BUILDERS)
    for name, target in entry_points(ENTRY_POINT_GROUP).items():
        out.setdefault(name, target)
    return out


def register_session_model(builder: Callable) -> str:
    """Register a builder for this Python session; returns the ``model.name`` naming it.

    An importable module-level function is named by its ``module:function`` spec (that
    name works in any process); anything else (a lambda, a closure, a notebook
    function) gets a ``python:`` name that only this process knows.
    """
    if not callable(builder):
        raise ConfigError(f"model: expected a builder function, got {type(builder).__name__}")
    module = getattr(builder, "__module__", None)
    qual = getattr(builder, "__qualname__", None)
    if module and qual and module != "__main__" and "<" not in qual:
        spec = f"{module}:{qual}"
        try:
            if import_spec(spec, "model") is builder:
                return spec
        except ConfigError:
            pass
    name = f"{SESSION_PREFIX}{module or 'builder'}.{qual or type(builder).__name__}"
    def same(a, b):
        return getattr(a, "__wrapped_factory__", a) is getattr(b, "__wrapped_factory__", b)

    if name in _SESSION and not same(_SESSION[name], builder):
        name = f"{name}#{id(builder):x}"
    _SESSION[name] = builder
    return name


def resolve_builder(name: str) -> Callable:
    """The builder behind ``model.name``. Raises ConfigError with one line for a bad name."""
    field = "model.name"
    if name in MODEL_BUILDERS:
        return import_spec(MODEL_BUILDERS[name], field)
    if name.startswith(SESSION_PREFIX):
        if name not in _SESSION:
            raise ConfigError(f"{field}: {name!r} was a builder passed to record_study in another "
                              "Python session; pass model= again (analyze_study(out, model=...))")
        return _SESSION[name]
    plugins = entry_points(ENTRY_POINT_GROUP)
    if name in plugins:
        target = import_spec(plugins[name], f"{field} {name!r} (entry point)")
    elif is_spec(name):
        target = import_spec(name, field)
    else:
        raise ConfigError(f"{field}: unknown model {name!r}; choose from "
                          f"{', '.join(available_models())} or give package.module:function")
    if not callable(target):
        raise ConfigError(f"{field}: {name!r} is a {type(target).__name__}, not a builder function")
    return target


def builder_options(builder: Callable, positional: int = 3) -> tuple[dict[str, object], bool]:
    """The builder's keyword options with their defaults, and whether it takes ``**kwargs``.

    The first ``positional`` parameters are its fixed arguments (a model builder's
    ``cfg, input_shape, num_classes``; a dataset loader's ``cfg``), not options.
    """
    fixed = 0
    try:
        params = list(inspect.signature(builder).parameters.values())
    except (TypeError, ValueError):
        return {}, True
    defaults: dict[str, object] = {}
    var_kw = False
    for p in params:
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and fixed < positional:
            fixed += 1
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            defaults[p.name] = p.default if p.default is not p.empty else inspect.Parameter.empty
    return defaults, var_kw


def check_options(section: str, label: str, builder: Callable, options: dict,
                  positional: int = 3) -> None:
    """Refuse option keys the builder does not take and required ones that are missing."""
    defaults, var_kw = builder_options(builder, positional)
    for key in options:
        if key in RESERVED_OPTIONS:
            raise ConfigError(f"{section}.options.{key}: reserved name; use another key")
        if key not in defaults and not var_kw:
            takes = ", ".join(defaults) or "none"
            raise ConfigError(f"{section}.options.{key}: {label} takes no option {key!r}; "
                              f"its options: {takes}")
    missing = [k for k, v in defaults.items() if v is inspect.Parameter.empty and k not in options]
    if missing:
        raise ConfigError(f"{section}.options.{missing[0]}: required by {label}")


def canonical(value):
    """A JSON-comparable form of an option value (tuples become lists)."""
    return json.loads(json.dumps(value, default=list))


def effective_options(builder: Callable | None, options: dict, positional: int = 3) -> dict:
    """The options that differ from the builder's defaults (what the study id hashes)."""
    if builder is None:
        return dict(options)
    defaults, _ = builder_options(builder, positional)
    out = {}
    for key, value in options.items():
        default = defaults.get(key, inspect.Parameter.empty)
        if default is inspect.Parameter.empty or canonical(default) != canonical(value):
            out[key] = value
    return out


def legacy_model_options(raw: dict) -> dict:
    """Move the pre-``options`` flat fields of a raw ``[model]`` table into ``options``."""
    legacy = {k: raw[k] for k in LEGACY_FIELDS if k in raw}
    if not legacy:
        return raw
    for key, value in legacy.items():  # the flat fields' old types, checked even when unused
        if key == "hidden":
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise ConfigError(f"model.hidden: expected a list, got {value!r:.60}")
            if not all(isinstance(h, int) and not isinstance(h, bool) for h in value):
                raise ConfigError(f"model.hidden: expected a list of integers, got {value!r:.60}")
        elif isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"model.{key}: expected an integer, got {value!r:.60}")
    out = {k: v for k, v in raw.items() if k not in LEGACY_FIELDS}
    options = dict(out.get("options") or {}) if isinstance(out.get("options"), dict) else out.get(
        "options", {})
    if not isinstance(options, dict):
        return {**out, "options": options}  # the loader reports the type error
    name = out.get("name", "conv1d")
    try:
        takes, var_kw = builder_options(resolve_builder(name)) if isinstance(name, str) else ({}, False)
    except ConfigError:
        takes, var_kw = {k: None for k in legacy}, False  # validation reports the bad name
    for key, value in legacy.items():
        if key in takes or var_kw:
            if key in options:
                raise ConfigError(f"model.{key}: also given as model.options.{key}; give it once")
            options[key] = value
    out["options"] = options
    return out
