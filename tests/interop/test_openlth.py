"""`stabilitylab import openlth`: a small run directory in OpenLTH's exact on-disk layout.

The layout (learned from facebookresearch/open_lth: foundations/paths.py, lottery/desc.py,
lottery/runner.py, lottery/branch/*, pruning/sparse_global.py, training/metric_logger.py):

    lottery_<md5>/replicate_<r>/level_<L>/main/{hparams.log, mask.pth, logger,
                                                 model_ep<E>_it<I>.pth}
    lottery_<md5>/replicate_<r>/level_pretrain/main/model_ep0_it0.pth
    lottery_<md5>/replicate_<r>/level_<L>/lottery_branch_<name>_<md5>/...
"""

import math
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from stabilitylab.cli.main import main

import stabilitylab
from stabilitylab.interop.openlth import load_openlth_model, openlth_global_masks
from stabilitylab.prune import prune

IPE = math.ceil(60000 / 128)  # OpenLTH: iterations per epoch = ceil(N / batch)
K, T = 10, 2 * IPE  # --rewinding_steps 10it, --training_steps 2ep
HASH = "0123456789abcdef0123456789abcdef"
HPARAMS = """\
Dataset Hyperparameters
    * dataset_name => mnist
    * batch_size => 128
Model Hyperparameters
    * model_name => mnist_lenet_20_10
    * model_init => kaiming_normal
    * batchnorm_init => uniform
Pretraining Dataset Hyperparameters
    * dataset_name => mnist
    * batch_size => 128
Pretraining Training Hyperparameters
    * optimizer_name => sgd
    * lr => 0.1
    * training_steps => 10it
Hyperparameters for Sparse Global Pruning
    * pruning_strategy => sparse_global
    * pruning_fraction => 0.2
    * pruning_layers_to_ignore => fc.weight
Training Hyperparameters
    * optimizer_name => sgd
    * lr => 0.1
    * training_steps => 2ep"""

DATA_PLUGIN = '''
import torch

def digits(cfg):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(200, 1, 28, 28, generator=g), torch.arange(200) % 10,
            torch.randn(100, 1, 28, 28, generator=g), torch.arange(100) % 10)
'''

SHAPES = {"fc_layers.0.weight": (20, 784), "fc_layers.0.bias": (20,),
          "fc_layers.1.weight": (10, 20), "fc_layers.1.bias": (10,),
          "fc.weight": (10, 10), "fc.bias": (10,)}
PRUNABLE = ("fc_layers.0.weight", "fc_layers.1.weight")  # fc.weight is ignored


def _name(step):
    return f"model_ep{step // IPE}_it{step % IPE}.pth"


def _rule(weights, masks, fraction):
    """OpenLTH's sparse_global step, written here from its description: n = ceil(f * alive),
    threshold = the n-th smallest alive |w| (0-based), keep |w| > threshold."""
    alive = np.concatenate([np.abs(weights[k])[masks[k] == 1] for k in weights])
    n = int(np.ceil(fraction * alive.size))
    threshold = np.sort(alive)[n]
    return {k: np.where(np.abs(weights[k]) > threshold, masks[k], 0) for k in weights}


def _state(g, scale=0.1):
    return {k: torch.randn(*s, generator=g) * scale for k, s in SHAPES.items()}


