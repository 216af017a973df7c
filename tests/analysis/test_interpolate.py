"""Batched interpolation == per-α loop; convex oracle for the above-line barrier."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from stabilitylab.analysis.barriers import above_line_barrier, alpha_grid, instability
from stabilitylab.analysis.interpolate import (
    evaluate_interpolation,
    evaluate_interpolation_loop,
    evaluate_points,
    interpolate_flat,
)
from stabilitylab.train.functional import StackedModel


def _mlp():
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _bn_conv():
    return nn.Sequential(nn.Conv1d(1, 4, 3, stride=2), nn.BatchNorm1d(4), nn.ReLU(),
                         nn.Conv1d(4, 5, 3), nn.BatchNorm1d(5), nn.ReLU(), nn.Flatten(),
                         nn.Linear(5 * 5, 3))


def _endpoints(make, seed=0):
    torch.manual_seed(seed)
    m1, m2 = make(), make()
    stacked = StackedModel(m1)
    params, buffers = stacked.stack([m1, m2])
    flat = stacked.flatten(params)
    return stacked, flat[0], flat[1], buffers


def test_interpolate_flat_endpoints_exact():
    w1, w2 = torch.randn(2, 17, generator=torch.Generator().manual_seed(0))
    pts = interpolate_flat(w1, w2, alpha_grid(7))
    assert pts.shape == (7, 17)
    assert torch.equal(pts[0], w2) and torch.equal(pts[-1], w1)
    torch.testing.assert_close(pts[3], 0.5 * (w1 + w2))


def test_batched_equals_loop_mlp():
    stacked, w1, w2, _ = _endpoints(_mlp)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(50, 6, generator=g), torch.randint(0, 3, (50,), generator=g)
    alphas = alpha_grid(6)
    fast = evaluate_interpolation(stacked, w1, w2, alphas, x, y, batch_size=16)
    ref = evaluate_interpolation_loop(stacked, w1, w2, alphas, x, y, batch_size=50)
    np.testing.assert_allclose(fast["error"], ref["error"])
    np.testing.assert_allclose(fast["loss"], ref["loss"], rtol=1e-6)
    assert fast["bn_mode"] == ref["bn_mode"] == "none"
    # endpoints are the two networks themselves
    m1 = stacked.module_at(stacked.unflatten(w1[None]), {}, 0)
    assert fast["loss"][-1] == pytest.approx(nn.functional.cross_entropy(m1(x), y).item(),
                                             rel=1e-6)
    assert fast["error"][-1] == pytest.approx((m1(x).argmax(1) != y).double().mean().item())


@pytest.mark.parametrize("bn_batch_size", [None, 12])
def test_batched_equals_loop_bn_conv(bn_batch_size):
    stacked, w1, w2, buffers = _endpoints(_bn_conv, seed=3)
    assert stacked.buffer_slots
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(40, 1, 15, generator=g), torch.randint(0, 3, (40,), generator=g)
    xt = torch.randn(30, 1, 15, generator=g) * 2 + 1
    alphas = alpha_grid(5)
    fast = evaluate_interpolation(stacked, w1, w2, alphas, x, y, bn_recompute_x=xt,
                                  batch_size=16, bn_batch_size=bn_batch_size)
    ref = evaluate_interpolation_loop(stacked, w1, w2, alphas, x, y, bn_recompute_x=xt,
                                      batch_size=40, bn_batch_size=bn_batch_size)
    assert fast["bn_mode"] == ref["bn_mode"] == "recomputed"
    np.testing.assert_allclose(fast["error"], ref["error"])
    np.testing.assert_allclose(fast["loss"], ref["loss"], rtol=1e-5)
    # interpolated buffers: a different (naive) answer, but still batched == loop
    bflat = stacked.flatten_buffers(buffers)
    fast_i = evaluate_interpolation(stacked, w1, w2, alphas, x, y, buffers=(bflat[0], bflat[1]))
    ref_i = evaluate_interpolation_loop(stacked, w1, w2, alphas, x, y,
                                        buffers=(bflat[0], bflat[1]))
    assert fast_i["bn_mode"] == "interpolated"
    np.testing.assert_allclose(fast_i["loss"], ref_i["loss"], rtol=1e-5)
    with pytest.raises(ValueError, match="BatchNorm"):
        evaluate_interpolation(stacked, w1, w2, alphas, x, y)


def test_evaluate_points_is_the_alpha_path_and_returns_logits():
    """The shared evaluator on the α path's points gives the α path bit for bit; its logits
    are each point's own network's."""
    stacked, w1, w2, _ = _endpoints(_bn_conv, seed=5)
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(30, 1, 15, generator=g), torch.randint(0, 3, (30,), generator=g)
    xt = torch.randn(20, 1, 15, generator=g)
    alphas = alpha_grid(4)
    path = evaluate_interpolation(stacked, w1, w2, alphas, x, y, bn_recompute_x=xt)
    pts = evaluate_points(stacked, interpolate_flat(w1, w2, alphas), x, y, bn_recompute_x=xt,
                          return_logits=True)
    assert np.array_equal(path["error"], pts["error"]) and np.array_equal(path["loss"], pts["loss"])
    assert pts["logits"].shape == (4, 30, 3)
    errors = (pts["logits"].argmax(-1) != y).double().mean(1).numpy()
    np.testing.assert_array_equal(errors, pts["error"])


@pytest.mark.parametrize("make", [_mlp, _bn_conv])
def test_blocks_on_threads_give_the_one_thread_bits(make):
    """Several blocks of points run on worker threads (one torch thread each, their own
    model copy) give exactly what one thread gives, logits, error and loss."""
    stacked, w1, w2, _ = _endpoints(make, seed=7)
    g = torch.Generator().manual_seed(6)
    shape = (6,) if make is _mlp else (1, 15)
    x, y = torch.randn(25, *shape, generator=g), torch.randint(0, 3, (25,), generator=g)
    xt = torch.randn(20, *shape, generator=g) if stacked.buffer_slots else None
    pts = interpolate_flat(w1, w2, alpha_grid(23))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = evaluate_points(stacked, pts, x, y, bn_recompute_x=xt, batch_size=1000,
                              return_logits=True)
        torch.set_num_threads(2)  # POINT_EXAMPLES // 1000 = 3 points a block: 8 blocks
        two = evaluate_points(stacked, pts, x, y, bn_recompute_x=xt, batch_size=1000,
                              return_logits=True)
        assert torch.get_num_threads() == 2  # restored after the workers
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one["logits"], two["logits"])
    assert np.array_equal(one["error"], two["error"]) and np.array_equal(one["loss"], two["loss"])


def test_bn_recompute_does_not_touch_template_mode():
    stacked, w1, w2, _ = _endpoints(_bn_conv)
    x, y = torch.randn(8, 1, 15), torch.randint(0, 3, (8,))
    evaluate_interpolation(stacked, w1, w2, [0.0, 1.0], x, y, bn_recompute_x=x)
    moms = {m.momentum for m in stacked.template.modules() if isinstance(m, nn.BatchNorm1d)}
    assert moms == {0.1}


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.5, 5.0))
def test_above_line_barrier_zero_for_convex_softmax_regression(seed, scale):
    """Cross-entropy of softmax regression is convex in its parameters (so the above-the-line barrier of Entezari et al., ICLR 2022, is 0 there)."""
    g = torch.Generator().manual_seed(seed)
    stacked = StackedModel(nn.Linear(4, 3).double())
    w1 = torch.randn(stacked.num_params, generator=g, dtype=torch.float64) * scale
    w2 = torch.randn(stacked.num_params, generator=g, dtype=torch.float64) * scale
    x = torch.randn(64, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (64,), generator=g)
    out = evaluate_interpolation(stacked, w1, w2, alpha_grid(15), x, y)
    assert above_line_barrier(out["loss"]) <= 1e-5
    assert instability(out["error"]) >= abs(out["error"][0] - out["error"][-1]) / 2 - 1e-12


def test_same_weights_give_zero_barrier():
    stacked, w1, _, _ = _endpoints(_mlp)
    x, y = torch.randn(20, 6), torch.randint(0, 3, (20,))
    out = evaluate_interpolation(stacked, w1, w1.clone(), alpha_grid(7), x, y)
    assert instability(out["error"]) == 0.0
    assert instability(out["loss"]) == pytest.approx(0.0, abs=1e-6)


def test_compiled_evaluation_gives_the_eager_bits():
    """``compile_policy("on")``: the compiled forward (padded last block, eager last chunk)
    gives the eager path's logits, errors and losses bit for bit, and is really used."""
    from stabilitylab.analysis.interpolate import compile_policy
    from stabilitylab.models.conv1d import Conv1dNet

    torch.manual_seed(3)
    m1, m2 = Conv1dNet(1, 40, 8, 10), Conv1dNet(1, 40, 8, 10)
    stacked = StackedModel(m1)
    flat = stacked.flatten(stacked.stack([m1, m2])[0])
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(120, 1, 40, generator=g), torch.randint(0, 10, (120,), generator=g)
    pts = torch.cat([interpolate_flat(flat[0], flat[1], alpha_grid(35)),
                     interpolate_flat(flat[1], flat[0], alpha_grid(35))])  # 70 points
    with compile_policy("off"):
        eager = evaluate_points(stacked, pts, x, y, batch_size=50, return_logits=True)
    assert not stacked.__dict__.get("_compiled_eval")
    with compile_policy("on"):  # blocks of 3000 // 50 = 60 points: 60 + 10 padded to 60
        compiled = evaluate_points(stacked, pts, x, y, batch_size=50, return_logits=True)
    assert any(callable(f) for f in stacked.__dict__["_compiled_eval"].values())
    from stabilitylab.analysis import interpolate

    built = interpolate.compile_seconds(stacked)
    assert built > 0  # counted where analyze's profile finds it
    with compile_policy("on"):  # built once: a second call adds nothing
        evaluate_points(stacked, pts, x, y, batch_size=50)
    assert interpolate.compile_seconds(stacked) == built
    assert torch.equal(eager["logits"], compiled["logits"])
    assert np.array_equal(eager["error"], compiled["error"])
    assert np.array_equal(eager["loss"], compiled["loss"])
    with pytest.raises(ValueError, match="--compile: choose from auto, on, off"), \
            compile_policy("always"):
        pass


