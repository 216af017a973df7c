"""The compiled fused step (``training.compile = "on"``) against the eager reference step.

Tolerance: after 50 steps every parameter, BatchNorm buffer, logged loss and evaluation
agrees with the eager path to ``atol=2e-6, rtol=1e-5`` (measured differences are
~1e-7 to 3e-7: the two paths round differently, e.g. fused multiply-adds in inductor's
kernels, so they are not bitwise equal). Each case compiles one graph (a few seconds).
"""

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from engine_helpers import OPTIMIZER_CASES, make_data, tiny_conv, tiny_mlp

from stabilitylab.config import load_config, study_id, validate
from stabilitylab.train.engine import GroupPlan, train_group
from stabilitylab.train.functional import StackedModel
from stabilitylab.train.step import use_compile

TOL = {"rtol": 1e-5, "atol": 2e-6}


def resolved_for(*overrides, steps=50):
    base = ["data.num_samples=300", "training.batch_size=20", f"training.steps='{steps}it'",
            "study.rewinds=['0it','5it']", "training.eval_every='10it'", "training.log_every='5it'"]
    return validate(load_config(None, base + list(overrides)))


def train_both(model, data, resolved, seeds, *, starts=None, masks=None, opt_steps=None):
    stacked = StackedModel(model)
    results = []
    for mode in ("off", "on"):
        params, buffers = stacked.stack([copy.deepcopy(model) for _ in seeds])
        plan = GroupPlan(runs=list(range(len(seeds))), start_steps=starts or [0] * len(seeds),
                         data_seeds=seeds, params=params, buffers=buffers,
                         masks={n: m.float() for n, m in (masks or {}).items()},
                         opt_steps=opt_steps)
        results.append(train_group(stacked, plan, data, resolved, compile=mode))
    return results


def assert_agree(eager, compiled):
    assert not eager.compiled and compiled.compiled
    for name in eager.params:
        torch.testing.assert_close(compiled.params[name], eager.params[name], **TOL)
    for name in eager.buffers:
        if eager.buffers[name].is_floating_point():
            torch.testing.assert_close(compiled.buffers[name], eager.buffers[name], **TOL)
    for field in ("train_loss", "train_acc", "test_loss", "test_acc", "train_eval_loss"):
        a, b = getattr(eager, field), getattr(compiled, field)
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5, err_msg=field)
    assert eager.diverged_step == compiled.diverged_step


@pytest.mark.parametrize("optimizer", OPTIMIZER_CASES + [
    ["training.optimizer='radam'", "training.lr=0.01", "training.lookahead=true",
     "training.lookahead_steps=3"],
], ids=["sgd", "nesterov-wd", "plain-sgd", "adam", "adamw", "radam", "ranger"])
def test_compiled_matches_eager_every_optimizer_with_masks(optimizer):
    """Mixed rewind points, per-replica optimizer steps (bias corrections differ), warmup
    and a milestone (per-replica learning rates), and a mask on the first layer."""
    resolved = resolved_for(*optimizer, "training.warmup='5it'", "training.milestones=['20it']")
    mask = torch.rand(16, 8, generator=torch.Generator().manual_seed(0)) > 0.5
    eager, compiled = train_both(tiny_mlp(), make_data(), resolved, seeds=[11, 12, 13],
                                 starts=[0, 3, 7], masks={"1.weight": torch.stack([mask] * 3)},
                                 opt_steps=[0, 3, 7])
    assert_agree(eager, compiled)
    # pruned weights are exactly 0, surviving ones are not
    assert torch.all(compiled.params["1.weight"][:, ~mask] == 0)
    assert torch.all(compiled.params["1.weight"][:, mask] != 0)


def test_compiled_matches_eager_batchnorm_and_dropout():
    data = make_data(shape=(1, 8))
    resolved = resolved_for("model.dropout=0.3")
    conv = tiny_conv(bn=True)  # conv, bn, relu, flatten, linear
    model = torch.nn.Sequential(*conv[:4], torch.nn.Dropout(0.3), conv[4])
    eager, compiled = train_both(model, data, resolved, seeds=[1, 2])
    assert_agree(eager, compiled)
    # BatchNorm statistics moved (per replica) in both paths
    assert not torch.equal(compiled.buffers["1.running_mean"][0],
                           compiled.buffers["1.running_mean"][1])


def test_compiled_augmentation_matches_eager():
    """Vectorized flip + crop inside the compiled graph draws what the eager path draws."""
    from stabilitylab.data.augment import random_flip_crop_replicas

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 3))
    data = make_data(shape=(3, 8, 8))
    resolved = resolved_for(steps=20)
    stacked = StackedModel(model)
    out = []
    for mode in ("off", "on"):
        params, buffers = stacked.stack([copy.deepcopy(model) for _ in range(2)])
        plan = GroupPlan(runs=[0, 1], start_steps=[0, 5], data_seeds=[4, 5], params=params,
                         buffers=buffers)
        out.append(train_group(stacked, plan, data, resolved, compile=mode,
                               augment=random_flip_crop_replicas))
    assert_agree(*out)


def test_auto_compiles_only_large_groups():
    cpu = torch.device("cpu")
    assert not use_compile("auto", cpu, replicas=18, iterations=50)  # a test-sized group
    assert not use_compile("auto", cpu, replicas=1, iterations=10**6)  # one replica
    assert not use_compile("auto", cpu, replicas=54, iterations=1500)  # the default study
    assert use_compile("auto", cpu, replicas=64, iterations=62_500)  # paper scale
    assert not use_compile("auto", torch.device("cuda"), replicas=64, iterations=62_500)
    assert use_compile("on", cpu, replicas=1, iterations=1)
    assert not use_compile("off", cpu, replicas=64, iterations=10**6)


def test_compile_setting_is_validated_and_not_part_of_the_study_id():
    from stabilitylab.core.errors import ConfigError

    with pytest.raises(ConfigError, match="training.compile"):
        validate(load_config(None, ["training.compile='fast'"]))
    assert study_id(load_config(None, ["training.compile='on'"])) == study_id(load_config(None, []))


def test_compiled_store_is_bitwise_identical_from_run_to_run(tmp_path):
    """The same tiny study recorded twice through the compiled step: equal stores."""
    import stabilitylab

    sys.path.insert(0, str(Path(__file__).parents[1] / "distributed"))
    from _helpers import assert_same_store

    cfg = load_config(None, [
        "training.steps='30it'", "study.rewinds=['0it','10it']", "study.replicas=2",
        "pruning.levels=1", "data.num_samples=500", "model.channels=4",
        "training.eval_every='15it'", "training.log_every='5it'", "study.record='every:5'",
        "study.controls=[]", "training.compile='on'", f"data.root='{tmp_path / 'data'}'"])
    stores = []
    for name in ("a.zarr", "b.zarr"):
        stabilitylab.record_study(cfg, str(tmp_path / name), progress=False)
        stores.append(zarr.open_group(str(tmp_path / name), mode="r"))
    assert_same_store(*stores)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_matches_eager_on_cuda_batchnorm_conv2d():
    """On CUDA the compiled step runs with CUDA graphs (mode="reduce-overhead")."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1, bias=False), torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 3)).cuda()
    d = make_data(shape=(3, 8, 8))
    for name in ("train_x", "train_y", "test_x", "test_y"):
        setattr(d, name, getattr(d, name).cuda())
    eager, compiled = train_both(model, d, resolved_for(steps=30), seeds=[1, 2, 3])
    assert_agree(eager, compiled)
