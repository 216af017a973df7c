"""MNIST / CIFAR-10 loaders on small fake files written in torchvision's on-disk format."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from stabilitylab.config.schema import DataConfig
from stabilitylab.core.errors import DataMissingError
from stabilitylab.data import load_dataset, vision

# -- fake files -------------------------------------------------------------------------------

def _idx_images(arr: np.ndarray) -> bytes:  # magic 0x00000803: ubyte, 3 dims, big-endian sizes
    return struct.pack(">IIII", 0x0803, *arr.shape) + arr.astype(np.uint8).tobytes()


def _idx_labels(arr: np.ndarray) -> bytes:  # magic 0x00000801: ubyte, 1 dim
    return struct.pack(">II", 0x0801, len(arr)) + arr.astype(np.uint8).tobytes()


def write_fake_mnist(root, n_train=20, n_test=10, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        arrays[split] = (x, y)
        for name, blob in ((f"{split}-images-idx3-ubyte", _idx_images(x)),
                           (f"{split}-labels-idx1-ubyte", _idx_labels(y))):
            if gz:
                with gzip.open(raw / f"{name}.gz", "wb") as f:
                    f.write(blob)
            else:
                (raw / name).write_bytes(blob)
    return arrays


def write_fake_cifar10(root, n_per_batch=4, n_test=6, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else n_per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)  # rows: 1024 R, 1024 G, 1024 B
        labels = [int(v) for v in rng.integers(0, 10, n)]
        batches[name] = (data, labels)
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072}, f)
    return batches


# -- MNIST ------------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
def test_mnist_loads_and_normalizes(tmp_path, gz):
    arrays = write_fake_mnist(tmp_path, gz=gz)
    ds = load_dataset(DataConfig(name="mnist", root=str(tmp_path)))
    assert ds.train_x.shape == (20, 1, 28, 28) and ds.test_x.shape == (10, 1, 28, 28)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    x, y = arrays["train"]
    expect = (torch.from_numpy(x).float() / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(ds.train_x[:, 0], expect)
    assert torch.equal(ds.train_y, torch.from_numpy(y).long())
    assert torch.equal(ds.test_y, torch.from_numpy(arrays["t10k"][1]).long())
    if gz:
        assert (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def test_mnist_missing_is_one_line_naming_the_path(tmp_path):
    with pytest.raises(DataMissingError) as err:
        load_dataset(DataConfig(name="mnist", root=str(tmp_path)))
    msg = str(err.value)
    assert "\n" not in msg
    assert str((tmp_path / "MNIST" / "raw").absolute()) in msg
    assert "train-images-idx3-ubyte" in msg and "stabilitylab data download mnist" in msg
    assert str(tmp_path) in msg
    assert isinstance(err.value, FileNotFoundError)


def test_mnist_one_file_missing(tmp_path):
    write_fake_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataMissingError, match="MNIST not found at"):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path)))


# -- CIFAR-10 ---------------------------------------------------------------------------------

def test_cifar10_loads_without_md5(tmp_path, monkeypatch):
    batches = write_fake_cifar10(tmp_path)
    monkeypatch.setattr(vision, "VERIFY_CIFAR10_MD5", False)
    ds = load_dataset(DataConfig(name="cifar10", root=str(tmp_path), augment=True))
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.test_x.shape == (6, 3, 32, 32)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert ds.augment is True and ds.train_x.is_contiguous()
    data = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = [v for i in range(1, 6) for v in batches[f"data_batch_{i}"][1]]
    chw = torch.from_numpy(data).reshape(-1, 3, 32, 32).float() / 255  # CHW order of the rows
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    torch.testing.assert_close(ds.train_x, (chw - mean) / std)
    assert ds.train_y.tolist() == labels
    assert ds.test_y.tolist() == batches["test_batch"][1]


def test_cifar10_md5_checked_by_default(tmp_path):
    write_fake_cifar10(tmp_path)
    with pytest.raises(DataMissingError, match="md5") as err:
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    assert "\n" not in str(err.value)


def test_cifar10_missing_is_one_line_naming_the_path(tmp_path):
    with pytest.raises(DataMissingError) as err:
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    msg = str(err.value)
    assert "\n" not in msg and "stabilitylab data download cifar10" in msg
    assert str((tmp_path / "cifar-10-batches-py").absolute()) in msg


def test_cifar10_partial_folder_is_missing(tmp_path):
    write_fake_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataMissingError, match="CIFAR-10 not found at"):
        vision.load_cifar10(DataConfig(name="cifar10"), tmp_path, verify_md5=False)


class _RunsCode:
    def __init__(self, sentinel):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        import os

        return (os.makedirs, (self.sentinel,))


def test_cifar10_batch_that_would_run_code_is_refused(tmp_path):
    """The batches are pickles; ours resolve only numpy array globals, so a crafted
    batch is an unreadable-data error and its payload never runs."""
    write_fake_cifar10(tmp_path)
    sentinel = tmp_path / "PWNED"
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_2", "wb") as f:
        pickle.dump({"data": np.zeros((4, 3072), np.uint8), "labels": [0] * 4,
                     "x": _RunsCode(sentinel)}, f)
    with pytest.raises(DataMissingError, match="unreadable.*refusing to load posix.makedirs|"
                                               "unreadable.*refusing to load os.makedirs") as err:
        vision.load_cifar10(DataConfig(name="cifar10"), tmp_path, verify_md5=False)
    assert "\n" not in str(err.value)
    assert not sentinel.exists()


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_arrays_pickled_by_any_protocol_load(tmp_path, protocol):
    batches = write_fake_cifar10(tmp_path)
    data, labels = batches["test_batch"]
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": data, "labels": labels}, f, protocol=protocol)
    ds = vision.load_cifar10(DataConfig(name="cifar10"), tmp_path, verify_md5=False)
    assert ds.test_y.tolist() == labels


def test_cifar10_wrong_shapes_are_one_line(tmp_path):
    write_fake_cifar10(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((3, 100), np.uint8), "labels": [0, 1, 2]}, f)
    with pytest.raises(DataMissingError, match="expected data"):
        vision.load_cifar10(DataConfig(name="cifar10"), tmp_path, verify_md5=False)
