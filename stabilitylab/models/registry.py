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
:func:`stabilitylab.train.check.check_batched` refuses the ones that are not.
"""

from __future__ import annotations

from collections.abc import Callable

from stabilitylab.core.errors import ConfigError
from stabilitylab.core.options import builder_options
from stabilitylab.core.registry import SESSION_PREFIX, Registry

ENTRY_POINT_GROUP = "stabilitylab.models"

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

MODELS = Registry("model", "model.name", ENTRY_POINT_GROUP, MODEL_BUILDERS,
                  session_missing="was a builder passed to record_study in another Python "
                  "session; pass model= again (analyze_study(out, model=...))")


def available_models() -> dict[str, str]:
    """Every model name a config can use without a ``module:function`` spec, and its target."""
    return MODELS.available()


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
            if MODELS.resolve(spec) is builder:
                return spec
        except ConfigError:
            pass
    name = f"{SESSION_PREFIX}{module or 'builder'}.{qual or type(builder).__name__}"

    def same(a, b):
        return getattr(a, "__wrapped_factory__", a) is getattr(b, "__wrapped_factory__", b)

    if name in MODELS.session and not same(MODELS.session[name], builder):
        name = f"{name}#{id(builder):x}"
    MODELS.add_session(name, builder)
    return name


def resolve_builder(name: str) -> Callable:
    """The builder behind ``model.name``. Raises ConfigError with one line for a bad name."""
    target = MODELS.resolve(name)
    if not callable(target):
        raise ConfigError(f"model.name: {name!r} is a {type(target).__name__}, not a builder "
                          "function")
    return target


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
