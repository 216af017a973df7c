"""Small synthetic study and analysis Datasets for report tests (no store, no training).

    from stabilitylab.report.testing import make_study, make_analysis
    study, analysis = make_study(), make_analysis()

Both follow docs/store-schema.md and docs/analysis-schema.md. The numbers are
shaped like a real MNIST-1D study: instability falls with the rewind point k
(later and more for IMP than for the controls), accuracy rises with k and then
flattens, sparser levels are a little less accurate, distances grow from k and
saturate. Everything is seeded (``np.random.default_rng(seed)``).
"""

from __future__ import annotations

import itertools
import json
import warnings

import numpy as np
import xarray as xr
from scipy import stats

KINDS = ("imp", "random_prune", "reinit")
MEASURES = ("instability", "instability_train", "loss_barrier", "above_line_barrier",
            "above_line_loss_barrier", "aligned_instability", "disagreement", "data_order_l2", "data_order_angle",
            "mask_jaccard", "sign_flips", "early_bird", "rhat", "gradient_noise_scale")
DENSE_ACC = 0.925
TAU = 60.0  # iterations: how fast instability decays with k


def _steps(rewinds, total):
    early = np.unique(np.round(np.geomspace(1, total, 40)).astype(int))
    return np.unique(np.concatenate([[0], early, rewinds, [total]]))


def _nan(*shape):
    return np.full(shape, np.nan)


def _pairs(replicas):
    return [(a, b) for a, b in itertools.combinations(range(replicas), 2)]


def _config(name, levels, rewinds, replicas, controls, seed, total):
    return {
        "data": {"name": "mnist1d"}, "model": {"name": "conv1d", "channels": 32},
        "training": {"steps": f"{total}it", "optimizer": "sgd", "lr": 0.1},
        "pruning": {"strategy": "global", "fraction": 0.2, "levels": levels},
        "study": {"name": name, "rewinds": [f"{k}it" for k in rewinds], "replicas": replicas,
                  "seed": seed, "controls": list(controls), "record": "dense_early"},
    }


def _shape(kind, level, rewinds):
    """Mean instability and mean final accuracy per rewind point for one (kind, level)."""
    k = np.asarray(rewinds, dtype=float)
    if kind == "imp":
        barrier = (0.02 + 0.08 * level) * np.exp(-k / TAU) + 0.004
        acc = DENSE_ACC - 0.004 * level - 0.05 * np.exp(-k / TAU) * (level > 0)
        if level == 0:
            acc = DENSE_ACC - 0.003 * np.exp(-k / TAU)
        return barrier, acc
    # controls: unstable at every k, and inaccurate
    barrier = 0.12 + 0.05 * np.exp(-k / (4 * TAU))
    acc = np.full_like(k, DENSE_ACC - (0.07 if kind == "random_prune" else 0.06) - 0.01 * level)
    return barrier, acc


def _present(kind, level, levels, controls):
    return kind == "imp" or (kind in controls and level == levels and levels > 0)


