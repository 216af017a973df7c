"""Load a study config: preset or TOML file, then ``--set section.key=value`` overrides.

Every failure raises :class:`~stabilitylab.core.errors.ConfigError` with one line that
names the field and what is allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from stabilitylab.config.schema import SECTIONS, Config
from stabilitylab.core.errors import ConfigError, StabilityLabError

DEFAULT_PRESET = "mnist1d_default"


def available_presets() -> list[str]:
    """Names of the presets shipped with the package."""
    folder = resources.files("stabilitylab.config") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def read_toml(source: str | Path | None) -> tuple[dict, str]:
    """Return the raw mapping and a label for ``source`` (preset name or path)."""
    if source is None:
        source = DEFAULT_PRESET
    text_source = str(source)
    path = Path(text_source)
    if text_source.endswith(".toml") or _exists(path):
        if not _is_file(path):
            raise ConfigError(f"config file not found: {text_source!r}")
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {text_source!r}: {exc.strerror or exc}") from None
        label, from_file = str(path), True
    else:
        if text_source not in available_presets():
            raise ConfigError(
                f"unknown preset {text_source!r}; presets: {', '.join(available_presets())}"
                " (or give a path to a .toml file)"
            )
        folder = resources.files("stabilitylab.config") / "presets"
        text = (folder / f"{text_source}.toml").read_text(encoding="utf-8")
        label, from_file = text_source, False
    try:
        raw = tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, or an integer too long for int()
        raise ConfigError(f"{label}: malformed TOML: {exc}") from None
    study = raw.get("study", {})
    if not from_file or not isinstance(study, dict) or "name" in study:
        return raw, label  # a preset, or a file that names its study (or a bad [study])
    # a study from a config file is named after the file unless it sets study.name
    return {**raw, "study": {**study, "name": path.stem}}, label


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # name too long, embedded NUL byte, ...
        return False


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


# Integers are stored as int64 (step coordinates, seeds); anything wider is a typo.
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Check ``value`` against a field's type, converting lists to tuples."""
    origin = typing.get_origin(annotation)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not _INT_MIN <= value <= _INT_MAX:
                raise ConfigError(f"{name}: integer out of the 64-bit range")
            return value
        raise ConfigError(f"{name}: expected an integer, got {_short(value)}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:
                raise ConfigError(f"{name}: number out of range") from None
        raise ConfigError(f"{name}: expected a number, got {_short(value)}")
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool) and "steps" in name:
            if not 0 <= value <= _INT_MAX:
                raise ConfigError(f"{name}: steps must be in 0..2**63-1, got {_short(value)}")
            return f"{value}it"
        raise ConfigError(f"{name}: expected a string, got {_short(value)}")
    if annotation is dict:
        return _options(value, name)
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(annotation)
        if isinstance(value, str) and item_type is not str:
            raise ConfigError(f"{name}: expected a list, got {_short(value)}")
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {_short(value)}")
        return tuple(_coerce(v, item_type, f"{name}[{i}]") for i, v in enumerate(value))
    if isinstance(annotation, types.UnionType):  # pragma: no cover - not used yet
        raise ConfigError(f"{name}: unsupported type")
    raise ConfigError(f"{name}: unsupported type {annotation!r}")  # pragma: no cover


def _options(value: Any, name: str, depth: int = 0) -> Any:
    """A free ``options`` table: string keys, TOML values (lists and tables nest)."""
    if depth == 0 and not isinstance(value, dict):
        raise ConfigError(f"{name}: expected a table of options, got {_short(value)}")
    if isinstance(value, dict):
        out = {}
        for key, v in value.items():
            if not isinstance(key, str) or not key.isidentifier():
                raise ConfigError(f"{name}: option names must be identifiers, got {_short(key)}")
            out[key] = _options(v, f"{name}.{key}", depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_options(v, f"{name}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, int) and not isinstance(value, bool) and not _INT_MIN <= value <= _INT_MAX:
        raise ConfigError(f"{name}: integer out of the 64-bit range")
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    raise ConfigError(f"{name}: unsupported option value {_short(value)}")


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (error messages stay one short line)."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails is still a bad value
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def build_config(raw: dict, label: str) -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(f"{label}: expected a table of sections")
    unknown = sorted(set(raw) - set(SECTIONS), key=repr)
    if unknown:
        raise ConfigError(
            f"{label}: unknown section {_short(unknown[0])}; sections: {', '.join(SECTIONS)}"
        )
    sections = {}
    for section, cls in SECTIONS.items():
        values = raw.get(section, {})
        if not isinstance(values, dict):
            raise ConfigError(f"{label}: [{section}] must be a table")
        if section == "model":
            from stabilitylab.models.registry import legacy_model_options

            values = legacy_model_options(values)
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(values) - names, key=repr)
        if bad:
            key = bad[0] if isinstance(bad[0], str) and bad[0].isidentifier() else _short(bad[0])
            raise ConfigError(
                f"{section}.{key}: unknown key; {section} keys: {', '.join(sorted(names))}"
            )
        kwargs = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()}
        sections[section] = cls(**kwargs)
    return Config(**sections)


