"""data.name = "digits": scikit-learn's bundled 8x8 images, offline, split and scaled."""

import importlib.util
import sys

import numpy as np
import pytest
import torch
from conftest import tiny_config

import stabilitylab
from stabilitylab.config.schema import DataConfig
from stabilitylab.core.errors import DataMissingError
from stabilitylab.data import load_dataset
from stabilitylab.data.digits import (
    INSTALL_HINT,
    SPLIT_SEED,
    TEST_SIZE,
    digits_arrays,
    stratified_split,
)
from stabilitylab.data.registry import dataset_info

needs_sklearn = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None,
                                   reason='needs scikit-learn (pip install "stabilitylab[digits]")')


@needs_sklearn
def test_shapes_labels_sizes_match_the_registry():
    cfg = DataConfig(name="digits")
    ds = load_dataset(cfg)
    info = dataset_info(cfg)
    assert ds.input_shape == info.input_shape == (1, 8, 8)
    assert (ds.train_size, ds.test_size) == (info.train_size(cfg), info.test_size(cfg))
    assert ds.train_size + ds.test_size == 1797 and ds.test_size == TEST_SIZE
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert set(ds.train_y.tolist()) == set(ds.test_y.tolist()) == set(range(10))
    assert ds.num_classes == 10
    # standardised with the train split's scalar mean and std
    assert abs(float(ds.train_x.double().mean())) < 1e-5
    assert float(ds.train_x.double().std()) == pytest.approx(1.0, abs=1e-3)


@needs_sklearn
def test_split_is_deterministic_disjoint_and_stratified():
    a, b = digits_arrays(), digits_arrays()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    from sklearn.datasets import load_digits as sk

    labels = sk().target
    train_idx, test_idx = stratified_split(labels, TEST_SIZE, SPLIT_SEED)
    assert np.intersect1d(train_idx, test_idx).size == 0
    assert np.union1d(train_idx, test_idx).size == labels.size
    per_class = np.bincount(labels[test_idx], minlength=10)
    assert np.all(np.abs(per_class - 0.2 * np.bincount(labels)) < 1)
    np.testing.assert_array_equal(labels[train_idx], a["y"])
    other, _ = stratified_split(labels, TEST_SIZE, SPLIT_SEED + 1)
    assert not np.array_equal(other, train_idx)  # the seed matters


@needs_sklearn
def test_pixels_are_the_real_images_rescaled():
    from sklearn.datasets import load_digits as sk

    a = digits_arrays()
    train_idx, _ = stratified_split(sk().target, TEST_SIZE, SPLIT_SEED)
    raw = sk().images[train_idx] / 16.0
    np.testing.assert_allclose(a["x"][:, 0] * a["std"] + a["mean"], raw, atol=1e-6)


def test_missing_scikit_learn_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import now raises ImportError
    with pytest.raises(DataMissingError) as info:
        load_dataset(DataConfig(name="digits"))
    assert INSTALL_HINT in str(info.value) and "\n" not in str(info.value)


@needs_sklearn
def test_tiny_record_on_digits_learns(tmp_path):
    cfg = tiny_config("data.name='digits'", "model.name='mlp'", "model.options.hidden=[16]",
                      "pruning.levels=1", "training.batch_size=32")
    out = tmp_path / "digits.zarr"
    stabilitylab.record_study(cfg, str(out), progress=False)
    ds = stabilitylab.open_study(str(out))
    assert ds.attrs["complete"]
    assert ds.sizes["param"] == 64 * 16 + 16 + 16 * 10 + 10  # 64 flat input features
    acc = float(ds["dense_final_test_acc"].values[0])
    assert acc > 0.3  # well above chance (0.1) after 60 steps: real, learnable data
