import random

import numpy as np
import pytest
import torch

from stabilitylab.config.schema import DataConfig
from stabilitylab.core.errors import ConfigError
from stabilitylab.data import Dataset, load_dataset
from stabilitylab.data import mnist1d as m1d
from stabilitylab.data.registry import DATASETS

N = 100  # tiny: generation is a Python loop per example


def test_shapes_dtypes_and_registry_sizes(tmp_path):
    cfg = DataConfig(name="mnist1d", root=str(tmp_path), num_samples=N)
    ds = load_dataset(cfg)
    info = DATASETS["mnist1d"]
    assert isinstance(ds, Dataset) and ds.name == "mnist1d" and ds.num_classes == 10
    assert ds.train_x.shape == (info.train_size(cfg), 1, 40) == (80, 1, 40)
    assert ds.test_x.shape == (info.test_size(cfg), 1, 40) == (20, 1, 40)
    assert ds.train_x.dtype == ds.test_x.dtype == torch.float32
    assert ds.train_y.dtype == ds.test_y.dtype == torch.int64
    assert ds.train_y.shape == (80,) and ds.test_y.shape == (20,)
    assert 0 <= int(ds.train_y.min()) and int(ds.train_y.max()) <= 9
    assert ds.augment is False


def test_values_are_mnist1d_make_dataset(tmp_path):
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = N
    ref = make_dataset(args)
    ds = m1d.load_mnist1d(DataConfig(num_samples=N), tmp_path)
    np.testing.assert_array_equal(ds.train_x[:, 0].numpy(), ref["x"].astype(np.float32))
    np.testing.assert_array_equal(ds.test_y.numpy(), ref["y_test"])


def test_cache_written_atomically_and_reused(tmp_path, monkeypatch):
    cfg = DataConfig(name="mnist1d", root=str(tmp_path), num_samples=N)
    first = load_dataset(cfg)
    path = tmp_path / "mnist1d_n100_seed42.npz"
    assert path.is_file()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no tmp file left behind

    def boom(n):
        raise AssertionError("should have used the cache")

    monkeypatch.setattr(m1d, "generate", boom)
    second = load_dataset(cfg)
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.test_y, second.test_y)


def test_damaged_cache_is_regenerated(tmp_path):
    path = tmp_path / "mnist1d_n100_seed42.npz"
    path.write_bytes(b"not an npz")
    ds = m1d.load_mnist1d(DataConfig(num_samples=N), tmp_path)
    assert ds.train_x.shape == (80, 1, 40)
    with np.load(path) as z:
        assert z["x"].shape == (80, 40)


def test_generation_leaves_global_rngs_alone(tmp_path):
    random.seed(7)
    np.random.seed(7)
    m1d.load_mnist1d(DataConfig(num_samples=N), tmp_path)
    a, b = random.random(), np.random.rand()
    random.seed(7)
    np.random.seed(7)
    assert (a, b) == (random.random(), np.random.rand())


def test_num_samples_must_be_multiple_of_10(tmp_path):
    with pytest.raises(ConfigError, match="multiple of 10"):
        load_dataset(DataConfig(name="mnist1d", root=str(tmp_path), num_samples=105))


def test_unknown_dataset_and_to_device(tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset"):
        load_dataset(DataConfig(name="imagenet", root=str(tmp_path)))
    ds = load_dataset(DataConfig(name="mnist1d", root=str(tmp_path), num_samples=N, augment=True))
    assert ds.augment is True
    moved = ds.to("meta")
    assert moved.train_x.device.type == "meta" and ds.train_x.device.type == "cpu"
    assert moved.num_classes == 10 and moved.augment is True


def test_cache_of_the_installed_mnist1d_is_read_without_importing_it(tmp_path, monkeypatch):
    """The file names the mnist1d version that made it; a file of another version, of other
    arguments or from before versions were stored goes through the full check."""
    cfg = DataConfig(name="mnist1d", root=str(tmp_path), num_samples=N)
    first = load_dataset(cfg)
    path = tmp_path / "mnist1d_n100_seed42.npz"
    with np.load(path) as z:
        assert str(z["mnist1d_version"]) == m1d._installed_version()
        old_format = {k: z[k] for k in ("args", "x", "y", "x_test", "y_test")}

    def no_args(n):
        raise AssertionError("the fast path must not import mnist1d")

    monkeypatch.setattr(m1d, "dataset_args", no_args)
    assert torch.equal(load_dataset(cfg).train_x, first.train_x)
    monkeypatch.setattr(m1d, "_installed_version", lambda: "0.0.0-other")
    with pytest.raises(AssertionError, match="must not import"):  # another version: full check
        load_dataset(cfg)
    monkeypatch.undo()

    np.savez(path, **old_format)  # as written before versions were stored
    assert torch.equal(load_dataset(cfg).train_x, first.train_x)  # full check, then upgraded
    with np.load(path) as z:
        assert str(z["mnist1d_version"]) == m1d._installed_version()
    np.testing.assert_array_equal(load_dataset(cfg).test_y.numpy(), first.test_y.numpy())

    other = tmp_path / "mnist1d_n100_seed7.npz"  # a file whose name and arguments disagree
    path.rename(other)
    monkeypatch.setattr(m1d, "generate", lambda n: (_ for _ in ()).throw(AssertionError("regen")))
    with pytest.raises(AssertionError, match="regen"):
        load_dataset(cfg)
