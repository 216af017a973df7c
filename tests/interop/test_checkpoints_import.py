"""`stabilitylab import checkpoints`, `stabilitylab.Recorder` and the Lightning callback.

The Lightning checkpoints are written at test time by real PyTorch Lightning (a tiny
plain loop: two copies of one init under two data orders, 20 steps, a checkpoint every
5 steps); the bad inputs are hand-made.
"""

import pickle
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from stabilitylab.cli.main import main

import stabilitylab
from stabilitylab.core.errors import CheckpointError

pl = pytest.importorskip("lightning.pytorch")
HERE = Path(__file__).parent
STEPS = [0, 5, 10, 15, 20]
STUDY = {"model.name": "slab_tiny_plugin:mlp", "data.name": "slab_tiny_plugin:digits",
         "training.steps": "20it", "study.record": "every:5", "study.replicas": 2}
SPEC = """\
model = "slab_tiny_plugin:mlp"
data = "slab_tiny_plugin:digits"
[[runs]]
path = "ckpts/seed0/*.ckpt"
replica = 0
[[runs]]
path = "ckpts/seed1/*.ckpt"
replica = 1
"""


@pytest.fixture(scope="module")
def plugin():
    import sys

    sys.path.insert(0, str(HERE))
    import slab_tiny_plugin

    yield slab_tiny_plugin
    sys.path.remove(str(HERE))


class _SaveAtStart(pl.Callback):
    def __init__(self, path):
        self.path = path

    def on_train_start(self, trainer, pl_module):
        trainer.save_checkpoint(self.path)


@pytest.fixture(scope="module")
def lightning_run(plugin, tmp_path_factory):
    """Two Lightning copies: ModelCheckpoint files every 5 steps, and a Recorder store
    written by the callback during the same training."""
    from stabilitylab.interop.lightning import StabilityLabCallback

    root = tmp_path_factory.mktemp("lightning")
    rec = stabilitylab.Recorder(root / "recorded.zarr", plugin.mlp(None, (1, 6, 6), 4),
                                study=STUDY)
    finals = []
    for r in range(2):
        torch.manual_seed(0)  # one init for both copies; they differ in data order
        net = plugin.mlp(None, (1, 6, 6), 4)
        folder = root / "ckpts" / f"seed{r}"
        ckpt = pl.callbacks.ModelCheckpoint(dirpath=folder, filename="{step}",
                                            every_n_train_steps=5, save_top_k=-1)
        trainer = pl.Trainer(max_steps=20, accelerator="cpu", logger=False,
                             enable_progress_bar=False, enable_model_summary=False,
                             callbacks=[ckpt, _SaveAtStart(folder / "step=0.ckpt"),
                                        StabilityLabCallback(rec, replica=r)])
        trainer.fit(plugin.lightning_module(net), plugin.loader(seed=r))
        finals.append({k: v.detach().clone() for k, v in net.state_dict().items()})
    assert rec.close() is True
    (root / "spec.toml").write_text(SPEC)
    return root, finals


def _flat(state, names):
    return torch.cat([state[n].flatten() for n in names]).double().numpy()


