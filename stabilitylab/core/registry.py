"""The generic registry of one extension point: a name -> implementation lookup.

A name an extension point (models, datasets) accepts is one of

- a shipped name, registered with its ``"module:attr"`` target (imported on first use);
- a name an installed package registers in the entry-point group of the registry;
- ``"python:..."``, an object handed over in this Python session (:meth:`Registry.add_session`);
- ``"package.module:attr"``, any importable object (a plugin).

:meth:`Registry.resolve` is the only place in stabilitylab where a name becomes code, and it
enforces the trust rule: while a store's content is being read (inside :func:`untrusted`), a
``package.module:attr`` name is refused unless the user trusts the store (``--trust-plugins``
or ``$STABILITYLAB_TRUST_PLUGINS=1``). Importing such a name runs that module's code, and a
store's content must not decide what code runs. Shipped names, installed entry points and
session names stay fine: the user installed or handed over that code.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import json
import os
from collections.abc import Callable, Iterator
from importlib import metadata

from stabilitylab.core.errors import ConfigError, StoreError

SESSION_PREFIX = "python:"
TRUST_ENV = "STABILITYLAB_TRUST_PLUGINS"

# Set while a store's content is read: where that store is (None: the user's own config).
_UNTRUSTED: contextvars.ContextVar[str | None] = contextvars.ContextVar("untrusted", default=None)


def is_spec(name: str) -> bool:
    """True for a ``"package.module:attr"`` name."""
    module, sep, attr = name.partition(":")
    return bool(sep) and bool(module) and bool(attr) and not name.startswith(SESSION_PREFIX)


def trust_env() -> bool:
    """Whether ``$STABILITYLAB_TRUST_PLUGINS`` trusts every store."""
    return os.environ.get(TRUST_ENV, "") not in ("", "0")


@contextlib.contextmanager
def untrusted(where: str, trust: bool = False) -> Iterator[None]:
    """Within this block, :meth:`Registry.resolve` refuses ``package.module:attr`` names (they
    come from the store at ``where``) unless ``trust`` or ``$STABILITYLAB_TRUST_PLUGINS``."""
    token = _UNTRUSTED.set(None if trust or trust_env() else where)
    try:
        yield
    finally:
        _UNTRUSTED.reset(token)


def check_trusted(config: dict, where: str, trust: bool = False) -> None:
    """Refuse, before it is parsed, a stored config (a dict) whose model or dataset is a
    ``package.module:attr`` name, unless trusted; :class:`StoreError` (one line).

    The same rule :meth:`Registry.resolve` enforces, applied up front so that a store is
    refused before anything else of it is read.
    """
    if trust or trust_env():
        return
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except ValueError:
            return  # not a config: whatever parses it reports that
    if not isinstance(config, dict):
        return
    for section in ("model", "data"):
        name = (config.get(section) or {}).get("name")
        if isinstance(name, str) and is_spec(name):
            raise _refusal(where, f"{section}.name", name)


def _refusal(where: str, field: str, name: str) -> StoreError:
    return StoreError(f"store at {where} names the plugin {field} {name!r}; importing it runs "
                      f"that module's code: pass --trust-plugins (or set {TRUST_ENV}=1) if you "
                      "trust this store")


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else ""


def _import(target: str, field: str) -> object:
    """The object ``"package.module:attr"`` names; ConfigError (one line) otherwise."""
    module, _, attr = target.partition(":")
    try:
        obj = importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"{field}: cannot import module {module!r} ({exc.__class__.__name__}: "
                          f"{_first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - a plugin module that fails on import
        raise ConfigError(f"{field}: importing {module!r} failed: "
                          f"{exc.__class__.__name__}: {_first_line(exc)}") from None
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


class Registry:
    """Names of one extension point (``what``: "model", "dataset") and their implementations.

    ``field`` is the config field that holds the name (for messages), ``group`` the
    entry-point group installed packages register under, ``shipped`` the shipped names
    with their ``"module:attr"`` target or the object itself.
    """

    def __init__(self, what: str, field: str, group: str,
                 shipped: dict[str, object] | None = None, session_missing: str = "",
                 discover: Callable[[], dict[str, object]] | None = None):
        self.what, self.field, self.group = what, field, group
        self.session_missing = session_missing or ("was passed to record_study in another "
                                                   "Python session")
        self._shipped: dict[str, object] = shipped if shipped is not None else {}
        self._find = discover  # finds more shipped names (a package's declarations)
        self._discover = discover  # not run yet: runs on first use
        self.session: dict[str, object] = {}

    @property
    def shipped(self) -> dict[str, object]:
        """The shipped names and their targets (those ``discover`` finds, then those added)."""
        if self._discover is not None:
            found, self._discover = self._discover(), None
            for name in found:
                if name in self._shipped:
                    raise ValueError(f"{self.what} {name!r} is already registered")
            self._shipped = {**found, **self._shipped}
        return self._shipped

    def rediscover(self) -> None:
        """Find the shipped names again on next use (after the package's path changed);
        names added with :meth:`add` are dropped."""
        self._discover, self._shipped = self._find, {}

    def add(self, name: str, target: object) -> None:
        """Register a shipped name (a ``"module:attr"`` target or the object)."""
        if name in self.shipped:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self.shipped[name] = target

    def add_session(self, name: str, obj: object) -> None:
        """Register ``obj`` under a ``python:`` name for this Python session."""
        self.session[name] = obj

    def available(self) -> dict[str, object]:
        """Every name usable without a ``module:attr`` spec, and its target."""
        out = dict(self.shipped)
        for name, target in entry_points(self.group).items():
            out.setdefault(name, target)
        return out

    def resolve(self, name: str) -> object:
        """The implementation behind ``name``. ConfigError (one line) for an unknown or
        broken name, StoreError for a store's untrusted ``module:attr`` name."""
        if name in self.shipped:
            target = self.shipped[name]
            return _import(target, self.field) if isinstance(target, str) else target
        if name.startswith(SESSION_PREFIX):
            if name not in self.session:
                raise ConfigError(f"{self.field}: {name!r} {self.session_missing}")
            return self.session[name]
        plugins = entry_points(self.group)
        if name in plugins:
            return _import(plugins[name], f"{self.field} {name!r} (entry point)")
        if is_spec(name):
            where = _UNTRUSTED.get()
            if where is not None:
                raise _refusal(where, self.field, name)
            return _import(name, self.field)
        raise ConfigError(f"{self.field}: unknown {self.what} {name!r}; choose from "
                          f"{', '.join(self.available())} or give package.module:function")
