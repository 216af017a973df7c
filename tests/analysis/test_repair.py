"""REPAIR (Jordan et al., ICLR 2023, §4): corrected statistics equal the interpolated targets,
and the correction raises the midpoint accuracy of two independently trained MLPs."""

import numpy as np
import pytest
import torch
from torch import nn

from stabilitylab.analysis.align import align_flat
from stabilitylab.analysis.interpolate import evaluate_points, interpolate_flat
from stabilitylab.analysis.repair import EPS, RepairedModel, _bn_train_only, repair_sites
from stabilitylab.models.conv1d import Conv1dNet
from stabilitylab.models.mlp import MLP
from stabilitylab.models.resnet import CifarResNet
from stabilitylab.train.functional import StackedModel

NETS = {"mlp": (lambda: MLP(12, (9, 7), 4), (1, 12)),
        "conv1d": (lambda: Conv1dNet(1, 16, 5, 4), (1, 16)),
        "conv1d_layernorm": (lambda: Conv1dNet(1, 16, 5, 4, norm="layer"), (1, 16)),
        "resnet20": (lambda: CifarResNet(20, 3, 4), (3, 8, 8))}


def test_sites_are_hidden_pre_activations_or_the_norm_layers_after_them():
    assert repair_sites(MLP(12, (9, 7), 4)) == ["hidden.0", "hidden.1"]
    sites = repair_sites(CifarResNet(20, 3, 4))
    assert sites[:3] == ["bn", "blocks.0.bn1", "blocks.0.bn2"]
    assert "blocks.3.shortcut.1" in sites and not any("conv" in s for s in sites)
    assert "fc" not in sites
    assert repair_sites(Conv1dNet(1, 16, 5, 4, norm="layer")) == ["norm1", "norm2", "norm3"]


@pytest.mark.parametrize("net", sorted(NETS))
def test_after_repair_every_channel_has_the_interpolated_target_statistics(net):
    make, shape = NETS[net]
    stacked = StackedModel(make())
    g = torch.Generator().manual_seed(0)
    wa, wb = (torch.randn(stacked.num_params, generator=g) * 0.3 for _ in range(2))
    x = torch.randn(200, *shape, generator=g)
    repaired = RepairedModel(stacked)
    alphas = [0.0, 0.3, 0.5, 1.0]
    points = repaired.repaired_path(wa, wb, alphas, x)
    ends = repaired.statistics(torch.stack([wa, wb]), x)
    params = repaired.stacked.unflatten(points)
    for i, alpha in enumerate(alphas):
        module = repaired.stacked.module_at(params, {}, i)
        _bn_train_only(module)  # BN normalises by the batch's statistics, as in the fit
        seen = {}
        mods = dict(module.named_modules())
        for name in repaired.sites:  # registered after the correction hook: sees its output
            mods[name].register_forward_hook(lambda m, _i, out, name=name, seen=seen: seen.update({
                name: torch.movedim(out, m._repair_axis % out.dim(), -1).flatten(0, -2)}))
        with torch.no_grad():
            module(x)
        for j, name in enumerate(repaired.sites):
            (mean_a, std_a), (mean_b, std_b) = ((m[k], s[k]) for k in (0, 1) for m, s in [ends[j]])
            target_mean = alpha * mean_a + (1 - alpha) * mean_b
            target_std = alpha * std_a + (1 - alpha) * std_b
            z = seen[name].double()
            torch.testing.assert_close(z.mean(0), target_mean.double(), atol=2e-5, rtol=1e-4)
            # the correction divides by sqrt(var + EPS), as BatchNorm does: the std reached is
            # target * sigma / sqrt(sigma^2 + EPS), sigma the uncorrected std (from the scale)
            scale = params[f"{name}.repair_scale"][i].double()
            sigma2 = ((target_std.double() / scale) ** 2 - EPS).clamp(min=0)
            expected = target_std.double() * torch.sqrt(sigma2 / (sigma2 + EPS))
            torch.testing.assert_close(z.std(0, unbiased=False), expected, atol=2e-5, rtol=1e-3)
            live = sigma2 > 1.0
            torch.testing.assert_close(z.std(0, unbiased=False)[live], target_std.double()[live],
                                       atol=1e-5, rtol=2e-5)


def test_for_nets_without_normalisation_the_correction_is_an_affine_map_in_the_forward():
    stacked = StackedModel(MLP(12, (9, 7), 4))
    repaired = RepairedModel(stacked)
    assert not repaired.stacked.buffer_slots  # no BN: the correction lives in the params
    w = torch.randn(1, stacked.num_params)
    ones = [torch.ones(1, n) for n in repaired.widths]
    zeros = [torch.zeros(1, n) for n in repaired.widths]
    x, y = torch.randn(30, 12), torch.randint(0, 4, (30,))
    plain = evaluate_points(stacked, w, x, y, return_logits=True)["logits"]
    same = evaluate_points(repaired.stacked, repaired.points(w, ones, zeros), x, y,
                           return_logits=True)["logits"]
    torch.testing.assert_close(same, plain)
    doubled = evaluate_points(repaired.stacked, repaired.points(w, [2 * o for o in ones], zeros),
                              x, y, return_logits=True)["logits"]
    assert not torch.allclose(doubled, plain)


def _train_mlp(data, seed: int, steps: int = 600) -> nn.Module:
    torch.manual_seed(seed)
    model = MLP(40, (64, 64), 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(data.train_x), (100,), generator=g)
        loss = nn.functional.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def test_repair_raises_the_midpoint_accuracy_of_two_independently_trained_mlps():
    """Measured (600 steps, MLP 40-64-64-10, MNIST-1D): midpoint test accuracy 21.2% -> 34.1%
    unaligned, 52.0% -> 54.5% after weight matching; endpoints 58.3% and 58.1%."""
    from stabilitylab.config import load_config
    from stabilitylab.data import load_dataset

    data = load_dataset(load_config(None, []).data, "cpu")
    models = [_train_mlp(data, 1), _train_mlp(data, 2)]
    stacked = StackedModel(models[0])
    wa, wb = (torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in models)
    aligned = torch.as_tensor(align_flat(stacked, wa.numpy(), wb.numpy())[0])
    repaired = RepairedModel(stacked)
    x = data.train_x[:1000]
    acc = {}
    for name, b in (("raw", wb), ("aligned", aligned)):
        plain = evaluate_points(stacked, interpolate_flat(wa, b, [0.5]), data.test_x, data.test_y)
        fixed = evaluate_points(repaired.stacked, repaired.repaired_path(wa, b, [0.5], x),
                                data.test_x, data.test_y)
        acc[name] = (1 - plain["error"][0], 1 - fixed["error"][0])
    assert acc["raw"][1] > acc["raw"][0] + 0.05, acc
    assert acc["aligned"][1] > acc["aligned"][0], acc
    assert np.isfinite(list(acc.values())).all()
