"""What every study-level measure needs: the opened store, the model, the data, which runs exist.

:class:`StudyContext` is built once per ``analyze`` and passed to the measure
modules (:mod:`trajectory_measures`, :mod:`function_measures`).
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import xarray as xr

from stabilitylab.config import config_from_dict, validate
from stabilitylab.core.keys import STATUS_COMPLETE, STATUS_DIVERGED, STATUS_INCOMPLETE
from stabilitylab.core.registry import check_trusted, untrusted
from stabilitylab.train.functional import StackedModel

log = logging.getLogger(__name__)


@dataclass
class StudyContext:
    url: str
    ds: xr.Dataset
    cfg: object
    resolved: object
    stacked: StackedModel
    data: object  # Dataset on device
    device: torch.device
    status: np.ndarray  # (kind, level, rewind, replica)
    kinds: list[str]
    levels: list[int]
    rewinds: list[int]
    replicas: list[int]
    steps: np.ndarray
    prunable: np.ndarray  # (P,) bool: conv/linear weights
    skipped: list[str] = field(default_factory=list)

    @property
    def pairs(self) -> list[tuple[int, int]]:
        return list(itertools.combinations(range(len(self.replicas)), 2))

    @property
    def pair_labels(self) -> list[str]:
        return [f"{a}-{b}" for a, b in self.pairs]

    def complete(self, kind: str, level: int, rewind: int, replica: int) -> bool:
        return self.status[self._idx(kind, level, rewind, replica)] == STATUS_COMPLETE

    def complete_replicas(self, kind, level, rewind) -> list[int]:
        return [r for r in range(len(self.replicas)) if self.complete(kind, level, rewind, r)]

    def combos(self):
        """(kind, level, rewind) with at least one complete run."""
        for kind in self.kinds:
            for level in self.levels:
                for k in self.rewinds:
                    if self.complete_replicas(kind, level, k):
                        yield kind, level, k

    def _idx(self, kind, level, rewind, replica):
        return (self.kinds.index(kind), self.levels.index(level), self.rewinds.index(rewind), replica)

    def trajectory(self, kind, level, rewind) -> np.ndarray:
        """(R, S, P) float32 weights of every replica; steps before the rewind point are NaN."""
        w = self.ds.weights.sel(kind=kind, level=level, rewind=rewind).values.astype(np.float32)
        w[:, self.steps < rewind, :] = np.nan
        return w

    def final_weights(self, kind, level, rewind) -> np.ndarray:
        """(R, P) weights at T."""
        return self.ds.weights.sel(kind=kind, level=level, rewind=rewind,
                                   step=self.resolved.total_steps).values.astype(np.float32)

    def final_buffers(self, kind, level, rewind) -> np.ndarray:
        return self.ds.final_buffers.sel(kind=kind, level=level, rewind=rewind).values

    def mask(self, kind, level, rewind) -> np.ndarray:
        return np.asarray(self.ds.masks.sel(kind=kind, level=level, rewind=rewind).values, bool)


def _skipped_lines(ds, status, kinds, levels, rewinds) -> list[str]:
    lines = []
    diverged = ds.diverged_step.values
    for idx in zip(*np.nonzero((status == STATUS_INCOMPLETE) | (status == STATUS_DIVERGED))):
        kind, level, k, r = kinds[idx[0]], levels[idx[1]], rewinds[idx[2]], int(idx[3])
        if status[idx] == STATUS_DIVERGED:
            lines.append(f"skipped {kind} level {level} rewind {k} replica {r}: diverged at step "
                         f"{int(diverged[idx])}")
        else:
            lines.append(f"skipped {kind} level {level} rewind {k} replica {r}: incomplete")
    return lines


def load_context(url, *, device=None, storage_options=None, data_root=None,
                 trust_plugins: bool = False) -> StudyContext:
    """Open the store, rebuild the model and data it was trained with.

    ``data_root``: where the dataset is (None: ``$STABILITYLAB_DATA`` or the default; see
    :func:`stabilitylab.data.data_root`). The ``data.root`` saved in the store is ignored:
    nothing read from a store chooses a path outside it. Nor does it choose code: a
    ``module:function`` model or dataset named by the store is imported only with
    ``trust_plugins`` (:func:`stabilitylab.core.registry.untrusted`).
    """
    from stabilitylab.core.device import resolve_device
    from stabilitylab.store import open_study
    from stabilitylab.store.schema import describe
    from stabilitylab.study.context import build_model_and_data

    ds = open_study(url, storage_options=storage_options)
    where = describe(url)
    check_trusted(ds.attrs["config"], where, trust_plugins)
    with untrusted(where, trust_plugins):
        cfg = config_from_dict(ds.attrs["config"])
        resolved = validate(cfg)
    dev = resolve_device(device or "auto")
    layout = ds.attrs["param_layout"]
    if isinstance(layout, str):
        layout = json.loads(layout)

    def check_layout(stacked, _template):  # before any data is read
        if [tuple(s["shape"]) for s in layout] != [s.shape for s in stacked.param_slots]:
            from stabilitylab.core.errors import StoreError

            raise StoreError(f"{url}: parameter layout does not match model {cfg.model.name!r}")

    with untrusted(where, trust_plugins):
        parts = build_model_and_data(cfg, dev, template_seed=0, check=check_layout,
                                     data_root=data_root if data_root is not None else "")
    stacked, data = parts.stacked, parts.data
    prunable = np.zeros(stacked.num_params, bool)
    for s in stacked.param_slots:
        if s.prunable:
            prunable[s.offset:s.offset + s.size] = True
    kinds = [str(k) for k in ds.kind.values]
    levels = [int(v) for v in ds.level.values]
    rewinds = [int(v) for v in ds.rewind.values]
    status = ds.status.values
    return StudyContext(
        url=str(url), ds=ds, cfg=cfg, resolved=resolved, stacked=stacked, data=data, device=dev,
        status=status, kinds=kinds, levels=levels, rewinds=rewinds,
        replicas=[int(v) for v in ds.replica.values], steps=ds.step.values, prunable=prunable,
        skipped=_skipped_lines(ds, status, kinds, levels, rewinds),
    )
