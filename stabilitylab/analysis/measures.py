"""Candidate stability measures beyond the LMC barrier, each with its source and cost.

Array layer: numpy (or torch where gradients are needed), explicit axes, new axes
last. Inputs may be numpy arrays or torch tensors.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import ndtri
from scipy.stats import rankdata
from torch import nn
from torch.func import functional_call, grad, vmap

__all__ = [
    "chance_jaccard",
    "disagreement",
    "early_bird_distance",
    "gradient_noise_scale",
    "hessian_max_eigenvalue",
    "magnitude_mask",
    "mask_hamming",
    "mask_jaccard",
    "minibatch_gradients",
    "sign_flips",
    "split_rhat",
]


def _np(x, dtype=None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


# -- function space ----------------------------------------------------------------------------
def disagreement(logits_a, logits_b, *, example_axis: int = -2, class_axis: int = -1) -> np.ndarray:
    """Fraction of examples whose predicted class (argmax) differs between two networks.

    Prediction disagreement between copies (e.g. Fort, Hu & Lakshminarayanan 2019,
    "Deep Ensembles: A Loss Landscape Perspective"). Invariant to permutations of
    hidden units. Cost: two forward passes over the evaluation set.

    Parameters
    ----------
    logits_a, logits_b : array_like
        (..., N, C) logits (any monotone transform, e.g. probabilities, works).
    """
    la, lb = _np(logits_a), _np(logits_b)
    ex, cl = example_axis % la.ndim, class_axis % la.ndim
    pa, pb = la.argmax(axis=cl), lb.argmax(axis=cl)
    ax = ex - 1 if ex > cl else ex
    return np.mean(pa != pb, axis=ax)


# -- masks -------------------------------------------------------------------------------------
def mask_jaccard(m1, m2, axis: int = -1) -> np.ndarray:
    """Jaccard overlap |m1 ∧ m2| / |m1 ∨ m2| of two binary masks (1 = kept).

    Compares IMP masks found under different data orders; free when the masks exist.
    Chance level for two independent random masks of density p is
    :func:`chance_jaccard`. NaN when both masks are empty. Cost O(P).
    """
    a, b = _np(m1, bool), _np(m2, bool)
    inter = np.sum(a & b, axis=axis)
    union = np.sum(a | b, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union == 0, np.nan, inter / np.maximum(union, 1))


def mask_hamming(m1, m2, axis: int = -1, normalize: bool = True) -> np.ndarray:
    """Hamming distance between binary masks: count (or fraction, if ``normalize``) of
    positions where they differ. Cost O(P)."""
    diff = _np(m1, bool) != _np(m2, bool)
    return np.mean(diff, axis=axis) if normalize else np.sum(diff, axis=axis)


def chance_jaccard(p) -> np.ndarray:
    """Expected Jaccard of two independent uniformly random masks of density p: p / (2 − p).

    E|m1 ∧ m2| = p²n and E|m1 ∨ m2| = (2p − p²)n, so the ratio is p / (2 − p).
    """
    p = np.asarray(p, dtype=np.float64)
    return p / (2.0 - p)


# -- trajectory-based --------------------------------------------------------------------------
def sign_flips(w_k, w_T, mask=None, axis: int = -1) -> np.ndarray:
    """Fraction of surviving weights whose sign differs between W_k and W_T.

    A flip is strictly opposite signs, sign(w_k)·sign(w_T) < 0 (a weight that is
    exactly 0 at either end does not count as flipped). The denominator is the
    number of surviving weights (``mask`` True; all if None). Free from the
    trajectory; cost O(P).
    """
    s = np.sign(_np(w_k, np.float64)) * np.sign(_np(w_T, np.float64)) < 0
    if mask is None:
        return np.mean(s, axis=axis)
    m = np.broadcast_to(_np(mask, bool), s.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(s & m, axis=axis) / np.sum(m, axis=axis)


def _magnitudes(w) -> np.ndarray:
    """|w| as float32 when ``w`` is float32 (|·| and every comparison of the mask are exact
    in it, so the mask is the same as in float64 at half the memory traffic), else float64."""
    w = _np(w)
    return np.abs(w if w.dtype in (np.float32, np.float64) else w.astype(np.float64))


def magnitude_mask(w, density: float, prunable_mask=None, axis: int = -1) -> np.ndarray:
    """Global magnitude mask: keep the round(density·n) largest |w| among eligible weights.

    ``prunable_mask`` (True = eligible) broadcasts against ``w``; ineligible entries
    are False in the result. Ties are broken by position (the earlier kept, as a stable
    sort would). Cost O(P log P) per row: the threshold by a selection (no mask) or a value
    sort (with a mask, whose ineligible entries are −inf: many equal values, which slow a
    selection down); rows holding NaN: a stable argsort, several times slower. float32
    weights are compared as float32.
    """
    magnitudes = _magnitudes(w)
    w = np.moveaxis(magnitudes, axis, -1)
    n = w.shape[-1]
    if prunable_mask is None:
        elig = None
        keep = np.full(w.shape[:-1], int(np.rint(density * n)), np.int64)
    else:
        elig, n_elig = _eligible(_np(prunable_mask, bool), magnitudes.shape, axis)
        keep = np.broadcast_to(np.rint(density * n_elig).astype(np.int64)[..., 0], w.shape[:-1])
        # The ineligible entries set to -inf in place on the magnitudes (a new array
        # already), not in another array from np.where
        np.copyto(w, -np.inf, where=~elig)
    out = _top_k(w.reshape(-1, n), keep.reshape(-1), select=elig is None)[0].reshape(w.shape)
    return np.moveaxis(out if elig is None else out & elig, -1, axis)


def _top_k(score: np.ndarray, keep: np.ndarray, *, select: bool):
    """(rows, n) magnitudes → (mask of each row's ``keep[row]`` largest, ties to the earlier
    position; whether the row holds NaN), as :func:`magnitude_mask` draws them."""
    thr, nan = _thresholds(score, keep, select=select)
    out = _top_k_stable(score, keep, thr)
    if nan.any():
        out[nan] = _top_k_sorted(score[nan], keep[nan])
    return out, nan


def _thresholds(score: np.ndarray, keep: np.ndarray, *, select: bool):
    """(rows,) each row's ``keep``-th largest entry (its largest when it keeps none) and
    (rows,) whether the row holds NaN (its threshold is then meaningless). ``select``
    (every row keeps the same number): by ``np.partition`` (numpy's SIMD selection, faster
    than the sort on rows of distinct magnitudes); else by a sort (NaN sorts last)."""
    rows, n = score.shape
    if n == 0:
        return np.zeros(rows, score.dtype), np.zeros(rows, bool)
    kth = n - np.clip(keep, 1, n)
    if not select:
        ordered = np.sort(score, axis=-1)
        return np.take_along_axis(ordered, kth[:, None], axis=-1)[:, 0], np.isnan(ordered[:, -1])
    if rows == 0:
        return np.zeros(0, score.dtype), np.zeros(0, bool)
    k = int(kth[0])  # without a mask every row keeps the same number
    # Magnitudes have their sign bit clear (NaN too, after |.|), so their bits as signed
    # integers of their width order them as their values do (NaN after +inf, as the float
    # selection puts it): the integer selection is faster and gives the same entry.
    keys = score.view({4: np.int32, 8: np.int64}.get(score.itemsize, score.dtype)) \
        if score.dtype.kind == "f" else score
    return np.partition(keys, k, axis=-1)[:, k].view(score.dtype), np.isnan(score).any(-1)


def _eligible(mask: np.ndarray, shape: tuple, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """``mask`` broadcast to the magnitudes' ``shape`` with ``axis`` moved last, and each
    row's count of eligible entries (…, 1), counted on ``mask`` before the broadcast (a
    mask shared by many rows is not summed once per row)."""
    ax = axis % len(shape)
    m = mask.reshape((1,) * (len(shape) - mask.ndim) + mask.shape)
    counts = m.sum(axis=ax, keepdims=True, dtype=np.int64) * (shape[ax] // m.shape[ax])
    elig = np.moveaxis(np.broadcast_to(m, shape), ax, -1)
    n_elig = np.moveaxis(np.broadcast_to(counts, shape[:ax] + (1,) + shape[ax + 1:]), ax, -1)
    return elig, n_elig


def _top_k_stable(score: np.ndarray, keep: np.ndarray, thr: np.ndarray) -> np.ndarray:
    """(rows, n) → mask of each row's ``keep[row]`` largest entries, ties to the earlier
    position, given each row's ``keep``-th largest entry ``thr`` (:func:`_thresholds`;
    rows without NaN: rows with NaN get a value the caller replaces), for every row at
    once, whatever each row keeps."""
    n = score.shape[-1]
    if n == 0:
        return np.zeros(score.shape, bool)
    thr = thr[:, None]
    out = score >= thr  # those above the threshold and every tie with it
    out[keep <= 0] = False
    some = (np.count_nonzero(out, axis=-1) > keep) & (keep > 0)  # rare: more ties than room
    if some.any():
        s, t = score[some], thr[some]
        above, tie = s > t, s == t
        room = keep[some, None] - above.sum(-1, keepdims=True)  # ties to keep, the first ones
        out[some] = above | (tie & (np.cumsum(tie, -1) <= room))
    return out


def _top_k_sorted(score: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The stable-sort reference of :func:`_top_k_stable` (any values, NaN last)."""
    order = np.argsort(-score, axis=-1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(score.shape[-1])[None, :], axis=-1)
    return rank < keep[:, None]


