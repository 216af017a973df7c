"""The study store: Zarr v3, one documented schema (docs/store-schema.md).

- :class:`StudyWriter` creates / resumes a store and fills it off the training thread.
- :func:`open_study` / :func:`open_analysis` open it lazily as xarray (dask-backed).
- :func:`validate` checks a store against the schema.
"""

from stabilitylab.core.keys import STATUS_CODES, RunKey
from stabilitylab.store.reader import open_analysis, open_study
from stabilitylab.store.schema import KINDS, SCHEMA, SCHEMA_VERSION
from stabilitylab.store.validate import validate
from stabilitylab.store.writer import StudyWriter, write_analysis

__all__ = [
    "KINDS", "SCHEMA", "SCHEMA_VERSION", "STATUS_CODES", "RunKey", "StudyWriter",
    "open_analysis", "open_study", "validate", "write_analysis",
]
