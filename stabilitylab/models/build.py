"""Build and initialise models: :func:`build_model`, :func:`init_model` (see the package
docstring for the rules); re-exported lazily by :mod:`stabilitylab.models`."""

from __future__ import annotations

import torch
from torch import nn

from stabilitylab.core.errors import ConfigError
from stabilitylab.core.options import check_options
from stabilitylab.models.common import materialize
from stabilitylab.models.registry import MODELS, resolve_builder

__all__ = ["build_model", "count_parameters", "init_model", "output_layer_name"]

_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm,
          nn.modules.instancenorm._InstanceNorm)


@torch.no_grad()
def init_model(model: nn.Module, generator: torch.Generator | None = None, *,
               buffers_from: nn.Module | None = None) -> nn.Module:
    """(Re)initialize ``model`` in place: Kaiming-normal conv/linear weights, zero biases, BN 1/0.

    Modules are visited in ``named_modules()`` order, so one generator state gives one
    set of weights. Raises ``TypeError`` if the model holds a parameter or buffer this
    scheme does not cover (so no tensor is ever left at an RNG-dependent default).
    ``buffers_from``: a concrete module of the same architecture whose values fill the
    buffers the scheme does not cover (a plugin's constant buffers).
    """
    covered: set[int] = set()
    for module in model.modules():
        if isinstance(module, _WEIGHTED):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu", generator=generator)
            covered.add(id(module.weight))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
                covered.add(id(module.bias))
        elif isinstance(module, _NORMS):
            for name, value in (("weight", 1.0), ("bias", 0.0)):
                p = getattr(module, name, None)
                if isinstance(p, nn.Parameter):
                    nn.init.constant_(p, value)
                    covered.add(id(p))
            if getattr(module, "track_running_stats", False) and hasattr(module, "reset_running_stats"):
                module.reset_running_stats()
                covered.update(id(b) for b in module.buffers(recurse=False))
    if buffers_from is not None:
        source = dict(buffers_from.named_buffers())
        for n, b in model.named_buffers():
            if id(b) not in covered and n in source and source[n].shape == b.shape:
                b.copy_(source[n])
                covered.add(id(b))
    uncovered = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if id(t) not in covered]
    if uncovered:
        raise TypeError(f"init_model does not know how to initialize {uncovered}")
    return model


def build_model(cfg, input_shape: tuple, num_classes: int,
                generator: torch.Generator | None = None, device=None) -> nn.Module:
    """Build and initialize the model ``cfg.name`` (a :class:`~stabilitylab.config.schema.ModelConfig`).

    Parameters
    ----------
    input_shape : one example's shape, channels first (e.g. ``(1, 40)``, ``(3, 32, 32)``).
    generator : the only source of randomness for the initial weights (global RNG if None).
        Initialization happens on the generator's device, then the model moves to ``device``.
    device : where the returned model lives (default: the generator's device, else CPU).
        ``"meta"`` returns an uninitialized shape-only model (cheap parameter counts).

    ``cfg.name`` is a shipped name, a ``package.module:function`` spec or an entry point
    (see :mod:`stabilitylab.models.registry`); ``cfg.options`` are the builder's keyword
    arguments.

    Raises :class:`~stabilitylab.core.errors.ConfigError` for an unknown name, bad options or
    an input rank the architecture cannot take.
    """
    build = resolve_builder(cfg.name)
    options = dict(getattr(cfg, "options", {}) or {})
    check_options("model", f"model {cfg.name}", build, options)
    try:
        with torch.device("meta"):
            model = build(cfg, tuple(int(s) for s in input_shape), int(num_classes), **options)
    except ConfigError:
        raise
    except (RuntimeError, OverflowError, MemoryError) as exc:
        if isinstance(exc, RuntimeError) and "overflow" not in str(exc).lower():
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise ConfigError(f"model {cfg.name}: the builder failed: RuntimeError: {first}"
                              ) from None
        from stabilitylab.core.errors import ResourceError

        raise ResourceError(f"model {cfg.name!r} is too large to build: "
                            f"{' '.join(str(exc).split())[:120]}") from None
    except Exception as exc:  # noqa: BLE001 - a plugin builder's own failure, as one line
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ConfigError(f"model {cfg.name}: the builder failed: {type(exc).__name__}: {first}"
                          ) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {cfg.name}: the builder returned a {type(model).__name__}, "
                          "not an nn.Module")
    if device is not None and torch.device(device).type == "meta":
        return model
    init_device = generator.device if generator is not None else torch.device("cpu")
    model = materialize(model, init_device)
    reference = None
    if cfg.name not in MODELS.shipped and any(True for _ in model.buffers()):
        # A plugin's own buffers (constants) keep the values its builder gives them, built
        # once on the CPU with the global RNG forked and seeded (deterministic).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            reference = build(cfg, tuple(int(s) for s in input_shape), int(num_classes), **options)
    try:
        init_model(model, generator, buffers_from=reference)
    except TypeError as exc:
        if cfg.name in MODELS.shipped:
            raise
        raise ConfigError(f"model {cfg.name}: {exc} (only conv, linear and norm layers have an "
                          "initialization rule)") from None
    if device is not None:
        model = model.to(device)
    return model


def output_layer_name(model: nn.Module) -> str:
    """Parameter name of the output layer's weight: the last ``nn.Linear`` registered (``"fc.weight"``)."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer")
    return f"{last}.weight" if last else "weight"


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