def build_run(root, levels=2, replicates=2, branches=True, our_rule=False, k=K):
    """A lottery run in OpenLTH's layout, with masks drawn by OpenLTH's rule (or ours)."""
    exp = root / f"lottery_{HASH}"
    for r in range(1, replicates + 1):
        g = torch.Generator().manual_seed(r)
        rep = exp / f"replicate_{r}"
        pre = rep / "level_pretrain" / "main"
        pre.mkdir(parents=True)
        init = _state(g)
        torch.save(init, pre / _name(0))
        w_k = {n: t + 0.01 * torch.randn(t.shape, generator=g) for n, t in init.items()} \
            if k else init
        torch.save(w_k, pre / _name(k))
        mask = {n: np.ones(SHAPES[n], np.int64) for n in (*PRUNABLE, "fc.weight")}
        for level in range(levels + 1):
            main_dir = rep / f"level_{level}" / "main"
            main_dir.mkdir(parents=True)
            if level == 0 and r == 1:
                (main_dir / "hparams.log").write_text(HPARAMS if k else _without_pretraining())
            torch.save({n: torch.as_tensor(m).int() for n, m in mask.items()}, main_dir / "mask.pth")
            start = {n: t * torch.as_tensor(mask[n]).float() if n in mask else t
                     for n, t in w_k.items()}
            end = {n: t + 0.05 * torch.randn(t.shape, generator=g) for n, t in start.items()}
            for n in PRUNABLE:  # pruned weights keep moving (momentum, weight decay)
                end[n][torch.as_tensor(mask[n]) == 0] += 1e-3
            torch.save(start, main_dir / _name(k))
            torch.save(end, main_dir / _name(T))
            acc = 0.5 + 0.1 * level + 0.01 * r
            (main_dir / "logger").write_text(
                f"test_loss,{k},2.0\ntest_accuracy,{k},0.1\ntest_examples,{k},10000.0\n"
                f"test_loss,{T},1.0\ntest_accuracy,{T},{acc}\ntest_examples,{T},10000.0")
            if branches and level == levels:
                for name in ("randomly_prune", "randomly_reinitialize"):
                    b = rep / f"level_{level}" / f"lottery_branch_{name}_{HASH[::-1]}"
                    b.mkdir()
                    if name == "randomly_prune":
                        bm = {n: torch.as_tensor(m).flatten()[torch.randperm(m.size, generator=g)]
                              .view(m.shape).int() for n, m in mask.items()}
                    else:
                        bm = {n: torch.as_tensor(m).int() for n, m in mask.items()}
                    torch.save(bm, b / "mask.pth")
                    bs = _state(g) if name == "randomly_reinitialize" else start
                    bs = {n: t * bm[n].float() if n in bm else t for n, t in bs.items()}
                    torch.save(bs, b / _name(k))
                    torch.save({n: t + 0.05 for n, t in bs.items()}, b / _name(T))
                    (b / "logger").write_text(f"test_accuracy,{T},0.3\ntest_loss,{T},1.5")
                    (b / "hparams.log").write_text(HPARAMS + "\nBranch Arguments\n    * seed => 1")
            final = {n: end[n].numpy() for n in PRUNABLE}
            masked = {n: mask[n] for n in PRUNABLE}
            if our_rule:
                ours = prune({n: torch.from_numpy(w) for n, w in final.items()},
                             {n: torch.from_numpy(m).bool() for n, m in masked.items()}, 0.2)
                new = {n: ours[n].numpy().astype(np.int64) for n in PRUNABLE}
            else:
                new = _rule({n: final[n] * masked[n] for n in PRUNABLE}, masked, 0.2)
            mask = {**mask, **new}
    return exp


def _without_pretraining():
    """hparams.log of a run without --rewinding_steps: no Pretraining sections."""
    keep, skip = [], False
    for line in HPARAMS.splitlines():
        if not line.startswith(" "):
            skip = line.startswith("Pretraining")
        if not skip:
            keep.append(line)
    return "\n".join(keep)