def make_study(*, levels: int = 2, rewinds=(0, 25, 50, 100, 200, 400), replicas: int = 3,
               controls=("random_prune", "reinit"), total: int = 1000, seed: int = 0,
               name: str = "synthetic", diverged: int = 1, incomplete: int = 1,
               config_as_json: bool = True) -> xr.Dataset:
    """A study Dataset without weights: metrics, status, density, dense run, attrs.

    ``diverged`` / ``incomplete`` runs (of the last control kind / imp, at the
    last level and first rewind) get status 3 / 1. ``config_as_json`` stores
    ``attrs["config"]`` as the store's JSON text; otherwise as the dict
    :func:`stabilitylab.open_study` returns.
    """
    rng = np.random.default_rng(seed)
    rewinds = np.asarray(rewinds, dtype=np.int64)
    lv = np.arange(levels + 1)
    eval_step = np.unique(np.r_[np.arange(0, total + 1, total // 10), total])
    shape = (len(KINDS), len(lv), len(rewinds), replicas)
    acc = np.full(shape, np.nan, np.float32)
    status = np.zeros(shape, np.int8)
    diverged_step = np.full(shape, -1, np.int64)
    density = np.full(shape[:3], np.nan, np.float32)
    for (i, kind), (j, level) in itertools.product(enumerate(KINDS), enumerate(lv)):
        if not _present(kind, level, levels, controls):
            continue
        _, mean_acc = _shape(kind, level, rewinds)
        acc[i, j] = mean_acc[:, None] + rng.normal(0, 0.003, (len(rewinds), replicas))
        status[i, j] = 2
        density[i, j] = 0.8 ** level
    last = len(lv) - 1
    for n in range(diverged):
        kind = KINDS.index(controls[-1]) if controls and levels > 0 else 0
        status[kind, last, 0, -1 - n] = 3
        diverged_step[kind, last, 0, -1 - n] = 340
        acc[kind, last, 0, -1 - n] = np.nan
    for n in range(incomplete):
        status[0, last, -1, -1 - n] = 1
        acc[0, last, -1, -1 - n] = np.nan
    dense_curve = DENSE_ACC - 0.6 * np.exp(-eval_step / 150.0)
    dims = ("kind", "level", "rewind", "replica")
    cfg = _config(name, levels, rewinds.tolist(), replicas, controls, seed, total)
    return xr.Dataset(
        {
            "final_test_acc": (dims, acc),
            "final_test_loss": (dims, (1.2 * (1 - acc)).astype(np.float32)),
            "status": (dims, status),
            "diverged_step": (dims, diverged_step),
            "density": (dims[:3], density),
            "dense_test_acc": (("eval_step",), dense_curve.astype(np.float32)),
            "dense_status": (("dense",), np.array([2], np.int8)),
        },
        coords={"kind": list(KINDS), "level": lv, "rewind": rewinds,
                "replica": np.arange(replicas), "eval_step": eval_step},
        attrs={
            "schema": "stabilitylab.study", "schema_version": 1,
            "created_at": "2025-01-01T00:00:00Z", "creation_library": "stabilitylab",
            "versions": {"stabilitylab": "0.1.0", "torch": "2.4.0", "zarr": "3.0.8",
                         "xarray": "2024.6.0", "numpy": "2.0.0", "python": "3.11"},
            "device": "cpu", "seed": seed, "study_id": "synthetic0000",
            "config": json.dumps(cfg) if config_as_json else cfg, "complete": True,
        },
    )


def _rank_corr(x, y):
    """Spearman ρ along the last axis (Pearson correlation of ranks); NaN for constant rows."""
    rx, ry = stats.rankdata(x, axis=-1), stats.rankdata(y, axis=-1)
    rx, ry = rx - rx.mean(-1, keepdims=True), ry - ry.mean(-1, keepdims=True)
    den = np.sqrt((rx**2).sum(-1) * (ry**2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(-1) / den, np.nan)


def _spearman_ci(x, y, rng, n_boot=200):
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return np.nan, np.nan, np.nan
    i = rng.integers(0, len(x), (n_boot, len(x)))
    boots = _rank_corr(x[i], y[i])
    boots = boots[np.isfinite(boots)]
    lo, hi = np.quantile(boots, [0.025, 0.975]) if boots.size else (np.nan, np.nan)
    return float(_rank_corr(x, y)), lo, hi


def make_analysis(**kwargs) -> xr.Dataset:
    """An analysis Dataset (docs/analysis-schema.md) for a synthetic study; see :func:`_analysis`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean over absent controls
        return _analysis(**kwargs)


def _analysis(*, levels: int = 2, rewinds=(0, 25, 50, 100, 200, 400), replicas: int = 3,
                  controls=("random_prune", "reinit"), total: int = 1000, n_alpha: int = 11,
                  seed: int = 0, threshold: float = 0.02, aligned: bool = True) -> xr.Dataset:
    """An analysis Dataset (docs/analysis-schema.md) for a synthetic study.

    Controls exist only at the last level (NaN elsewhere), as in a default study.
    ``aligned=False`` makes ``aligned_instability`` all NaN (unsupported architecture).
    """
    rng = np.random.default_rng(seed)
    rewinds = np.asarray(rewinds, dtype=np.int64)
    lv = np.arange(levels + 1)
    alpha = np.linspace(0.0, 1.0, n_alpha)
    pairs = _pairs(replicas)
    step = _steps(rewinds, total)
    nk, nl, nr, npair, na, ns = len(KINDS), len(lv), len(rewinds), len(pairs), n_alpha, len(step)
    barrier, acc_mean = _nan(nk, nl, nr, npair), _nan(nk, nl, nr)
    interp = _nan(nk, nl, nr, npair, na)
    d_l2, d_angle = _nan(nk, nl, nr, npair, ns), _nan(nk, nl, nr, npair, ns)
    p_l2, p_angle = _nan(nk, nl, nr, ns), _nan(nk, nl, nr, ns)
    density, sign_flips = _nan(nk, nl, nr), _nan(nk, nl, nr, replicas)
    bump = 4 * alpha * (1 - alpha)  # 1 at α = 1/2, 0 at the endpoints
    for (i, kind), (j, level) in itertools.product(enumerate(KINDS), enumerate(lv)):
        if not _present(kind, level, levels, controls):
            continue
        b, a = _shape(kind, level, rewinds)
        density[i, j] = 0.8 ** level
        acc_mean[i, j] = a + rng.normal(0, 0.002, nr)
        barrier[i, j] = np.clip(b[:, None] * rng.lognormal(0, 0.25, (nr, npair)), 0, None)
        base = (1 - a)[:, None, None] + rng.normal(0, 0.002, (nr, npair, 2))
        ends = base[..., :1] * (1 - alpha) + base[..., 1:] * alpha
        interp[i, j] = ends + barrier[i, j][..., None] * bump
        scale = 30 * np.sqrt(0.8 ** level) * (1 + 3 * b / b.max())  # later k: closer
        scale = scale * (1.0 if kind == "imp" else 1.4)  # controls drift further apart
        for r, k in enumerate(rewinds):
            t = np.where(step >= k, step - k, np.nan)
            grow = 1 - np.exp(-t / 150.0)
            noise = rng.lognormal(0, 0.1, (npair, 1))
            d_l2[i, j, r] = scale[r] * grow * noise
            d_angle[i, j, r] = np.clip(1.2 * (b[r] / b.max()) ** 0.5 * grow * noise, 0, np.pi)
            if level >= 1:
                p_l2[i, j, r] = 0.6 * scale[r] * grow * (1.5 if kind != "imp" else 1.0)
                p_angle[i, j, r] = 0.4 * grow * (1.5 if kind != "imp" else 1.0)
        sign_flips[i, j] = (0.3 * np.exp(-rewinds / 200.0))[:, None] + rng.uniform(0, .01, (nr, replicas))
    pdims = ("kind", "level", "rewind", "pair")
    interp_error = interp
    interp_loss = 2.5 * interp
    inst = barrier
    final_l2 = np.nanmean(d_l2[..., -1], axis=-1)
    imp = 0
    measure_value = np.stack([
        np.nanmean(inst[imp], -1), np.nanmean(0.8 * inst[imp], -1), np.nanmean(2.5 * inst[imp], -1),
        np.nanmean(1.1 * inst[imp], -1), np.nanmean(2.0 * inst[imp], -1),
        np.nanmean(0.3 * inst[imp], -1) if aligned else _nan(nl, nr),
        np.nanmean(1.5 * inst[imp] + 0.02, -1), final_l2[imp],
        np.nanmean(d_angle[imp, ..., -1], -1),
        np.where(lv[:, None] > 0, 1 - 2 * np.nanmean(inst[imp], -1), np.nan),
        np.nanmean(sign_flips[imp], -1), 0.05 * np.exp(-rewinds / 100.0)[None].repeat(nl, 0),
        1.0 + np.nanmean(inst[imp], -1), 50 + 200 * (1 - np.exp(-rewinds / 150.0))[None].repeat(nl, 0),
    ])
    nm = len(MEASURES)
    rho, lo, hi = _nan(nm, nl), _nan(nm, nl), _nan(nm, nl)
    for m, j in itertools.product(range(nm), range(nl)):
        rho[m, j], lo[m, j], hi[m, j] = _spearman_ci(measure_value[m, j], acc_mean[imp, j], rng)
    mean_inst = np.nanmean(inst[imp], -1)
    oracle = rewinds[np.nanargmax(acc_mean[imp], axis=1)]
    pred_lmc = np.array([rewinds[np.argmax(row < threshold)] if (row < threshold).any() else -1
                         for row in mean_inst])
    pred_measure = np.full((nm, nl), -1, np.int64)
    for m, j in itertools.product(range(nm), range(nl)):
        v = measure_value[m, j]
        if np.isfinite(v).any():
            ref = v[np.flatnonzero(np.isfinite(v))[-1]]
            hit = np.isfinite(v) & (np.abs(v - ref) <= 0.1 * abs(ref))
            pred_measure[m, j] = rewinds[np.argmax(hit)]

    def at(k, j):
        return acc_mean[imp, j, list(rewinds).index(k)] if k >= 0 else np.nan

    gap_lmc = np.array([at(oracle[j], j) - at(pred_lmc[j], j) for j in range(nl)])
    gap_measure = np.array([[at(oracle[j], j) - at(pred_measure[m, j], j) for j in range(nl)]
                            for m in range(nm)])
    density_lr = density[imp]
    jacc_chance = density_lr / (2 - density_lr)
    mask_jaccard = np.where(lv[:, None, None] > 0,
                            jacc_chance[..., None] + (1 - jacc_chance[..., None])
                            * (1 - 2 * inst[imp]).clip(0, 1), np.nan)
    ratio = np.nanmean(d_l2[1, ..., -1], -1) / final_l2[imp] if "random_prune" in controls else _nan(nl, nr)
    with np.errstate(invalid="ignore"):
        p_ratio = p_l2[1, ..., -1] / p_l2[0, ..., -1]
    acc_std = np.where(np.isfinite(acc_mean), 0.003, np.nan)
    return xr.Dataset(
        {
            "interp_test_error": (pdims + ("alpha",), interp_error),
            "interp_test_loss": (pdims + ("alpha",), interp_loss),
            "interp_train_error": (pdims + ("alpha",), 0.8 * interp_error),
            "interp_train_loss": (pdims + ("alpha",), 0.8 * interp_loss),
            "instability": (pdims, inst),
            "instability_train": (pdims, 0.8 * inst),
            "loss_barrier": (pdims, 2.5 * inst),
            "above_line_barrier": (pdims, 1.1 * inst),
            "above_line_loss_barrier": (pdims, 2.0 * inst),
            "aligned_instability": (pdims, 0.3 * inst if aligned else _nan(*inst.shape)),
            "disagreement": (pdims, 1.5 * inst + 0.02),
            "data_order_l2": (pdims + ("step",), d_l2),
            "data_order_angle": (pdims + ("step",), d_angle),
            "pruning_noise_l2": (("kind", "level", "rewind", "step"), p_l2),
            "pruning_noise_angle": (("kind", "level", "rewind", "step"), p_angle),
            "random_imp_ratio_data_order": (("level", "rewind"), ratio),
            "random_imp_ratio_pruning_noise": (("level", "rewind"), p_ratio),
            "mask_jaccard": (("level", "rewind", "pair"), mask_jaccard),
            "mask_jaccard_chance": (("level", "rewind"), jacc_chance),
            "sign_flips": (("kind", "level", "rewind", "replica"), sign_flips),
            "early_bird": (("kind", "level", "rewind", "replica", "step"),
                           np.where(np.isfinite(sign_flips)[..., None],
                                    0.2 * np.exp(-step / 100.0), np.nan)),
            "rhat": (("kind", "level", "rewind"), 1.0 + np.nanmean(inst, -1)),
            "gradient_noise_scale": (("level", "rewind"), measure_value[-1]),
            "gradient_snr": (("level", "rewind"), 1 / measure_value[-1]),
            "final_test_acc": (("kind", "level", "rewind"), acc_mean),
            "final_test_acc_std": (("kind", "level", "rewind"), acc_std),
            "density": (("kind", "level", "rewind"), density),
            "dense_test_acc": ((), DENSE_ACC),
            "stable": (("kind", "level", "rewind"), np.nanmean(inst, -1) < threshold),
            "matching": (("kind", "level", "rewind"), acc_mean >= DENSE_ACC - 0.002),
            "measure_value": (("measure", "level", "rewind"), measure_value),
            "spearman": (("measure", "level"), rho),
            "spearman_low": (("measure", "level"), lo),
            "spearman_high": (("measure", "level"), hi),
            "kendall": (("measure", "level"), 0.8 * rho),
            "kendall_low": (("measure", "level"), 0.8 * lo),
            "kendall_high": (("measure", "level"), 0.8 * hi),
            "predicted_rewind_lmc": (("level",), pred_lmc),
            "predicted_rewind_measure": (("measure", "level"), pred_measure),
            "oracle_rewind": (("level",), oracle),
            "gap_lmc": (("level",), gap_lmc),
            "gap_measure": (("measure", "level"), gap_measure),
        },
        coords={
            "kind": list(KINDS), "level": lv, "rewind": rewinds, "replica": np.arange(replicas),
            "step": step, "alpha": alpha, "measure": list(MEASURES),
            "pair": [f"{a}-{b}" for a, b in pairs],
            "pair_a": ("pair", [a for a, _ in pairs]), "pair_b": ("pair", [b for _, b in pairs]),
        },
        attrs={
            "threshold": threshold, "matching_tolerance": 0.002, "alphas": alpha.tolist(),
            "bn_recompute": False, "measures": list(MEASURES),
            "skipped": ["reinit level 2 k=0 replica 2: diverged at step 340"],
            "created_at": "2025-01-01T00:10:00Z", "analysis_seconds": 1.5,
        },
    )