def early_bird_distance(traj, density: float, prunable_mask=None, delta: int = 1,
                        axis_step: int = -2) -> np.ndarray:
    """Normalised Hamming distance between magnitude masks of W_t and W_{t+Δ}.

    You et al., "Drawing Early-Bird Tickets: Towards More Efficient Training of Deep
    Networks", ICLR 2020, §3: the mask distance between consecutive epochs'
    pruning masks; the ticket has "emerged" once it stays small. Here the masks are
    global magnitude masks (:func:`magnitude_mask`) at ``density`` over the eligible
    (``prunable_mask``) weights, and the distance is the fraction of eligible weights
    whose membership differs. Free from a recorded trajectory; cost O(S·P log P).

    Parameters
    ----------
    traj : array_like
        (..., S, P): steps along ``axis_step``, parameters last.
    density : float
        Kept fraction of eligible weights.
    prunable_mask : array_like of bool, optional
        (P,) or broadcastable to one step of ``traj``; default all eligible.
    delta : int
        Step offset Δ, in recorded-step indices.

    Returns
    -------
    numpy.ndarray
        (..., S − Δ) distances in [0, 1]; entry t compares step t with t + Δ.
    """
    x = np.moveaxis(_np(traj), axis_step, -2)  # float32 stays (magnitude_mask: exact)
    if prunable_mask is None:
        masks = magnitude_mask(x, density)
        return (masks[..., :-delta, :] != masks[..., delta:, :]).mean(-1)
    elig = np.broadcast_to(_np(prunable_mask, bool), x.shape[:-2] + x.shape[-1:])
    lead, (steps, n) = x.shape[:-2], x.shape[-2:]
    rows, eligs = x.reshape(-1, steps, n), elig.reshape(-1, n)
    out = np.empty((len(rows), max(steps - delta, 0)))
    cols, previous = None, None
    for i, (row, e) in enumerate(zip(rows, eligs)):
        # Only the eligible weights, in their order: the threshold, the ties broken by
        # position and the differences are the same as over the whole row (the masks are
        # False outside it), and the sort is shorter by the ineligible ones.
        if previous is None or not np.array_equal(e, previous):
            cols, previous = np.flatnonzero(e), e
        masks = _eligible_masks(row, cols, e, density)
        diff = masks[:-delta] != masks[delta:]
        out[i] = np.count_nonzero(diff, axis=-1) / max(len(cols), 1)
    return out.reshape(lead + out.shape[-1:])


