"""Layer-wise paths (Adilova et al., ICLR 2024): every layer = the linear path, none = W_b."""

import numpy as np
import torch

from stabilitylab.analysis.barriers import alpha_grid, instability
from stabilitylab.analysis.interpolate import (
    evaluate_interpolation,
    evaluate_points,
    interpolate_flat,
)
from stabilitylab.analysis.layerwise import layer_selectors, layerwise_points
from stabilitylab.data import load_dataset
from stabilitylab.models import build_model
from stabilitylab.testing import tiny_config
from stabilitylab.train.functional import StackedModel


def _net_and_data():
    cfg = tiny_config()
    net = build_model(cfg.model, (1, 40), 10, generator=torch.Generator().manual_seed(0))
    stacked = StackedModel(net)
    g = torch.Generator().manual_seed(1)
    wa = torch.randn(stacked.num_params, generator=g) * 0.3
    wb = torch.randn(stacked.num_params, generator=g) * 0.3
    return stacked, wa, wb, load_dataset(cfg.data, torch.device("cpu"))


def test_layers_partition_the_parameters_weight_with_bias():
    stacked, *_ = _net_and_data()
    sel = layer_selectors(stacked)
    total = np.sum(list(sel.values()), axis=0)
    assert (total == 1).all()  # every parameter in exactly one layer
    assert "fc" in sel and sel["fc"].sum() == sum(s.size for s in stacked.param_slots
                                                 if s.name.startswith("fc."))


def test_every_layer_is_the_linear_path_and_no_layer_is_the_endpoint():
    stacked, wa, wb, data = _net_and_data()
    alphas = alpha_grid(11)
    every = np.ones(stacked.num_params, bool)
    assert torch.equal(layerwise_points(wa, wb, alphas, every), interpolate_flat(wa, wb, alphas))
    none = layerwise_points(wa, wb, alphas, np.zeros(stacked.num_params, bool))
    assert torch.equal(none, wb.expand(len(alphas), -1))
    path = evaluate_interpolation(stacked, wa, wb, alphas, data.test_x, data.test_y)
    res = evaluate_points(stacked, layerwise_points(wa, wb, alphas, every), data.test_x,
                          data.test_y)
    np.testing.assert_array_equal(res["error"], path["error"])
    assert instability(res["error"]) == instability(path["error"])
    flat = evaluate_points(stacked, none, data.test_x, data.test_y)
    assert instability(flat["error"]) == 0.0


def test_one_layer_moves_only_that_layer():
    stacked, wa, wb, _ = _net_and_data()
    sel = layer_selectors(stacked)["conv1"]
    pts = layerwise_points(wa, wb, [0.0, 0.5, 1.0], sel)
    keep = torch.from_numpy(~sel)
    assert torch.equal(pts[:, keep], wb[keep].expand(3, -1))
    assert torch.equal(pts[2, ~keep], wa[~keep])
