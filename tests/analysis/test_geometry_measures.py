"""The geometry groups through the real ``analyze`` on the tiny study: trajectory maps,
planes, layer-wise and cross-level barriers (issue 20)."""

import shutil

import numpy as np
import pytest
import torch

import stabilitylab
from stabilitylab.analysis import registry
from stabilitylab.analysis.barriers import alpha_grid
from stabilitylab.analysis.context import load_context
from stabilitylab.analysis.cross_level_measures import CROSS_LEVEL_ALPHAS
from stabilitylab.analysis.interpolate import evaluate_interpolation, evaluate_interpolation_loop
from stabilitylab.analysis.run import analyze_store
from stabilitylab.testing import TINY, tiny_config

GROUPS = ["trajectory_map", "layerwise", "cross_level", "plane"]


@pytest.fixture(scope="module")
def geometry(tiny_study, tmp_path_factory):
    out = tmp_path_factory.mktemp("geometry") / "tiny.zarr"
    shutil.copytree(tiny_study, out)
    result = analyze_store(str(out), measures=GROUPS, alphas=11, progress=False, n_boot=50)
    return out, result["analysis"], load_context(str(out))


def test_planes_are_opt_in_and_the_other_groups_default():
    default = registry.select(None)
    assert "plane" not in default
    assert {"trajectory_map", "layerwise", "cross_level"} <= set(default)
    assert "interpolation" in registry.select(["plane"])  # the LMC-rule k needs it
    assert registry.select(["default", "plane"]) == (*default, "plane")


def test_plane_anchor_errors_equal_direct_evaluation(geometry):
    _, an, ctx = geometry
    x, y = ctx.data.test_x, ctx.data.test_y
    checked = 0
    for kind, level in (("imp", 0), ("imp", 2), ("reinit", 2)):
        for plane in an.plane.values:
            k = int(an.plane_rewind.sel(kind=kind, level=level, plane=plane))
            if k < 0:
                continue
            finals = torch.from_numpy(ctx.final_weights(kind, level, k))
            start = torch.from_numpy(np.asarray(ctx.ds.weights.sel(
                kind=kind, level=level, rewind=k, replica=0, step=k).values, np.float32))
            for anchor, w in zip(("a", "b", "c"), (finals[0], finals[1], start)):
                direct = evaluate_interpolation_loop(ctx.stacked, w, w, [1.0], x, y)
                got = float(an.plane_anchor_error.sel(kind=kind, level=level, plane=plane,
                                                      anchor=anchor))
                assert got == direct["error"][0]
                checked += 1
    assert checked >= 9


def test_grid_nodes_on_the_segment_equal_the_alpha_path(geometry):
    _, an, ctx = geometry
    at = {"kind": "imp", "level": 1, "plane": "first"}
    k = int(an.plane_rewind.sel(at))
    xs = an.plane_x_coord.sel(at).values
    ys = an.plane_y_coord.sel(at).values
    bx = float(an.plane_anchor_x.sel({**at, "anchor": "b"}))
    row = int(np.flatnonzero(ys == 0)[0])
    on = np.flatnonzero((xs >= 0) & (xs <= bx))
    assert len(on) >= 2 and xs[on[0]] == 0 and xs[on[-1]] == bx
    alphas = 1 - xs[on] / bx  # x = (1 − α)‖W_b − W_a‖ from W_a
    finals = torch.from_numpy(ctx.final_weights("imp", 1, k))
    path = evaluate_interpolation(ctx.stacked, finals[0], finals[1], alphas, ctx.data.test_x,
                                  ctx.data.test_y)
    grid_err = an.plane_test_error.sel(at).values[row, on]
    grid_loss = an.plane_test_loss.sel(at).values[row, on]
    np.testing.assert_array_equal(grid_err, path["error"])
    np.testing.assert_allclose(grid_loss, path["loss"], rtol=1e-5)


def test_trajectory_maps_start_at_w_k_and_explain_at_most_everything(geometry):
    _, an, ctx = geometry
    share = an.trajectory_map_explained.sel(kind="imp")
    assert np.isfinite(share).all() and (share.sum("component") <= 1 + 1e-9).all()
    assert (share.sel(component=1) >= share.sel(component=2)).all()
    path = an.trajectory_map_path.sel(kind="imp", level=0, rewind=10)
    assert path.sel(step=slice(None, 5)).isnull().all()  # before k: NaN
    for r in ctx.replicas:  # every data-order copy starts at W_k
        np.testing.assert_allclose(path.sel(replica=r, step=10),
                                   an.trajectory_map_start.sel(kind="imp", level=0, rewind=10),
                                   atol=1e-4)
    contour = an.map_test_error.sel(kind="imp", level=0, plane="first")
    assert np.isfinite(contour).all() and ((contour >= 0) & (contour <= 1)).all()


