"""Weight-space distances between trained networks (array layer).

Frankle, Dziugaite, Roy & Carbin, "Stabilizing the Lottery Ticket Hypothesis"
(arXiv 1903.01611), §3 measures stability as a distance between two networks that
should have ended up in the same place:

* pruning-noise distance  d(A^{T-k}(W_k, u), A^{T-k}(m⊙W_k, u)) = ‖m⊙W_T^dense − m⊙W_T^sub‖₂
* data-order distance     d(A^{T-k}(m⊙W_k, u), A^{T-k}(m⊙W_k, u′))

with plain (unnormalised) L2 and the angle between the weight vectors, and a
randomly pruned subnetwork of the same per-layer sparsity as a baseline (ratio
Random / IMP). Every function here reduces over the parameter axis (``axis``,
default last) and accepts an optional boolean ``mask`` (True = surviving weight)
that broadcasts against the inputs; masked-out coordinates are ignored.

Inputs may be numpy arrays or torch tensors; results are float64 numpy arrays
(0-d for single vectors). Cost: O(P) per pair, computed in float64.
"""

from __future__ import annotations

import threading
from itertools import combinations

import numpy as np

__all__ = [
    "angle",
    "data_order_distance",
    "l2_distance",
    "pairwise_distance",
    "pruning_noise_distance",
    "random_imp_ratio",
]


def _as_float64(x) -> np.ndarray:
    return np.asarray(_as_array(x), dtype=np.float64)


def _as_bool(mask) -> np.ndarray:
    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    return np.asarray(mask, dtype=bool)


def _masked(x: np.ndarray, mask) -> np.ndarray:
    return x if mask is None else np.where(_as_bool(mask), x, 0.0)


def _masked_float64(x: np.ndarray, mask) -> np.ndarray:
    """``_masked(_as_float64(x), mask)`` in one pass over ``x`` (float32 is widened as
    ``np.where`` picks: the same values)."""
    if mask is None:
        return _as_float64(x)
    return np.where(_as_bool(mask), _as_array(x), np.float64(0.0))


def l2_distance(a, b, mask=None, axis: int = -1) -> np.ndarray:
    """Euclidean distance ‖m⊙a − m⊙b‖₂ over the parameter axis.

    Frankle et al. 2019 (arXiv 1903.01611) use plain L2 with no normalisation.

    Parameters
    ----------
    a, b : array_like
        Flat weight vectors, broadcastable against each other; ``axis`` is the
        parameter axis.
    mask : array_like of bool, optional
        True where a weight survives. Broadcasts against ``a - b``. Pruned
        coordinates contribute nothing.
    axis : int
        Parameter axis, reduced.

    Returns
    -------
    numpy.ndarray
        float64 distances with ``axis`` removed. Cost O(P).
    """
    return _by_rows(_l2_rows, _l2_chunk, a, b, mask, axis)


def _l2_rows(a, b, mask, axis):
    diff = _masked(_as_float64(a) - _as_float64(b), mask)
    return np.sqrt(np.sum(diff * diff, axis=axis))


def angle(a, b, mask=None, axis: int = -1) -> np.ndarray:
    """Angle (radians) between m⊙a and m⊙b: arccos of their cosine similarity, in [0, π].

    Reported alongside L2 by Frankle et al. 2019 (arXiv 1903.01611). Mathematically
    this is ``arccos(clip(<a,b> / (‖a‖‖b‖), -1, 1))``; it is evaluated with the
    equivalent, better conditioned ``2·atan2(‖â − b̂‖, ‖â + b̂‖)`` on the unit vectors
    â, b̂ (Kahan), so that the angle of a vector with itself (or a positive multiple
    of itself) is 0 to rounding rather than ~1e-8 from arccos near 1.

    Parameters
    ----------
    a, b : array_like
        Flat weight vectors; ``axis`` is the parameter axis.
    mask : array_like of bool, optional
        True where a weight survives; pruned coordinates are ignored.
    axis : int
        Parameter axis, reduced.

    Returns
    -------
    numpy.ndarray
        float64 angles in [0, π]; NaN where either (masked) vector is all zeros.
        Scale-invariant: ``angle(c·a, c·b) == angle(a, b)`` for c > 0. Cost O(P).
    """
    return _by_rows(_angle_rows, _angle_chunk, a, b, mask, axis)