def test_compiled_forward_runs_eager_on_another_layout():
    """The compiled forward assumes the traced shapes and strides: called with others (a
    strided view of the points, another batch) it gives the eager logits, never an error."""
    from stabilitylab.analysis.interpolate import _inductor_forward
    from stabilitylab.models.conv1d import Conv1dNet

    torch.manual_seed(4)
    m = Conv1dNet(1, 40, 6, 10)
    stacked = StackedModel(m)
    g = torch.Generator().manual_seed(5)
    pts = torch.randn(4, stacked.num_params, generator=g) * 0.3
    x = torch.randn(16, 1, 40, generator=g)

    def eager(params, xb):
        return stacked.forward(params, {}, xb, train=False, shared_input=True)

    fn = _inductor_forward(stacked, stacked.unflatten(pts), x[:8], eager)
    with torch.no_grad():
        assert torch.equal(fn(stacked.unflatten(pts), x[8:]),
                           eager(stacked.unflatten(pts), x[8:]))
        wide = torch.randn(4, 2 * stacked.num_params, generator=g)[:, ::2]  # other strides
        assert torch.equal(fn(stacked.unflatten(wide), x[:8]),
                           eager(stacked.unflatten(wide), x[:8]))
        assert torch.equal(fn(stacked.unflatten(pts[:2]), x[:8]),
                           eager(stacked.unflatten(pts[:2]), x[:8]))