def _eligible_masks(row: np.ndarray, cols: np.ndarray, elig: np.ndarray,
                    density: float) -> np.ndarray:
    """(S, len(cols)): :func:`magnitude_mask` of each step of ``row`` (S, P) over the
    eligible ``elig`` (P,), at the columns ``cols`` (those of ``elig``). A step holding
    NaN among them goes through the whole row with ``elig``, as NaN magnitudes there rank
    after the ineligible entries."""
    part = row[:, cols]
    if not len(cols):  # nothing eligible: no mask, no differences
        return np.zeros(part.shape, bool)
    # magnitude_mask(part, density), on magnitudes taken in place of the gathered copy
    keep = np.full(len(part), int(np.rint(density * len(cols))), np.int64)
    exact = part.dtype in (np.float32, np.float64)  # else _magnitudes widens it
    masks, bad = _top_k(np.abs(part, out=part) if exact else _magnitudes(part), keep,
                        select=True)
    if bad.any():
        masks[bad] = magnitude_mask(row[bad], density, elig)[:, cols]
    return masks


# -- convergence diagnostic --------------------------------------------------------------------
def _split_rhat_core(x: np.ndarray) -> np.ndarray:
    """Split-R̂ of (..., chains, draws)."""
    n = x.shape[-1] // 2
    halves = np.concatenate([x[..., :n], x[..., x.shape[-1] - n:]], axis=-2)  # (..., 2C, n)
    means = halves.mean(-1)
    w = halves.var(-1, ddof=1).mean(-1)
    b_over_n = means.var(-1, ddof=1)
    var_plus = (n - 1) / n * w + b_over_n
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(var_plus / w)


