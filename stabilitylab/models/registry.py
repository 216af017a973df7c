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
