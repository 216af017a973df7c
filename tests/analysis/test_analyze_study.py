"""`analyze` on a recorded tiny study: variables, ranges, CSV, idempotence, skipped runs."""

import shutil

import numpy as np
import pandas as pd
import pytest
import zarr

import stabilitylab
from stabilitylab.analysis.run import analyze_store
from stabilitylab.core.errors import StabilityLabError


def test_analysis_group_has_the_documented_variables(tiny_analyzed):
    out, result = tiny_analyzed
    an = stabilitylab.open_analysis(str(out))
    for name in ("interp_test_error", "instability", "instability_train", "loss_barrier",
                 "above_line_barrier", "aligned_instability", "disagreement", "data_order_l2",
                 "pruning_noise_l2", "random_imp_ratio_data_order", "mask_jaccard", "sign_flips",
                 "early_bird", "rhat", "gradient_noise_scale", "spearman", "kendall",
                 "predicted_rewind_lmc", "oracle_rewind", "gap_lmc", "stable", "matching"):
        assert name in an, name
    assert an.interp_test_error.dims == ("kind", "level", "rewind", "pair", "alpha")
    assert an.sizes["alpha"] == 30 and an.sizes["pair"] == 1


def test_values_are_in_range(tiny_analyzed):
    an = stabilitylab.open_analysis(str(tiny_analyzed[0])).load()
    imp = an.sel(kind="imp")
    curve = imp.interp_test_error.values
    assert np.isfinite(curve).all() and ((curve >= 0) & (curve <= 1)).all()
    inst = imp.instability.values
    e0, e1 = curve[..., 0], curve[..., -1]
    assert (inst >= np.abs(e0 - e1) / 2 - 1e-12).all() and (inst <= 1).all()
    assert (imp.above_line_barrier.values >= -1e-12).all()
    assert np.isfinite(imp.aligned_instability.values).all()  # conv1d supports weight matching
    assert np.isfinite(imp.disagreement.values).all()
    # Pruning noise exists only for pruned levels; ratios only where the control ran.
    assert np.isnan(an.pruning_noise_l2.sel(kind="imp", level=0).values).all()
    assert np.isfinite(an.pruning_noise_l2.sel(kind="imp", level=2, step=60).values).all()
    assert np.isfinite(an.random_imp_ratio_data_order.sel(level=2).values).all()
    assert np.isnan(an.random_imp_ratio_data_order.sel(level=1).values).all()
    # Data-order distance is NaN before the rewind point and 0 at it (copies start equal).
    d = an.data_order_l2.sel(kind="imp", level=1, rewind=10, pair="0-1")
    assert np.isnan(d.sel(step=5)) and float(d.sel(step=10)) == 0.0
    chance = an.mask_jaccard_chance.values
    assert np.allclose(chance[np.isfinite(chance)], 0.5 / 1.5)


def test_csv_files(tiny_analyzed):
    out, result = tiny_analyzed
    base = result["csv"]
    summary = pd.read_csv(f"{base}/summary.csv")
    assert {"kind", "level", "rewind", "final_test_acc", "instability", "stable"} <= set(summary)
    assert len(summary) == 3 * 3 * 2
    corr = pd.read_csv(f"{base}/correlations.csv")
    assert {"measure", "level", "spearman", "spearman_low", "spearman_high"} <= set(corr)
    pred = pd.read_csv(f"{base}/predictions.csv")
    assert len(pred) == 3


def test_rerun_is_idempotent(tiny_analyzed):
    out, _ = tiny_analyzed
    before = stabilitylab.open_analysis(str(out)).load()
    analyze_store(str(out), progress=False, n_boot=200)
    after = stabilitylab.open_analysis(str(out)).load()
    assert set(before.data_vars) == set(after.data_vars)
    for name in ("instability", "interp_test_error", "data_order_l2", "spearman"):
        np.testing.assert_array_equal(before[name].values, after[name].values)
    assert sorted(zarr.open_group(str(out), mode="r").group_keys()) == ["analysis"]


def test_skips_incomplete_runs_with_one_line_each(tiny_study, tmp_path):
    out = tmp_path / "partial.zarr"
    shutil.copytree(tiny_study, out)
    group = zarr.open_group(str(out), mode="r+")
    status = group["status"]
    status[0, 1, 1, 1] = 1  # imp, level 1, rewind 10, replica 1: incomplete
    status[0, 2, 0, 0] = 3  # imp, level 2, rewind 0, replica 0: diverged
    group["diverged_step"][0, 2, 0, 0] = 40
    result = analyze_store(str(out), progress=False, n_boot=50, measures=["trajectory",
                                                                            "interpolation"])
    lines = result["lines"]
    assert "skipped imp level 1 rewind 10 replica 1: incomplete" in lines
    assert "skipped imp level 2 rewind 0 replica 0: diverged at step 40" in lines
    an = result["analysis"]
    assert np.isnan(an.instability.sel(kind="imp", level=1, rewind=10)).all()
    assert np.isfinite(an.instability.sel(kind="imp", level=1, rewind=0)).all()


def test_bad_arguments(tiny_study):
    with pytest.raises(StabilityLabError, match="--measures"):
        analyze_store(str(tiny_study), measures=["vibes"])
    with pytest.raises(StabilityLabError, match="--alphas"):
        analyze_store(str(tiny_study), alphas=1)
