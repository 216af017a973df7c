"""Dataset registry: what each dataset is (sizes, shapes) and how to load it.

The metadata of a shipped dataset is known without loading anything, so a config
can be validated (``2ep`` turned into iterations) before any data is touched.

``data.name`` may be

- a shipped name (:data:`DATASETS`);
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

from stabilitylab.core.errors import ConfigError
from stabilitylab.core.options import check_options
from stabilitylab.core.registry import SESSION_PREFIX, Registry

ENTRY_POINT_GROUP = "stabilitylab.datasets"


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    input_shape: tuple[int, ...]  # one example, channels first
    num_classes: int
    train_size: Callable[[object], int]  # DataConfig -> number of train examples
    test_size: Callable[[object], int]
    # "module:function" ``(cfg, root) -> Dataset`` imported lazily (shipped loaders), or a
    # plugin callable ``(cfg, **options) -> Dataset``.
    loader: str | Callable
    plugin: bool = False


def _mnist1d_train(cfg) -> int:
    return int(cfg.num_samples * 0.8)


def _mnist1d_test(cfg) -> int:
    return cfg.num_samples - int(cfg.num_samples * 0.8)


DATASETS: dict[str, DatasetInfo] = {
    "mnist1d": DatasetInfo(
        "mnist1d", (1, 40), 10, _mnist1d_train, _mnist1d_test,
        "stabilitylab.data.mnist1d:load_mnist1d",
    ),
    "mnist": DatasetInfo(
        "mnist", (1, 28, 28), 10, lambda cfg: 60000, lambda cfg: 10000,
        "stabilitylab.data.vision:load_mnist",
    ),
    "cifar10": DatasetInfo(
        "cifar10", (3, 32, 32), 10, lambda cfg: 50000, lambda cfg: 10000,
        "stabilitylab.data.vision:load_cifar10",
    ),
    # scikit-learn's bundled 8x8 digits (optional extra); sizes: stabilitylab.data.digits
    "digits": DatasetInfo(
        "digits", (1, 8, 8), 10, lambda cfg: 1438, lambda cfg: 359,
        "stabilitylab.data.digits:load_digits",
    ),
}

# name -> its DatasetInfo (shipped), or a plugin's loader / DatasetInfo; python:... -> Dataset
DATASET_NAMES = Registry("dataset", "data.name", ENTRY_POINT_GROUP, DATASETS,
                         session_missing="was data passed to record_study in another Python "
                         "session; pass data= again (analyze_study(out, data=...))")
_SESSION = DATASET_NAMES.session  # python:... -> Dataset
_LOADED: dict[str, object] = {}  # plugin key -> Dataset (one entry: the study in use)


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
    if name in DATASETS:
        if options:
            raise ConfigError(f"data.options.{min(options)}: dataset {name} takes no options")
        return DATASETS[name]
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
