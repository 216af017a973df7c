"""The vectorised, out-of-core analysis layer (issue #26): each batched path equals the
per-run computation it replaced, bit for bit."""

import numpy as np
import pytest
import torch
import xarray as xr

from stabilitylab.analysis import divergence
from stabilitylab.analysis import xr as sxr
from stabilitylab.analysis.measures import (
    _top_k_sorted,
    early_bird_distance,
    magnitude_mask,
)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_magnitude_mask_equals_the_stable_sort(rng):
    w = rng.normal(size=(5, 4, 257))
    w[0, 0, :40] = 0.5  # many ties at the threshold: the earlier ones are kept
    w[1, 2, :] = np.round(w[1, 2], 1)
    w[2, 3, 7] = np.nan  # a row with NaN takes the sort path
    elig = rng.random((5, 1, 257)) < 0.6
    for density in (0.0, 0.1, 0.5, 0.93, 1.0):
        got = magnitude_mask(w, density, elig)
        score = np.where(np.broadcast_to(elig, w.shape), np.abs(w), -np.inf).reshape(-1, 257)
        keep = np.rint(density * np.broadcast_to(elig, w.shape).sum(-1)).astype(int).ravel()
        want = (_top_k_sorted(score, keep).reshape(w.shape)) & elig
        np.testing.assert_array_equal(got, want)
        assert (got.sum(-1)[np.isfinite(w).all(-1)] ==
                keep.reshape(5, 4)[np.isfinite(w).all(-1)]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_magnitude_mask_without_a_mask_selects_as_the_stable_sort(rng, dtype):
    # no mask: thresholds by np.partition, not a sort; the same masks as the stable sort
    w = rng.normal(size=(6, 5, 300)).astype(dtype)
    w[0, 0, :60] = 0.5  # many ties at the threshold
    w[1, 2] = np.round(w[1, 2], 1)
    w[2, 3, 7] = np.nan  # a row with NaN
    w[3, 1] = 0.0  # a row of equal values
    # signed zeros, infinities and subnormals: the selection orders the magnitudes' bits
    w[4, 0, :30] = -0.0
    w[4, 0, 30:40] = [np.inf, -np.inf] * 5
    w[4, 1, :100] = np.finfo(dtype).smallest_subnormal * rng.integers(-50, 50, 100)
    w[5, 4, ::3] = -np.nan
    for density in (0.0, 0.004, 0.1, 0.5, 0.93, 1.0):
        got = magnitude_mask(w, density)
        keep = np.full(30, int(np.rint(density * 300)))
        want = _top_k_sorted(np.abs(w).reshape(-1, 300), keep).reshape(w.shape)
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(magnitude_mask(w, 0.3, axis=0),
                                  np.moveaxis(magnitude_mask(np.moveaxis(w, 0, -1), 0.3), -1, 0))


def test_magnitude_mask_keeps_the_first_of_tied_weights():
    w = np.array([1.0, 2.0, 2.0, 2.0, 0.5])
    np.testing.assert_array_equal(magnitude_mask(w, 0.4), [False, True, True, False, False])


@pytest.mark.parametrize("step_chunk", [None, 1, 5, 50])
def test_early_bird_curve_matches_the_array_function_in_any_blocks(rng, step_chunk):
    w = rng.normal(size=(3, 2, 23, 40)).astype(np.float32)
    elig = rng.random((3, 40)) < 0.7
    traj = xr.DataArray(w, dims=("cell", "replica", "step", "param"))
    if step_chunk:
        traj = traj.chunk({"step": step_chunk, "cell": 1})
    got = sxr.early_bird_curve(traj, 0.5, xr.DataArray(elig, dims=("cell", "param"))).values
    want = np.stack([np.stack([early_bird_distance(w[c, r], 0.5, elig[c]) for r in range(2)])
                     for c in range(3)])
    assert np.isnan(got[..., 0]).all()
    np.testing.assert_array_equal(got[..., 1:], want)


def test_divergence_wrappers_keep_the_bits_of_one_run_at_a_time(rng):
    # analyze used to evaluate each (kind, level, rewind) cell alone, on (pair, step) curves
    # cut out by a boolean index; the batched wrappers must round the same way.
    steps = np.arange(0, 400, 4)
    for n_pair in (1, 3):
        d = np.exp(rng.normal(size=(2, 3, n_pair, len(steps))).cumsum(-1) * 0.01)
        valid = steps >= 20
        batched = sxr.divergence_rate(xr.DataArray(d[..., valid],
                                                   dims=("kind", "level", "pair", "step")),
                                      steps[valid], 100).values
        times = sxr.divergence_time(xr.DataArray(d[..., valid],
                                                 dims=("kind", "level", "pair", "step")),
                                    steps[valid], 0.5).values
        for i in range(2):
            for j in range(3):
                one = np.ascontiguousarray(d[i, j])[..., valid]
                np.testing.assert_array_equal(batched[i, j], divergence.divergence_rate(
                    one, steps[valid], 100))
                np.testing.assert_array_equal(times[i, j], divergence.divergence_time(
                    one, steps[valid], 0.5))


def test_interpolate_pairs_is_interpolate_flat_for_each_pair(rng):
    from stabilitylab.analysis.interpolate import interpolate_flat, interpolate_pairs

    wa = torch.from_numpy(rng.normal(size=(4, 33)).astype(np.float32))
    wb = torch.from_numpy(rng.normal(size=(4, 33)).astype(np.float32))
    alphas = np.linspace(0, 1, 7)
    got = interpolate_pairs(wa, wb, alphas)
    for i in range(4):
        assert torch.equal(got[i], interpolate_flat(wa[i], wb[i], alphas))


def test_evaluate_points_in_blocks_equals_one_stack(monkeypatch):
    from stabilitylab.analysis import interpolate
    from stabilitylab.config import load_config
    from stabilitylab.models import build_model
    from stabilitylab.train.functional import StackedModel

    cfg = load_config(None, ["model.channels=4"])
    models = [build_model(cfg.model, (1, 40), 10, generator=torch.Generator().manual_seed(s))
              for s in range(3)]
    stacked = StackedModel(models[0])
    flat = stacked.flatten(stacked.stack(models)[0])
    points = torch.cat([flat] * 9)  # 27 points
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(130, 1, 40, generator=g), torch.randint(0, 10, (130,), generator=g)
    one = interpolate.evaluate_points(stacked, points, x, y, batch_size=50, return_logits=True)
    monkeypatch.setattr(interpolate, "POINT_EXAMPLES", 200)  # blocks of 4 points
    blocks = interpolate.evaluate_points(stacked, points, x, y, batch_size=50,
                                         return_logits=True)
    for key in ("error", "loss"):
        np.testing.assert_allclose(blocks[key], one[key], rtol=1e-6, atol=0)
    np.testing.assert_allclose(blocks["logits"], one["logits"], rtol=1e-5, atol=1e-6)
    assert blocks["logits"].shape == (27, 130, 10)


@pytest.fixture(scope="module")
def conv_store(tmp_path_factory):
    """A synthetic store with the default conv1d layout and several step chunks."""
    from stabilitylab.config import load_config
    from stabilitylab.models import build_model
    from stabilitylab.testing import make_fake_store
    from stabilitylab.train.functional import StackedModel

    model = build_model(load_config(None).model, (1, 40), 10,
                        generator=torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("conv") / "fake.zarr"
    study = make_fake_store(str(path), levels=2, rewinds=(0, 10), replicas=3, total_steps=40,
                            record_every=4, controls=("random_prune", "reinit"), step_chunk=3,
                            param_layout=StackedModel(model).layout())
    return path, study


def test_fake_store_with_a_real_layout_is_analysable(conv_store):
    from stabilitylab.analysis.run import analyze_store

    path, study = conv_store
    assert study.param_layout[0]["name"] == "conv1.weight"
    out = analyze_store(str(path), measures=["trajectory"], progress=False, n_boot=10)
    an = out["analysis"]
    assert np.isfinite(an.data_order_l2.sel(kind="imp", level=1, rewind=10, step=40)).all()
    assert {"loading", "trajectory measures", "writing"} <= set(out["profile"])


def test_trajectory_blocks_do_not_change_the_result(conv_store, monkeypatch):
    from stabilitylab.analysis import trajectory_measures as tm
    from stabilitylab.analysis.context import load_context

    ctx = load_context(str(conv_store[0]))
    whole = tm.trajectory_measures(ctx)
    monkeypatch.setattr(tm, "BLOCK_BYTES", 1)  # one cell × one step chunk at a time
    blocks = tm.trajectory_measures(ctx)
    for name in whole:
        xr.testing.assert_identical(blocks[name], whole[name])
    # and the curves equal a direct per-run computation
    w = ctx.ds.weights.sel(kind="imp", level=1, rewind=10).values.astype(np.float64)
    m = ctx.load("masks").sel(kind="imp", level=1, rewind=10).values
    d = np.sqrt(((np.where(m, w[0] - w[1], 0.0)) ** 2).sum(-1))
    got = whole["data_order_l2"].sel(kind="imp", level=1, rewind=10, pair="0-1").values
    valid = ctx.steps >= 10
    np.testing.assert_array_equal(got[valid], d[valid])
    assert np.isnan(got[~valid]).all()
    # the early-bird curve (whose block reads carry one step over from the block before)
    # equals the mask distance of each recorded step to the one before it, run alone
    density = 1.0 - ctx.cfg.pruning.fraction
    run = ctx.ds.weights.sel(kind="imp", level=1, rewind=10, replica=1).values
    direct = early_bird_distance(run, density, m & np.asarray(ctx.prunable))  # t vs t + 1
    curve = whole["early_bird"].sel(kind="imp", level=1, rewind=10, replica=1).values
    later = np.flatnonzero(ctx.steps[:-1] >= 10) + 1  # steps whose step before is >= k
    assert len(later) >= 8  # steps 12 to 40: several step chunks of 3
    np.testing.assert_array_equal(curve[later], direct[later - 1])


def test_trajectory_blocks_read_no_step_wholly_before_k(conv_store, monkeypatch):
    from stabilitylab.analysis import trajectory_measures as tm
    from stabilitylab.analysis.context import StudyContext, load_context

    ctx = load_context(str(conv_store[0]))
    monkeypatch.setattr(tm, "BLOCK_BYTES", 1)  # one cell × one step chunk at a time
    seen, read = [], StudyContext.read_cells

    def spy(self, kind, level, rewind, replica=slice(None), step=slice(None), **kw):
        if isinstance(step, slice) and step != slice(None):  # the blocks, not the views
            seen.append((np.asarray(rewind), step))
        return read(self, kind, level, rewind, replica, step, **kw)

    monkeypatch.setattr(StudyContext, "read_cells", spy)
    tm.trajectory_measures(ctx)
    assert len(seen) > 4
    for rewinds, step in seen:  # every block reaches k: its last step is at or after it
        last = ctx.steps[step][-1]
        assert (last >= np.asarray(ctx.rewinds)[rewinds]).all()
    # the rewind-10 cells (first step >= k: 12, the second chunk) skip the first chunk
    first_chunk = [r for r, step in seen if step.start in (0, None)]
    assert all((np.asarray(ctx.rewinds)[r] == 0).all() for r in first_chunk)


def test_pipelines_take_whole_rewind_points_and_alike_work():
    from stabilitylab.analysis.trajectory_measures import _pipeline_cells

    rewind = np.repeat([0, 1, 2, 3, 4, 5], 5)  # 5 cells per k, cells in (kind, level) order
    rewind = np.concatenate([rewind[::2], rewind[1::2]])  # and not grouped by k
    first = np.array([0, 7, 14, 27, 52, 102])[rewind]
    groups = _pipeline_cells(rewind, first, 203, threads=2, group=10)
    cells = np.concatenate([m for _, m in groups])
    assert sorted(cells) == list(range(30))  # every cell once
    for _, members in groups:
        assert len(members) <= 10
        assert (np.diff(first[members]) >= 0).all()  # in order of k: the live cells a prefix
    for k in range(6):  # the cells of one k in one group: its dense run with them
        assert len({i for i, (_, m) in enumerate(groups) if (rewind[m] == k).any()}) == 1
    work = np.zeros(2)
    for t, members in groups:
        work[t] += (203 - first[members]).sum()
    assert abs(work[0] - work[1]) <= 5 * 203  # no more apart than one k's work
    # a k with more cells than a group holds is split, in groups of at most `group`
    split = _pipeline_cells(np.zeros(7, int), np.zeros(7, int), 10, threads=2, group=3)
    assert [len(m) for _, m in split] == [3, 3, 1]


def test_read_cells_into_a_buffer_reads_the_same_values(conv_store):
    from stabilitylab.analysis.context import load_context

    ctx = load_context(str(conv_store[0]))
    want = ctx.read_cells([0, 1, 2], [1, 1, 0], [1, 0, 1], step=slice(2, 9))
    buf = np.full((3, want.shape[1], 9, want.shape[-1]), -1.0, np.float32)
    got = ctx.read_cells([0, 1, 2], [1, 1, 0], [1, 0, 1], step=slice(2, 9), out=buf[:, :, 2:])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(buf[:, :, 2:], want)
    assert (buf[:, :, :2] == -1).all()  # nothing outside the view is touched
    with pytest.raises(ValueError, match="float32"):
        ctx.read_cells([0], [1], [1], out=np.zeros((1, 3, 11, want.shape[-1])))


def test_trajectory_curves_are_the_same_bits_on_any_number_of_threads(conv_store):
    from stabilitylab.analysis import trajectory_measures as tm
    from stabilitylab.analysis.context import load_context

    ctx = load_context(str(conv_store[0]))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = tm.trajectory_measures(ctx)
        torch.set_num_threads(3)  # more shares than this machine's cores, uneven ones
        three = tm.trajectory_measures(ctx)
    finally:
        torch.set_num_threads(threads)
    assert np.isfinite(one["data_order_angle"].values).any()
    for name in one:
        xr.testing.assert_identical(three[name], one[name])


def test_test_logits_and_losses_are_those_of_each_network_alone(conv_store):
    import torch.nn.functional as F

    from stabilitylab.analysis.context import load_context
    from stabilitylab.analysis.function_measures import _test_logits_and_losses
    from stabilitylab.analysis.interpolate import compile_policy

    ctx = load_context(str(conv_store[0]))
    w = ctx.ds.weights.isel(kind=0, level=0, rewind=0, replica=0).values[-7:]  # 7 networks
    flat = torch.from_numpy(np.ascontiguousarray(w))
    with compile_policy("off"):
        logits, losses = _test_logits_and_losses(ctx, flat, None)
    x, y = ctx.data.test_x, ctx.data.test_y
    assert logits.shape == (7, len(x), 10) and losses.shape == (7, len(x))
    for i in (0, 6):
        params = ctx.stacked.unflatten(flat[i:i + 1])
        want = torch.cat([ctx.stacked.forward(params, {}, x[j:j + 100], train=False,
                                              shared_input=True)[0]
                          for j in range(0, len(x), 100)])
        np.testing.assert_array_equal(logits[i], want.numpy())
        np.testing.assert_array_equal(losses[i], F.cross_entropy(want, y, reduction="none"))


def test_rhat_takes_its_last_draw_from_the_final_networks_logits(conv_store, monkeypatch):
    """R-hat's last draw is step T, the final network: its losses come from the shared
    endpoint logits, and R-hat is bit for bit that of evaluating every draw."""
    from stabilitylab.analysis import endpoints as ep
    from stabilitylab.analysis import function_measures as fm
    from stabilitylab.analysis.cells import Cells
    from stabilitylab.analysis.context import load_context

    evaluated = []
    evaluate = fm.evaluate_points

    def counting(stacked, points, *args, **kwargs):
        evaluated.append(points.shape[0])
        return evaluate(stacked, points, *args, **kwargs)

    monkeypatch.setattr(fm, "evaluate_points", counting)
    ctx = load_context(str(conv_store[0]))
    assert ctx.steps[-1] == ctx.resolved.total_steps  # the last draw is T
    cells = Cells.of(ctx)
    complete = ctx.completed.values[cells.kind, cells.level, cells.rewind]
    ep.endpoint_eval(ctx, "test")  # as the disagreement does first
    evaluated.clear()
    reused = fm._rhat(ctx, cells, complete)
    draws = sum(evaluated)
    assert np.isfinite(reused).any()

    held = ep.endpoint_eval(ctx, "test")
    monkeypatch.setitem(ctx.cache, ("endpoints", "test"),
                        {**held, "ok": np.zeros_like(held["ok"])})  # nothing to take
    evaluated.clear()
    full = fm._rhat(ctx, cells, complete)
    np.testing.assert_array_equal(reused, full)
    chains = int(complete[np.isfinite(full)].sum())  # one final network per chain
    assert sum(evaluated) - draws == chains > 0


def test_analyze_profile_prints_the_phase_table(tiny_study, tmp_path, capsys):
    import shutil

    from stabilitylab.cli.main import main

    store = tmp_path / "tiny.zarr"
    shutil.copytree(tiny_study, store)
    assert main(["analyze", str(store), "--measures", "trajectory", "--no-report",
                 "--no-progress", "--profile"]) == 0
    out = capsys.readouterr().out
    assert "| phase | seconds | share |" in out
    assert "| loading |" in out and "| trajectory measures |" in out
    total = float(out.split("| total |")[1].split("|")[0])
    assert total > 0


def test_read_ahead_yields_each_read_in_order(conv_store):
    import dask.array as da

    from stabilitylab.analysis.context import load_context

    ctx = load_context(str(conv_store[0]))
    parts = [da.from_array(np.arange(12.0).reshape(3, 4) * i, chunks=(1, 4)) for i in range(5)]
    before = ctx.load_seconds
    got = list(ctx.read_ahead((p, p + 1) for p in parts))
    assert len(got) == 5 and ctx.load_seconds >= before
    for p, (a, b) in zip(parts, got):
        np.testing.assert_array_equal(a, p.compute())
        np.testing.assert_array_equal(b, p.compute() + 1)
    assert list(ctx.read_ahead(iter(()))) == []


@pytest.fixture(scope="module")
def conv_layout():
    from stabilitylab.config import load_config
    from stabilitylab.models import build_model
    from stabilitylab.train.functional import StackedModel

    model = build_model(load_config(None).model, (1, 40), 10,
                        generator=torch.Generator().manual_seed(0))
    return StackedModel(model).layout()


@pytest.mark.parametrize("complete", [True, False])
def test_weight_views_read_through_zarr_are_the_dask_views(tmp_path, conv_layout, complete):
    import dask

    from stabilitylab.analysis import context as C
    from stabilitylab.store.testing import make_fake_store

    path = tmp_path / "s.zarr"  # an incomplete run: its unwritten chunks read as the fill
    make_fake_store(str(path), levels=2, rewinds=(0, 10, 20), replicas=3, total_steps=40,
                    record_every=4, step_chunk=3, complete=complete, param_layout=conv_layout)
    ctx = C.load_context(str(path))
    ctx.prefetch(*C.VIEWS)
    assert {"final_weights", "last_weights", "start_weights"} <= set(
        C._weight_views(ctx, list(C.VIEWS)))
    names = list(C.VIEWS)
    for name, want in zip(names, dask.compute(*[C.VIEWS[n](ctx) for n in names])):
        xr.testing.assert_identical(ctx.load(name), want)
    # and a block of cells at a few steps, as the trajectory groups read them
    got = ctx.read_cells([0, 1], [1, 1], [2, 0], step=slice(3, 7))
    want = ctx.ds.weights.isel(step=slice(3, 7)).values[[0, 1], [1, 1], [2, 0]]
    np.testing.assert_array_equal(got, want)


def test_read_cells_turns_a_damaged_chunk_into_a_store_error(tmp_path, conv_layout):
    from stabilitylab.analysis.context import load_context
    from stabilitylab.core.errors import StoreError
    from stabilitylab.store.testing import make_fake_store

    path = tmp_path / "s.zarr"
    make_fake_store(str(path), levels=1, rewinds=(0, 10), replicas=2, step_chunk=2,
                    param_layout=conv_layout)
    ctx = load_context(str(path))
    chunk = next(p for p in sorted((path / "weights").rglob("*")) if p.is_file()
                 and p.name != "zarr.json")
    chunk.write_bytes(b"not a chunk")
    with pytest.raises(StoreError, match="weights.*chunk"):  # one line, not a zarr error
        ctx.read_cells(*np.zeros((3, 2), np.int64))


def test_profile_counts_compiling_and_reading_in_their_own_rows():
    """A group's row excludes the seconds its call spent reading the store and building the
    compiled forward: those go to ``loading`` and ``compiling the forward``."""
    import time
    from types import SimpleNamespace

    from stabilitylab.analysis.interpolate import COMPILE_PHASE
    from stabilitylab.analysis.run import _Phases

    ctx = SimpleNamespace(load_seconds=0.0, stacked=SimpleNamespace())

    def group():  # 0.3 s, of which 0.1 s "reading" and 0.15 s "compiling"
        time.sleep(0.3)
        ctx.load_seconds += 0.1
        ctx.stacked.__dict__["_compile_seconds"] = 0.15
        return "done"

    phases = _Phases()
    assert phases.run("divergence", ctx, group) == "done"
    assert phases.rows["loading"] == 0.1 and phases.rows[COMPILE_PHASE] == 0.15
    assert 0.04 < phases.rows["divergence"] < 0.25  # 0.3 s less the 0.25 s counted elsewhere
    phases.run("interpolation", ctx, lambda: None)  # nothing built or read: no new seconds
    assert phases.rows[COMPILE_PHASE] == 0.15 and phases.rows["loading"] == 0.1


def test_aligned_paths_left_in_place_by_matching_are_copied_not_evaluated(conv_store,
                                                                         monkeypatch):
    """Where weight matching keeps every unit in place, the aligned curve is the plain test
    curve; it equals the aligned path evaluated point by point, for those pairs and for the
    ones that did move."""
    from stabilitylab.analysis import align, endpoints
    from stabilitylab.analysis import function_measures as fm
    from stabilitylab.analysis.barriers import alpha_grid
    from stabilitylab.analysis.context import load_context
    from stabilitylab.analysis.interpolate import evaluate_points, interpolate_flat

    ctx = load_context(str(conv_store[0]))
    real = align.flat_aligner(ctx.stacked)
    seen = []

    def every_other_in_place(stacked, what="aligned barrier"):
        def aligner(wa, wb):
            other = wb.copy() if len(seen) % 2 == 0 else real(wa, wb)
            seen.append((wa, wb, other))
            return other
        return aligner

    evaluated = []
    paths = endpoints.evaluate_paths

    def counting(ctx_, wa, wb, alphas, *rest):
        evaluated.append(len(wa))
        return paths(ctx_, wa, wb, alphas, *rest)

    monkeypatch.setattr(align, "flat_aligner", every_other_in_place)
    monkeypatch.setattr(fm, "evaluate_paths", counting)
    out = fm.interpolation_measures(ctx, n_alphas=7)
    moved = [not np.array_equal(other, wb) for _, wb, other in seen]
    n = len(seen)
    assert n >= 4 and any(moved) and not any(moved[::2])
    # test and train paths, then only the aligned paths of pairs that matching moved
    assert evaluated == [n, n, int(np.sum(moved))]
    got = out["aligned_test_error"].values.reshape(-1, 7)
    got = got[np.isfinite(got).all(1)]
    assert len(got) == n
    alphas = alpha_grid(7)
    x, y = endpoints.splits(ctx)["test"]
    for i, (wa, _, other) in enumerate(seen):
        points = interpolate_flat(torch.from_numpy(wa), torch.from_numpy(other), alphas)
        np.testing.assert_array_equal(got[i], evaluate_points(ctx.stacked, points, x, y)["error"])
    plain = out["interp_test_error"].values.reshape(-1, 7)
    plain = plain[np.isfinite(plain).all(1)]
    np.testing.assert_array_equal(got[::2], plain[::2])


def test_endpoint_values_are_those_of_each_final_network_evaluated_alone(conv_store):
    from stabilitylab.analysis.context import load_context
    from stabilitylab.analysis.endpoints import endpoint_values, splits
    from stabilitylab.analysis.interpolate import evaluate_points

    ctx = load_context(str(conv_store[0]))
    final = ctx.load("final_weights")  # (kind, level, rewind, replica, param)
    complete = np.argwhere(ctx.completed.values)  # (n, 4): kind, level, rewind, replica
    at = tuple(complete[[0, len(complete) // 2, -1]].T)
    got = endpoint_values(ctx, "train", *at)
    x, y = splits(ctx)["train"]
    for i in range(3):
        w = final.isel(kind=at[0][i], level=at[1][i], rewind=at[2][i], replica=at[3][i])
        want = evaluate_points(ctx.stacked, torch.from_numpy(w.values[None].copy()), x, y)
        assert got["error"][i] == want["error"][0] and got["loss"][i] == want["loss"][0]
    assert len({float(v) for v in got["loss"]}) == 3  # three different networks
