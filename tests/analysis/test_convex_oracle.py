"""The convex case as an oracle on real training, and the pruning-noise rule for reinit runs.

Softmax regression (``model.name = "mlp"``, ``model.hidden = []``) has a cross-entropy
loss convex in its parameters, so along any linear path the loss lies on or below the
chord: the above-the-line loss barrier (Entezari et al., ICLR 2022, Eq. 1) is 0 up to
float rounding, for every pair of every kind and level, whatever the seed and
learning rate.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stabilitylab
from stabilitylab.analysis.run import analyze_store

LINEAR = ["model.name='mlp'", "model.hidden=[]", "training.steps='40it'",
          "study.rewinds=['0it','10it']", "study.replicas=2", "pruning.levels=1",
          "data.num_samples=500", "training.eval_every='20it'", "training.log_every='10it'",
          "study.record='endpoints'", "training.batch_size=50"]


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), lr=st.sampled_from([0.05, 0.2, 0.5]))
def test_above_line_loss_barrier_is_zero_for_softmax_regression(tmp_path_factory, seed, lr):
    out = tmp_path_factory.mktemp("linear") / "s.zarr"
    cfg = stabilitylab.load_config(None, [*LINEAR, f"study.seed={seed}", f"training.lr={lr}"])
    stabilitylab.record_study(cfg, str(out), progress=False)
    an = analyze_store(str(out), measures=["interpolation"], progress=False, n_boot=10)["analysis"]
    loss = an.above_line_loss_barrier.values
    finite = np.isfinite(loss)
    assert finite.sum() >= 4  # imp at both levels, and the controls, were measured
    assert np.all(loss[finite] >= 0.0) and np.all(loss[finite] <= 1e-5)
    # The oracle is not vacuous: the paths really move (the chord differs from the endpoints).
    curves = an.interp_test_loss.values
    ok = np.isfinite(curves).all(-1)
    assert np.ptp(curves[ok], axis=-1).max() > 1e-4


def test_pruning_noise_is_nan_for_reinit_runs(tiny_analyzed):
    _, result = tiny_analyzed
    an = result["analysis"]
    assert np.isnan(an.pruning_noise_l2.sel(kind="reinit").values).all()
    assert np.isnan(an.pruning_noise_angle.sel(kind="reinit").values).all()
    last = int(an.level.values[-1])
    imp = an.pruning_noise_l2.sel(kind="imp", level=last).values
    assert np.isfinite(imp).any()


@pytest.mark.parametrize("name", ["above_line_loss_barrier"])
def test_the_loss_form_is_a_scalar_measure(tiny_analyzed, name):
    _, result = tiny_analyzed
    an = result["analysis"]
    assert name in an and name in list(an.measure.values)
    v = an[name].values
    assert (v[np.isfinite(v)] >= 0).all()
