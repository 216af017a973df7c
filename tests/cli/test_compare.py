"""`stabilitylab compare A B`: every output, JSON, safetensors, BatchNorm, and bad files."""

import json
import pickle
import sys

import numpy as np
import pytest
import torch
from conftest import BN_PLUGIN
from stabilitylab.cli.main import main

from stabilitylab.config import ModelConfig
from stabilitylab.models import build_model

ROOT = ["--set", "data.num_samples=500"]


def _net(seed, **options):
    return build_model(ModelConfig(name="mlp", options=options or {"hidden": [16]}), (1, 40), 10,
                       torch.Generator().manual_seed(seed))


@pytest.fixture
def files(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(_net(1).state_dict(), a)
    torch.save(_net(2).state_dict(), b)
    return a, b


def _compare(capsys, *args):
    code = main(["compare", *map(str, args), *ROOT])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_compare_prints_every_measure_as_json(files, capsys):
    a, b = files
    code, out, err = _compare(capsys, a, b, "--model", "mlp", "--data", "mnist1d",
                              "--set", "model.hidden=[16]", "--alphas", "11", "--json", "--align")
    assert code == 0, err
    r = json.loads(out)
    for key in ("error_barrier", "loss_barrier", "above_line_error_barrier",
                "above_line_loss_barrier", "l2_distance", "angle", "disagreement",
                "aligned_error_barrier"):
        assert np.isfinite(r[key]), key
    pa = torch.cat([p.flatten() for p in torch.load(a).values()]).double()
    pb = torch.cat([p.flatten() for p in torch.load(b).values()]).double()
    assert r["l2_distance"] == pytest.approx(float((pa - pb).norm()), rel=1e-6)
    assert len(r["interp_test_error"]) == 11 and r["alphas"] == 11
    assert r["above_line_error_barrier"] >= 0 and r["above_line_loss_barrier"] >= 0
    assert 0 < r["disagreement"] <= 1  # two random inits disagree somewhere
    assert r["bn_mode"] == "none"


def test_a_checkpoint_against_itself_is_zero_everywhere(files, capsys):
    a, _ = files
    code, out, _ = _compare(capsys, a, a, "--model", "mlp", "--data", "mnist1d",
                            "--set", "model.hidden=[16]", "--json")
    r = json.loads(out)
    assert code == 0 and r["l2_distance"] == 0 and r["disagreement"] == 0
    assert abs(r["error_barrier"]) < 1e-12 and abs(r["loss_barrier"]) < 1e-5  # float32 path


def test_text_output_names_each_measure(files, capsys):
    a, b = files
    code, out, _ = _compare(capsys, a, b, "--model", "mlp", "--data", "mnist1d",
                            "--set", "model.hidden=[16]", "--alphas", "5")
    assert code == 0
    for word in ("error barrier", "loss barrier", "above-the-line", "L2 distance", "angle",
                 "disagreement"):
        assert word in out


def test_safetensors_files_compare_like_torch_files(files, tmp_path, capsys):
    safetensors = pytest.importorskip("safetensors.torch")
    a, b = files
    sa = tmp_path / "a.safetensors"
    safetensors.save_file(torch.load(a), str(sa))
    args = ("--model", "mlp", "--data", "mnist1d", "--set", "model.hidden=[16]", "--json",
            "--alphas", "5")
    _, out_pt, _ = _compare(capsys, a, b, *args)
    _, out_st, _ = _compare(capsys, sa, b, *args)
    pt, st = json.loads(out_pt), json.loads(out_st)
    assert pt["error_barrier"] == st["error_barrier"] and pt["l2_distance"] == st["l2_distance"]


def test_batchnorm_statistics_interpolated_or_recomputed(tmp_path, capsys, monkeypatch):
    plugin = tmp_path / "slab_tiny_bn.py"
    plugin.write_text(BN_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    from stabilitylab.config import load_config

    sets = ["model.name='slab_tiny_bn:bn_net'", "data.name='slab_tiny_bn:images'",
            "data.train_eval_size=40", "training.batch_size=10"]
    cfg = load_config(None, sets)
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    for seed, path in ((1, a), (2, b)):
        net = build_model(cfg.model, (3, 8, 8), 10, torch.Generator().manual_seed(seed))
        net.train()(torch.randn(16, 3, 8, 8))  # non-trivial running statistics
        torch.save(net.state_dict(), path)
    args = ["--model", "slab_tiny_bn:bn_net", "--data", "slab_tiny_bn:images", "--json",
            "--alphas", "3", "--set", "data.train_eval_size=40", "--set", "training.batch_size=10"]
    try:
        code, out, err = _compare(capsys, a, b, *args)
        assert code == 0, err
        interpolated = json.loads(out)
        assert interpolated["bn_mode"] == "interpolated"
        code, out, err = _compare(capsys, a, b, *args, "--bn-recompute")
        assert code == 0, err
        recomputed = json.loads(out)
        assert recomputed["bn_mode"] == "recomputed"
        assert recomputed["interp_test_loss"] != interpolated["interp_test_loss"]
        # curves always recompute BN statistics along the curve (their points have none)
        code, out, err = _compare(capsys, a, b, *args, "--curve")
        assert code == 0, err
        curved = json.loads(out)
        assert curved["curve_bn_mode"] == "recomputed"
        for c in curved["curves"].values():
            assert c["test_loss"][0] == recomputed["interp_test_loss"][0]  # t = 0 is B
            assert c["test_loss"][-1] == recomputed["interp_test_loss"][-1]
    finally:
        sys.modules.pop("slab_tiny_bn", None)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("case,match", [
    ("missing", "no such file"),
    ("pickled", "pickled Python objects; refused"),
    ("wrong-keys", "missing key 'hidden.0.weight'"),
    ("extra-key", "unexpected key 'extra'"),
    ("shapes", "'hidden.0.weight' has shape (8, 40), the model expects (16, 40)"),
    ("not-torch", "not a readable torch file"),
    ("not-a-dict", "expected a state_dict"),
])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_bad_files_are_one_line_errors(files, tmp_path, capsys, case, match):
    a, _ = files
    bad = tmp_path / "bad.pt"
    state = torch.load(a)
    if case == "pickled":
        with open(bad, "wb") as f:
            pickle.dump({"x": Evil()}, f)
    elif case == "wrong-keys":
        torch.save({("w" + k): v for k, v in state.items()}, bad)
    elif case == "extra-key":
        torch.save({**state, "extra": torch.zeros(1)}, bad)
    elif case == "shapes":
        torch.save(_net(3, hidden=[8]).state_dict(), bad)
    elif case == "not-torch":
        bad.write_text("hello")
    elif case == "not-a-dict":
        torch.save(torch.zeros(3), bad)
    code, out, err = _compare(capsys, a, bad, "--model", "mlp", "--data", "mnist1d",
                              "--set", "model.hidden=[16]")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], err
    assert "pwned" not in out + err


@pytest.mark.parametrize("how", ["weight", "activation"])
def test_compare_aligns_by_weight_or_activation_and_repairs(files, capsys, how):
    a, b = files
    code, out, err = _compare(capsys, a, b, "--model", "mlp", "--data", "mnist1d",
                              "--set", "model.hidden=[16]", "--alphas", "5", "--json",
                              "--align", how, "--repair")
    assert code == 0, err
    r = json.loads(out)
    assert r["align"] == how
    for key in ("aligned_error_barrier", "repaired_error_barrier",
                "aligned_repaired_error_barrier"):
        assert np.isfinite(r[key]), key
    assert len(r["interp_repaired_test_error"]) == 5
    # a checkpoint against itself: aligned and repaired barriers are 0
    code, out, _ = _compare(capsys, a, a, "--model", "mlp", "--data", "mnist1d",
                            "--set", "model.hidden=[16]", "--alphas", "5", "--json",
                            "--align", how, "--repair")
    r = json.loads(out)
    assert r["aligned_error_barrier"] == 0 and r["aligned_repaired_error_barrier"] == 0


def test_compare_two_architectures_is_one_line(tmp_path, capsys):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(_net(1).state_dict(), a)
    torch.save(_net(2, hidden=[8, 8]).state_dict(), b)
    code, out, err = _compare(capsys, a, b, "--model", "mlp", "--data", "mnist1d",
                              "--set", "model.hidden=[16]", "--align", "--repair")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")


def test_compare_curve_trains_a_bezier_and_a_chain(files, capsys):
    a, b = files
    code, out, err = _compare(capsys, a, b, "--model", "mlp", "--data", "mnist1d",
                              "--set", "model.hidden=[16]", "--alphas", "9", "--json", "--curve")
    assert code == 0, err
    r = json.loads(out)
    assert set(r["curves"]) == {"bezier", "polychain"} and r["curve_steps"] > 0
    for c in r["curves"].values():
        assert len(c["test_error"]) == 9
        # the curve runs from B (t = 0) to A (t = 1), the linear path's own ends
        assert c["test_error"][0] == r["test_error_b"] and c["test_error"][-1] == r["test_error_a"]
        assert c["length"] >= r["l2_distance"] * (1 - 1e-9)  # no path is shorter than a line
        assert c["linear_minus_curve"] == pytest.approx(r["error_barrier"] - c["error_barrier"])
    code, out, _ = _compare(capsys, a, b, "--model", "mlp", "--data", "mnist1d",
                            "--set", "model.hidden=[16]", "--alphas", "9", "--curve")
    assert code == 0 and "Bezier curve (Garipov et al. 2018" in out and "one-bend chain" in out


def test_compare_curve_between_identical_checkpoints_is_one_line(files, capsys):
    a, _ = files
    code, out, err = _compare(capsys, a, a, "--model", "mlp", "--data", "mnist1d",
                              "--set", "model.hidden=[16]", "--curve")
    assert code == 0, err
    assert out.strip().splitlines()[-1] == ("the two checkpoints are identical: there is no "
                                            "curve to train")
    assert "Traceback" not in err


def test_compare_curve_keeps_weights_pruned_in_both_files_at_zero():
    from stabilitylab.interop.compare_curve import shared_zeros
    from stabilitylab.train.functional import StackedModel

    stacked = StackedModel(_net(1))
    wa = torch.randn(stacked.num_params)
    wb = torch.randn(stacked.num_params)
    first = stacked.param_slots[0]  # a prunable Linear weight
    assert first.prunable
    wa[first.offset:first.offset + 5] = 0
    wb[first.offset + 2:first.offset + 7] = 0
    mask = shared_zeros(stacked, wa, wb)
    assert mask[first.offset:first.offset + 7].tolist() == [1, 1, 0, 0, 0, 1, 1]
    assert int((mask == 0).sum()) == 3
