"""scikit-learn's handwritten digits: 1,797 real 8×8 images, shipped inside scikit-learn.

``data.name = "digits"``. The images come from ``sklearn.datasets.load_digits`` (the UCI
"Optical Recognition of Handwritten Digits" test set: 16 gray levels, 10 classes, about
180 images each), which reads a file bundled with scikit-learn: nothing is downloaded and
nothing is cached under the data root. scikit-learn is an optional extra:
``pip install "stabilitylab[digits]"``.

- **Split.** A fixed, seeded, stratified split: :data:`TEST_SIZE` = 359 test images
  (round(0.2 · 1797)) and 1,438 train images. Each class gives ``0.2 · n_class`` test
  images, rounded by largest remainder so the total is exactly 359; which images of a class
  go to test is a permutation from ``numpy.random.default_rng(SPLIT_SEED)`` (class by
  class, in class order). Both splits keep the original order of the images. The split
  never depends on the study's seeds, so every study sees the same test set.
- **Scaling.** Pixels (0..16) are divided by 16 to [0, 1] and then standardised with one
  mean and one standard deviation over all train pixels (returned by
  :func:`digits_arrays`), the convention of torchvision's MNIST normalisation (one scalar mean and std); float32.
- **Shape.** Examples are ``(1, 8, 8)``, channels first like MNIST's ``(1, 28, 28)``: MLPs
  flatten them to 64 features; 2-D conv nets (``resnet*``) take them as images.
  ``data.num_samples`` does not apply (it is mnist1d's).
"""

from __future__ import annotations

import numpy as np
import torch

from stabilitylab.core.errors import DataMissingError
from stabilitylab.data import Dataset
from stabilitylab.data.registry import dataset

NUM_IMAGES = 1797
TEST_SIZE = 359  # round(0.2 * 1797)
TRAIN_SIZE = NUM_IMAGES - TEST_SIZE
SPLIT_SEED = 0
INPUT_SHAPE = (1, 8, 8)
INSTALL_HINT = 'pip install "stabilitylab[digits]"'


def _load_sklearn() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise DataMissingError(f"data.name = 'digits' needs scikit-learn, which is not "
                               f"installed: {INSTALL_HINT}") from None
    d = sk_load_digits()
    images = np.asarray(d.images, dtype=np.float64)
    labels = np.asarray(d.target, dtype=np.int64)
    if images.shape != (NUM_IMAGES, 8, 8):  # a future scikit-learn changing its bundled set
        raise DataMissingError(f"scikit-learn's load_digits returned images of shape "
                               f"{images.shape}, expected ({NUM_IMAGES}, 8, 8)")
    return images, labels


def stratified_split(labels: np.ndarray, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, test_idx)``, each sorted: per class ``test_size · n_c / N`` test examples,
    rounded by largest remainder (ties to the lower class) so they sum to ``test_size``."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    quota = test_size * counts / labels.size
    take = np.floor(quota).astype(int)
    short = test_size - int(take.sum())
    order = np.argsort(-(quota - take), kind="stable")
    take[order[:short]] += 1
    rng = np.random.default_rng(seed)
    test = []
    for c, k in zip(classes, take, strict=True):
        members = np.nonzero(labels == c)[0]
        test.append(members[rng.permutation(members.size)[:k]])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(labels.size), test_idx)
    return train_idx, test_idx


def digits_arrays() -> dict[str, np.ndarray]:
    """The split, scaled arrays: ``x`` (1438, 1, 8, 8), ``y``, ``x_test`` (359, 1, 8, 8),
    ``y_test``, plus the scalar ``mean`` and ``std`` used."""
    images, labels = _load_sklearn()
    train_idx, test_idx = stratified_split(labels, TEST_SIZE, SPLIT_SEED)
    scaled = images / 16.0
    mean = float(scaled[train_idx].mean())
    std = float(scaled[train_idx].std())
    x = ((scaled - mean) / std).astype(np.float32)[:, None]
    return {"x": x[train_idx], "y": labels[train_idx], "x_test": x[test_idx],
            "y_test": labels[test_idx], "mean": np.float64(mean), "std": np.float64(std)}


@dataset("digits", input_shape=INPUT_SHAPE, num_classes=10, train_size=TRAIN_SIZE,
         test_size=TEST_SIZE, offline="shipped inside scikit-learn")
def load_digits(cfg, root=None) -> Dataset:
    """Loader for ``data.name = "digits"`` (``root`` is unused: the data ship with
    scikit-learn)."""
    a = digits_arrays()
    return Dataset(
        name="digits",
        train_x=torch.from_numpy(np.ascontiguousarray(a["x"])),
        train_y=torch.from_numpy(a["y"]),
        test_x=torch.from_numpy(np.ascontiguousarray(a["x_test"])),
        test_y=torch.from_numpy(a["y_test"]),
        num_classes=10,
        augment=bool(getattr(cfg, "augment", False)),
    )
