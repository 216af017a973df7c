"""Datasets as in-memory tensors on the training device.

Every dataset is loaded once into a :class:`Dataset` of normalized float32 inputs
and int64 labels; training indexes those tensors directly (no per-example PIL
path, no DataLoader). Augmentation, when on, is batched on the device
(:func:`stabilitylab.data.augment.random_flip_crop`).

``load_dataset(cfg)`` dispatches through :data:`stabilitylab.data.registry.DATASETS`;
each entry's ``loader`` is a ``"module:function"`` with signature
``(cfg: DataConfig, root: Path) -> Dataset``.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from pathlib import Path

import torch

from stabilitylab.data.registry import DATASETS, DatasetInfo

DEFAULT_ROOT = Path("datasets") / "cache"

__all__ = ["DATASETS", "DEFAULT_ROOT", "Dataset", "DatasetInfo", "data_root", "load_dataset"]


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


def data_root(cfg) -> Path:
    """``cfg.root`` or, when empty, ``./datasets/cache`` (relative to the working directory)."""
    return Path(cfg.root).expanduser() if cfg.root else DEFAULT_ROOT


def _resolve(loader: str):
    module, _, fn = loader.partition(":")
    return getattr(importlib.import_module(module), fn)


def load_dataset(cfg, device="cpu") -> Dataset:
    """Load the dataset ``cfg.name`` (a :class:`~stabilitylab.config.schema.DataConfig`).

    Raises :class:`~stabilitylab.errors.ConfigError` for an unknown name and
    :class:`~stabilitylab.errors.DataMissingError` when files that must be on disk
    (MNIST, CIFAR-10) are not.
    """
    from stabilitylab.data.registry import dataset_info, load_plugin

    info = dataset_info(cfg)  # plugins: see stabilitylab.data.registry
    ds = load_plugin(info, cfg) if info.plugin else _resolve(info.loader)(cfg, data_root(cfg))
    if ds.input_shape != info.input_shape:  # a loader bug, not user input
        raise AssertionError(f"{cfg.name}: loader returned inputs of shape {ds.input_shape}, "
                             f"registry says {info.input_shape}")
    ds = dataclasses.replace(ds, augment=bool(cfg.augment), num_classes=info.num_classes)
    return ds.to(device)
