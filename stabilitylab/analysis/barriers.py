"""Linear-mode-connectivity barriers from interpolation curves (array layer).

Convention used throughout stabilitylab (Frankle et al., "Linear Mode Connectivity and the
Lottery Ticket Hypothesis", ICML 2020)::

    E_α = E(α·W₁ + (1 − α)·W₂),   α on an evenly spaced grid with both endpoints,
    curve[..., 0]  = E_0 = E(W₂),  curve[..., -1] = E_1 = E(W₁).

``curve`` is any error (or loss) evaluated along that path, e.g. the output of
:func:`stabilitylab.analysis.interpolate.evaluate_interpolation`. The ``alpha``
axis is ``axis`` (default last). Every reduction is O(A) per curve; NaN anywhere on
a curve (a diverged run) gives NaN.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "DEFAULT_NUM_ALPHAS",
    "LMC_THRESHOLD",
    "MATCHING_TOLERANCE",
    "above_line_barrier",
    "alpha_grid",
    "instability",
    "is_matching",
    "is_stable",
    "loss_barrier",
]

#: Frankle et al. (LMC, ICML 2020) evaluate 30 evenly spaced points.
DEFAULT_NUM_ALPHAS = 30

#: Frankle et al. (LMC, ICML 2020): a network is *stable* when its instability is < 2% error.
#: The one definition: ``analyze`` writes it to ``attrs["threshold"]``, which the report reads.
LMC_THRESHOLD = 0.02

#: Frankle et al. (LMC, ICML 2020): a subnetwork is *matching* when its accuracy is within
#: 0.2 percentage points of the dense network's (``attrs["matching_tolerance"]``); analyze
#: takes max(this, one sd of the dense copies) as the margin of the paired test
#: (:func:`stabilitylab.analysis.prediction.paired_matching`).
MATCHING_TOLERANCE = 0.002

#: The one-sided confidence of that paired test's lower bound (``attrs["matching_confidence"]``).
MATCHING_CONFIDENCE = 0.95


def alpha_grid(n: int = DEFAULT_NUM_ALPHAS) -> np.ndarray:
    """Evenly spaced interpolation coefficients ``np.linspace(0, 1, n)``, endpoints included.

    Grids with n and 2n − 1 points are nested (the finer one contains the coarser).
    """
    if n < 2:
        raise ValueError(f"an interpolation grid needs at least 2 points (both endpoints), got {n}")
    return np.linspace(0.0, 1.0, n)


def _curve(curve) -> np.ndarray:
    if hasattr(curve, "detach"):
        curve = curve.detach().cpu().numpy()
    return np.asarray(curve, dtype=np.float64)


def instability(curve, axis: int = -1) -> np.ndarray:
    """Error barrier height: max_α E_α − mean(E(W₁), E(W₂)).

    Frankle, Dziugaite, Roy & Carbin, "Linear Mode Connectivity and the Lottery
    Ticket Hypothesis", ICML 2020, Definition of *instability*: the maximum increase
    in error along the linear path over the mean of the endpoint errors, on an
    evenly spaced α grid that includes the endpoints (the paper: 30 points, test
    error). Apply it to a loss curve for the loss barrier.

    Parameters
    ----------
    curve : array_like
        E_α along ``axis``; the first and last entries must be the endpoints.
    axis : int
        The alpha axis, reduced.

    Returns
    -------
    numpy.ndarray
        float64. With errors in [0, 1] the result lies in [|E₁ − E₂| / 2, 1]; a
        constant curve gives 0. Symmetric: reversing the curve (swapping W₁, W₂ on
        a symmetric grid) gives the same value. Cost O(A).
    """
    c = np.moveaxis(_curve(curve), axis, -1)
    return np.max(c, axis=-1) - 0.5 * (c[..., 0] + c[..., -1])


#: The loss barrier is :func:`instability` applied to a loss curve.
loss_barrier = instability


def above_line_barrier(curve, alphas=None, axis: int = -1) -> np.ndarray:
    """Barrier above the straight line between the endpoints (Entezari et al. 2022).

    Entezari, Sedghi, Saukh & Neyshabur, "The Role of Permutation Invariance in
    Linear Mode Connectivity of Neural Networks", ICLR 2022, Eq. (1):
    B = sup_α [ L(αθ₁ + (1−α)θ₂) − (α L(θ₁) + (1−α) L(θ₂)) ].

    In our convention (curve[0] = E(W₂) at α = 0, curve[-1] = E(W₁) at α = 1) the
    line at α is ``(1 − α)·curve[0] + α·curve[-1]``, i.e. it joins the curve's own
    endpoints. (Entezari et al. write it as (1−α)E₁ + αE₂ with E₁ the α = 0 endpoint;
    it is the same line.) The endpoints themselves contribute exactly 0, so the
    result is ≥ 0; it is 0 (to rounding) when E is convex along the path, e.g. the
    cross-entropy loss of softmax regression, which is convex in its parameters.

    Parameters
    ----------
    curve : array_like
        E_α along ``axis``.
    alphas : array_like, optional
        The grid (A,), ascending from 0 to 1; default ``linspace(0, 1, A)``.
    axis : int
        The alpha axis, reduced.

    Returns
    -------
    numpy.ndarray
        float64, ≥ 0. Cost O(A).
    """
    c = np.moveaxis(_curve(curve), axis, -1)
    a = alpha_grid(c.shape[-1]) if alphas is None else np.asarray(alphas, dtype=np.float64)
    if a.shape != (c.shape[-1],):
        raise ValueError(f"alphas has shape {a.shape}, the curve has {c.shape[-1]} points")
    if a[0] != 0.0 or a[-1] != 1.0:
        raise ValueError("the alpha grid must include both endpoints (alphas[0]=0, alphas[-1]=1)")
    above = c - (c[..., :1] + a * (c[..., -1:] - c[..., :1]))
    above[..., [0, -1]] = 0.0  # the line passes through the endpoints by definition
    return np.max(np.where(np.isnan(c), np.nan, above), axis=-1)


def is_stable(instability_value, threshold: float = LMC_THRESHOLD) -> np.ndarray:
    """True where instability < ``threshold`` (LMC, ICML 2020: 2% error). NaN → False."""
    v = _curve(instability_value)
    with np.errstate(invalid="ignore"):
        return v < threshold


def is_matching(acc, dense_acc, tol: float = MATCHING_TOLERANCE) -> np.ndarray:
    """True where a subnetwork's accuracy is within ``tol`` of dense: acc ≥ dense_acc − tol.

    Frankle et al. (LMC, ICML 2020) call a subnetwork *matching* when its accuracy
    is within 0.2 percentage points of the dense network (accuracies as fractions).
    NaN → False. This is the point comparison against one reference value; ``analyze``
    uses the paired test :func:`stabilitylab.analysis.prediction.paired_matching`.
    """
    a, d = _curve(acc), _curve(dense_acc)
    with np.errstate(invalid="ignore"):
        return a >= d - tol
