"""Model registry: every model name a config may use, and how to build it.

A builder has the signature ``(cfg, input_shape, num_classes, **options) -> nn.Module``:
``cfg`` is the :class:`~stabilitylab.config.schema.ModelConfig` (``cfg.dropout`` is
shared by every model), ``options`` is the free ``model.options`` table, passed as
keyword arguments. ``stabilitylab.models.build_model`` builds the module on the meta
device and then initializes every tensor from one generator, so a builder's own
initialization never matters.

``model.name`` may be

- a shipped name: a builder in a module of this package declared with ``@model("name")``
  (:func:`model`, :func:`shipped_models`);
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

from stabilitylab.core.declared import declared
from stabilitylab.core.errors import ConfigError
from stabilitylab.core.registry import SESSION_PREFIX, Registry

ENTRY_POINT_GROUP = "stabilitylab.models"
PACKAGE = "stabilitylab.models"


def model(name: str):
    """Declare the decorated builder as the shipped model ``name``.

    Used on a module-level function of a module of :mod:`stabilitylab.models`; the package
    finds the declarations in the modules' source (:func:`stabilitylab.core.declared.declared`)
    without importing them, so this one line is the only place the name is written. The
    first paragraph of the builder's docstring is its help text (``stabilitylab models``)."""

    def mark(builder: Callable) -> Callable:
        target = f"{builder.__module__}:{builder.__qualname__}"
        if MODELS.shipped.get(name) != target:
            raise ValueError(f"@model({name!r}) on {target}: a shipped model is a module-level "
                             f"function of {PACKAGE} declared with a literal name")
        builder.model_name = name
        return builder

    return mark


def _discover() -> dict[str, str]:
    return {n: d.target for n, d in declared(PACKAGE, "model").items()}


MODELS = Registry("model", "model.name", ENTRY_POINT_GROUP, discover=_discover,
                  session_missing="was a builder passed to record_study in another Python "
                  "session; pass model= again (analyze_study(out, model=...))")


def shipped_models() -> dict[str, str]:
    """``{name: "module:function"}`` of the models this package ships."""
    return dict(MODELS.shipped)


def model_help() -> dict[str, str]:
    """``{name: first paragraph of its builder's docstring}`` of the shipped models."""
    return {n: d.doc for n, d in declared(PACKAGE, "model").items()}


def __getattr__(name: str):
    if name == "MODEL_BUILDERS":  # derived from the declarations (the names are not listed)
        return shipped_models()
    if name == "MODEL_NAMES":
        return tuple(MODELS.shipped)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
