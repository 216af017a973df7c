"""Dataset registry: what each dataset is (sizes, shapes) and how to load it.

The metadata of a shipped dataset is known without loading anything, so a config
can be validated (``2ep`` turned into iterations) before any data is touched.

``data.name`` may be

- a shipped name: a loader in a module of this package declared with ``@dataset(...)``
  (:func:`dataset`);
- ``"package.module:function"``, a plugin loader ``(cfg, **options)`` returning a
  :class:`~stabilitylab.data.Dataset` (or a mapping / 4-tuple of train_x, train_y,
  test_x, test_y, see :func:`as_dataset`); ``options`` is the free ``data.options``
  table. A plugin cannot state its sizes cheaply, so it is loaded once at validation
  and the result is reused by the study in this process. A spec may instead name a
  :class:`DatasetInfo`, which states the sizes and is loaded only when needed;
- a name an installed package registers in the entry-point group ``stabilitylab.datasets``;
- ``"python:data-<hash>"``, tensors handed to :func:`stabilitylab.record_study` in this
  Python session (:func:`register_session_dataset`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

from stabilitylab.core.declared import declared
from stabilitylab.core.errors import ConfigError
from stabilitylab.core.options import check_options
from stabilitylab.core.registry import SESSION_PREFIX, Registry

ENTRY_POINT_GROUP = "stabilitylab.datasets"
PACKAGE = "stabilitylab.data"


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    input_shape: tuple[int, ...]  # one example, channels first
    num_classes: int
    train_size: Callable[[object], int]  # DataConfig -> number of train examples
    test_size: Callable[[object], int]
    # the shipped loader ``(cfg, root) -> Dataset``, or a plugin callable
    # ``(cfg, **options) -> Dataset`` (or its "module:function")
    loader: str | Callable
    plugin: bool = False
    download: Callable | None = None  # ``(root, into, mirror) -> folder``: fetches the files
    offline: str = ""  # why nothing needs downloading, e.g. "generated offline"
    fields: tuple[str, ...] = ()  # the data.* fields only this dataset reads
    check: Callable | None = None  # ``(cfg) -> None``: raises ConfigError on a bad field


def _size(value) -> Callable[[object], int]:
    return value if callable(value) else (lambda cfg: int(value))


def dataset(name: str, *, input_shape: tuple[int, ...], num_classes: int, train_size,
            test_size, download: Callable | None = None, offline: str = "",
            fields: tuple[str, ...] = (), check: Callable | None = None):
    """Declare the decorated loader ``(cfg, root) -> Dataset`` as the shipped dataset ``name``.

    Used on a module-level function of a module of :mod:`stabilitylab.data`; the package
    finds the declarations in the modules' source (:func:`stabilitylab.core.declared.declared`)
    without importing them, so the name is written once. ``train_size`` / ``test_size``: an
    int or ``(cfg) -> int``; ``download``: a function fetching the files (``stabilitylab
    data download NAME``), ``offline``: why none is needed; ``fields``: the ``data.*``
    fields only this dataset reads (``num_samples``), ``check(cfg)``: their checks."""

    def mark(loader: Callable) -> Callable:
        target = f"{loader.__module__}:{loader.__qualname__}"
        if DATASET_NAMES.shipped.get(name) != target:
            raise ValueError(f"@dataset({name!r}) on {target}: a shipped dataset is a "
                             f"module-level function of {PACKAGE} declared with a literal name")
        loader.dataset_info = DatasetInfo(name, tuple(input_shape), int(num_classes),
                                          _size(train_size), _size(test_size), loader,
                                          download=download, offline=offline,
                                          fields=tuple(fields), check=check)
        return loader

    return mark


def _discover() -> dict[str, str]:
    return {n: d.target for n, d in declared(PACKAGE, "dataset").items()}


# name -> its loader's "module:function" (shipped), or a plugin's loader / DatasetInfo;
# python:... -> Dataset
DATASET_NAMES = Registry("dataset", "data.name", ENTRY_POINT_GROUP, discover=_discover,
                         session_missing="was data passed to record_study in another Python "
                         "session; pass data= again (analyze_study(out, data=...))")
_SESSION = DATASET_NAMES.session  # python:... -> Dataset
_LOADED: dict[str, object] = {}  # plugin key -> Dataset (one entry: the study in use)


def is_shipped(name: str) -> bool:
    """Whether ``name`` is a dataset this package ships (nothing is imported)."""
    return name in DATASET_NAMES.shipped


def shipped_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of the shipped dataset ``name`` (imports its module)."""
    return DATASET_NAMES.resolve(name).dataset_info