def test_compiled_forward_falls_back_to_the_eager_layout_where_channels_first_differs(
        monkeypatch):
    """The compiled forward is traced with the conv products channels first; where that
    graph's logits differ from the eager forward's in any bit, it is traced again as the
    eager forward runs, and that one is used; where both differ, evaluation stays eager."""
    from stabilitylab.analysis import interpolate
    from stabilitylab.models.conv1d import Conv1dNet

    torch.manual_seed(6)
    stacked = StackedModel(Conv1dNet(1, 40, 6, 10))
    pts = torch.randn(4, stacked.num_params) * 0.3
    x = torch.randn(8, 1, 40)
    calls = []

    def fake(stacked_, params, xb, eager, *, channels_first=False):
        calls.append(channels_first)
        off = 1e-3 if channels_first or "both" in calls else 0.0
        return lambda p, b: eager(p, b) + off

    monkeypatch.setattr(interpolate, "_inductor_forward", fake)
    fn = interpolate._build_checked(stacked, pts, x, 4, 8)
    assert calls == [True, False] and callable(fn)
    params = stacked.unflatten(pts)
    with torch.no_grad():
        assert torch.equal(fn(params, x), stacked.forward(params, {}, x, train=False,
                                                          shared_input=True))
    calls[:] = ["both"]
    assert interpolate._build_checked(stacked, pts, x, 4, 8) is False
    assert calls == ["both", True, False]

    def failing(stacked_, params, xb, eager, *, channels_first=False):
        calls.append(channels_first)
        if channels_first:
            raise RuntimeError("no channels-first graph here")
        return eager

    calls.clear()
    monkeypatch.setattr(interpolate, "_inductor_forward", failing)
    assert callable(interpolate._build_checked(stacked, pts, x, 4, 8))
    assert calls == [True, False]
    calls.clear()  # a model without MatmulConv1d: one trace
    mlp = StackedModel(nn.Sequential(nn.Flatten(), nn.Linear(40, 10)))
    assert callable(interpolate._build_checked(mlp, torch.randn(4, mlp.num_params), x, 4, 8))
    assert calls == [False]


