"""``stabilitylab data download NAME``: fetch a torchvision dataset into the data root.

The datasets it can fetch are those whose ``@dataset`` declaration names a ``download``
function (:func:`fetch_mnist`, :func:`fetch_cifar10`).

The files, their mirrors and their md5 sums are torchvision's own
(``torchvision.datasets.MNIST.mirrors``/``.resources``, ``CIFAR10.url``/``.tgz_md5``), and
the download and the checksum test are torchvision's ``download_and_extract_archive``.
Everything is fetched into a fresh temporary folder inside the data root and moved into
place only after every checksum passed, so an interrupted or corrupt download leaves
nothing half-written where the loaders look.

``mirror`` replaces the official base URLs (a local mirror, or the loopback server the
tests run); the files and checksums stay the same.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from stabilitylab.core.errors import ConfigError, DataMissingError
from stabilitylab.data.registry import downloadable, offline_notes, shipped_info


def __getattr__(name: str):
    if name == "DOWNLOADABLE":  # the datasets whose declaration names a download function
        return downloadable()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _mnist_sources() -> tuple[list[str], list[tuple[str, str]]]:
    from torchvision.datasets import MNIST

    return list(MNIST.mirrors), [(name, md5) for name, md5 in MNIST.resources]


def _cifar10_source() -> tuple[str, str, str]:
    """(base URL, archive name, md5)."""
    from torchvision.datasets import CIFAR10

    base, _, name = CIFAR10.url.rpartition("/")
    return base + "/", name, CIFAR10.tgz_md5


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _fetch(bases: list[str], name: str, md5: str, into: Path, extract: bool) -> None:
    """Download ``name`` from the first base URL that serves it with the right md5."""
    from torchvision.datasets.utils import download_and_extract_archive, download_url

    errors = []
    for base in bases:
        url = base.rstrip("/") + "/" + name
        try:
            with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet):
                if extract:
                    download_and_extract_archive(url, str(into), filename=name, md5=md5)
                else:
                    download_url(url, str(into), filename=name, md5=md5)
            return
        except Exception as e:  # noqa: BLE001 - URLError, HTTPError, corrupt file, ...
            errors.append(f"{url}: {_one_line(e)}")
            with contextlib.suppress(FileNotFoundError):
                (into / name).unlink()
    raise DataMissingError(f"could not download {name} (md5 {md5}): " + "; ".join(errors))


def fetch_mnist(root: Path, tmp: Path, mirror: str | None) -> Path:
    """Fetch the MNIST archives into ``tmp`` (those already in ``<root>/MNIST/raw`` with the
    right md5 are copied, not fetched), then move them into ``<root>/MNIST/raw``."""
    from torchvision.datasets.utils import check_integrity, extract_archive

    mirrors, resources = _mnist_sources()
    bases = [mirror] if mirror else mirrors
    target = root / "MNIST" / "raw"
    for filename, md5 in resources:
        kept = target / filename
        if check_integrity(str(kept), md5):  # already here and intact: no download
            shutil.copy(kept, tmp / filename)
            extract_archive(str(tmp / filename), str(tmp))
            continue
        _fetch(bases, filename, md5, tmp, extract=True)
    target.mkdir(parents=True, exist_ok=True)
    for f in sorted(tmp.iterdir()):
        if f.is_file():
            os.replace(f, target / f.name)
    return target


def fetch_cifar10(root: Path, tmp: Path, mirror: str | None) -> Path:
    """Fetch and extract the CIFAR-10 archive into ``tmp``, then replace
    ``<root>/cifar-10-batches-py`` with it."""
    base, archive, md5 = _cifar10_source()
    _fetch([mirror] if mirror else [base], archive, md5, tmp, extract=True)
    folder = tmp / "cifar-10-batches-py"
    if not folder.is_dir():
        raise DataMissingError(f"{archive} did not contain cifar-10-batches-py/")
    target = root / "cifar-10-batches-py"
    if target.exists():
        shutil.rmtree(target)
    os.replace(folder, target)
    return target


def download(name: str, root: str | os.PathLike | None = None, *, mirror: str | None = None) -> Path:
    """Download dataset ``name`` (one whose declaration names a ``download`` function:
    ``mnist``, ``cifar10``) into the data root; return the folder the loader reads
    (``<root>/MNIST/raw`` or ``<root>/cifar-10-batches-py``).

    ``root`` defaults to :func:`stabilitylab.data.data_root` (``$STABILITYLAB_DATA`` or
    ``~/.cache/stabilitylab/datasets``). MNIST archives already there with the right md5
    are not fetched again; CIFAR-10 is fetched again and replaces its folder.
    """
    from stabilitylab.data import data_root

    choices = downloadable()
    if name not in choices:
        note = offline_notes().get(name)
        raise ConfigError(f"cannot download {name!r}; choose {' or '.join(choices)}"
                          + (f" ({name} is {note}, nothing to download)" if note else ""))
    fetch = shipped_info(name).download
    root = data_root(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=root))
    except OSError as e:
        raise DataMissingError(f"cannot write to data root {root}: {_one_line(e)}") from None
    try:
        return fetch(root, tmp, mirror)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download_hint(name: str) -> str:
    """The command that fetches ``name``, for missing-data messages."""
    return f"stabilitylab data download {name}"
