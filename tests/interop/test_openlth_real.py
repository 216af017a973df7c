"""`stabilitylab import openlth` on a run written by OpenLTH itself (tests/interop/data/openlth).

mnist_lenet_20_10, replicates 1 and 2, levels 0-2, rewinding at 5 iterations, 40
iterations of training, a randomly_prune branch at level 2 (see the data's README).
"""

import csv
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from stabilitylab.cli.main import main

import stabilitylab
from stabilitylab.interop.openlth import openlth_global_masks

EXP = Path(__file__).parent / "data" / "openlth" / "lottery_c7066e6c712c13f5ff48abcdad04149c"
K, T = 5, 40
BRANCH = "lottery_branch_randomly_prune_722d7815348773060cd630fcaa73e625"
RENAME = {"fc_layers.0.weight": "hidden.0.weight", "fc_layers.0.bias": "hidden.0.bias",
          "fc_layers.1.weight": "hidden.1.weight", "fc_layers.1.bias": "hidden.1.bias",
          "fc.weight": "fc.weight", "fc.bias": "fc.bias"}

DATA_PLUGIN = '''
import torch

def digits(cfg):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(200, 1, 28, 28, generator=g), torch.arange(200) % 10,
            torch.randn(100, 1, 28, 28, generator=g), torch.arange(100) % 10)
'''


