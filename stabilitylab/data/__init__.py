"""Datasets as in-memory tensors on the training device.

Every dataset is loaded once into a :class:`Dataset` of normalized float32 inputs
and int64 labels; training indexes those tensors directly (no per-example PIL
path, no DataLoader). Augmentation, when on, is batched on the device
(:func:`stabilitylab.data.augment.random_flip_crop`).

A dataset is one module of this package whose loader ``(cfg: DataConfig, root: Path) ->
Dataset`` is declared with ``@dataset("name", input_shape=..., num_classes=...,
train_size=..., test_size=...)`` (:mod:`stabilitylab.data.registry`); ``load_dataset(cfg)``
dispatches through that registry.

Where datasets live (:func:`data_root`), first match wins:

1. a root the caller names: ``--data-root`` on the command line, or ``data.root`` in the
   user's own config at ``record`` time;
2. the environment variable ``STABILITYLAB_DATA``;
3. the default, ``$XDG_CACHE_HOME/stabilitylab/datasets`` (``~/.cache/stabilitylab/datasets``
   when ``XDG_CACHE_HOME`` is unset), whatever the working directory.

A store's saved config never chooses it: ``analyze`` ignores the ``data.root`` a store
carries, so a crafted store cannot make it read or write files elsewhere.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from stabilitylab.data.registry import DatasetInfo, dataset

if TYPE_CHECKING:  # annotations only: importing the package (and its registry) needs no torch
    import torch

DATA_ENV = "STABILITYLAB_DATA"
"""The environment variable that overrides the default data root."""

__all__ = ["DATA_ENV", "Dataset", "DatasetInfo", "data_root", "dataset", "default_data_root",
           "load_dataset"]


@dataclass
class Dataset:
    """A whole dataset held as tensors.

    ``train_x``/``test_x`` are ``(N, *input_shape)`` float32, already normalized;
    ``train_y``/``test_y`` are ``(N,)`` int64. ``augment`` says whether the
    training loop should apply :func:`~stabilitylab.data.augment.random_flip_crop`
    to train batches (never to evaluation).
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    augment: bool = False

    def to(self, device) -> Dataset:
        """A copy whose tensors live on ``device`` (shares storage if already there)."""
        return dataclasses.replace(
            self,
            train_x=self.train_x.to(device), train_y=self.train_y.to(device),
            test_x=self.test_x.to(device), test_y=self.test_y.to(device),
        )

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def train_size(self) -> int:
        return int(self.train_x.shape[0])

    @property
    def test_size(self) -> int:
        return int(self.test_x.shape[0])


def default_data_root() -> Path:
    """``$XDG_CACHE_HOME/stabilitylab/datasets``, or ``~/.cache/stabilitylab/datasets``."""
    cache = os.environ.get("XDG_CACHE_HOME") or ""
    base = Path(cache).expanduser() if cache and Path(cache).expanduser().is_absolute() \
        else Path.home() / ".cache"
    return base / "stabilitylab" / "datasets"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` when given (non-empty), else ``$STABILITYLAB_DATA``, else
    :func:`default_data_root`. Always absolute, so it never depends on the working directory
    after this call."""
    for candidate in (root, os.environ.get(DATA_ENV)):
        if candidate is not None and str(candidate) != "":
            return Path(candidate).expanduser().absolute()
    return default_data_root()


def _resolve(loader: str):
    module, _, fn = loader.partition(":")
    return getattr(importlib.import_module(module), fn)


def load_dataset(cfg, device="cpu", *, root: str | os.PathLike | None = None,
                 info=None) -> Dataset:
    """Load the dataset ``cfg.name`` (a :class:`~stabilitylab.config.schema.DataConfig`).

    ``root``: where the files are; when None, ``cfg.root`` (a user's config) and then the
    environment and default of :func:`data_root`. Callers holding a config read from a store
    pass ``root`` explicitly, so the store's ``data.root`` is never consulted. ``info``: the
    dataset's :class:`~stabilitylab.data.registry.DatasetInfo` when already looked up.

    Raises :class:`~stabilitylab.core.errors.ConfigError` for an unknown name and
    :class:`~stabilitylab.core.errors.DataMissingError` when files that must be on disk
    (MNIST, CIFAR-10) are not.
    """
    from stabilitylab.data.registry import dataset_info, load_plugin

    if info is None:
        info = dataset_info(cfg)  # plugins: see stabilitylab.data.registry
    where = data_root(root) if root is not None else data_root(cfg.root)
    if info.plugin:
        ds = load_plugin(info, cfg)
    else:
        ds = (info.loader if callable(info.loader) else _resolve(info.loader))(cfg, where)
    if ds.input_shape != info.input_shape:  # a loader bug, not user input
        raise AssertionError(f"{cfg.name}: loader returned inputs of shape {ds.input_shape}, "
                             f"registry says {info.input_shape}")
    ds = dataclasses.replace(ds, augment=bool(cfg.augment), num_classes=info.num_classes)
    return ds.to(device)
