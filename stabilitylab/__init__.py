"""stabilitylab: weight-space stability of lottery tickets.

    stabilitylab record            # train + record the default MNIST-1D study
    stabilitylab analyze STORE     # distances, barriers, measures, rewind-point prediction

In Python::

    import stabilitylab
    ds = stabilitylab.open_study("runs/mnist1d-default.zarr")
    ds.weights.sel(kind="imp", level=1, rewind=100, replica=0)

    # your own model and data, no registry entry needed
    stabilitylab.record_study("mnist1d_default", "runs/mine.zarr", model=make_net, data=tensors)
    analysis = stabilitylab.analyze_study("runs/mine.zarr")
"""

from stabilitylab.config import load_config
from stabilitylab.core.errors import (
    ConfigError,
    DataMissingError,
    StabilityLabError,
    StoreError,
)
from stabilitylab.core.version import __version__


def open_study(url, **kwargs):
    """Open a study store lazily as an ``xarray.Dataset`` (see docs/store-schema.md)."""
    from stabilitylab.store import open_study as _open

    return _open(url, **kwargs)


def open_analysis(url, **kwargs):
    """Open the ``analysis`` group written by ``stabilitylab analyze``."""
    from stabilitylab.store import open_analysis as _open

    return _open(url, **kwargs)


def record_study(config=None, out=None, *, model=None, data=None, **kwargs):
    """Train and record a study, optionally with your own model and data
    (see :func:`stabilitylab.api.record_study`)."""
    from stabilitylab.api import record_study as _record

    return _record(config, out, model=model, data=data, **kwargs)


def analyze_study(out, *, model=None, data=None, **kwargs):
    """Analyze a recorded study; returns the analysis Dataset (see :func:`stabilitylab.api.analyze_study`)."""
    from stabilitylab.api import analyze_study as _analyze

    return _analyze(out, model=model, data=data, **kwargs)


__all__ = ["ConfigError", "DataMissingError", "StabilityLabError", "StoreError", "__version__",
           "analyze_study", "load_config", "open_analysis", "open_study", "record_study"]
