"""MNIST and CIFAR-10 from torchvision's on-disk layout, as whole tensors.

Loading never downloads; ``stabilitylab data download mnist|cifar10``
(:mod:`stabilitylab.data.download`) fetches the files first. The torchvision dataset classes
only parse the files; their ``.data``/``.targets`` arrays are converted to
normalized float32 tensors in one go (no per-example transform).

Layout under ``root`` (see :func:`stabilitylab.data.data_root`; default
``~/.cache/stabilitylab/datasets``, overridden by ``$STABILITYLAB_DATA``):

* MNIST: ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``; a
  ``.gz`` copy alone is decompressed in place on first use.
* CIFAR-10: ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``;
  if only ``<root>/cifar-10-python.tar.gz`` is there it is extracted first.

CIFAR-10's official python format is pickle. We parse it ourselves with
:class:`_ArraysOnlyUnpickler`, which can build dicts, lists, strings and numpy
arrays and nothing else, so a crafted batch file cannot run code.

Integrity: every batch file's md5 is checked against the official release
(:data:`CIFAR10_MD5`). That stays on for real use. Files that are present but fail
it raise a one-line :class:`DataMissingError`. Tests write small fake batches
whose md5 cannot match, so they set :data:`VERIFY_CIFAR10_MD5` to ``False`` (or
pass ``verify_md5=False``), which checks only that the files exist. MNIST is
parsed by torchvision, which has no md5 check when ``download=False``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from stabilitylab.core.errors import DataMissingError
from stabilitylab.data import Dataset
from stabilitylab.data.download import fetch_cifar10, fetch_mnist
from stabilitylab.data.registry import dataset

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

MNIST_FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")

VERIFY_CIFAR10_MD5 = True
"""Check CIFAR-10 batch files against the official md5 sums (tests turn this off)."""


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# -- MNIST ------------------------------------------------------------------------------------

def _mnist_missing_message(raw: Path) -> str:
    expected = ", ".join(f"{f}[.gz]" for f in MNIST_FILES)
    return (f"MNIST not found at {raw.absolute()} (expected {expected}); "
            f"run `stabilitylab data download mnist --data-root {raw.parent.parent.absolute()}` "
            "or place the files there")


def _gunzip_atomic(src: Path, dst: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=dst.name + ".", suffix=".tmp", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as out, gzip.open(src, "rb") as inp:
            shutil.copyfileobj(inp, out)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _prepare_mnist_raw(raw: Path) -> None:
    """Make sure the four uncompressed idx files exist (decompressing ``.gz`` copies)."""
    for name in MNIST_FILES:
        plain, gz = raw / name, raw / f"{name}.gz"
        if plain.is_file():
            continue
        if not gz.is_file():
            raise DataMissingError(_mnist_missing_message(raw))
        try:
            _gunzip_atomic(gz, plain)
        except (OSError, EOFError) as e:
            raise DataMissingError(f"MNIST at {raw.absolute()}: could not decompress {gz.name} "
                                   f"({_one_line(e)}); gunzip it there by hand") from None


def _normalize_uint8(x: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 ``(N, C, H, W)`` -> float32 ``(x/255 - mean) / std`` per channel."""
    c = x.shape[1]
    mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1).expand(c, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1).expand(c, 1, 1)
    out = x.contiguous().to(torch.float32)
    out.div_(255.0).sub_(mean).div_(std)
    return out


@dataset("mnist", input_shape=(1, 28, 28), num_classes=10, train_size=60000, test_size=10000,
         download=fetch_mnist)
def load_mnist(cfg, root: Path) -> Dataset:
    """Loader for ``data.name = "mnist"``: (N, 1, 28, 28) normalized with 0.1307 / 0.3081."""
    import torchvision

    root = Path(root)
    raw = root / "MNIST" / "raw"
    _prepare_mnist_raw(raw)
    try:
        train = torchvision.datasets.MNIST(str(root), train=True, download=False)
        test = torchvision.datasets.MNIST(str(root), train=False, download=False)
    except RuntimeError:
        raise DataMissingError(_mnist_missing_message(raw)) from None
    except (AssertionError, TypeError, ValueError) as e:
        raise DataMissingError(f"MNIST at {raw.absolute()} is unreadable (not idx ubyte files?): "
                               f"{_one_line(e)}") from None
    return Dataset(
        name="mnist",
        train_x=_normalize_uint8(train.data.unsqueeze(1), MNIST_MEAN, MNIST_STD),
        train_y=train.targets.to(torch.int64),
        test_x=_normalize_uint8(test.data.unsqueeze(1), MNIST_MEAN, MNIST_STD),
        test_y=test.targets.to(torch.int64),
        num_classes=10,
        augment=bool(getattr(cfg, "augment", False)),
    )