@pytest.fixture
def digits_plugin(tmp_path, monkeypatch):
    """MNIST-shaped data for analyze (the fixture's synthetic MNIST is not shipped)."""
    (tmp_path / "slab_real_digits.py").write_text(textwrap.dedent(DATA_PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield ["--set", "data.name='slab_real_digits:digits'"]
    sys.modules.pop("slab_real_digits", None)


def _folder(rep, level, kind="imp"):
    return EXP / f"replicate_{rep}" / f"level_{level}" / ("main" if kind == "imp" else BRANCH)


def _slots(ds):
    return {s["name"]: s for s in ds.attrs["param_layout"]}


def _tensor(flat, slot):
    return flat[slot["offset"]:slot["offset"] + slot["size"]].reshape(slot["shape"])


def _import(tmp_path, plugin, folder, name="s.zarr"):
    out = tmp_path / name
    assert main(["import", "openlth", str(folder), "--out", str(out), *plugin]) == 0
    return out


@pytest.mark.parametrize("which", ["experiment", "replicate"])
def test_imported_masks_and_weights_equal_openlths_files(tmp_path, capsys, digits_plugin, which):
    folder = EXP if which == "experiment" else EXP / "replicate_2"
    out = _import(tmp_path, digits_plugin, folder)
    printed = capsys.readouterr().out
    assert ("2 replicates" if which == "experiment" else "1 replicate (replicate_2)") in printed
    assert "match OpenLTH's sparse_global rule" in printed
    stabilitylab.store.validate(str(out))
    ds = stabilitylab.open_study(str(out))
    reps = [1, 2] if which == "experiment" else [2]
    assert list(ds.step.values) == [0, K, T] and list(ds.rewind.values) == [K]
    assert list(ds.level.values) == [0, 1, 2] and ds.sizes["replica"] == len(reps)
    assert list(ds.kind.values) == ["imp", "random_prune", "reinit"]
    assert ds.attrs["pair_noise"] == {"imp": "init", "random_prune": "init"}
    assert ds.attrs["imported_from"]["masks_reproduced_by_openlth_rule"] is True
    slots = _slots(ds)
    for kind, levels in (("imp", (0, 1, 2)), ("random_prune", (2,))):
        for level in levels:
            union = {}
            for r, rep in enumerate(reps):
                files = _folder(rep, level, kind)
                mask = torch.load(files / "mask.pth", weights_only=True)
                for step in (K, T):
                    state = torch.load(files / f"model_ep0_it{step}.pth", weights_only=True)
                    stored = ds.weights.sel(kind=kind, level=level, rewind=K, replica=r,
                                            step=step).values
                    for theirs, ours in RENAME.items():
                        want = state[theirs] * mask[theirs] if theirs in mask else state[theirs]
                        np.testing.assert_array_equal(_tensor(stored, slots[ours]), want.numpy())
                for theirs in mask:
                    union[theirs] = union.get(theirs, 0) | mask[theirs].numpy().astype(bool)
            stored_mask = ds.masks.sel(kind=kind, level=level, rewind=K).values
            for theirs, m in union.items():
                np.testing.assert_array_equal(_tensor(stored_mask, slots[RENAME[theirs]]), m)
    # The dense run is the first imported replicate's pretraining and level-0 run.
    first = reps[0]
    init = torch.load(EXP / f"replicate_{first}" / "level_pretrain" / "main" / "model_ep0_it0.pth",
                      weights_only=True)
    np.testing.assert_array_equal(_tensor(ds.dense_weights.sel(step=0).values,
                                          slots["hidden.0.weight"]),
                                  init["fc_layers.0.weight"].numpy())
    acc = float((_folder(reps[-1], 2) / "logger").read_text().split("test_accuracy,40,")[1]
                .split()[0])
    assert float(ds.final_test_acc.sel(kind="imp", level=2, rewind=K,
                                       replica=len(reps) - 1)) == pytest.approx(acc)


def test_openlths_level_masks_follow_its_rule_from_its_final_weights():
    """The level-2 mask.pth equals openlth_global_masks applied to level 1's final weights
    (fc.weight ignored but counted, as OpenLTH counts every mask entry)."""
    for rep in (1, 2):
        final = torch.load(_folder(rep, 1) / f"model_ep0_it{T}.pth", weights_only=True)
        prev = torch.load(_folder(rep, 1) / "mask.pth", weights_only=True)
        want = torch.load(_folder(rep, 2) / "mask.pth", weights_only=True)
        names = ["fc_layers.0.weight", "fc_layers.1.weight"]
        got = openlth_global_masks({n: final[n] * prev[n] for n in names},
                                   {n: prev[n] for n in names}, 0.2,
                                   ignored={"fc.weight": prev["fc.weight"]})
        for n in names:
            assert torch.equal(got[n], want[n].bool()), (rep, n)
        without = openlth_global_masks({n: final[n] * prev[n] for n in names},
                                       {n: prev[n] for n in names}, 0.2)
        assert not all(torch.equal(without[n], want[n].bool()) for n in names)


def test_analyze_labels_cross_replicate_pairs_as_different_init(tmp_path, capsys, digits_plugin):
    from stabilitylab.report.document import _summary_note, summary_table

    out = _import(tmp_path, digits_plugin, EXP)
    capsys.readouterr()
    assert main(["analyze", str(out), "--no-report", "--no-progress", "--trust-plugins",
                 "--measures", "interpolation", "aligned"]) == 0
    text = capsys.readouterr().out
    assert "different-init pairs" in text and "barrier between different-init pairs" in text
    assert "after weight matching" in text and "LMC rule: not applicable" in text
    an = stabilitylab.open_analysis(str(out))
    assert an.attrs["pair_noise"] == {"imp": "init", "random_prune": "init", "reinit": "data_order"}
    assert dict(zip(an.kind.values, an.pair_noise.values)) == an.attrs["pair_noise"]
    assert np.isfinite(an.instability.sel(kind="imp").values).all()
    assert np.isfinite(an.aligned_instability.sel(kind="imp").values).all()
    with open(f"{out}.analysis/summary.csv") as f:
        rows = list(csv.DictReader(f))
    imp = [r for r in rows if r["kind"] == "imp"]
    assert imp and all(r["pair_noise"] == "init" and r["pairs"] == "different-init pairs"
                       for r in imp)
    table = summary_table(stabilitylab.open_study(str(out)), an)
    assert {r["pairs"] for r in table if r["kind"] == "imp"} == {"different-init pairs"}
    assert "imp, random_prune are different-init pairs" in _summary_note(an)
    from stabilitylab.report.figures import plot_instability

    ax = plot_instability(an).axes[0]
    assert "different-init pairs" in ax.get_title() and "different-init" in ax.get_ylabel()


def test_a_single_replicate_names_the_pair_measures_absent(tmp_path, capsys, digits_plugin):
    out = _import(tmp_path, digits_plugin, EXP / "replicate_1")
    capsys.readouterr()
    assert main(["analyze", str(out), "--no-report", "--no-progress", "--trust-plugins",
                 "--measures", "interpolation", "trajectory"]) == 0
    text = capsys.readouterr().out
    assert "one replica: no pairs" in text
    an = stabilitylab.open_analysis(str(out))
    for name in ("instability", "loss_barrier", "aligned_instability", "data_order_l2_final"):
        assert name in an.attrs["absent"], name
    # What one replicate does have: the pruning-noise distance, accuracy, densities.
    assert np.isfinite(an.pruning_noise_l2.sel(kind="imp", level=[1, 2]).isel(step=-1)).all()
    assert np.isfinite(an.final_test_acc.sel(kind="imp").values).all()


def test_either_pruning_section_title_imports(tmp_path, capsys, digits_plugin):
    """OpenLTH's logs title the pruning section "Pruning Hyperparameters"; its source also
    has "Hyperparameters for Sparse Global Pruning". Sections are read by field names."""
    exp = tmp_path / EXP.name
    shutil.copytree(EXP, exp)
    hp = exp / "replicate_1" / "level_0" / "main" / "hparams.log"
    assert "Pruning Hyperparameters\n" in hp.read_text()
    hp.write_text(hp.read_text().replace("Pruning Hyperparameters\n",
                                         "Hyperparameters for Sparse Global Pruning\n"))
    out = _import(tmp_path, digits_plugin, exp)
    assert stabilitylab.open_study(str(out)).attrs["config"]["pruning"]["ignore"] == ["fc.weight"]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("breakage,match", [
    ("no-dir", "no such directory"),
    ("no-replicates", "no replicate_<N> folders"),
    ("no-hparams", "hparams.log: missing"),
    ("no-pruning-fields", "no section with the field(s) pruning_strategy"),
    ("no-final", "the model at T is missing"),
    ("bad-model", "has no stabilitylab counterpart"),
    ("pickled-mask", "pickled Python objects; refused"),
    ("bad-shape", "'hidden.0.weight' has shape"),
    ("missing-level", "levels [0, 1], expected 0..2"),
])
def test_broken_copies_of_the_real_run_are_one_line_errors(tmp_path, capsys, digits_plugin,
                                                           breakage, match):
    import pickle

    exp = tmp_path / EXP.name
    shutil.copytree(EXP, exp)
    hp = exp / "replicate_1" / "level_0" / "main" / "hparams.log"
    main_dir = exp / "replicate_2" / "level_1" / "main"
    if breakage == "no-dir":
        exp = tmp_path / "nowhere"
    elif breakage == "no-replicates":
        exp = exp / "replicate_1" / "level_0"
    elif breakage == "no-hparams":
        hp.unlink()
    elif breakage == "no-pruning-fields":
        hp.write_text(hp.read_text().replace("pruning_strategy", "strategy"))
    elif breakage == "no-final":
        (main_dir / f"model_ep0_it{T}.pth").unlink()
    elif breakage == "bad-model":
        hp.write_text(hp.read_text().replace("mnist_lenet_20_10", "imagenet_resnet_50"))
    elif breakage == "pickled-mask":
        with open(main_dir / "mask.pth", "wb") as f:
            pickle.dump({"fc_layers.0.weight": object()}, f)
    elif breakage == "bad-shape":
        state = torch.load(main_dir / f"model_ep0_it{T}.pth", weights_only=True)
        state["fc_layers.0.weight"] = torch.zeros(20, 783)
        torch.save(state, main_dir / f"model_ep0_it{T}.pth")
    elif breakage == "missing-level":
        shutil.rmtree(exp / "replicate_2" / "level_2")
    out = tmp_path / "s.zarr"
    assert main(["import", "openlth", str(exp), "--out", str(out), *digits_plugin]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0], err
    assert not out.exists()  # nothing written


def test_a_mask_off_openlths_rule_is_reported(tmp_path, capsys, digits_plugin):
    exp = tmp_path / EXP.name
    shutil.copytree(EXP, exp)
    path = exp / "replicate_1" / "level_1" / "main" / "mask.pth"
    mask = torch.load(path, weights_only=True)
    flat = mask["fc_layers.0.weight"].view(-1)
    flat[int(torch.nonzero(flat == 0)[0])] = 1  # one pruned weight kept
    torch.save(mask, path)
    _import(tmp_path, digits_plugin, exp)
    assert "differ from OpenLTH's sparse_global rule" in capsys.readouterr().out