def test_lightning_folder_imports_with_true_trajectory_distances(lightning_run, plugin, tmp_path,
                                                                 capsys):
    root, _ = lightning_run
    assert sorted(p.name for p in (root / "ckpts" / "seed0").iterdir()) == \
        sorted(f"step={s}.ckpt" for s in STEPS)
    out = tmp_path / "imported.zarr"
    assert main(["import", "checkpoints", str(root / "spec.toml"), "--out", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "imported 10 checkpoints" in printed and "at T: evaluated" in printed
    stabilitylab.store.validate(str(out))
    ds = stabilitylab.open_study(str(out))
    assert list(ds.step.values) == STEPS and ds.attrs["complete"] is True
    names = [s["name"] for s in ds.attrs["param_layout"]]
    _, _, test_x, test_y = plugin.digits(None)
    for r in (0, 1):  # the final accuracy the import evaluated = the final file's own
        net = plugin.mlp(None, (1, 6, 6), 4)
        state = torch.load(root / "ckpts" / f"seed{r}" / "step=20.ckpt", weights_only=True)
        net.load_state_dict({k[len("model."):]: v for k, v in state["state_dict"].items()})
        acc = float((net(test_x).argmax(1) == test_y).float().mean())
        assert float(ds.final_test_acc.sel(kind="imp", level=0, rewind=0, replica=r)) == \
            pytest.approx(acc, abs=1e-6)
    assert main(["analyze", str(out), "--no-report", "--no-progress", "--trust-plugins"]) == 0
    an = stabilitylab.open_analysis(str(out))
    assert an.attrs["absent"] == []  # true trajectories: nothing is left out
    for step in STEPS:  # the distance analyze computed = the one from the files themselves
        a, b = (torch.load(root / "ckpts" / f"seed{r}" / f"step={step}.ckpt",
                           weights_only=True)["state_dict"] for r in (0, 1))
        direct = np.linalg.norm(_flat(a, ["model." + n for n in names])
                                - _flat(b, ["model." + n for n in names]))
        got = float(an.data_order_l2.sel(kind="imp", level=0, rewind=0, pair="0-1", step=step))
        assert got == pytest.approx(direct, rel=1e-5, abs=1e-6), step
    assert float(an.data_order_l2.sel(kind="imp", level=0, rewind=0, pair="0-1", step=0)) == 0
    assert np.isfinite(an.divergence_rate.sel(kind="imp", level=0).values).all()
    assert np.isfinite(an.instability.sel(kind="imp", level=0).values).all()


def test_the_callback_records_what_lightning_saved(lightning_run, tmp_path):
    root, finals = lightning_run
    rec = stabilitylab.open_study(str(root / "recorded.zarr"))
    assert rec.attrs["complete"] is True and list(rec.step.values) == STEPS
    out = tmp_path / "imported.zarr"
    assert main(["import", "checkpoints", str(root / "spec.toml"), "--out", str(out),
                 "--no-progress"]) == 0
    imp = stabilitylab.open_study(str(out))
    np.testing.assert_array_equal(rec.weights.values, imp.weights.values)
    names = [s["name"] for s in rec.attrs["param_layout"]]
    for r in (0, 1):
        np.testing.assert_array_equal(
            rec.weights.sel(kind="imp", level=0, rewind=0, replica=r, step=20).values,
            _flat(finals[r], names).astype(np.float32))


def _tiny_states(plugin, folder, steps, build=None, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = (build or plugin.mlp)(None, (1, 6, 6), 4)
    for s in steps:
        torch.save({k: v + 0.01 * s for k, v in net.state_dict().items()}, folder / f"step{s}.pt")


def test_safetensors_files_and_hf_folders_import(plugin, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = plugin.mlp(None, (1, 6, 6), 4)
    for r, step in ((r, s) for r in (0, 1) for s in (0, 10)):
        state = {k: (v + 0.1 * r * step).contiguous() for k, v in net.state_dict().items()}
        (tmp_path / "st").mkdir(exist_ok=True)
        if r == 0:
            save_file(state, str(tmp_path / "st" / f"w_{step}.safetensors"))
        else:
            hf = tmp_path / "hf" / f"checkpoint-{step}"
            hf.mkdir(parents=True)
            save_file(state, str(hf / "model.safetensors"))
    (tmp_path / "spec.toml").write_text(textwrap.dedent("""\
        model = "slab_tiny_plugin:mlp"
        data = "slab_tiny_plugin:digits"
        [[runs]]
        path = "st"
        replica = 0
        [[runs]]
        path = "hf/checkpoint-*"
        replica = 1
        """))
    out = tmp_path / "s.zarr"
    assert main(["import", "checkpoints", str(tmp_path / "spec.toml"), "--out", str(out),
                 "--no-progress"]) == 0
    ds = stabilitylab.open_study(str(out))
    names = [s["name"] for s in ds.attrs["param_layout"]]
    want = _flat({k: v + 1.0 for k, v in net.state_dict().items()}, names).astype(np.float32)
    got = ds.weights.sel(kind="imp", level=0, rewind=0, replica=1, step=10).values
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("breakage,match", [
    ("mixed-architectures", "has shape"),
    ("steps-backwards", "steps go backwards"),
    ("missing-replica", "replica 1 is missing"),
    ("pickle", "pickled Python objects; refused"),
    ("symlink-out", "outside its folder"),
    ("no-mask-above-level-0", "needs a mask"),
])
def test_bad_checkpoint_folders_are_one_line_errors(plugin, tmp_path, capsys, breakage, match):
    a, b = tmp_path / "a", tmp_path / "b"
    _tiny_states(plugin, a, (0, 5, 10))
    _tiny_states(plugin, b, (0, 5, 10), seed=1)
    runs = [('path = "a"', 0), ('path = "b"', 1)]
    extra = ""
    if breakage == "mixed-architectures":
        _tiny_states(plugin, b, (10,), build=plugin.wide_mlp)
    elif breakage == "steps-backwards":
        runs[1] = ('files = ["b/step0.pt", "b/step10.pt", "b/step5.pt"]', 1)
    elif breakage == "missing-replica":
        runs[1] = ('path = "b"', 2)
    elif breakage == "pickle":
        with open(b / "step5.pt", "wb") as f:
            pickle.dump({"1.weight": object()}, f)
    elif breakage == "symlink-out":
        outside = tmp_path / "outside"
        _tiny_states(plugin, outside, (5,))
        (b / "step5.pt").unlink()
        (b / "step5.pt").symlink_to(outside / "step5.pt")
    elif breakage == "no-mask-above-level-0":
        extra = '[[runs]]\npath = "a"\nlevel = 1\nreplica = 0\n[[runs]]\npath = "b"\nlevel = 1\nreplica = 1\n'
    body = "".join(f"[[runs]]\n{line}\nreplica = {r}\n" for line, r in runs)
    (tmp_path / "spec.toml").write_text('model = "slab_tiny_plugin:mlp"\n'
                                        'data = "slab_tiny_plugin:digits"\n' + body + extra)
    out = tmp_path / "s.zarr"
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["import", "checkpoints", str(tmp_path / "spec.toml"), "--out", str(out),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0], err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == before


def test_masks_zeros_gives_level_masks_from_the_first_checkpoint(plugin, tmp_path):
    torch.manual_seed(0)
    net = plugin.mlp(None, (1, 6, 6), 4)
    for level in (0, 1):
        for r in (0, 1):
            folder = tmp_path / f"L{level}r{r}"
            folder.mkdir()
            for s in (0, 10):
                state = {k: v + 0.01 * s * (r + 1) for k, v in net.state_dict().items()}
                if level == 1:
                    state["1.weight"][:, :5] = 0.0  # the pruned inputs
                torch.save(state, folder / f"{s}.pt")
    runs = "".join(f'[[runs]]\npath = "L{lv}r{r}"\nlevel = {lv}\nreplica = {r}\n'
                   for lv in (0, 1) for r in (0, 1))
    (tmp_path / "spec.toml").write_text('model = "slab_tiny_plugin:mlp"\ndata = '
                                        '"slab_tiny_plugin:digits"\nmasks = "zeros"\n' + runs)
    out = tmp_path / "s.zarr"
    assert main(["import", "checkpoints", str(tmp_path / "spec.toml"), "--out", str(out),
                 "--no-progress"]) == 0
    ds = stabilitylab.open_study(str(out))
    slot = {s["name"]: s for s in ds.attrs["param_layout"]}["1.weight"]
    m = ds.masks.sel(kind="imp", level=1, rewind=0).values
    m = m[slot["offset"]:slot["offset"] + slot["size"]].reshape(slot["shape"])
    assert not m[:, :5].any() and m[:, 5:].all()
    assert float(ds.density.sel(kind="imp", level=1, rewind=0)) < 1.0
    assert bool(ds.masks.sel(kind="imp", level=0, rewind=0).all())


def test_recorder_refuses_backwards_steps_and_resumes_after_a_crash(plugin, tmp_path):
    torch.manual_seed(0)
    net = plugin.mlp(None, (1, 6, 6), 4)
    out = tmp_path / "r.zarr"
    rec = stabilitylab.Recorder(out, net, study=STUDY)
    rec.log(0, net, replica=0)
    rec.log(5, net, replica=0)
    with pytest.raises(CheckpointError, match="steps go backwards"):
        rec.log(5, net, replica=0)
    rec.log(7, net, replica=0)  # not a recorded step: skipped, but still ordered
    with pytest.raises(CheckpointError, match="logged step 6 after step 7"):
        rec.log(6, net, replica=0)
    with pytest.raises(CheckpointError, match="replica 2 is not in this study"):
        rec.log(0, net, replica=2)
    with pytest.raises(CheckpointError, match="never logged step 10"):
        rec.finish(replica=0)
    for s in (10, 15, 20):
        rec.log(s, net, replica=0)
    rec.finish(replica=0)
    with pytest.raises(stabilitylab.StoreError, match="being written|in use|lock|held"):
        stabilitylab.Recorder(out, net, study=STUDY, resume=True)  # the writer lock holds
    with pytest.raises(RuntimeError), rec:  # the loop crashes while replica 1 trains
        rec.log(0, net, replica=1)
        raise RuntimeError("crash")
    with pytest.raises(stabilitylab.StoreError):  # a new Recorder never overwrites
        stabilitylab.Recorder(out, net, study=STUDY)
    again = stabilitylab.Recorder(out, net, study=STUDY, resume=True)
    assert not again.log(0, net, replica=0)  # complete: skipped
    moved = {k: v + 1 for k, v in net.state_dict().items()}
    for s in STEPS:
        assert again.log(s, moved, replica=1)
    again.finish(replica=1)
    assert again.close() is True
    ds = stabilitylab.open_study(str(out))
    assert (ds.status.sel(kind="imp") == 2).all()
    w = ds.weights.sel(kind="imp", level=0, rewind=0)
    assert np.allclose(w.sel(replica=1).values - w.sel(replica=0).values, 1)
