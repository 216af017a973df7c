"""Mode-connecting curves between two networks: geometry, batched training, evaluation.

Garipov, Izmailov, Podoprikhin, Vetrov & Wilson, "Loss Surfaces, Mode Connectivity, and
Fast Ensembling of DNNs" (NeurIPS 2018), §3 (Eqs. 2–6); Draxler, Veschgini, Salmhofer &
Hamprecht, "Essentially No Barriers in Neural Network Energy Landscape" (ICML 2018).
A curve φ_θ(t), t ∈ [0, 1], joins ``start`` (t = 0) and ``end`` (t = 1) through one
trainable control point θ:

- quadratic Bézier:  φ_θ(t) = (1 − t)²·start + 2t(1 − t)·θ + t²·end;
- polygonal chain with one bend:  φ_θ(t) = (1 − 2t)·start + 2t·θ for t ≤ ½,
  (2 − 2t)·θ + (2t − 1)·end for t ≥ ½.

θ minimises the expected loss along the curve, E_{t∼U(0,1)} L(φ_θ(t)) (the uniform
form of Garipov et al.'s curve loss), with one t drawn per replica per mini-batch.

Curves of many pairs are trained as one replica-batched run: replica r is the curve
of pair r, its point φ_θr(t_r) is a stacked replica of
:class:`~stabilitylab.train.functional.StackedModel`, one vmapped forward and backward
per step serves all of them, and the control points are updated by the study's own
:class:`~stabilitylab.train.optim.StackedOptimizer` (masks applied to the gradient
before momentum and to θ after the update, so pruned weights stay exactly 0: the curve
lies in the subnetwork). Batch-norm layers use batch statistics while training (as
Garipov et al.); evaluation goes through
:func:`~stabilitylab.analysis.interpolate.evaluate_points`, which recomputes BN
statistics at every point of the curve.

Convention: t = 0 is ``start``, t = 1 is ``end``; with start = W_b and end = W_a the
t grid is the α grid of the linear path (E_α = E(αW_a + (1 − α)W_b)), and a Bézier whose
θ is the midpoint is that linear path.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from stabilitylab.analysis.interpolate import evaluate_points
from stabilitylab.train.functional import StackedModel
from stabilitylab.train.optim import StackedOptimizer

__all__ = ["SHAPES", "coefficients", "curve_lengths", "curve_points", "evaluate_curves",
           "midpoint", "train_curves"]

#: The curve families, in the order of the ``curve`` coordinate.
SHAPES = ("bezier", "polychain")
MAX_POINTS = 256  # curve points per evaluate_points call (memory ~ points × batch activations)


def coefficients(shape: str, t: torch.Tensor) -> torch.Tensor:
    """(…, 3) weights of (start, θ, end) at ``t`` for one curve family (module docstring).

    Bézier: ((1 − t)², 2t(1 − t), t²); polygonal chain: (1 − 2t, 2t, 0) for t ≤ ½ and
    (0, 2 − 2t, 2t − 1) for t > ½. Each row sums to 1 (the curve is an affine combination).
    """
    if shape == "bezier":
        return torch.stack([(1 - t) ** 2, 2 * t * (1 - t), t ** 2], -1)
    if shape == "polychain":
        first = t <= 0.5
        zero = torch.zeros_like(t)
        return torch.stack([torch.where(first, 1 - 2 * t, zero),
                            torch.where(first, 2 * t, 2 - 2 * t),
                            torch.where(first, zero, 2 * t - 1)], -1)
    raise ValueError(f"unknown curve shape {shape!r}; known: {SHAPES}")


def _mixed_coefficients(shapes: list[str], t: torch.Tensor) -> torch.Tensor:
    """(R, …, 3) coefficients where replica r follows ``shapes[r]`` at ``t[r]``."""
    out = torch.empty(*t.shape, 3, dtype=t.dtype, device=t.device)
    for shape in set(shapes):
        rows = torch.tensor([s == shape for s in shapes], device=t.device)
        out[rows] = coefficients(shape, t[rows])
    return out


def midpoint(start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """(start + end)/2, the initial control point (the Bézier is then the straight line)."""
    return 0.5 * (start + end)


def curve_points(start, control, end, ts, shape: str = "bezier") -> torch.Tensor:
    """Points φ_θ(t) for every t: (P,), (P,), (P,), (T,) → (T, P). Cost O(T·P)."""
    t = torch.as_tensor(np.asarray(ts, dtype=np.float64), dtype=start.dtype, device=start.device)
    c = coefficients(shape, t)
    return c[:, 0:1] * start[None] + c[:, 1:2] * control[None] + c[:, 2:3] * end[None]


def curve_lengths(starts, controls, ends, shapes: list[str]) -> np.ndarray:
    """L2 arc length ∫₀¹ ‖φ′(t)‖ dt of each curve: (R, P) × 3 → (R,) float64.

    Bézier: φ′(t) = 2(a + t·b) with a = θ − start, b = start − 2θ + end, so ‖φ′(t)‖ =
    2·sqrt(A + 2Bt + Ct²) (A = a·a, B = a·b, C = b·b), integrated by 64-point
    Gauss–Legendre quadrature (exact to float64 rounding for this smooth integrand unless
    the curve nearly stops). Polygonal chain: ‖θ − start‖ + ‖end − θ‖.
    """
    s, c, e = (torch.as_tensor(v).double() for v in (starts, controls, ends))
    out = np.empty(s.shape[0])
    nodes, weights = np.polynomial.legendre.leggauss(64)
    t = 0.5 * (nodes + 1.0)
    for r, shape in enumerate(shapes):
        if shape == "polychain":
            out[r] = float((c[r] - s[r]).norm() + (e[r] - c[r]).norm())
            continue
        a, b = c[r] - s[r], s[r] - 2 * c[r] + e[r]
        A, B, C = float(a @ a), float(a @ b), float(b @ b)
        speed = 2.0 * np.sqrt(np.maximum(A + 2 * B * t + C * t * t, 0.0))
        out[r] = 0.5 * float(weights @ speed)
    return out


def _lr(base: float, i: int, steps: int) -> float:
    """Cosine decay from ``base`` to 0 over the run: the control point settles at the end."""
    return 0.5 * base * (1 + math.cos(math.pi * i / steps))


def train_curves(stacked: StackedModel, starts: torch.Tensor, ends: torch.Tensor,
                 shapes: list[str], x: torch.Tensor, y: torch.Tensor, training, *,
                 steps: int, masks: torch.Tensor | None = None, seed: int = 0,
                 progress=None) -> torch.Tensor:
    """Train the control points of R curves as one replica-batched run; returns (R, P).

    Parameters
    ----------
    stacked : StackedModel
        Layout and template of the architecture.
    starts, ends : torch.Tensor
        (R, P) endpoints (t = 0 and t = 1) of the R curves; their device is used.
    shapes : list of str
        The family of each curve (:data:`SHAPES`); families mix freely in one run.
    x, y : torch.Tensor
        Training examples; one mini-batch of ``training.batch_size`` indices is drawn per
        step and shared by all curves, each at its own t ∼ U(0, 1).
    training : TrainingConfig
        Optimizer settings for θ (the study's: optimizer, lr as the peak of a cosine
        decay, momentum, weight decay).
    steps : int
        Optimizer steps.
    masks : torch.Tensor, optional
        (R, P) 0/1 (or bool) subnetwork masks; masked entries of θ start and stay 0.
    seed : int
        Seeds the batches and the t draws.
    progress : callable, optional
        Called with the number of curve-steps done (R per step).

    Returns
    -------
    torch.Tensor
        (R, P) trained control points (detached). Cost: ``steps`` vmapped forward and
        backward passes of R networks on one batch.
    """
    n_rep, device = starts.shape[0], starts.device
    if len(shapes) != n_rep or ends.shape != starts.shape:
        raise ValueError(f"{n_rep} starts, {ends.shape[0]} ends and {len(shapes)} shapes")
    control = midpoint(starts, ends).detach().clone()
    opt_masks = {}
    if masks is not None:
        m = masks.to(device=device, dtype=starts.dtype)
        control.mul_(m)
        opt_masks = {"control": m}
    control.requires_grad_(True)
    optimizer = StackedOptimizer({"control": control}, opt_masks, training, [0] * n_rep)
    buffers = {s.name: torch.zeros(n_rep, *s.shape, dtype=starts.dtype, device=device)
               for s in stacked.buffer_slots}  # train-mode BN writes here; never read back
    gen = torch.Generator().manual_seed(int(seed))
    batch = min(int(training.batch_size), len(x))
    for i in range(steps):
        idx = torch.randint(len(x), (batch,), generator=gen).to(device)
        t = torch.rand(n_rep, generator=gen, dtype=torch.float64).to(device, starts.dtype)
        c = _mixed_coefficients(shapes, t)
        points = c[:, 0:1] * starts + c[:, 1:2] * control + c[:, 2:3] * ends
        logits = stacked.forward(stacked.unflatten(points), buffers, x[idx], train=True,
                                 shared_input=True).float()
        losses = F.cross_entropy(logits.flatten(0, 1), y[idx].repeat(n_rep),
                                 reduction="none").view(n_rep, -1).mean(1)
        (grad,) = torch.autograd.grad(losses.sum(), [control])
        lrs = torch.full((n_rep,), _lr(training.lr, i, steps), device=device,
                         dtype=starts.dtype)
        optimizer.step({"control": grad}, lrs)
        if progress is not None:
            progress(n_rep)
    return control.detach()


@torch.no_grad()
def evaluate_curves(stacked: StackedModel, starts, controls, ends, shapes: list[str], ts,
                    x, y, *, bn_recompute_x=None, max_points: int = MAX_POINTS) -> dict:
    """Error and mean cross-entropy at every t of every curve: ``error``, ``loss`` (R, T).

    All R·T points go through :func:`evaluate_points` (BN statistics recomputed at each
    point on ``bn_recompute_x``) in stacks of at most ``max_points``.
    """
    t = torch.as_tensor(np.asarray(ts, dtype=np.float64), dtype=starts.dtype,
                        device=starts.device)
    n_rep, n_t = starts.shape[0], len(t)
    c = _mixed_coefficients(shapes, t.expand(n_rep, n_t))  # (R, T, 3)
    error, loss = np.empty((n_rep, n_t)), np.empty((n_rep, n_t))
    per_call = max(1, max_points // n_t)
    for lo in range(0, n_rep, per_call):
        hi = min(n_rep, lo + per_call)
        cc = c[lo:hi, :, :, None]
        pts = (cc[:, :, 0] * starts[lo:hi, None] + cc[:, :, 1] * controls[lo:hi, None]
               + cc[:, :, 2] * ends[lo:hi, None]).reshape(-1, starts.shape[1])
        res = evaluate_points(stacked, pts, x, y, bn_recompute_x=bn_recompute_x)
        error[lo:hi] = res["error"].reshape(hi - lo, n_t)
        loss[lo:hi] = res["loss"].reshape(hi - lo, n_t)
    return {"error": error, "loss": loss}
