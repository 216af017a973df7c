"""Opt-in adaptive α search for interpolation barriers (``analyze --alphas adaptive``).

    stabilitylab analyze runs/mnist1d-default.zarr --alphas adaptive

The default stays the evenly spaced 30-point grid of Frankle et al. ("Linear Mode
Connectivity and the Lottery Ticket Hypothesis", ICML 2020); this search is used only when
asked for. It evaluates a coarse grid of :data:`COARSE_ALPHAS` evenly spaced points
(both endpoints included, spacing h₀ = 1 / (COARSE_ALPHAS − 1)), then refines around the
maximum of each objective in :data:`REFINE_ROUNDS` rounds. Round r halves the spacing,
h_r = h₀ / 2^r, and evaluates α̂ ± h_r around the current best α̂ (clipped to [0, 1]);
the best of the three becomes α̂ (ties keep α̂).

Resolution. For an objective that is unimodal on [0, 1] (it rises to one maximum, then
falls), the maximiser α* stays within [α̂ − h_r, α̂ + h_r] after every round: on the
coarse grid the neighbours of α̂ are no higher, so α* lies within h₀ of it; a higher
value at α̂ ± h_r moves the bracket onto that half, otherwise α* lies within h_r of α̂.
So the search locates α* within :func:`resolution` = h₀ / 2^R (0.1 / 32 = 0.003125 with
the defaults), using COARSE_ALPHAS + 2R evaluations per objective and path instead of the
≈ 1 / resolution of an equally fine grid. A curve with several separated peaks can mislead
it when the highest peak falls between two coarse points (a grid can miss it as well).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from stabilitylab.analysis.barriers import alpha_grid

__all__ = ["COARSE_ALPHAS", "REFINE_ROUNDS", "refine_maximum", "resolution"]

#: Evenly spaced points of the coarse grid, endpoints included (spacing 0.1).
COARSE_ALPHAS = 11
#: Refinement rounds; each halves the spacing around the maximum.
REFINE_ROUNDS = 5


def resolution(coarse: int = COARSE_ALPHAS, rounds: int = REFINE_ROUNDS) -> float:
    """Half-width of the final bracket around the located maximum: (1 / (coarse − 1)) / 2^rounds."""
    return 1.0 / (coarse - 1) / 2**rounds


def refine_maximum(evaluate: Callable[[np.ndarray, np.ndarray], np.ndarray],
                   coarse_values: np.ndarray, *, coarse: int = COARSE_ALPHAS,
                   rounds: int = REFINE_ROUNDS) -> tuple[np.ndarray, np.ndarray]:
    """Refine the maximum of n curves whose coarse-grid values are known.

    Parameters
    ----------
    evaluate : callable
        ``evaluate(rows (M,), alphas (M,)) -> (M,)`` the objective of curve ``rows[i]`` at
        ``alphas[i]`` (all of a round's points in one call, so a caller batches them).
    coarse_values : numpy.ndarray
        (n, coarse) the objective on :func:`~stabilitylab.analysis.barriers.alpha_grid`
        ``(coarse)``; rows with NaN are left alone (NaN results).
    coarse, rounds : int
        Grid size and number of halvings (module docstring).

    Returns
    -------
    best_alpha, best_value : numpy.ndarray
        (n,) the located maximiser (within :func:`resolution` of the true one for a
        unimodal objective) and the objective there (the maximum over every evaluated
        point). Cost: ``rounds`` calls of ``evaluate`` with 2n points each.
    """
    grid = alpha_grid(coarse)
    values = np.asarray(coarse_values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != coarse:
        raise ValueError(f"coarse_values must be (n, {coarse}), got {values.shape}")
    ok = np.isfinite(values).all(1)
    best_alpha = np.full(len(values), np.nan)
    best_value = np.full(len(values), np.nan)
    if not ok.any():
        return best_alpha, best_value
    rows = np.flatnonzero(ok)
    first = values[rows].argmax(1)  # first maximum on ties
    alpha, value = grid[first], values[rows, first]
    step = grid[1] - grid[0]
    for _ in range(rounds):
        step = step / 2
        cand = np.concatenate([np.clip(alpha - step, 0.0, 1.0), np.clip(alpha + step, 0.0, 1.0)])
        got = np.asarray(evaluate(np.concatenate([rows, rows]), cand), dtype=np.float64)
        left, right = got[:len(rows)], got[len(rows):]
        for side_alpha, side_value in ((cand[:len(rows)], left), (cand[len(rows):], right)):
            better = side_value > value
            alpha = np.where(better, side_alpha, alpha)
            value = np.where(better, side_value, value)
    best_alpha[rows], best_value[rows] = alpha, value
    return best_alpha, best_value


def refine_paths(stacked, wa, wb, x, y, bn_x, coarse_curves: dict[str, np.ndarray],
                 objectives: tuple[str, ...], *, coarse: int = COARSE_ALPHAS,
                 rounds: int = REFINE_ROUNDS) -> dict[str, np.ndarray]:
    """Barriers of n linear paths α·W_a + (1 − α)·W_b by the adaptive search.

    Parameters
    ----------
    stacked, x, y, bn_x
        As for :func:`~stabilitylab.analysis.interpolate.evaluate_points` (``bn_x``: the
        BatchNorm recompute examples, or None).
    wa, wb : torch.Tensor
        (n, P) the paths' two ends (α = 1 and α = 0).
    coarse_curves : dict
        ``"error"`` and/or ``"loss"``: (n, coarse) values on the coarse grid.
    objectives : tuple of str
        The curves whose maximum is refined ("error", "loss"); every evaluated point's
        error and loss count towards every barrier.

    Returns
    -------
    dict
        (n,) float64: ``{q}_barrier`` max over every evaluated α of E_α minus the mean of
        the endpoints (Frankle et al., ICML 2020) and ``{q}_above_line`` max of E_α above
        the chord (Entezari et al., ICLR 2022, Eq. 1), for each q of ``coarse_curves``; NaN where a
        coarse curve has NaN. Every round's points of all paths are one stack of
        ``evaluate_points``.
    """
    import torch

    from stabilitylab.analysis.interpolate import evaluate_points

    grid = alpha_grid(coarse)
    n = len(wa)
    rows_seen = [np.repeat(np.arange(n), coarse)]
    alpha_seen = [np.tile(grid, n)]
    value_seen = {q: [np.asarray(c, np.float64).reshape(-1)] for q, c in coarse_curves.items()}

    def evaluate(rows, alphas, q):
        r = torch.as_tensor(rows, device=wa.device)
        a = torch.as_tensor(alphas, dtype=wa.dtype, device=wa.device)[:, None]
        res = evaluate_points(stacked, a * wa[r] + (1 - a) * wb[r], x, y, bn_recompute_x=bn_x)
        rows_seen.append(np.asarray(rows))
        alpha_seen.append(np.asarray(alphas, np.float64))
        for name, seen in value_seen.items():
            seen.append(res[name])
        return res[q]

    for q in objectives:
        refine_maximum(lambda rows, alphas, q=q: evaluate(rows, alphas, q), coarse_curves[q],
                       coarse=coarse, rounds=rounds)
    rows, alphas = np.concatenate(rows_seen), np.concatenate(alpha_seen)
    out = {}
    for q, seen in value_seen.items():
        curve = np.asarray(coarse_curves[q], np.float64)
        first, last = curve[:, 0], curve[:, -1]
        values = np.concatenate(seen)
        peak = np.full(n, -np.inf)
        np.maximum.at(peak, rows, values)
        above = values - ((1 - alphas) * first[rows] + alphas * last[rows])
        above[(alphas == 0.0) | (alphas == 1.0)] = 0.0  # the chord passes through the ends
        top = np.full(n, -np.inf)
        np.maximum.at(top, rows, above)
        bad = ~np.isfinite(curve).all(1)
        out[f"{q}_barrier"] = np.where(bad, np.nan, peak - 0.5 * (first + last))
        out[f"{q}_above_line"] = np.where(bad, np.nan, top)
    return out
