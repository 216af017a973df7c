"""stabilitylab: weight-space stability of lottery tickets.

    stabilitylab record            # train + record the default MNIST-1D study
    stabilitylab analyze STORE     # distances, barriers, measures, rewind-point prediction

In Python::

    import stabilitylab
    ds = stabilitylab.open_study("runs/mnist1d-default.zarr")
    ds.weights.sel(kind="imp", level=1, rewind=100, replica=0)
"""

__version__ = "0.1.0"

from stabilitylab.config import load_config
from stabilitylab.errors import (
    ConfigError,
    DataMissingError,
    StabilityLabError,
    StoreError,
)


def open_study(url, **kwargs):
    """Open a study store lazily as an ``xarray.Dataset`` (see docs/store-schema.md)."""
    from stabilitylab.store import open_study as _open

    return _open(url, **kwargs)


def open_analysis(url, **kwargs):
    """Open the ``analysis`` group written by ``stabilitylab analyze``."""
    from stabilitylab.store import open_analysis as _open

    return _open(url, **kwargs)


def record_study(cfg, out, **kwargs):
    """Train and record a study (see :func:`stabilitylab.study.runner.record_study`)."""
    from stabilitylab.study.runner import record_study as _record

    return _record(cfg, out, **kwargs)


__all__ = ["ConfigError", "DataMissingError", "StabilityLabError", "StoreError", "__version__",
           "load_config", "open_analysis", "open_study", "record_study"]
