"""The run-kind registry, the plan built from it, and typed run keys."""

import pytest
import torch
from conftest import tiny_config

import stabilitylab
from stabilitylab.core.errors import ConfigError
from stabilitylab.core.keys import RunKey
from stabilitylab.core.seeds import generator
from stabilitylab.prune import prune
from stabilitylab.store import schema as S
from stabilitylab.study import kinds
from stabilitylab.study.context import RewindPoint, TaskContext
from stabilitylab.study.execution import group_plan
from stabilitylab.study.plan import Task, all_runs, level_runs
from stabilitylab.study.resolve import resolve_study


@pytest.fixture(scope="module")
def ctx():
    return TaskContext(tiny_config(), "cpu")


def _point(ctx, scale=1.0):
    params = {n: t * scale for n, t in ctx.init_weights.items()}
    return RewindPoint(params, {n: t[0] for n, t in ctx.init_buffers.items()},
                       {s: {n: torch.full_like(t, 0.5) for n, t in params.items()}
                        for s in ctx.opt_state_names})


def _imp(ctx, point):
    ones = {n: torch.ones(ctx.slot(n).shape, dtype=torch.bool) for n in ctx.prunable}
    return prune({n: point.params[n] for n in ctx.prunable}, ones, 0.5, "global")


PAI_KINDS = ("magnitude_init", "snip", "grasp", "synflow", "shuffle")


def test_registry_lists_the_kinds_in_store_order():
    """The order of every store written so far (one file per kind; rank orders them)."""
    assert kinds.names() == (*S.KINDS, "perturb", "data_order+perturb", "init", "init_imp",
                             *PAI_KINDS)
    assert kinds.control_names() == ("random_prune", "reinit", *PAI_KINDS)
    assert kinds.noise_names() == ("perturb", "data_order+perturb", "init", "init_imp")
    assert not kinds.get("imp").control
    assert tuple(n for n, k in kinds.REGISTRY.items() if k.in_every_store) == S.KINDS
    assert kinds.store_kinds({"imp", "snip", "init"}) == (*S.KINDS, "init", "snip")
    with pytest.raises(ValueError, match="unknown run kinds"):
        kinds.store_kinds({"imp", "nope"})


def test_a_kind_declares_how_it_is_shown_and_whether_it_starts_from_w_k():
    from stabilitylab.analysis.pair_noise import barrier_name, label
    from stabilitylab.report.figures import KIND_COLORS, KIND_LABELS, KIND_STYLES

    assert KIND_LABELS["imp"] == "IMP" and KIND_LABELS["snip"] == "snip"  # default: the name
    assert KIND_COLORS["random_prune"] == "#D55E00" and "snip" not in KIND_COLORS
    assert KIND_STYLES["reinit"] == ":"
    assert [n for n, k in kinds.REGISTRY.items() if not k.starts_at_rewind] == [
        "reinit", "init", "init_imp"]
    assert label("init") == "different-init pairs" and label("data_order") == "data-order pairs"
    assert label("perturb") == "perturbed pairs" and label("other") == "other pairs"
    from stabilitylab.analysis.pair_noise import pair_noise

    assert pair_noise({}, ["imp", "init_imp"]) == {"imp": "data_order", "init_imp": "init"}
    assert barrier_name("init") == "barrier between different-init pairs"
    assert barrier_name("perturb") == barrier_name("data_order") == "instability"


def test_a_registered_kind_reaches_the_figures_and_the_store_order():
    from stabilitylab.report.figures import KIND_COLORS, KIND_LABELS

    extra = kinds.RunKind("late", "a test kind", control=True, mask=kinds.imp_mask, rank=15,
                          label="late kind", color="#000000")
    saved = dict(kinds.REGISTRY)
    try:
        kinds.register(extra)
        assert kinds.names().index("late") == kinds.names().index("init_imp") + 1  # by rank
        assert KIND_LABELS["late"] == "late kind" and KIND_COLORS["late"] == "#000000"
        assert "late" in kinds.control_names()
        assert kinds.store_kinds({"imp", "late"}) == (*S.KINDS, "late")
        with pytest.raises(ValueError, match="already registered"):
            kinds.register(extra)
    finally:
        kinds.REGISTRY.clear()
        kinds.REGISTRY.update(saved)


def test_unknown_control_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as err:
        stabilitylab.load_study(None, ["study.controls=['snipp']"])
    text = str(err.value)
    assert "\n" not in text and "study.controls" in text and "random_prune, reinit" in text


