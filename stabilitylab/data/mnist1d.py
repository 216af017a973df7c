"""MNIST-1D (Greydanus 2020), generated offline from the ``mnist1d`` package.

The data are built with ``mnist1d.data.make_dataset(get_dataset_args())`` with
``num_samples = cfg.num_samples`` and every other argument at mnist1d's default
(seed 42, train split 0.8, length 40). ``get_dataset`` is never called: it
downloads. The generated arrays are cached under ``<root>/mnist1d_n{N}_seed{S}.npz``
(written atomically) together with the generation arguments and the mnist1d version,
and regenerated if those arguments no longer match. A file that names the installed
mnist1d version is read without importing mnist1d (its import takes ~1.4 s).

Values are kept as mnist1d makes them (already centred, unit std over the whole
set), cast to float32, with a channel axis: examples are ``(1, 40)``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from stabilitylab.core.errors import ConfigError
from stabilitylab.data import Dataset
from stabilitylab.data.registry import dataset

_ARG_EXCLUDE = ("url",)  # irrelevant to the generated values


def dataset_args(num_samples: int):
    """mnist1d's default generation arguments with ``num_samples`` set."""
    from mnist1d.data import get_dataset_args

    args = get_dataset_args()
    args.num_samples = int(num_samples)
    return args


def _args_json(args) -> str:
    return json.dumps({k: v for k, v in sorted(vars(args).items()) if k not in _ARG_EXCLUDE},
                      sort_keys=True)


def cache_path(root: Path, num_samples: int, seed: int) -> Path:
    return Path(root) / f"mnist1d_n{int(num_samples)}_seed{int(seed)}.npz"


def generate(num_samples: int) -> dict[str, np.ndarray]:
    """Generate MNIST-1D in memory. Leaves Python's and numpy's global RNG states as found."""
    from mnist1d.data import make_dataset

    args = dataset_args(num_samples)
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(args)  # seeds the global RNGs with args.seed
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {
        "x": np.asarray(d["x"], dtype=np.float32), "y": np.asarray(d["y"], dtype=np.int64),
        "x_test": np.asarray(d["x_test"], dtype=np.float32),
        "y_test": np.asarray(d["y_test"], dtype=np.int64),
    }


def _write_atomic(path: Path, arrays: dict[str, np.ndarray], args_json: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            extra = {"mnist1d_version": np.array(v)} if (v := _installed_version()) else {}
            np.savez(f, args=np.array(args_json), **extra, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


_KEYS = ("x", "y", "x_test", "y_test")


def _installed_version() -> str | None:
    try:
        return importlib.metadata.version("mnist1d")
    except importlib.metadata.PackageNotFoundError:
        return None


def _read_cache(path: Path, args_json: str | None, version: str | None = None,
                num_samples: int | None = None) -> tuple[dict[str, np.ndarray], bool] | None:
    """The cached arrays and the mnist1d version the file names (None: none), or None.

    With ``args_json`` the stored generation arguments must equal it. Without (the fast
    path), the file must name ``version`` as the mnist1d that made it, and its stored
    arguments must say ``num_samples`` and the seed of its file name."""
    try:
        with np.load(path, allow_pickle=False) as z:
            stored = str(z["args"])
            made_by = str(z["mnist1d_version"]) if "mnist1d_version" in z.files else None
            if args_json is not None:
                if stored != args_json:
                    return None
            else:
                args = json.loads(stored)
                if (made_by is None or made_by != version
                        or path != cache_path(path.parent, num_samples, args.get("seed"))
                        or args.get("num_samples") != num_samples):
                    return None
            return {k: z[k] for k in _KEYS}, made_by
    except (OSError, KeyError, ValueError, TypeError):  # missing, truncated or foreign file
        return None


def _fast_read(root: Path, num_samples: int) -> dict[str, np.ndarray] | None:
    """A cached file that the installed mnist1d made, read without importing mnist1d
    (its import costs ~1.4 s: it loads matplotlib and scipy.interpolate). A new mnist1d
    release that changes its defaults changes its version, so the slow path checks them."""
    version = _installed_version()
    if version is None:
        return None
    for path in sorted(Path(root).glob(f"mnist1d_n{int(num_samples)}_seed*.npz")):
        found = _read_cache(path, None, version, int(num_samples))
        if found is not None:
            return found[0]
    return None


def load_arrays(num_samples: int, root: Path | None) -> dict[str, np.ndarray]:
    """The four arrays, from the cache under ``root`` if valid, else generated (and cached)."""
    if root is not None:
        arrays = _fast_read(root, num_samples)
        if arrays is not None:
            return arrays
    args = dataset_args(num_samples)
    args_json = _args_json(args)
    path = cache_path(root, num_samples, args.seed) if root is not None else None
    if path is not None:
        found = _read_cache(path, args_json)
        if found is not None:
            arrays, made_by = found
            if made_by != _installed_version():  # older file, or mnist1d upgraded: once
                try:
                    _write_atomic(path, arrays, args_json)
                except OSError:  # a read-only dataset folder: the slow check stays
                    pass
            return arrays
    arrays = generate(num_samples)
    if path is not None:
        _write_atomic(path, arrays, args_json)
    return arrays


def _train_size(cfg) -> int:
    return int(cfg.num_samples * 0.8)


def _test_size(cfg) -> int:
    return cfg.num_samples - int(cfg.num_samples * 0.8)


def check_num_samples(cfg) -> None:
    """``data.num_samples``: mnist1d makes N/10 examples per class, N >= 50."""
    n = cfg.num_samples
    if not (n >= 50 and n % 10 == 0):
        raise ConfigError(f"data.num_samples: must be a multiple of 10 (mnist1d makes N/10 per "
                          f"class) and >= 50, got {n}")


@dataset("mnist1d", input_shape=(1, 40), num_classes=10, train_size=_train_size,
         test_size=_test_size, offline="generated offline", fields=("num_samples",),
         check=check_num_samples)
def load_mnist1d(cfg, root: Path) -> Dataset:
    """Loader for ``data.name = "mnist1d"``: ``cfg.num_samples`` examples, 80% train."""
    n = int(cfg.num_samples)
    if n < 10 or n % 10:
        # mnist1d makes num_samples // 10 examples per class; anything else would
        # silently disagree with the registry's train/test sizes.
        raise ConfigError(f"data.num_samples must be a positive multiple of 10 for mnist1d, got {n}")
    a = load_arrays(n, root)
    return Dataset(
        name="mnist1d",
        train_x=torch.from_numpy(a["x"]).unsqueeze(1),
        train_y=torch.from_numpy(a["y"]),
        test_x=torch.from_numpy(a["x_test"]).unsqueeze(1),
        test_y=torch.from_numpy(a["y_test"]),
        num_classes=10,
        augment=bool(getattr(cfg, "augment", False)),
    )
