"""`stabilitylab import openlth` pieces that need no OpenLTH run: its pruning count rule and
the mapping of its model names (state_dict names and shapes learned from
facebookresearch/open_lth models/*.py). The import itself is tested on a run written by
OpenLTH: tests/interop/test_openlth_real.py.
"""

import math

import torch
import torch.nn.functional as F

from stabilitylab.interop.openlth import load_openlth_model, openlth_global_masks
from stabilitylab.prune import prune


def test_openlth_prunes_one_more_weight_than_stabilitylab():
    g = torch.Generator().manual_seed(0)
    w = {"a": torch.randn(7, 9, generator=g)}  # 63 distinct magnitudes
    m = {"a": torch.ones(7, 9, dtype=torch.bool)}
    theirs = openlth_global_masks(w, m, 0.2)
    ours = prune(w, m, 0.2)
    assert int((~theirs["a"]).sum()) == math.ceil(0.2 * 63) + 1 == 14
    assert int((~ours["a"]).sum()) == round(0.2 * 63) == 13
    # An ignored tensor's mask entries count in n = ceil(f * alive) (OpenLTH counts them all).
    counted = openlth_global_masks(w, m, 0.2, ignored={"b": torch.ones(10)})
    assert int((~counted["a"]).sum()) == math.ceil(0.2 * 73) + 1 == 16


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