def _z_scale(x: np.ndarray) -> np.ndarray:
    """Rank-normalise over the last two axes jointly (Vehtari et al. 2021, Eq. 14)."""
    shape = x.shape
    flat = x.reshape(shape[:-2] + (-1,))
    r = rankdata(flat, axis=-1, method="average")
    s = flat.shape[-1]
    return ndtri((r - 0.375) / (s + 0.25)).reshape(shape)


def split_rhat(x, chain_axis: int = 0, draw_axis: int = 1, *, method: str = "bda3") -> np.ndarray:
    """Split-R̂ across replicas ("chains") of function-space scalars.

    ``method="bda3"``: Gelman et al., *Bayesian Data Analysis* 3rd ed. §11.4: split
    each chain in half (dropping the middle draw if odd), giving M chains of n draws;
    W = mean within-chain variance, B/n = variance of chain means,
    R̂ = sqrt(((n−1)/n·W + B/n) / W).
    ``method="rank"``: Vehtari, Gelman, Simpson, Carpenter & Bürkner 2021,
    "Rank-normalization, folding, and localization: An improved R̂", §4.2:
    max(R̂ on rank-normalised x, R̂ on rank-normalised |x − median|).

    Use it on permutation-invariant, function-space quantities, e.g. per-example
    test losses of each replica (chain = replica, draw = example or step).

    .. warning:: Never apply it to raw weights: weights are not
       permutation-invariant (hidden units of two equally good replicas can sit in
       any order), so R̂ on weights flags disagreement that is pure symmetry.

    Returns
    -------
    numpy.ndarray
        R̂ with ``chain_axis`` and ``draw_axis`` removed; ≈ 1 for well-mixed chains,
        > 1.01–1.1 signals replicas that disagree. NaN where all draws are equal.
        Cost O(C·N) (O(C·N log(C·N)) for ``"rank"``).
    """
    x = _np(x, np.float64)
    ca, da = chain_axis % x.ndim, draw_axis % x.ndim
    if ca == da:
        raise ValueError("chain_axis and draw_axis must differ")
    x = np.moveaxis(x, (ca, da), (-2, -1))
    if x.shape[-1] < 4:
        raise ValueError(f"split_rhat needs at least 4 draws per chain, got {x.shape[-1]}")
    if method == "bda3":
        return _split_rhat_core(x)
    if method == "rank":
        n = x.shape[-1] // 2
        x = np.concatenate([x[..., :n], x[..., x.shape[-1] - n:]], axis=-1)  # drop middle draw
        bulk = _split_rhat_core(_z_scale(x))
        med = np.median(x.reshape(x.shape[:-2] + (-1,)), axis=-1)[..., None, None]
        tail = _split_rhat_core(_z_scale(np.abs(x - med)))
        return np.maximum(bulk, tail)
    raise ValueError(f"unknown method {method!r}; choose 'bda3' or 'rank'")


