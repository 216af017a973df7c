"""Keyword options of an implementation (a model builder, a dataset loader): what it takes,
checks of a config's options table against it, and the options that differ from its defaults
(what the study id hashes)."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable

from stabilitylab.core.errors import ConfigError

# Keyword names a builder's options may not use (they are its positional arguments or
# ModelConfig fields, and options are hashed into the study id as ``model.<key>``).
RESERVED_OPTIONS = frozenset({"cfg", "input_shape", "num_classes", "name", "dropout", "options"})


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