def _angle_rows(a, b, mask, axis):
    a = _masked_float64(a, mask)
    b = _masked_float64(b, mask)
    a, b = np.broadcast_arrays(a, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        ua = a / np.linalg.norm(a, axis=axis, keepdims=True)
        ub = b / np.linalg.norm(b, axis=axis, keepdims=True)
        return 2.0 * np.arctan2(np.linalg.norm(ua - ub, axis=axis),
                                np.linalg.norm(ua + ub, axis=axis))


def _l2_chunk(a, b, mask):
    """:func:`_l2_rows` of one chunk of rows (last axis reduced) in this thread's scratch
    arrays: the same operations on the same values, in place."""
    diff = _scratch(0, _chunk_shape(a, b, mask))
    np.subtract(a, b, out=diff, dtype=np.float64)  # float32 widened exactly, as before
    if mask is not None:
        np.copyto(diff, 0.0, where=_not(mask))
    np.multiply(diff, diff, out=diff)
    return np.sqrt(np.add.reduce(diff, axis=-1))


def _angle_chunk(a, b, mask):
    """:func:`_angle_rows` of one chunk of rows (last axis reduced) in this thread's scratch
    arrays: the same operations on the same values, in place."""
    shape = _chunk_shape(a, b, mask)
    ua, ub, tmp = _scratch(0, shape), _scratch(1, shape), _scratch(2, shape)
    for u, x in ((ua, a), (ub, b)):
        _masked_float64_into(u, x, mask)
        np.divide(u, _norm(u, tmp)[..., None], out=u)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 2.0 * np.arctan2(_norm(np.subtract(ua, ub, out=tmp), tmp),
                                _norm(np.add(ua, ub, out=tmp), tmp))


def _norm(v: np.ndarray, buf: np.ndarray) -> np.ndarray:
    """``np.linalg.norm(v, axis=-1)`` of a real ``v`` (``sqrt(add.reduce(v * v))``, the
    squares in ``buf``, which may be ``v``)."""
    np.multiply(v, v, out=buf)
    return np.sqrt(np.add.reduce(buf, axis=-1))


def _masked_float64_into(out: np.ndarray, x: np.ndarray, mask) -> np.ndarray:
    """:func:`_masked_float64` of ``x`` written into ``out`` (float32 widened exactly; the
    same values), ``~mask`` in this thread's scratch."""
    np.copyto(out, x)
    if mask is not None:
        np.copyto(out, 0.0, where=_not(mask))
    return out


def _chunk_shape(a, b, mask) -> tuple:
    return np.broadcast_shapes(a.shape, b.shape, () if mask is None else mask.shape)


def _not(mask: np.ndarray) -> np.ndarray:
    """``~mask`` in this thread's scratch."""
    return np.logical_not(mask, out=_scratch(3, mask.shape, bool))


_SCRATCH = threading.local()


def _scratch(slot: int, shape: tuple, dtype=np.float64) -> np.ndarray:
    """A C-ordered array of ``shape`` in this thread's buffer ``slot``, kept for its next
    chunk (four buffers of about :data:`CHUNK_BYTES` per thread, for as long as the thread
    lives). A chunk's temporaries are then not allocated anew: fresh pages cost a fault
    each, and until glibc's thresholds have grown in a process it hands such blocks back
    to the kernel as they are freed (the trajectory group's first run faulted in about
    75,000 more pages through them, and took 0.1 s longer)."""
    n = int(np.prod(shape))
    bufs = _SCRATCH.__dict__.setdefault("bufs", {})
    buf = bufs.get(slot)
    if buf is None or buf.dtype != dtype or buf.size < n:
        buf = bufs[slot] = np.empty(max(n, CHUNK_BYTES // np.dtype(dtype).itemsize), dtype)
    return buf[:n].reshape(shape)


def _by_rows(fn, chunk_fn, a, b, mask, axis):
    """``fn(a, b, mask, axis)`` on large inputs reduced over their last axis: in chunks of
    rows of at most :data:`CHUNK_BYTES` (float64) each, which stay in the core's cache
    through the metric's several passes, where the whole arrays went through memory once a
    pass (``chunk_fn(a, b, mask)``: ``fn`` in scratch arrays reused chunk after chunk). A
    row's value does not depend on the rows it is computed with, and each chunk goes
    through the same operations, so the results are the same to the bit."""
    a, b = _as_array(a), _as_array(b)
    shapes = [a.shape, b.shape] + ([] if mask is None else [np.shape(mask)])
    shape = np.broadcast_shapes(*shapes)
    if len(shape) < 2 or axis % len(shape) != len(shape) - 1 \
            or np.prod(shape) * 8 <= CHUNK_BYTES:
        return fn(a, b, mask, axis)
    mask = None if mask is None else _as_bool(mask)
    out = np.empty(shape[:-1])
    rows = max(1, CHUNK_BYTES // max(shape[-1] * 8, 1))
    for idx in _row_chunks(shape[:-1], rows):
        out[idx] = chunk_fn(_chunk(a, idx, shape), _chunk(b, idx, shape),
                            None if mask is None else _chunk(mask, idx, shape))
    return out


def _chunk(x: np.ndarray, idx: tuple, shape: tuple) -> np.ndarray:
    """The part of ``x`` (broadcastable to ``shape``) that chunk ``idx`` of ``shape`` sees,
    its broadcast dims kept of length 1 (not broadcast out: NumPy lays out the results of
    stride-0 operands otherwise, and its sums then round otherwise)."""
    x = x.reshape((1,) * (len(shape) - x.ndim) + x.shape)
    return x[tuple((0 if isinstance(i, (int, np.integer)) else slice(None))
                   if n == 1 and full != 1 else i for i, n, full in zip(idx, x.shape, shape))]


def _as_array(x) -> np.ndarray:
    """``x`` as a numpy array of its own float type (float32 stays: widened per chunk)."""
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float64)


_METRICS = {"l2": l2_distance, "angle": angle}


def _metric(name: str):
    try:
        return _METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; choose one of {sorted(_METRICS)}") from None


def pairwise_distance(x, replica_axis: int = 0, *, metric: str | tuple[str, ...] = "l2",
                      mask=None, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Distances between all replica pairs (i < j), e.g. the data-order distance.

    Parameters
    ----------
    x : array_like
        Weights with a replica axis and a parameter axis.
    replica_axis : int
        Axis indexing replicas (R of them).
    metric : {"l2", "angle"} or a tuple of them
        Distance between two weight vectors (see :func:`l2_distance`, :func:`angle`).
        A tuple gives every metric from one pass over ``x`` (each value the same as
        with that metric alone), in a new last ``metric`` axis of the values.
    mask : array_like of bool, optional
        Broadcasts against ``x``; True where weights survive. If masks differ
        between replicas, a coordinate counts for a pair when it survives in both.
    axis : int
        Parameter axis.

    Returns
    -------
    pairs : numpy.ndarray
        (R(R−1)/2, 2) int array of replica indices (i, j), i < j, lexicographic.
    values : numpy.ndarray
        Distances with the replica and parameter axes removed and a new last
        ``pair`` axis of length R(R−1)/2. Cost O(R² P).
    """
    several = not isinstance(metric, str)
    metrics = tuple(metric) if several else (metric,)
    fns = [_metric(m) for m in metrics]
    x = _as_array(x)  # float32 is widened (exactly) chunk by chunk
    ra, pa = replica_axis % x.ndim, axis % x.ndim
    if ra == pa:
        raise ValueError("replica_axis and the parameter axis must differ")
    if mask is not None:  # must broadcast to x's shape (it may omit leading axes)
        mask = np.moveaxis(np.broadcast_to(_as_bool(mask), x.shape), (ra, pa), (-2, -1))
    x = np.moveaxis(x, (ra, pa), (-2, -1))
    r = x.shape[-2]
    pairs = np.array(list(combinations(range(r), 2)), dtype=np.int64).reshape(-1, 2)
    if mask is None or mask.strides[-2] == 0:  # one mask for every replica: prepare each once
        out = _shared_mask_pairs(x, None if mask is None else mask[..., 0, :], pairs, metrics)
    else:
        out = np.empty(x.shape[:-2] + (len(pairs), len(metrics)))
        for j, (a, b) in enumerate(pairs):
            both = mask[..., a, :] & mask[..., b, :]
            for i, fn in enumerate(fns):
                out[..., j, i] = fn(x[..., a, :], x[..., b, :], both)
    return pairs, out if several else out[..., 0]


#: Bytes of one operand's rows that the pair distances process at a time. A chunk of rows
#: stays in the core's cache through the several passes of a metric (difference, square,
#: sum; unit vectors, their sum and difference): on 408 rows of 3 replicas × 5,210 weights
#: (the default study's trajectories), 2 MiB chunks took the l2 and angle curves in 45-50 ms
#: against 86 ms for the whole array at once (one thread, 2-core Xeon).
CHUNK_BYTES = 2 << 20


def _row_chunks(lead: tuple, rows: int):
    """Index tuples that cover an array with leading dims ``lead`` in pieces of at most
    ``rows`` rows (slices of the last leading dim; one piece when it all fits)."""
    if not lead or int(np.prod(lead)) <= rows:
        yield ()
        return
    *outer, last = lead
    for idx in np.ndindex(*outer):
        for start in range(0, last, rows):
            yield (*idx, slice(start, start + rows))


def _shared_mask_pairs(x: np.ndarray, mask, pairs: np.ndarray,
                       metrics: tuple[str, ...]) -> np.ndarray:
    """:func:`pairwise_distance`'s values (…, pair, metric) when every replica has the same mask
    (or none): each replica is masked (and, for the angle, scaled to unit norm) once, not
    once per pair.
    Every value is computed by the same operations on the same rows as :func:`l2_distance`
    and :func:`angle` on the pair, so the results are the same to the bit; the differences,
    sums and squares go through one scratch buffer instead of a new array each, and the
    rows go through in chunks of :data:`CHUNK_BYTES` (a row's value does not depend on the
    rows it is computed with)."""
    lead, (r, p) = x.shape[:-2], x.shape[-2:]
    out = np.empty(lead + (len(pairs), len(metrics)))
    rows = max(1, CHUNK_BYTES // max(r * p * 8, 1))
    for idx in _row_chunks(lead, rows):
        part = x[idx]
        m = None if mask is None else mask[idx][..., None, :]
        shape = part.shape if m is None else np.broadcast_shapes(part.shape, m.shape)
        block = _masked_float64_into(_scratch(0, shape), part, m)
        for i, metric in enumerate(metrics):
            for j, value in enumerate(_pair_values(block, pairs, metric)):
                out[(*idx, Ellipsis, j, i)] = value
    return out


def _pair_values(x: np.ndarray, pairs: np.ndarray, metric: str) -> list:
    """The pair distances of :func:`_shared_mask_pairs` on one chunk of (masked) rows."""
    buf = _scratch(1, x.shape[:-2] + x.shape[-1:])
    if metric == "l2":
        return [_norm(np.subtract(x[..., i, :], x[..., j, :], out=buf), buf) for i, j in pairs]
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = _scratch(2, x.shape)
        for i in range(x.shape[-2]):
            np.divide(x[..., i, :], _norm(x[..., i, :], buf)[..., None], out=unit[..., i, :])
        u = [unit[..., i, :] for i in range(x.shape[-2])]
        return [2.0 * np.arctan2(_norm(np.subtract(u[i], u[j], out=buf), buf),
                                 _norm(np.add(u[i], u[j], out=buf), buf)) for i, j in pairs]


def pruning_noise_distance(dense, sub, mask, *, metric: str = "l2", axis: int = -1) -> np.ndarray:
    """Pruning-noise distance ‖m⊙W_T^dense − m⊙W_T^sub‖₂ (Frankle et al. 2019, arXiv 1903.01611).

    Compares the subnetwork trained alone (``sub``, started from m⊙W_k) with the same
    subnetwork trained inside the dense network (``dense``, started from W_k), both
    under the *same* data order u. Only surviving weights (``mask`` True) count.
    With full trajectories both inputs may carry a step axis and the result is a
    curve over step. Cost O(P).

    Parameters
    ----------
    dense, sub : array_like
        Weights of the dense and the sparse run; ``axis`` is the parameter axis.
    mask : array_like of bool
        The subnetwork's mask m.
    metric : {"l2", "angle"}
    axis : int
    """
    return _metric(metric)(dense, sub, mask, axis=axis)


def data_order_distance(w_u, w_u_prime, mask=None, *, metric: str = "l2",
                        axis: int = -1) -> np.ndarray:
    """Data-order distance d(A^{T−k}(m⊙W_k, u), A^{T−k}(m⊙W_k, u′)) (Frankle et al. 2019).

    Two copies of one (sub)network started from the same m⊙W_k and trained under
    different data orders u ≠ u′. Both share the mask, so pruned entries are zero
    in both and ``mask`` is optional. For all pairs of R replicas use
    :func:`pairwise_distance`. Cost O(P).
    """
    return _metric(metric)(w_u, w_u_prime, mask, axis=axis)


def random_imp_ratio(random_values, imp_values, axis: int | None = None) -> np.ndarray:
    """Ratio Random / IMP of a distance (Frankle et al. 2019, arXiv 1903.01611, Table 1).

    The paper compares IMP subnetworks with randomly pruned ones of the same
    per-layer sparsity (e.g. LeNet at 10.7% density, data order 58.6 / 20.7 = 2.8×).
    A ratio > 1 means the IMP subnetwork is more stable than chance.

    Parameters
    ----------
    random_values, imp_values : array_like
        Distances of random-pruned and IMP subnetworks (broadcastable).
    axis : int, optional
        If given, both are first averaged over this axis (e.g. over replica pairs),
        giving the paper's ratio of means. NaNs are ignored in the averages.

    Returns
    -------
    numpy.ndarray
        float64 ratio; NaN where the IMP value is 0 or NaN.
    """
    rnd = _as_float64(random_values)
    imp = _as_float64(imp_values)
    if axis is not None:
        rnd = np.nanmean(rnd, axis=axis)
        imp = np.nanmean(imp, axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(imp == 0, np.nan, rnd / np.where(imp == 0, 1.0, imp))