def _parse_override_value(text: str) -> Any:
    """Read the right-hand side of ``--set key=value`` as a TOML value, else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except (ValueError, KeyError):  # not one TOML value (or an over-long integer): a string
        return text


def apply_overrides(raw: dict, overrides: typing.Iterable[str]) -> dict:
    """Apply ``section.key=value`` strings to a raw config mapping (a copy)."""
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    if isinstance(overrides, (str, bytes)):
        raise ConfigError(f"--set: expected a list of section.key=value strings, got {_short(overrides)}")
    for item in overrides:
        if not isinstance(item, str):
            raise ConfigError(f"--set {_short(item)}: expected a section.key=value string")
        if "=" not in item:
            raise ConfigError(f"--set {_short(item)}: expected section.key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) == 3 and parts[1] == "options" and all(parts):  # model.options.KEY=value
            section, _, name = parts
            if section not in ("model", "data"):
                raise ConfigError(f"--set {_short(key)}: only model.options and data.options exist")
            merged.setdefault(section, {})
            if not isinstance(merged[section], dict):
                raise ConfigError(f"[{section}] must be a table")
            options = dict(merged[section].get("options") or {})
            options[name] = _parse_override_value(value.strip())
            merged[section]["options"] = options
            continue
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"--set {_short(item)}: expected section.key=value, e.g. training.lr=0.05")
        section, name = parts
        if section not in SECTIONS:
            raise ConfigError(f"--set {_short(key)}: unknown section {_short(section)}; "
                              f"sections: {', '.join(SECTIONS)}")
        merged.setdefault(section, {})
        if not isinstance(merged[section], dict):
            raise ConfigError(f"[{section}] must be a table")
        merged[section][name] = _parse_override_value(value.strip())
    return merged


def load_config(source: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> Config:
    """Load a preset name or TOML path (default: the MNIST-1D study), apply overrides, validate.

    Examples
    --------
    >>> cfg = load_config("mnist1d_default", ["training.lr=0.05"])
    >>> cfg.training.lr
    0.05
    """
    from stabilitylab.config.validate import validate

    raw, label = read_toml(source)
    cfg = build_config(apply_overrides(raw, overrides), label)
    validate(cfg)
    return cfg


def config_from_dict(raw: dict) -> Config:
    """Build and validate a config from a plain mapping (e.g. one read back from a store)."""
    from stabilitylab.config.validate import validate

    cfg = build_config(raw, "config")
    validate(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict:
    """A JSON/TOML-friendly mapping of every field (tuples become lists)."""

    def plain(v):
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {
        section: {f.name: plain(getattr(getattr(cfg, section), f.name))
                  for f in dataclasses.fields(SECTIONS[section])}
        for section in SECTIONS
    }


def non_default_settings(cfg: Config) -> dict:
    """The settings that differ from the dataclass defaults, as ``{"section.key": value}``.

    An entry of ``model.options`` / ``data.options`` counts when it differs from the
    builder's (loader's) own default, and is listed as ``model.<key>``: so a study that
    sets ``model.options.channels = 4`` has the id it had when ``model.channels`` was a
    flat field.
    """
    default = config_to_dict(Config())
    current = config_to_dict(cfg)
    out = {}
    for section, values in current.items():
        for key, value in values.items():
            if key == "options" and section in ("model", "data"):
                out.update({f"{section}.{k}": v for k, v in _effective(cfg, section).items()})
            elif default[section][key] != value:
                out[f"{section}.{key}"] = value
    return out


def _effective(cfg: Config, section: str) -> dict:
    from stabilitylab.core.options import canonical, effective_options
    from stabilitylab.models.registry import resolve_builder

    options = getattr(cfg, section).options
    if not options:
        return {}
    builder, positional = None, 3
    try:
        if section == "model":
            builder = resolve_builder(cfg.model.name)
        else:
            from stabilitylab.data.registry import DATASETS, plugin_target

            if cfg.data.name not in DATASETS and not cfg.data.name.startswith("python:"):
                target = plugin_target(cfg.data.name)
                builder, positional = (target, 1) if callable(target) else (None, 1)
    except StabilityLabError:
        builder = None
    return canonical(effective_options(builder, options, positional))


_NOT_IN_ID = ("study.name", "study.device", "data.root", "training.compile")


def study_id(cfg: Config) -> str:
    """A stable 12-hex-digit id: the hash of the non-default settings.

    ``study.name``, ``study.device``, ``data.root`` and ``training.compile`` are left out:
    they label a study, place it or its data, or choose how its steps run, not what it
    computes (the compiled and the eager step agree to float rounding, as CPU and CUDA do).
    """
    settings = {
        k: v for k, v in non_default_settings(cfg).items() if k not in _NOT_IN_ID
    }
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