# -- gradient noise ----------------------------------------------------------------------------
def gradient_noise_scale(per_batch_grads, batch_size: int, k_axis: int = -2,
                         axis: int = -1) -> dict:
    """Simple gradient noise scale B_simple = tr(Σ) / |G|² and gradient SNR.

    McCandlish, Kaplan, Amodei et al., "An Empirical Model of Large-Batch Training"
    (arXiv 1812.06162), Eq. 2.9 and App. A. With K i.i.d. minibatch gradients g_i of
    batch size B (true gradient G, per-example covariance Σ, so Cov(g_i) = Σ/B):

    * S = (1/(K−1)) Σ_i |g_i − ḡ|²  — unbiased for tr(Σ)/B (``minibatch_variance``);
    * tr(Σ) ≈ B·S                   (``trace_cov``);
    * |G|² ≈ |ḡ|² − S/K             (``grad_norm_sq``; unbiased, may be ≤ 0 when
      noise dominates, then ``b_simple`` is NaN);
    * B_simple = B·S / (|ḡ|² − S/K)  (``b_simple``; ratio of unbiased estimates);
    * SNR = |ḡ|² / (S/K)             (``snr``): squared norm of the mean gradient over
      the variance of that mean (trace of the minibatch covariance over K).

    Cost: K gradient evaluations (:func:`minibatch_gradients`), then O(K·P).

    Parameters
    ----------
    per_batch_grads : array_like
        (..., K, P) minibatch gradients (K ≥ 2) on ``k_axis``, parameters on ``axis``.
    batch_size : int
        B, the examples per minibatch.

    Returns
    -------
    dict of float64 arrays with the leading dims: b_simple, snr, trace_cov,
    grad_norm_sq, grad_norm_sq_biased (|ḡ|²), minibatch_variance (S).
    """
    g = _np(per_batch_grads, np.float64)
    ka, pa = k_axis % g.ndim, axis % g.ndim
    g = np.moveaxis(g, (ka, pa), (-2, -1))
    k = g.shape[-2]
    if k < 2:
        raise ValueError(f"gradient_noise_scale needs K >= 2 minibatch gradients, got {k}")
    mean = g.mean(-2)
    s = np.sum((g - mean[..., None, :]) ** 2, axis=(-2, -1)) / (k - 1)
    norm_biased = np.sum(mean**2, axis=-1)
    norm = norm_biased - s / k
    with np.errstate(divide="ignore", invalid="ignore"):
        b_simple = np.where(norm > 0, batch_size * s / np.where(norm > 0, norm, 1.0), np.nan)
        snr = norm_biased / (s / k)
    return {"b_simple": b_simple, "snr": snr, "trace_cov": batch_size * s,
            "grad_norm_sq": norm, "grad_norm_sq_biased": norm_biased, "minibatch_variance": s}


def _one_replica(stacked, params, buffers) -> tuple[dict, dict]:
    if isinstance(params, torch.Tensor):
        params = {s.name: params[s.offset:s.offset + s.size].reshape(s.shape)
                  for s in stacked.param_slots}
    if buffers is None:
        buffers = {}
    elif isinstance(buffers, torch.Tensor):
        buffers = {s.name: buffers[s.offset:s.offset + s.size].reshape(s.shape)
                   for s in stacked.buffer_slots}
    return dict(params), dict(buffers)


def _template(stacked, train: bool) -> nn.Module:
    """A private copy of the template. In train mode BatchNorm layers drop their running
    stats (they then normalise with batch statistics and update nothing, which grad
    transforms require)."""
    import copy

    template = copy.deepcopy(stacked.template).train(train)
    if train:
        for m in template.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean = m.running_var = m.num_batches_tracked = None
    return template


