"""Divergence of two copies along training: growth curve, rate and time.

Array layer: numpy, explicit axes. ``dist`` holds a distance curve d(t) between two
copies started at the same step k (for instance the L2 distance of two ``perturb`` or
``data_order`` copies at every recorded step), with the recorded steps t ≥ k on ``axis``;
every other axis (pairs, levels, rewinds, ...) is carried along. ``steps`` is the 1-D,
strictly increasing array of those recorded steps; its first entry is the start k.

The divergence rate is an empirical finite-time Lyapunov exponent of training: for a
dynamical system, nearby trajectories separate as d(t) ≈ d(k) e^{λ (t − k)}, and the
finite-time exponent over a window is the growth rate of log d over it (e.g. Shadden,
Lekien & Marsden 2005, "Definition and properties of Lagrangian coherent structures from
finite-time Lyapunov exponents in two-dimensional aperiodic flows", Physica D 212). Summers & Dinneen 2021, "Nondeterminism
and Instability in Neural Network Optimization" (ICML) motivate it for training: a one-bit
change of the initialisation grows into as much run-to-run variability as every source of
randomness together.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["distance_growth", "divergence_rate", "divergence_time"]


def _prepare(dist, steps, axis: int) -> tuple[np.ndarray, np.ndarray]:
    d = np.moveaxis(np.asarray(dist, dtype=np.float64), axis, -1)
    s = np.asarray(steps, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"steps must be a non-empty 1-D array, got shape {s.shape}")
    if d.shape[-1] != s.size:
        raise ValueError(f"dist has {d.shape[-1]} points on its step axis, steps has {s.size}")
    if not np.all(np.isfinite(s)) or np.any(np.diff(s) <= 0):
        raise ValueError("steps must be finite and strictly increasing")
    return d, s


def divergence_rate(dist, steps, window, *, axis: int = -1) -> np.ndarray:
    """Least-squares slope of log d(t) against t over ``k ≤ t ≤ k + window`` (per step).

    ``window`` is counted in training steps from the start k = ``steps[0]``, so the rate
    does not depend on how densely the steps were recorded. Entries with d ≤ 0 (identical
    copies, e.g. two data-order copies at t = k) or non-finite d are left out; the rate is
    NaN where fewer than two points remain. For d = c · e^{λ t} the rate is λ exactly.

    Returns an array of ``dist``'s shape without ``axis``.
    """
    d, s = _prepare(dist, steps, axis)
    if isinstance(window, bool) or not np.isscalar(window) or not math.isfinite(window) \
            or window <= 0:
        raise ValueError(f"window must be a number of steps > 0, got {window!r}")
    t = s - s[0]
    use = (t <= window) & np.isfinite(d) & (d > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.where(use, np.log(np.where(use, d, 1.0)), 0.0)
        n = use.sum(-1)
        t_mean = np.where(use, t, 0.0).sum(-1) / n
        y_mean = y.sum(-1) / n
        dt = np.where(use, t - t_mean[..., None], 0.0)
        sxx = (dt * dt).sum(-1)
        sxy = (dt * (y - y_mean[..., None])).sum(-1)
        rate = sxy / sxx
    return np.where((n >= 2) & (sxx > 0), rate, np.nan)


def divergence_time(dist, steps, fraction: float = 0.5, *, axis: int = -1) -> np.ndarray:
    """Steps from the start k until d first reaches ``fraction`` of its final value.

    The result is ``t* − k`` for the first recorded t* with d(t*) ≥ fraction · d(T),
    where d(T) is the last recorded value. NaN where d(T) is not finite and > 0, or where
    the threshold is never reached. Invariant to scaling d by a positive constant, and
    non-decreasing in ``fraction``.
    """
    d, s = _prepare(dist, steps, axis)
    if isinstance(fraction, bool) or not np.isscalar(fraction) or not math.isfinite(fraction) \
            or fraction <= 0:
        raise ValueError(f"fraction must be a number > 0, got {fraction!r}")
    final = d[..., -1]
    ok = np.isfinite(final) & (final > 0)
    reached = d >= (fraction * final)[..., None]  # NaN entries compare False
    first = np.argmax(reached, axis=-1)
    any_hit = reached.any(-1)
    return np.where(ok & any_hit, s[first] - s[0], np.nan)


def distance_growth(dist, steps, *, axis: int = -1) -> np.ndarray:
    """The curve d(t) / d(T), normalised by its last recorded value (same shape as ``dist``).

    NaN along a curve whose final value is not finite and > 0.
    """
    d, _ = _prepare(dist, steps, axis)
    final = d[..., -1:]
    ok = np.isfinite(final) & (final > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(ok, d / np.where(ok, final, 1.0), np.nan)
    return np.moveaxis(out, -1, axis)
