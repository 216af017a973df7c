"""What separates the two copies of a replica pair, per run kind, and how it is shown.

A pair measure (barrier, distance, disagreement) means what the pair's copies differ
in. In a recorded study the copies of a (kind, level, k) start at the same W_k and
differ in data order (Frankle et al. 2020, "Linear Mode Connectivity and the Lottery
Ticket Hypothesis", Sec. 2: the instability of a network to SGD noise), or, for the
noise kinds, in a perturbation as well. Copies that were initialised independently
(OpenLTH replicates: their own init, data order and masks; the ``init`` and ``init_imp``
noise kinds)
are **different-init pairs**: their barrier is the barrier between independently
trained networks, not the data-order instability of copies of one W_k.

A store may name the noise of each kind's pairs in its attribute ``pair_noise``
(``{kind: noise}``; an OpenLTH import writes ``"init"`` for every kind). Without it a
kind's pairs are data-order pairs, a noise kind's pairs differ by that noise kind.
``analyze`` writes the result as the coordinate ``pair_noise`` along ``kind`` (so into
every CSV row) and as the attribute ``pair_noise``.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

DATA_ORDER = "data_order"  # the noise of every kind that is not a noise kind


def pair_noise(attrs: dict, kinds) -> dict[str, str]:
    """``{kind: noise}`` for the store with attributes ``attrs`` and kind coordinate ``kinds``."""
    from stabilitylab.study.kinds import REGISTRY

    stored = attrs.get("pair_noise") or {}
    out = {}
    for kind in (str(k) for k in kinds):
        if kind in stored:
            out[kind] = str(stored[kind])
        elif kind in REGISTRY and REGISTRY[kind].noise:
            out[kind] = REGISTRY[kind].pair_noise or kind
        else:
            out[kind] = DATA_ORDER
    return out


def label(noise: str) -> str:
    """The human label of pairs whose copies differ by ``noise``: the noise kind's
    ``pair_label`` (:mod:`stabilitylab.study.kinds`)."""
    from stabilitylab.study.kinds import REGISTRY

    if noise == DATA_ORDER:
        return "data-order pairs"
    kind = REGISTRY.get(noise)
    return kind.pair_label if kind is not None and kind.pair_label else f"{noise} pairs"


def barrier_name(noise: str) -> str:
    """What the error barrier of such pairs is called in summaries."""
    from stabilitylab.study.kinds import REGISTRY

    kind = REGISTRY.get(noise)
    return "instability" if kind is None or kind.starts_at_rewind else f"barrier between {label(noise)}"


def absent_pair_measures(ctx, results: dict) -> list[str]:
    """With one replica there are no pairs: the pair variables are NaN and named."""
    if len(ctx.replicas) >= 2:
        return []
    absent = []
    for name, value in results.items():
        if "pair" in value.dims:
            results[name] = xr.full_like(value, np.nan, dtype=float)
            absent.append(name)
    return absent


def annotate(analysis: xr.Dataset, noise: dict[str, str]) -> xr.Dataset:
    """``analysis`` with the coordinate ``pair_noise`` (kind) and the attribute."""
    if "kind" in analysis.dims:
        values = np.array([noise.get(str(k), "data_order") for k in analysis.kind.values], object)
        analysis = analysis.assign_coords(pair_noise=("kind", values))
    analysis.attrs["pair_noise"] = dict(noise)
    return analysis
