"""The run kinds: what each kind of run trains, one module per kind (or per family).

A study trains IMP copies at every level and, at control levels, the controls named in
``study.controls``. Each kind is a :class:`RunKind` (:mod:`.registry`) declaring

- ``name`` and a one-line ``meaning``;
- ``control``: trained only at control levels (and only when listed in
  ``study.controls``), or at every level; ``noise``: trained at ``study.noise_levels``
  when ``study.noise`` names it;
- ``mask(MaskInputs) -> masks``: its masks at (level, rewind k), one per (kind, level, k)
  (shared by its replicas), from the IMP masks at (level, k), W_k, W_0, a few training
  batches and a generator seeded for (kind, level, k);
- ``start(StartInputs) -> Start``: each replica's start weights, BN buffers and optimizer
  state, e.g. from W_k with the dense run's optimizer state at k, or a fresh init;
- ``data_order(replica) -> j``: the replica trains under data order u_j;
- ``own_masks``: the mask rule is called once per replica instead, with ``MaskInputs.own``
  the masks that IMP on that copy's own earlier levels gives (each copy its own ticket);
- how it is shown (``label``, ``pair_label``, ``color``, ``line``), whether it starts from
  W_k (``starts_at_rewind``) and its place in the registry (``rank``).

Every module of this package other than :mod:`.registry` declares kinds with
:func:`register` and is imported when the package loads (no torch: the rules import it when
they run), so adding a kind is one file. A store's ``kind`` coordinate is the three kinds every
store has, then the kinds its study trains in registry order (:func:`store_kinds`).
The execution (:mod:`stabilitylab.study.execution`) only looks kinds up here.

The three kinds every store has (Frankle et al. 2020, "Linear Mode Connectivity and the
Lottery Ticket Hypothesis", Sec. 4; Frankle & Carbin 2019, Sec. 2): ``imp``,
``random_prune``, ``reinit``.
"""

from __future__ import annotations

import importlib
import pkgutil

from stabilitylab.study.kinds.registry import (
    REGISTRY,
    MaskInputs,
    Masks,
    RunKind,
    Start,
    StartInputs,
    control_names,
    from_rewind,
    get,
    imp_mask,
    kinds_at,
    names,
    noise_names,
    own_order,
    register,
    store_kinds,
)


def _load() -> None:
    """Import every kind module of this package (each registers its kinds)."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name != "registry":
            importlib.import_module(f"{__name__}.{info.name}")


_load()

from stabilitylab.study.kinds.init import dense_mask, independent_init
from stabilitylab.study.kinds.init_imp import own_imp_mask
from stabilitylab.study.kinds.perturb import first_order, perturbed_rewind
from stabilitylab.study.kinds.pruning_at_init import shuffled_mask
from stabilitylab.study.kinds.random_prune import random_mask
from stabilitylab.study.kinds.reinit import fresh_init

__all__ = [
    "REGISTRY", "MaskInputs", "Masks", "RunKind", "Start", "StartInputs", "control_names",
    "dense_mask", "first_order", "fresh_init", "from_rewind", "get", "imp_mask",
    "independent_init", "kinds_at", "names", "noise_names", "own_imp_mask", "own_order",
    "perturbed_rewind",
    "random_mask", "register", "shuffled_mask", "store_kinds",
]