def minibatch_gradients(stacked, params, buffers, x: torch.Tensor, y: torch.Tensor,
                        batch_size: int, k: int, generator: torch.Generator | None = None, *,
                        mask=None, train: bool = True, chunk_size: int | None = None
                        ) -> torch.Tensor:
    """K minibatch gradients of the mean cross-entropy for one replica, as (K, P).

    Minibatches are successive slices of random permutations of the N examples
    (drawn with ``generator``), i.e. sampled like an epoch without replacement and
    disjoint when K·B ≤ N. All K gradients come from one ``vmap(grad(loss))``
    (chunked by ``chunk_size``). In ``train`` mode (default) BatchNorm normalises with
    batch statistics (``buffers`` are unused and never modified) and dropout is
    active, as during training; ``train=False`` uses the running stats in
    ``buffers``. Cost: K forward+backward passes.

    Parameters
    ----------
    stacked : StackedModel
    params : (P,) flat tensor or dict of one replica's tensors
    buffers : (Q,) flat tensor, dict, or None
    x, y : torch.Tensor
        Training examples (N, ...) and labels (N,), on the parameters' device.
    mask : (P,) tensor of bool, optional
        Zero the gradient of pruned weights (a subnetwork trains only survivors).
    """
    p, b = _one_replica(stacked, params, buffers)
    n = len(x)
    need = k * batch_size
    idx = torch.cat([torch.randperm(n, generator=generator) for _ in range(-(-need // n))])[:need]
    idx = idx.to(x.device).reshape(k, batch_size)
    xb, yb = x[idx], y[idx]
    template = _template(stacked, train)
    bk = {} if train else {name: v.detach() for name, v in b.items()}

    def loss(pp, bb, xx, yy):
        return nn.functional.cross_entropy(functional_call(template, (pp, bb), (xx,)), yy)

    grads = vmap(grad(loss), in_dims=(None, None, 0, 0), randomness="different",
                 chunk_size=chunk_size)({n_: v.detach() for n_, v in p.items()}, bk, xb, yb)
    flat = torch.cat([grads[s.name].reshape(k, -1) for s in stacked.param_slots], 1)
    if mask is not None:
        flat = flat * torch.as_tensor(mask, device=flat.device).to(flat.dtype)
    return flat


def hessian_max_eigenvalue(stacked, params, buffers, x: torch.Tensor, y: torch.Tensor, *,
                           n_iter: int = 50, tol: float = 1e-4, mask=None,
                           generator: torch.Generator | None = None) -> float:
    """Top Hessian eigenvalue of the mean cross-entropy on (x, y) by power iteration.

    Power iteration with exact Hessian-vector products Hv = ∇_w⟨∇L(w), v⟩
    (reverse-over-reverse ``torch.func.grad``; Pearlmutter 1994), as in e.g. Yao et
    al., "PyHessian" (2020). Returns the eigenvalue of largest magnitude
    (the sharpness λ_max near a minimum, where it is positive). Eval mode (BN
    running stats, no dropout). With ``mask``, the Hessian is restricted to the
    surviving weights. Cost: up to ``n_iter`` HVPs (≈ 2–3 gradient evaluations each)
    over the whole of x; stops when λ changes by < ``tol`` relatively.
    """
    p, b = _one_replica(stacked, params, buffers)
    template = _template(stacked, False)
    flat0 = torch.cat([p[s.name].detach().reshape(-1) for s in stacked.param_slots])
    m = None if mask is None else torch.as_tensor(mask, device=flat0.device).to(flat0.dtype)

    def loss(flat):
        pp = {s.name: flat[s.offset:s.offset + s.size].reshape(s.shape)
              for s in stacked.param_slots}
        return nn.functional.cross_entropy(functional_call(template, (pp, b), (x,)), y)

    def hvp(v):  # reverse-over-reverse: ∇_w ⟨∇L(w), v⟩ = H v
        return grad(lambda w: torch.dot(grad(loss)(w), v))(flat0)

    v = torch.randn(flat0.shape, generator=generator, dtype=flat0.dtype).to(flat0.device)
    if m is not None:
        v = v * m
    v = v / v.norm()
    lam = float("nan")
    for _ in range(n_iter):
        hv = hvp(v)
        if m is not None:
            hv = hv * m
        new = float(torch.dot(v, hv))
        norm = hv.norm()
        if norm == 0:
            return 0.0
        v = hv / norm
        if np.isfinite(lam) and abs(new - lam) <= tol * max(abs(new), 1e-12):
            return new
        lam = new
    return lam