def test_layerwise_barriers_per_layer_for_imp_only(geometry):
    _, an, _ = geometry
    assert list(an.layer.values) == ["conv1", "conv2", "conv3", "fc"]
    assert np.isfinite(an.layerwise_barrier.sel(kind="imp")).all()
    assert an.layerwise_barrier.sel(kind="reinit").isnull().all()
    assert (an.layerwise_barrier.sel(kind="imp") >= 0).all()
    # the barrier is at least half the hybrid end's excess over W_b (instability's lower bound)
    ends = an.interp_test_error.sel(kind="imp").isel(alpha=0)  # W_b
    floor = (an.layerwise_hybrid_error.sel(kind="imp") - ends) / 2
    assert (an.layerwise_barrier.sel(kind="imp") >= floor - 1e-12).all()


def test_cross_level_equals_compare_on_the_same_two_checkpoints(geometry, tmp_path):
    from stabilitylab.interop.compare import compare_checkpoints

    _, an, ctx = geometry
    assert an.cross_level_barrier.sel(level=0).isnull().all()
    paths = {}
    for level in (1, 2):
        flat = torch.from_numpy(ctx.final_weights("imp", level, 10)[1])
        state = {s.name: flat[s.offset:s.offset + s.size].reshape(s.shape).clone()
                 for s in ctx.stacked.param_slots}
        paths[level] = tmp_path / f"level{level}.pt"
        torch.save(state, paths[level])
    res = compare_checkpoints(paths[2], paths[1], model="conv1d", data="mnist1d",
                              alphas=CROSS_LEVEL_ALPHAS,
                              overrides=[o for o in TINY if o.startswith(("model.", "data."))])
    got = float(an.cross_level_barrier.sel(level=2, rewind=10, replica=1))
    assert got == pytest.approx(res["error_barrier"], abs=1e-12)
    assert len(alpha_grid(CROSS_LEVEL_ALPHAS)) == res["alphas"]


def test_endpoint_stores_list_the_maps_as_absent(tmp_path):
    path = str(tmp_path / "ends.zarr")
    stabilitylab.record_study(tiny_config("study.record='endpoints'"), path, progress=False)
    result = analyze_store(path, measures=["trajectory_map", "layerwise"], alphas=3,
                           progress=False)
    an = result["analysis"]
    for name in ("trajectory_map_path", "trajectory_map_explained", "trajectory_map_start"):
        assert name in an.attrs["absent"] and an[name].isnull().all()
    assert np.isfinite(an.layerwise_barrier.sel(kind="imp")).all()  # endpoint measure: kept
    assert any(line.startswith("absent") for line in result["lines"])


def test_a_layerwise_barrier_equals_its_path_evaluated_directly(geometry):
    """The group evaluates W_b once per pair and only the α > 0 points of each layer; the
    barrier must be that of the whole path evaluated on its own."""
    from stabilitylab.analysis.barriers import instability
    from stabilitylab.analysis.interpolate import evaluate_points
    from stabilitylab.analysis.layerwise import layer_selectors, layerwise_points
    from stabilitylab.analysis.layerwise_measures import LAYERWISE_ALPHAS

    _, an, ctx = geometry
    level, k = 1, int(ctx.rewinds[0])
    finals = torch.from_numpy(ctx.final_weights("imp", level, k))
    a, b = ctx.pairs[0]
    for layer, sel in layer_selectors(ctx.stacked).items():
        pts = layerwise_points(finals[a], finals[b], alpha_grid(LAYERWISE_ALPHAS), sel)
        err = evaluate_points(ctx.stacked, pts, ctx.data.test_x, ctx.data.test_y)["error"]
        got = float(an.layerwise_barrier.sel(kind="imp", level=level, rewind=k,
                                             pair=ctx.pair_labels[0], layer=layer))
        assert got == pytest.approx(float(instability(err[None])[0]), abs=1e-12), layer