# -- CIFAR-10 ---------------------------------------------------------------------------------

# md5 sums of the official python-format batch files (a public fact of the release).
CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}

# What a CIFAR-10 batch may contain besides dicts/lists/str/bytes/ints: numpy arrays
# (and bytes, as Python 3 pickles them at low protocols).
# Nothing else can be named, so a crafted file cannot reach os.system & co.
_CIFAR10_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes bytes at protocol <= 2 (a pure str->bytes encode)
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR-10's python batches that resolves only numpy's array
    reconstruction globals and refuses every other class or callable."""

    def find_class(self, module: str, name: str):
        if (module, name) in _CIFAR10_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are allowed)")


def _read_cifar10_batch(path: Path) -> dict:
    with open(path, "rb") as f:
        obj = _ArraysOnlyUnpickler(f, encoding="latin1").load()
    if not isinstance(obj, dict):
        raise TypeError(f"{path.name} holds a {type(obj).__name__}, not a dict")
    return obj


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _cifar10_arrays(folder: Path, files: tuple[str, ...]) -> tuple[np.ndarray, list[int]]:
    xs, ys = [], []
    for name in files:
        batch = _read_cifar10_batch(folder / name)
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = batch.get("labels", batch.get("fine_labels"))
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels is None or len(labels) != len(data):
            raise ValueError(f"{name}: expected data (N, 3072) and N labels, got {data.shape}")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.extend(int(v) for v in labels)
    return np.concatenate(xs), ys


def _cifar10_missing_message(folder: Path) -> str:
    return (f"CIFAR-10 not found at {folder.absolute()} (expected data_batch_1..5, test_batch, "
            f"batches.meta from {CIFAR10_ARCHIVE}); run `stabilitylab data download cifar10 "
            f"--data-root {folder.parent.absolute()}` or place the files there")


@dataset("cifar10", input_shape=(3, 32, 32), num_classes=10, train_size=50000,
         test_size=10000, download=fetch_cifar10)
def load_cifar10(cfg, root: Path, *, verify_md5: bool | None = None) -> Dataset:
    """Loader for ``data.name = "cifar10"``: (N, 3, 32, 32) normalized per channel.

    ``verify_md5`` defaults to :data:`VERIFY_CIFAR10_MD5` (True).
    """
    root = Path(root)
    folder = root / CIFAR10_FOLDER
    verify = VERIFY_CIFAR10_MD5 if verify_md5 is None else verify_md5
    if not all((folder / f).is_file() for f in CIFAR10_FILES) and (root / CIFAR10_ARCHIVE).is_file():
        from torchvision.datasets.utils import extract_archive

        try:
            extract_archive(str(root / CIFAR10_ARCHIVE), str(root))
        except Exception as e:  # noqa: BLE001 - any failure means the data is not usable
            raise DataMissingError(f"CIFAR-10: could not extract {(root / CIFAR10_ARCHIVE).absolute()} "
                                   f"({_one_line(e)}); extract it there by hand") from None
    if not all((folder / f).is_file() for f in CIFAR10_FILES):
        raise DataMissingError(_cifar10_missing_message(folder))
    if verify:
        bad = [f for f in CIFAR10_FILES if _md5(folder / f) != CIFAR10_MD5[f]]
        if bad:
            raise DataMissingError(f"CIFAR-10 at {folder.absolute()} failed the md5 check on {', '.join(bad)} "
                                   f"(corrupt, or not the official {CIFAR10_ARCHIVE} files)")
    try:
        train = _cifar10_arrays(folder, tuple(f"data_batch_{i}" for i in range(1, 6)))
        test = _cifar10_arrays(folder, ("test_batch",))
    except Exception as e:  # noqa: BLE001 - unpickling/format errors of many kinds
        raise DataMissingError(f"CIFAR-10 at {folder.absolute()} is unreadable: "
                               f"{_one_line(e)}") from None

    def convert(arrays):
        x, y = arrays
        return (_normalize_uint8(torch.from_numpy(x), CIFAR10_MEAN, CIFAR10_STD),
                torch.as_tensor(y, dtype=torch.int64))

    train_x, train_y = convert(train)
    test_x, test_y = convert(test)
    return Dataset(name="cifar10", train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
                   num_classes=10, augment=bool(getattr(cfg, "augment", False)))