def declared_facts(name: str) -> dict:
    """The literal facts of a shipped dataset's declaration (``offline``, ``fields``, ...;
    a ``download`` function as its name), read without importing it; {} for other names."""
    entry = declared(PACKAGE, "dataset").get(name)
    return dict(entry.facts) if entry is not None else {}


def downloadable() -> tuple[str, ...]:
    """The shipped datasets ``stabilitylab data download`` can fetch (nothing is imported)."""
    return tuple(n for n, d in declared(PACKAGE, "dataset").items() if d.facts.get("download"))


def offline_notes() -> dict[str, str]:
    """``{name: why it needs no download}`` of the shipped datasets that say so."""
    return {n: d.facts["offline"] for n, d in declared(PACKAGE, "dataset").items()
            if d.facts.get("offline")}


def __getattr__(name: str):
    if name == "DATASETS":  # every shipped DatasetInfo (imports their modules)
        return {n: shipped_info(n) for n in DATASET_NAMES.shipped}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def available_datasets() -> dict[str, str]:
    """Every dataset name usable without a ``module:function`` spec, and its loader target."""
    return {name: (target.loader if isinstance(target, DatasetInfo) else target)
            for name, target in DATASET_NAMES.available().items()}


def as_dataset(obj, name: str):
    """A :class:`~stabilitylab.data.Dataset` from what a plugin returned, checked.

    Accepts a Dataset, a mapping with ``train_x, train_y, test_x, test_y`` (and
    optionally ``num_classes``), or a 4-tuple in that order. Inputs become float32,
    labels int64; ``num_classes`` defaults to ``max(label) + 1``.
    """
    import torch

    from stabilitylab.data import Dataset

    keys = ("train_x", "train_y", "test_x", "test_y")
    num_classes = None
    if isinstance(obj, Dataset):
        parts = [getattr(obj, k) for k in keys]
        num_classes = obj.num_classes
    elif isinstance(obj, dict):
        missing = [k for k in keys if k not in obj]
        if missing:
            raise ConfigError(f"data {name}: the loader's mapping lacks {missing[0]!r}")
        parts = [obj[k] for k in keys]
        num_classes = obj.get("num_classes")
    elif isinstance(obj, (tuple, list)) and len(obj) == 4:
        parts = list(obj)
    else:
        raise ConfigError(f"data {name}: expected a Dataset, a mapping or (train_x, train_y, "
                          f"test_x, test_y), got {type(obj).__name__}")
    try:
        tensors = [torch.as_tensor(p) for p in parts]
    except Exception as exc:  # noqa: BLE001 - not array-like
        raise ConfigError(f"data {name}: cannot read the tensors ({type(exc).__name__})") from None
    tx, ty, vx, vy = tensors
    if not (tx.is_floating_point() or tx.dtype in (torch.uint8, torch.int64, torch.int32)):
        raise ConfigError(f"data {name}: train_x has dtype {tx.dtype}; need numbers")
    for label, x, y in (("train", tx, ty), ("test", vx, vy)):
        if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ConfigError(f"data {name}: {label}_x {tuple(x.shape)} and {label}_y "
                              f"{tuple(y.shape)} need N >= 1 examples each, labels of shape (N,)")
        if y.is_floating_point() or y.dtype == torch.bool:
            raise ConfigError(f"data {name}: {label}_y must hold integer class labels")
    if tuple(tx.shape[1:]) != tuple(vx.shape[1:]):
        raise ConfigError(f"data {name}: train and test examples differ in shape "
                          f"({tuple(tx.shape[1:])} vs {tuple(vx.shape[1:])})")
    top = int(max(int(ty.max()), int(vy.max()))) + 1
    if int(min(int(ty.min()), int(vy.min()))) < 0:
        raise ConfigError(f"data {name}: labels must be >= 0")
    num_classes = top if num_classes is None else int(num_classes)
    if num_classes < top or num_classes < 2:
        raise ConfigError(f"data {name}: num_classes={num_classes}, but labels reach {top - 1}"
                          if num_classes < top else f"data {name}: need >= 2 classes")
    return Dataset(name=name, train_x=tx.float().contiguous(), train_y=ty.long().contiguous(),
                   test_x=vx.float().contiguous(), test_y=vy.long().contiguous(),
                   num_classes=num_classes)