@pytest.fixture
def digits_plugin(tmp_path, monkeypatch):
    (tmp_path / "slab_digits.py").write_text(textwrap.dedent(DATA_PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield ["--set", "data.name='slab_digits:digits'"]
    sys.modules.pop("slab_digits", None)


def test_openlth_prunes_one_more_weight_than_stabilitylab():
    g = torch.Generator().manual_seed(0)
    w = {"a": torch.randn(7, 9, generator=g)}  # 63 distinct magnitudes
    m = {"a": torch.ones(7, 9, dtype=torch.bool)}
    theirs = openlth_global_masks(w, m, 0.2)
    ours = prune(w, m, 0.2)
    assert int((~theirs["a"]).sum()) == math.ceil(0.2 * 63) + 1 == 14
    assert int((~ours["a"]).sum()) == round(0.2 * 63) == 13
    ref = _rule({"a": w["a"].numpy()}, {"a": np.ones((7, 9))}, 0.2)
    assert np.array_equal(ref["a"] > 0, theirs["a"].numpy())


def test_import_then_analyze_end_to_end(tmp_path, capsys, digits_plugin):
    exp = build_run(tmp_path / "open_lth_data")
    out = tmp_path / "imported.zarr"
    assert main(["import", "openlth", str(exp), "--out", str(out), *digits_plugin]) == 0
    printed = capsys.readouterr().out
    assert "2 replicates" in printed and "match OpenLTH's sparse_global rule" in printed
    assert "zeroed" in printed  # pruned positions held non-zeros
    stabilitylab.store.validate(str(out))
    ds = stabilitylab.open_study(str(out))
    assert list(ds.step.values) == [0, K, T] and list(ds.rewind.values) == [K]
    assert list(ds.level.values) == [0, 1, 2] and ds.sizes["replica"] == 2
    assert (ds.status.sel(kind="imp") == 2).all()
    assert (ds.status.sel(kind=["random_prune", "reinit"], level=2) == 2).all()
    # The weights are the files' weights (renamed fc_layers -> hidden, masked).
    rep2 = exp / "replicate_2" / "level_1" / "main"
    end = torch.load(rep2 / _name(T))
    mask = torch.load(rep2 / "mask.pth")
    layout = {s["name"]: s for s in ds.attrs["param_layout"]}
    slot = layout["hidden.0.weight"]
    stored = ds.weights.sel(kind="imp", level=1, rewind=K, replica=1, step=T).values
    got = stored[slot["offset"]:slot["offset"] + slot["size"]].reshape(slot["shape"])
    np.testing.assert_array_equal(got, (end["fc_layers.0.weight"] * mask["fc_layers.0.weight"]).numpy())
    assert float(ds.final_test_acc.sel(kind="imp", level=2, rewind=K, replica=0)) == pytest.approx(0.71)
    assert ds.attrs["imported_from"]["masks_reproduced_by_openlth_rule"] is True
    # Density: the level's mask (union over replicates) at about 0.8 and 0.64 of the prunable.
    dens = ds.density.sel(kind="imp", rewind=K).values
    assert dens[0] == 1.0 and 0.6 < dens[1] < 1.0 and dens[2] < dens[1]

    assert main(["analyze", str(out), "--no-report", "--no-progress", "--trust-plugins"]) == 0
    text = capsys.readouterr().out
    assert "absent" in text and "early_bird" in text and "rhat" in text
    an = stabilitylab.open_analysis(str(out))
    from stabilitylab.analysis import registry

    assert an.attrs["absent"] == [n for n, v in registry.variables().items() if v.needs_trajectory]
    assert {"early_bird", "early_bird_early", "rhat", "divergence_rate"} <= set(an.attrs["absent"])
    for name in ("instability", "loss_barrier", "above_line_barrier", "above_line_loss_barrier",
                 "disagreement"):
        assert np.isfinite(an[name].sel(kind="imp").values).all(), name
        assert np.isfinite(an[name].sel(kind=["random_prune", "reinit"], level=2).values).all()
    assert np.isfinite(an.data_order_l2_final.sel(kind="imp").values).all()
    assert np.isfinite(an.mask_jaccard.values).all()
    assert np.isnan(an.early_bird.values).all() and np.isnan(an.rhat.values).all()


def test_a_run_without_rewinding_imports_at_k_zero(tmp_path, capsys, digits_plugin):
    exp = build_run(tmp_path / "d", levels=1, branches=False, k=0)
    out = tmp_path / "s.zarr"
    assert main(["import", "openlth", str(exp), "--out", str(out), *digits_plugin]) == 0
    ds = stabilitylab.open_study(str(out))
    assert list(ds.step.values) == [0, T] and list(ds.rewind.values) == [0]
    start = torch.load(exp / "replicate_1" / "level_0" / "main" / _name(0))
    w0 = ds.weights.sel(kind="imp", level=0, rewind=0, replica=0, step=0).values
    assert w0[:20 * 784].reshape(20, 784).tolist() == start["fc_layers.0.weight"].tolist()
    assert main(["analyze", str(out), "--no-report", "--no-progress", "--trust-plugins", "--measures",
                 "interpolation"]) == 0


def test_masks_drawn_by_our_rule_are_reported(tmp_path, capsys, digits_plugin):
    exp = build_run(tmp_path / "d", levels=1, branches=False, our_rule=True)
    assert main(["import", "openlth", str(exp), "--out", str(tmp_path / "s.zarr"),
                 *digits_plugin]) == 0
    # Level 1's mask was drawn with round(f*n) from level 0: one weight short of OpenLTH's rule.
    assert "differ from OpenLTH's sparse_global rule" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("breakage,match", [
    ("no-dir", "no such directory"),
    ("one-replicate", "one replicate only"),
    ("no-hparams", "hparams.log: missing"),
    ("no-final", "the model at T is missing"),
    ("bad-model", "has no stabilitylab counterpart"),
    ("pickled-mask", "pickled Python objects; refused"),
    ("bad-shape", "'hidden.0.weight' has shape"),
])
def test_bad_run_directories_are_one_line_errors(tmp_path, capsys, digits_plugin, breakage, match):
    import pickle

    exp = build_run(tmp_path / "d", levels=1, branches=False,
                    replicates=1 if breakage == "one-replicate" else 2)
    main_dir = exp / "replicate_2" / "level_1" / "main"
    if breakage == "no-dir":
        exp = tmp_path / "nowhere"
    elif breakage == "no-hparams":
        (exp / "replicate_1" / "level_0" / "main" / "hparams.log").unlink()
    elif breakage == "no-final":
        (main_dir / _name(T)).unlink()
    elif breakage == "bad-model":
        hp = exp / "replicate_1" / "level_0" / "main" / "hparams.log"
        hp.write_text(hp.read_text().replace("mnist_lenet_20_10", "imagenet_resnet_50"))
    elif breakage == "pickled-mask":
        with open(main_dir / "mask.pth", "wb") as f:
            pickle.dump({"fc_layers.0.weight": object()}, f)
    elif breakage == "bad-shape":
        state = torch.load(main_dir / _name(T))
        state["fc_layers.0.weight"] = torch.zeros(20, 783)
        torch.save(state, main_dir / _name(T))
    out = tmp_path / "s.zarr"
    assert main(["import", "openlth", str(exp), "--out", str(out), *digits_plugin]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0], err
    assert not out.exists()  # nothing written


def _resnet20_state(g):
    """OpenLTH cifar_resnet_20's state_dict names and shapes (models/cifar_resnet.py)."""
    state = {}

    def bn(prefix, c):
        state.update({f"{prefix}.weight": torch.rand(c, generator=g) + 0.5,
                      f"{prefix}.bias": torch.randn(c, generator=g) * 0.1,
                      f"{prefix}.running_mean": torch.randn(c, generator=g) * 0.1,
                      f"{prefix}.running_var": torch.rand(c, generator=g) + 0.5,
                      f"{prefix}.num_batches_tracked": torch.tensor(7)})

    def conv(name, o, i, k):
        state[name] = torch.randn(o, i, k, k, generator=g) * (2 / (i * k * k)) ** 0.5

    conv("conv.weight", 16, 3, 3)
    bn("bn", 16)
    f_in, b = 16, 0
    for stage, f in enumerate((16, 32, 64)):
        for i in range(3):
            conv(f"blocks.{b}.conv1.weight", f, f_in, 3)
            bn(f"blocks.{b}.bn1", f)
            conv(f"blocks.{b}.conv2.weight", f, f, 3)
            bn(f"blocks.{b}.bn2", f)
            if stage > 0 and i == 0:
                conv(f"blocks.{b}.shortcut.0.weight", f, f_in, 1)
                bn(f"blocks.{b}.shortcut.1", f)
            f_in, b = f, b + 1
    state["fc.weight"] = torch.randn(10, 64, generator=g) * 0.1
    state["fc.bias"] = torch.zeros(10)
    return state


def _vgg16_state(g):
    """OpenLTH cifar_vgg_16's names: layers.<i>.conv / layers.<i>.bn, MaxPool at the 'M' slots."""
    plan = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
    state, f_in = {}, 3
    for i, spec in enumerate(plan):
        if spec == "M":
            continue
        state[f"layers.{i}.conv.weight"] = torch.randn(spec, f_in, 3, 3, generator=g) * 0.05
        state[f"layers.{i}.conv.bias"] = torch.zeros(spec)
        for n, v in (("weight", torch.ones(spec)), ("bias", torch.zeros(spec)),
                     ("running_mean", torch.zeros(spec)), ("running_var", torch.ones(spec))):
            state[f"layers.{i}.bn.{n}"] = v
        state[f"layers.{i}.bn.num_batches_tracked"] = torch.tensor(0)
        f_in = spec
    state["fc.weight"] = torch.randn(10, 512, generator=g) * 0.05
    state["fc.bias"] = torch.zeros(10)
    return state


def test_openlth_model_names_map_and_their_weights_load(tmp_path):
    g = torch.Generator().manual_seed(0)
    # mnist_lenet_300_100: the forward equals OpenLTH's (flatten, ReLU after each fc_layer).
    lenet = {"fc_layers.0.weight": torch.randn(300, 784, generator=g) * 0.05,
             "fc_layers.0.bias": torch.randn(300, generator=g) * 0.1,
             "fc_layers.1.weight": torch.randn(100, 300, generator=g) * 0.05,
             "fc_layers.1.bias": torch.randn(100, generator=g) * 0.1,
             "fc.weight": torch.randn(10, 100, generator=g) * 0.1, "fc.bias": torch.zeros(10)}
    path = tmp_path / "lenet.pth"
    torch.save(lenet, path)
    model = load_openlth_model("mnist_lenet_300_100", path).eval()
    x = torch.randn(4, 1, 28, 28, generator=g)
    h = F.relu(F.linear(x.flatten(1), lenet["fc_layers.0.weight"], lenet["fc_layers.0.bias"]))
    h = F.relu(F.linear(h, lenet["fc_layers.1.weight"], lenet["fc_layers.1.bias"]))
    expect = F.linear(h, lenet["fc.weight"], lenet["fc.bias"])
    torch.testing.assert_close(model(x), expect)
    # cifar_resnet_20 and cifar_vgg_16: every tensor finds its place, with its values.
    for name, state, n_params in (("cifar_resnet_20", _resnet20_state(g), 272_474),
                                  ("cifar_vgg_16", _vgg16_state(g), 14_728_266)):
        model = load_openlth_model(name, state).eval()
        assert sum(p.numel() for p in model.parameters()) == n_params
        ours = model.state_dict()
        for key, value in state.items():
            if not key.endswith("num_batches_tracked"):
                torch.testing.assert_close(ours[key], value.float())
        assert torch.isfinite(model(torch.randn(2, 3, 32, 32, generator=g))).all()
