"""The opt-in adaptive α search (``analyze --alphas adaptive``) and its stated resolution."""

import shutil

import numpy as np
import pytest

from stabilitylab.analysis.adaptive_alphas import (
    COARSE_ALPHAS,
    REFINE_ROUNDS,
    refine_maximum,
    resolution,
)
from stabilitylab.analysis.barriers import alpha_grid, instability


def _barrier(peaks, widths, heights):
    """n unimodal 1-D barrier functions: a bump of ``heights`` at ``peaks`` on a tilted line."""
    def f(rows, alphas):
        p, w, h = peaks[rows], widths[rows], heights[rows]
        return 0.1 + 0.05 * alphas + h * np.exp(-0.5 * ((alphas - p) / w) ** 2)
    return f


def test_resolution_is_the_final_half_spacing():
    assert resolution() == pytest.approx(1 / (COARSE_ALPHAS - 1) / 2**REFINE_ROUNDS)
    assert resolution(11, 0) == pytest.approx(0.1)


def test_finds_the_maximum_of_a_known_barrier_within_its_resolution():
    rng = np.random.default_rng(0)
    n = 200
    peaks = rng.uniform(0.0, 1.0, n)  # mostly between coarse points, some near the ends
    widths, heights = rng.uniform(0.05, 0.4, n), rng.uniform(0.01, 0.5, n)
    f = _barrier(peaks, widths, heights)
    grid = alpha_grid(COARSE_ALPHAS)
    coarse = np.stack([f(np.full(len(grid), i), grid) for i in range(n)])
    calls = []
    best_alpha, best_value = refine_maximum(lambda r, a: calls.append(len(r)) or f(r, a), coarse)
    dense = np.linspace(0, 1, 200_001)
    true_alpha = np.array([dense[np.argmax(f(np.full(len(dense), i), dense))] for i in range(n)])
    assert np.all(np.abs(best_alpha - true_alpha) <= resolution() + 1e-5)
    assert np.all(best_value <= f(np.arange(n), true_alpha) + 1e-12)
    assert np.all(best_value >= coarse.max(1))  # never below what the coarse grid saw
    assert calls == [2 * n] * REFINE_ROUNDS  # every round's points in one batched call
    # the coarse grid alone misses the peak by more than the stated resolution somewhere
    assert np.max(np.abs(grid[coarse.argmax(1)] - true_alpha)) > resolution()


def test_nan_curves_stay_nan_and_are_not_evaluated():
    coarse = np.tile(np.sin(np.pi * alpha_grid(COARSE_ALPHAS)), (3, 1))
    coarse[1, 4] = np.nan
    seen = []

    def f(rows, alphas):
        seen.extend(rows.tolist())
        return np.sin(np.pi * alphas)

    best_alpha, best_value = refine_maximum(f, coarse)
    assert np.isnan(best_alpha[1]) and np.isnan(best_value[1]) and 1 not in seen
    np.testing.assert_allclose(best_alpha[[0, 2]], 0.5)
    with pytest.raises(ValueError, match="coarse_values"):
        refine_maximum(f, coarse[:, :5])


def test_adaptive_analysis_is_opt_in_and_refines_the_grid_barriers(tiny_study, tmp_path):
    from stabilitylab.analysis.context import load_context
    from stabilitylab.analysis.function_measures import interpolation_measures
    from stabilitylab.analysis.run import analyze_store

    out = tmp_path / "adaptive.zarr"
    shutil.copytree(tiny_study, out)
    res = analyze_store(str(out), progress=False, n_boot=20, alphas="adaptive",
                        measures=["interpolation", "aligned"])
    an = res["analysis"]
    assert an.attrs["alphas"] == "adaptive"
    assert an.attrs["alpha_resolution"] == resolution()
    assert an.sizes["alpha"] == COARSE_ALPHAS  # the stored curves are the coarse grid
    coarse_barrier = instability(an.interp_test_error.values)
    finite = np.isfinite(coarse_barrier)
    assert finite.any() and np.array_equal(finite, np.isfinite(an.instability.values))
    assert np.all(an.instability.values[finite] >= coarse_barrier[finite])
    # Every α the search visits is a multiple of the resolution, so the finest grid of
    # that spacing sees every point it saw: the adaptive barriers are never above it.
    ctx = load_context(str(out))
    fine = interpolation_measures(ctx, n_alphas=round(1 / resolution()) + 1)
    for name in ("instability", "instability_train", "loss_barrier", "loss_barrier_train",
                 "above_line_barrier",
                 "above_line_loss_barrier", "aligned_instability"):
        a, f = an[name].values, fine[name].values
        ok = np.isfinite(f)
        assert np.array_equal(ok, np.isfinite(a)), name
        assert np.all(a[ok] <= f[ok] + 1e-12), name
    default = analyze_store(str(out), progress=False, n_boot=20,
                            measures=["interpolation"])["analysis"]
    assert default.attrs["alphas"] == 30 and "alpha_resolution" not in default.attrs
    assert default.sizes["alpha"] == 30


def test_cli_takes_a_number_or_adaptive(capsys):
    from stabilitylab.cli.main import _parser, main

    parse = _parser().parse_args
    assert parse(["analyze", "s.zarr", "--alphas", "adaptive"]).alphas == "adaptive"
    assert parse(["analyze", "s.zarr"]).alphas == 30
    assert parse(["analyze", "s.zarr", "--alphas", "7"]).alphas == 7
    assert main(["analyze", "s.zarr", "--alphas", "fine"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'adaptive'" in err[0]
