"""The (kind, level, rewind) cells of a study that hold a complete run, as one ``cell`` dim.

Measure groups compute over ``cell`` in one array operation instead of looping over
(kind, level, rewind) with ``.sel(...).values`` and ``.loc`` writes:

    cells = Cells.of(ctx)
    final = cells.take(ctx.load("final_weights"))      # (cell, replica, param)
    values = some_array_function(final.values, ...)    # (cell, ...)
    result = cells.scatter(ctx, "sign_flips", values)  # schema dims, NaN elsewhere

``take`` works on numpy- and dask-backed arrays alike (on dask it stays lazy, one chunk
per cell), so trajectory groups read only the cells that exist.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from stabilitylab.analysis.registry import allocate

_CELL_DIMS = ("kind", "level", "rewind")


@dataclass(frozen=True)
class Cells:
    """Positions (into the context's kind, level and rewind lists) of the cells."""

    kind: np.ndarray
    level: np.ndarray
    rewind: np.ndarray
    labels: tuple  # (kinds, levels, rewinds) of the context

    @classmethod
    def of(cls, ctx, where: np.ndarray | None = None) -> Cells:
        """The cells with at least one complete run (and ``where`` True, if given)."""
        present = ctx.cells().values
        if where is not None:
            present = present & where
        k, lv, r = np.nonzero(present)
        return cls(k, lv, r, (list(ctx.kinds), list(ctx.levels), list(ctx.rewinds)))

    def __len__(self) -> int:
        return len(self.kind)

    def _positions(self) -> dict[str, np.ndarray]:
        return dict(zip(_CELL_DIMS, (self.kind, self.level, self.rewind)))

    def take(self, da: xr.DataArray) -> xr.DataArray:
        """``da`` at every cell: its kind, level and rewind dims (those it has) become one
        leading ``cell`` dim."""
        idx = {d: xr.DataArray(p, dims="cell") for d, p in self._positions().items()
               if d in da.dims}
        return da.isel(idx).transpose("cell", ...)

    def coord(self, name: str) -> xr.DataArray:
        """The ``kind``, ``level`` or ``rewind`` label of every cell."""
        labels = self.labels[_CELL_DIMS.index(name)]
        return xr.DataArray(np.asarray(labels)[self._positions()[name]], dims="cell")

    def subset(self, keep: np.ndarray) -> Cells:
        """The cells where ``keep`` (cell,) is True."""
        return Cells(self.kind[keep], self.level[keep], self.rewind[keep], self.labels)

    def scatter(self, ctx, name: str, values: np.ndarray, drop: str | None = None,
                **coords) -> xr.DataArray:
        """Analysis variable ``name`` (all-NaN outside the cells) with ``values`` (cell, ...)
        written at the cells in one assignment; the trailing axes of ``values`` are the
        variable's dims after kind, level and rewind, in schema order. ``drop``: a cell dim
        the variable does not have (e.g. ``"kind"`` for an imp-only variable); ``coords``:
        those of its other dims, as for :func:`~stabilitylab.analysis.registry.allocate`."""
        out = allocate(ctx, name, **coords)
        lead = [d for d in _CELL_DIMS if d in out.dims]
        if drop is None and len(lead) != 3:
            raise ValueError(f"{name!r} lacks some of {_CELL_DIMS}: say which with drop=")
        order = (*lead, *[d for d in out.dims if d not in lead])
        target = out.transpose(*order).values  # a view when already in order, copied else
        pos = self._positions()
        target[tuple(pos[d] for d in lead)] = values
        return xr.DataArray(target, dims=order, coords=out.coords).transpose(*out.dims)