def test_compile_skips_the_isa_probe_and_probes_when_that_fails(monkeypatch):
    """The evaluation forward is compiled with inductor's vector-ISA probe off; where that
    compilation fails, the probe's cached list is cleared and inductor compiles again with
    the probe on (the setting restored), and that result is returned."""
    import torch._inductor
    import torch._inductor.config as inductor_config
    from torch._inductor import cpu_vec_isa

    from stabilitylab.analysis.interpolate import _compile_skipping_isa_probe

    seen, cleared = [], []
    monkeypatch.setattr(cpu_vec_isa.valid_vec_isa_list, "cache_clear",
                        lambda: cleared.append(True))

    def fake_compile(graph, inputs):
        seen.append(inductor_config.cpp.vec_isa_ok)
        if inductor_config.cpp.vec_isa_ok:
            raise RuntimeError("cannot build this ISA")
        return ("compiled", graph, inputs)

    monkeypatch.setattr(torch._inductor, "compile", fake_compile)
    before = inductor_config.cpp.vec_isa_ok
    assert _compile_skipping_isa_probe("g", ["x"]) == ("compiled", "g", ["x"])
    assert seen == [True, before] and before is not True
    assert cleared == [True]
    assert inductor_config.cpp.vec_isa_ok == before

    seen.clear()
    monkeypatch.setattr(torch._inductor, "compile",
                        lambda g, i: seen.append(inductor_config.cpp.vec_isa_ok) or "ok")
    assert _compile_skipping_isa_probe("g", ["x"]) == "ok"
    assert seen == [True] and len(cleared) == 1  # no failure: no probe, no second compile
