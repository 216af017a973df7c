"""Model zoo: ``build_model(cfg, input_shape, num_classes, generator)``.

Every model is a plain ``nn.Module`` whose forward is a pure function of its
parameters and buffers, so the batched engine can run stacked copies with
``torch.func.functional_call`` + ``vmap`` (BatchNorm running statistics are
stacked buffers and update per replica).

Initialization (OpenLTH's): every conv and linear weight is Kaiming normal
(fan_in, ReLU gain), every bias zero, BatchNorm weight 1 and bias 0, running
statistics reset. Plugin models get the same, plus LayerNorm / GroupNorm /
InstanceNorm weight 1 and bias 0; a parameter of any other kind is refused. The module is first built on the meta device, so construction
consumes no random numbers: the initial weights are a function of ``generator``'s
state alone (and the global RNG is neither read nor advanced when one is given).

The output layer is always named ``fc``; :func:`output_layer_name` finds it as the
last ``nn.Linear`` registered.

A model is one module of this package whose builder is declared with
``@model("name")`` (:mod:`stabilitylab.models.registry`). Importing this package is cheap (no
torch): the names are read from the modules' source and the builders load on first use, so a config is checked without torch's import (``record`` rejects a
typo in well under a second).
"""

from __future__ import annotations

from stabilitylab.models.registry import available_models, model, resolve_builder, shipped_models

__all__ = [
    "MODEL_BUILDERS",
    "MODEL_NAMES",
    "available_models",
    "build_model",
    "count_parameters",
    "init_model",
    "model",
    "output_layer_name",
    "resolve_builder",
    "shipped_models",
]
_LAZY = ("build_model", "count_parameters", "init_model", "output_layer_name")


def __getattr__(name: str):
    if name in _LAZY:  # torch-backed: imported on first use
        from stabilitylab.models import build

        return getattr(build, name)
    if name in ("MODEL_BUILDERS", "MODEL_NAMES"):  # derived from the declarations
        from stabilitylab.models import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
