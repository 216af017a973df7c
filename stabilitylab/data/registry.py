"""Dataset registry: what each dataset is (sizes, shapes) and how to load it.

The metadata is known without loading anything, so a config can be validated
(``2ep`` turned into iterations) before any data is touched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    input_shape: tuple[int, ...]  # one example, channels first
    num_classes: int
    train_size: Callable[[object], int]  # DataConfig -> number of train examples
    test_size: Callable[[object], int]
    loader: str  # "module:function" returning a Dataset, imported lazily


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
}
