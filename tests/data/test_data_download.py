"""``stabilitylab data download``: torchvision's downloader and md5 check against a loopback
HTTP server serving small files this test writes (no network beyond 127.0.0.1)."""

import functools
import gzip
import hashlib
import http.server
import io
import pickle
import tarfile
import threading

import pytest
from test_data_vision import write_fake_cifar10, write_fake_mnist

from stabilitylab.config.schema import DataConfig
from stabilitylab.core.errors import ConfigError, DataMissingError
from stabilitylab.data import DATA_ENV, data_root, default_data_root, download, load_dataset, vision


@pytest.fixture
def server(tmp_path, monkeypatch):
    """(folder served, base URL)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    try:
        yield served, f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output clean
        pass


def _md5(blob: bytes) -> str:
    return hashlib.md5(blob, usedforsecurity=False).hexdigest()


def _serve_fake_mnist(tmp_path, served):
    """Gzipped fake idx files in ``served``; returns ({name: md5}, the arrays)."""
    src = tmp_path / "src"
    arrays = write_fake_mnist(src)
    md5 = {}
    for f in sorted((src / "MNIST" / "raw").iterdir()):
        blob = gzip.compress(f.read_bytes(), mtime=0)
        (served / f"{f.name}.gz").write_bytes(blob)
        md5[f"{f.name}.gz"] = _md5(blob)
    return md5, arrays


def _use_resources(monkeypatch, md5: dict):
    monkeypatch.setattr(download, "_mnist_sources",
                        lambda: (["http://127.0.0.1:9/unused/"], sorted(md5.items())))


def test_mnist_download_checks_md5_and_loads(tmp_path, server, monkeypatch):
    served, url = server
    md5, arrays = _serve_fake_mnist(tmp_path, served)
    _use_resources(monkeypatch, md5)
    root = tmp_path / "data"
    folder = download.download("mnist", root, mirror=url)
    assert folder == (root / "MNIST" / "raw").absolute()
    assert not [p for p in root.iterdir() if p.name.startswith(".download-")]  # temp folder gone
    ds = load_dataset(DataConfig(name="mnist", root=str(root)))
    assert ds.train_y.tolist() == arrays["train"][1].tolist()
    assert ds.test_x.shape == (10, 1, 28, 28)
    for f in served.iterdir():  # a second download needs no server: the md5s match
        f.unlink()
    assert download.download("mnist", root, mirror=url) == folder
    assert load_dataset(DataConfig(name="mnist", root=str(root))).test_x.shape == (10, 1, 28, 28)


def test_mnist_download_refuses_a_bad_checksum(tmp_path, server, monkeypatch):
    served, url = server
    md5, _ = _serve_fake_mnist(tmp_path, served)
    md5["t10k-labels-idx1-ubyte.gz"] = "0" * 32  # what a corrupt or tampered mirror looks like
    _use_resources(monkeypatch, md5)
    root = tmp_path / "data"
    with pytest.raises(DataMissingError, match="t10k-labels-idx1-ubyte.gz") as err:
        download.download("mnist", root, mirror=url)
    assert "\n" not in str(err.value)
    assert not (root / "MNIST").exists()  # nothing half-written where the loader looks
    assert list(root.iterdir()) == []


def test_mnist_download_unreachable_server_is_one_line(tmp_path, server, monkeypatch):
    _, url = server
    _use_resources(monkeypatch, {"train-images-idx3-ubyte.gz": "0" * 32})
    with pytest.raises(DataMissingError, match="could not download"):
        download.download("mnist", tmp_path / "data", mirror=url + "nosuch/")


def test_cifar10_download_extracts_archive(tmp_path, server, monkeypatch):
    served, url = server
    batches = write_fake_cifar10(tmp_path / "src")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    (served / "cifar-10-python.tar.gz").write_bytes(buf.getvalue())
    monkeypatch.setattr(download, "_cifar10_source",
                        lambda: ("http://127.0.0.1:9/", "cifar-10-python.tar.gz",
                                 _md5(buf.getvalue())))
    root = tmp_path / "data"
    folder = download.download("cifar10", root, mirror=url)
    assert folder == (root / "cifar-10-batches-py").absolute()
    monkeypatch.setattr(vision, "VERIFY_CIFAR10_MD5", False)  # fake batches: not the release's
    ds = load_dataset(DataConfig(name="cifar10", root=str(root)))
    assert ds.test_y.tolist() == batches["test_batch"][1]
    with open(folder / "batches.meta", "rb") as f:
        assert pickle.load(f)["num_vis"] == 3072


def test_cli_data_download_uses_env_root(tmp_path, server, monkeypatch, capsys):
    from stabilitylab.cli.main import main

    served, url = server
    md5, _ = _serve_fake_mnist(tmp_path, served)
    _use_resources(monkeypatch, md5)
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "envroot"))
    assert main(["data", "download", "mnist", "--mirror", url]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "envroot" / "MNIST" / "raw") in out
    assert (tmp_path / "envroot" / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    assert main(["data", "download", "mnist1d"]) == 2
    assert "generated offline" in capsys.readouterr().err


def test_cli_lists_only_downloadable_datasets(capsys):
    """`data download --help` offers exactly what download() can fetch (issue 27)."""
    from stabilitylab.cli import main as cli

    from stabilitylab.data.download import DOWNLOADABLE

    assert cli.DOWNLOADABLE == DOWNLOADABLE
    with pytest.raises(SystemExit):
        cli.main(["data", "download", "--help"])
    assert "{mnist,cifar10}" in capsys.readouterr().out


def test_data_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert data_root(tmp_path / "flag") == tmp_path / "flag"
    monkeypatch.delenv(DATA_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_root() == default_data_root() == tmp_path / "xdg" / "stabilitylab" / "datasets"
    monkeypatch.chdir(tmp_path)  # the default does not follow the working directory
    assert data_root("") == tmp_path / "xdg" / "stabilitylab" / "datasets"
    with pytest.raises(ConfigError):
        download.download("imagenet", tmp_path)