def test_controls_only_at_control_levels():
    resolved = resolve_study(tiny_config("study.controls=['reinit']"))
    assert {r.kind for r in level_runs(resolved, 1)} == {"imp"}
    assert [r.kind for r in level_runs(resolved, 2)][::4] == ["imp", "reinit"]
    runs = all_runs(resolved)
    assert all(isinstance(r, RunKey) for r in runs)
    assert len(runs) == 2 * 2 * (3 + 1)  # rewinds x replicas x (IMP levels + one control)


@pytest.mark.parametrize("name", S.KINDS)
def test_each_kind_keeps_the_imp_density_per_layer(ctx, name):
    point = _point(ctx)
    imp = _imp(ctx, point)
    for level, expect in ((1, imp), (0, {n: torch.ones_like(m) for n, m in imp.items()})):
        given = expect if level else {n: torch.ones_like(m) for n, m in imp.items()}
        m = kinds.get(name).mask(kinds.MaskInputs(ctx, name, level, 10, given, point,
                                                  generator(1)))
        assert set(m) == set(ctx.prunable)
        for n in ctx.prunable:
            assert m[n].dtype == torch.bool and m[n].shape == expect[n].shape
            assert int(m[n].sum()) == int(expect[n].sum()), (name, level, n)
    if name == "random_prune":  # a random mask, not the IMP one
        assert any(not torch.equal(m[n], imp[n]) for n in ctx.prunable)


def test_mask_inputs_give_the_training_batches_of_order_u0(ctx):
    point = _point(ctx)
    m = kinds.MaskInputs(ctx, "imp", 1, 10, _imp(ctx, point), point, generator(0))
    batches = m.batches(2)
    assert len(batches) == 2
    x, y = batches[0]
    assert x.shape[0] == y.shape[0] == ctx.cfg.training.batch_size
    assert not torch.equal(batches[0][1], batches[1][1])
    assert torch.equal(m.weights_0[ctx.prunable[0]], ctx.init_params[ctx.prunable[0]][0])
    template = dict(m.ctx.template.named_parameters())
    assert torch.equal(template[ctx.prunable[0]].detach(), m.weights_0[ctx.prunable[0]])


def test_a_registered_noise_kind_plugs_into_the_group_plan(ctx, monkeypatch):
    """A kind with its own start (W_k plus seeded per-replica noise) and data order (u_0 for
    every replica) needs no change to the execution code."""

    def noisy(s):
        g = s.generator()
        params = {n: t + 1e-3 * torch.randn(t.shape, generator=g) for n, t in s.point.params.items()}
        return kinds.Start(params, s.point.buffers, None, 0)

    monkeypatch.setitem(kinds.REGISTRY, "noise", kinds.RunKind(
        "noise", "copies of W_k perturbed per replica, under data order u_0", control=True,
        mask=kinds.imp_mask, start=noisy, data_order=lambda replica: 0))
    point = _point(ctx)
    imp = _imp(ctx, point)
    runs = [RunKey("imp", 1, 10, 0), RunKey("imp", 1, 10, 1),
            RunKey("noise", 1, 10, 0), RunKey("noise", 1, 10, 1)]
    plan = group_plan(ctx, Task(1, (10,)), runs, {10: point},
                       {("imp", 10): imp, ("noise", 10): imp})
    assert plan.data_seeds[2] == plan.data_seeds[3] == plan.data_seeds[0] != plan.data_seeds[1]
    name = ctx.stacked.param_names[0]
    w = plan.params[name]
    assert torch.equal(w[0], point.params[name]) and torch.equal(w[1], point.params[name])
    assert not torch.equal(w[2], w[0]) and not torch.equal(w[2], w[3])
    assert plan.start_steps == [10] * 4


def test_reinit_starts_from_one_fresh_init_with_a_fresh_optimizer(ctx):
    point = _point(ctx, scale=2.0)
    imp = _imp(ctx, point)
    runs = [RunKey("reinit", 1, 10, 0), RunKey("reinit", 1, 10, 1)]
    plan = group_plan(ctx, Task(1, (10,)), runs, {10: point}, {("reinit", 10): imp})
    name = ctx.stacked.param_names[0]
    fresh = ctx.model_weights(ctx.seeds.reinit)[0][name]
    assert torch.equal(plan.params[name][0], fresh) and torch.equal(plan.params[name][1], fresh)
    assert not torch.equal(fresh, ctx.init_weights[name])
    assert plan.opt_steps == [0, 0] and plan.opt_state is None


def test_run_key_is_a_tuple():
    run = RunKey("imp", 1, 10, 0)
    assert run == ("imp", 1, 10, 0) and hash(run) == hash(("imp", 1, 10, 0))
    assert {("imp", 1, 10, 0): 1}[run] == 1
    assert (run.kind, run.level, run.rewind, run.replica) == tuple(run)
