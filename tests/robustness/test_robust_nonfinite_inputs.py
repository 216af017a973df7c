"""A non-finite input tensor (parameter or buffer) is refused in one line naming it.

A NaN BatchNorm running statistic used to pass ``compare``: interpolated, 0 * NaN poisons even
the clean endpoint, and argmax over NaN logits still gives a finite error (a 2.51% model was
reported at 89.97%). The checkpoint readers (``compare``, ``import checkpoints``, ``import
openlth``: all through ``fit_state_dict``) and ``analyze`` now check every tensor.
"""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
import torch
import zarr
from conftest import BN_PLUGIN
from stabilitylab.cli.main import main

from stabilitylab.core.errors import CheckpointError

PLUGIN = BN_PLUGIN
SETS = ["data.train_eval_size=40", "training.batch_size=10"]


@pytest.fixture
def bn_files(tmp_path, monkeypatch):
    from stabilitylab.config import load_config
    from stabilitylab.models import build_model

    (tmp_path / "slab_nan_bn.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = load_config(None, ["model.name='slab_nan_bn:bn_net'", "data.name='slab_nan_bn:images'",
                             *SETS])
    paths = []
    for seed in (1, 2):
        net = build_model(cfg.model, (3, 8, 8), 10, torch.Generator().manual_seed(seed))
        net.train()(torch.randn(16, 3, 8, 8))
        path = tmp_path / f"{seed}.pt"
        torch.save(net.state_dict(), path)
        paths.append(path)
    yield cfg, paths
    sys.modules.pop("slab_nan_bn", None)


@pytest.mark.parametrize("bn_recompute", [False, True])
@pytest.mark.parametrize("tensor", ["1.running_var", "1.running_mean", "0.weight"])
def test_compare_refuses_a_nan_tensor_in_one_line(bn_files, capsys, tensor, bn_recompute):
    _, (a, b) = bn_files
    state = torch.load(b)
    state[tensor].view(-1)[1] = float("nan")
    torch.save(state, b)
    capsys.readouterr()
    rc = main(["compare", str(a), str(b), "--model", "slab_nan_bn:bn_net", "--data",
               "slab_nan_bn:images", "--alphas", "3", *(["--bn-recompute"] if bn_recompute else []),
               *[x for s in SETS for x in ("--set", s)]])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "", out
    assert err.count("\n") == 1 and f"tensor '{tensor}' holds 1 non-finite value" in err, err


def test_fit_state_dict_checks_buffers(bn_files):
    """The reader under ``import checkpoints`` and ``import openlth``."""
    from stabilitylab.interop.checkpoints import fit_state_dict, load_state_dict
    from stabilitylab.models import build_model
    from stabilitylab.train.functional import StackedModel

    cfg, (a, _) = bn_files
    state = load_state_dict(a)
    state["1.running_mean"][:] = float("inf")
    stacked = StackedModel(build_model(cfg.model, (3, 8, 8), 10, torch.Generator().manual_seed(0)))
    with pytest.raises(CheckpointError, match=r"tensor '1.running_mean' holds 4 non-finite values"):
        fit_state_dict(state, stacked, "a.pt")


def test_analyze_leaves_a_run_with_a_nan_input_absent(tiny_study, tmp_path, capsys, caplog):
    import stabilitylab

    store = tmp_path / "s.zarr"
    shutil.copytree(tiny_study, store)
    g = zarr.open_group(store, mode="r+", use_consolidated=False)
    second = g.attrs["param_layout"][2]
    w = g["weights"]
    run = (0, 1, 0, 1)  # imp level 1 rewind 0 replica 1: complete
    last = np.asarray(w[(*run, -1, slice(None))])
    last[second["offset"] + 1] = np.nan
    w[(*run, -1, slice(None))] = last
    capsys.readouterr()
    with caplog.at_level("WARNING"):
        rc = main(["analyze", str(store), "--no-progress", "--no-report", "--device", "cpu",
                   "--measures", "interpolation"])
    assert rc == 0
    warned = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    want = (f"run imp level 1 rewind 0 replica 1 is marked complete but its final weights "
            f"hold 1 non-finite value in tensor '{second['name']}': analyzed as absent (NaN)")
    assert warned == [want], warned
    out = capsys.readouterr().out
    assert "skipped imp level 1 rewind 0 replica 1: non-finite final weights" in out
    an = stabilitylab.open_analysis(store)
    assert "imp level 1 rewind 0 replica 1 (non-finite inputs)" in an.attrs["absent"]
    assert np.isnan(an.instability.sel(kind="imp", level=1, rewind=0)).all()  # its only pair
    assert np.isfinite(an.instability.sel(kind="imp", level=1, rewind=10)).all()