def fingerprint(ds) -> str:
    """12 hex digits hashing a Dataset's tensors (names session data by content)."""
    h = hashlib.sha256()
    for t in (ds.train_x, ds.train_y, ds.test_x, ds.test_y):
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.numpy().tobytes())
    h.update(str(ds.num_classes).encode())
    return h.hexdigest()[:12]


def register_session_dataset(obj) -> str:
    """Register in-memory data for this Python session; returns the ``data.name`` naming it."""
    ds = as_dataset(obj, "python")
    name = f"{SESSION_PREFIX}data-{fingerprint(ds)}"
    _SESSION[name] = ds.__class__(**{**ds.__dict__, "name": name})
    return name


def _info_from(name: str, ds, loader) -> DatasetInfo:
    n_train, n_test = ds.train_size, ds.test_size
    return DatasetInfo(name, ds.input_shape, ds.num_classes, lambda cfg: n_train,
                       lambda cfg: n_test, loader, plugin=True)


def plugin_target(name: str):
    """What a dataset name that is not shipped and not a session name resolves to: a loader
    function or a :class:`DatasetInfo` (ConfigError / StoreError, one line, otherwise)."""
    return DATASET_NAMES.resolve(name)


def dataset_info(cfg) -> DatasetInfo:
    """The :class:`DatasetInfo` behind ``cfg.name`` (a DataConfig). A plugin that states no
    sizes is loaded here, once per (name, options) in this process."""
    name = cfg.name
    options = dict(getattr(cfg, "options", {}) or {})
    if is_shipped(name):
        if options:
            raise ConfigError(f"data.options.{min(options)}: dataset {name} takes no options")
        info = shipped_info(name)
        if info.check is not None:
            info.check(cfg)
        return info
    if name.startswith(SESSION_PREFIX):
        if name not in _SESSION:
            raise ConfigError(f"data.name: {name!r} was data passed to record_study in another "
                              "Python session; pass data= again (analyze_study(out, data=...))")
        ds = _SESSION[name]
        return _info_from(name, ds, lambda cfg, **_: _SESSION[name])
    target = plugin_target(name)
    if isinstance(target, DatasetInfo):  # states its sizes: loaded only when needed
        return dataclasses.replace(target, plugin=True)
    if not callable(target):
        raise ConfigError(f"data.name: {name!r} is a {type(target).__name__}, not a loader function")
    check_options("data", f"dataset {name}", target, options, positional=1)
    key = json.dumps([name, options, cfg.root], sort_keys=True, default=list)
    if key not in _LOADED:
        try:
            raw = target(cfg, **options)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - a plugin loader's failure, as one line
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise ConfigError(f"data {name}: the loader failed: {type(exc).__name__}: {first}"
                              ) from None
        _LOADED.clear()  # keep one plugin dataset in memory, not every one ever loaded
        _LOADED[key] = as_dataset(raw, name)
    ds = _LOADED[key]
    return _info_from(name, ds, lambda cfg, **_: ds)


def load_plugin(info: DatasetInfo, cfg):
    """Load a plugin dataset (already checked by :func:`dataset_info`)."""
    if isinstance(info.loader, str):
        loader = DATASET_NAMES.resolve(info.loader)
    else:
        loader = info.loader
    raw = loader(cfg, **dict(getattr(cfg, "options", {}) or {}))
    return as_dataset(raw, cfg.name)
