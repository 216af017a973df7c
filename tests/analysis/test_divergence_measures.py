"""The divergence group on a real tiny study: rates and times from the stored distance
curves, barriers along training equal to a direct evaluation at the recorded step."""

import numpy as np
import pytest
import torch

import stabilitylab
from stabilitylab.analysis.barriers import alpha_grid, instability
from stabilitylab.analysis.divergence import divergence_rate, divergence_time
from stabilitylab.analysis.divergence_measures import (
    BARRIER_ALPHAS,
    DIVERGENCE_FRACTION,
    DIVERGENCE_WINDOW,
    probe_steps,
)
from stabilitylab.analysis.interpolate import evaluate_interpolation
from stabilitylab.testing import make_analyzed_study


def test_probe_steps_first_recorded_step_at_or_after_k_plus_delta():
    steps = np.array([0, 5, 10, 20, 40, 60])
    got = probe_steps(steps, [0, 10], 60, deltas=(5, 12, 30, 55))
    assert got.tolist() == [[5, 20, 40, -1], [20, 40, 40, -1]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = make_analyzed_study(tmp_path_factory.mktemp("div") / "t.zarr",
                               measures=["trajectory", "divergence"], alphas=5)
    return path, stabilitylab.open_analysis(path)


def test_rate_and_time_come_from_the_distance_curves(tiny):
    _, an = tiny
    at = {"kind": "imp", "level": 1, "rewind": 10}
    curve = an.data_order_l2.sel(at).isel(pair=0)
    curve = curve.where(curve.step >= 10, drop=True)
    rate = float(an.divergence_rate.sel(at).isel(pair=0))
    assert rate == pytest.approx(float(divergence_rate(curve.values, curve.step.values,
                                                       DIVERGENCE_WINDOW)))
    assert np.isfinite(rate)
    assert float(an.divergence_time.sel(at).isel(pair=0)) == float(
        divergence_time(curve.values, curve.step.values, DIVERGENCE_FRACTION))


def test_barrier_at_equals_a_direct_evaluation_at_that_step(tiny):
    path, an = tiny
    from stabilitylab.analysis.context import load_context

    ctx = load_context(path)
    k, delta = 0, 25
    step = int(an.barrier_at_step.sel(rewind=k, delta=delta))
    assert step == 25
    w = torch.from_numpy(ctx.trajectory("imp", 0, k)[:, list(ctx.steps).index(step)])
    res = evaluate_interpolation(ctx.stacked, w[0], w[1], alpha_grid(BARRIER_ALPHAS),
                                 ctx.data.test_x, ctx.data.test_y)
    want = float(instability(np.asarray(res["error"])))
    got = float(an.barrier_at.sel(kind="imp", level=0, rewind=k, delta=delta).isel(pair=0))
    assert got == pytest.approx(want)
    # level 0 only; deltas past T stay NaN
    assert np.isnan(an.barrier_at.sel(level=1).values).all()
    assert np.isnan(an.barrier_at.sel(kind="imp", level=0, rewind=10, delta=200)).all()
