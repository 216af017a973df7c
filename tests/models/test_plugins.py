"""Plugins: models and a dataset the package does not ship, from the CLI and from Python.

Each plugin lives in a throwaway module written to a temporary folder on ``sys.path``.
"""

import sys
import textwrap

import numpy as np
import pytest
import torch
import zarr
from stabilitylab.cli.main import main

import stabilitylab
from stabilitylab.config import load_config, study_id
from stabilitylab.core.errors import ConfigError

PLUGIN = '''
import torch
from torch import nn


class LNMLP(nn.Module):
    def __init__(self, d_in, width, classes):
        super().__init__()
        self.hidden = nn.Linear(d_in, width)
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        return self.fc(nn.functional.gelu(self.norm(self.hidden(x.flatten(1)))))


def ln_mlp(cfg, input_shape, num_classes, width=16):
    d = 1
    for s in input_shape:
        d *= s
    return LNMLP(d, width, num_classes)


class GNConv(nn.Module):
    def __init__(self, c_in, classes, channels, groups):
        super().__init__()
        self.conv = nn.Conv2d(c_in, channels, 3, padding=1)
        self.norm = nn.GroupNorm(groups, channels)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.norm(self.conv(x))).mean((-2, -1)))


def gn_conv(cfg, input_shape, num_classes, channels=8, groups=2):
    return GNConv(input_shape[0], num_classes, channels, groups)


def blobs(cfg, n_train=200, n_test=100, side=6):
    """Two classes of 1 x side x side images: bright top half vs bright bottom half."""
    g = torch.Generator().manual_seed(0)

    def make(n):
        y = torch.arange(n) % 2
        x = torch.randn(n, 1, side, side, generator=g) * 0.5
        half = side // 2
        x[y == 0, :, :half] += 1.0
        x[y == 1, :, half:] += 1.0
        return x, y

    tx, ty = make(n_train)
    vx, vy = make(n_test)
    return {"train_x": tx, "train_y": ty, "test_x": vx, "test_y": vy, "num_classes": 2}


CALLS = {"counted": 0, "stated": 0}


def counted(cfg):
    CALLS["counted"] += 1
    return blobs(cfg, n_train=60, n_test=20, side=4)


def _stated_loader(cfg, side=4):
    CALLS["stated"] += 1
    return blobs(cfg, n_train=60, n_test=20, side=side)


from stabilitylab.data.registry import DatasetInfo  # noqa: E402

stated = DatasetInfo("stated", (1, 4, 4), 2, lambda cfg: 60, lambda cfg: 20, _stated_loader)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(40, 10)

    def forward(self, x):
        x = x.flatten(1)
        if x.sum() > 0:
            return self.fc(x)
        return self.fc(-x)


def branchy(cfg, input_shape, num_classes):
    return Branchy()


class Counter(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(40, 10)
        self.register_buffer("seen", torch.zeros(()))

    def forward(self, x):
        self.seen += x.shape[0]
        return self.fc(x.flatten(1))


def counter(cfg, input_shape, num_classes):
    return Counter()


class Nonzero(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(40, 10)

    def forward(self, x):
        h = self.fc(x.flatten(1))
        return h[:, : int(torch.nonzero(h[0] > 0).shape[0]) + 1].sum(-1, keepdim=True).expand_as(h)


def nonzero(cfg, input_shape, num_classes):
    return Nonzero()


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(40, 10)
        self.scale = nn.Parameter(torch.ones(10))

    def forward(self, x):
        return self.fc(x.flatten(1)) * self.scale


def scaled(cfg, input_shape, num_classes):
    return Scaled()
'''

TINY = ["training.steps='40it'", "study.rewinds=['0it','10it']", "study.replicas=2",
        "pruning.levels=1", "data.num_samples=500", "training.eval_every='20it'",
        "training.log_every='10it'", "study.record='every:10'", "training.batch_size=50"]


@pytest.fixture(autouse=True)
def plugin_module(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "slab_plugin_mod.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(folder))
    yield "slab_plugin_mod"
    sys.modules.pop("slab_plugin_mod", None)


def _record_and_analyze_cli(tmp_path, capsys, *sets):
    out = tmp_path / "s.zarr"
    args = ["record", "--out", str(out), "--no-progress"]
    for s in (*TINY, *sets):
        args += ["--set", s]
    assert main(args) == 0, capsys.readouterr().err
    assert main(["analyze", str(out), "--no-report", "--no-progress", "--trust-plugins",
                 "--measures", "trajectory", "interpolation", "replica"]) == 0, capsys.readouterr().err
    return stabilitylab.open_analysis(str(out))


def test_a_store_naming_a_plugin_is_not_imported_without_trust(tmp_path, capsys, plugin_module):
    """A store's content must not choose code: analyze refuses, in one line, to import the
    module:function a store names unless the user trusts it."""
    out = tmp_path / "s.zarr"
    args = ["record", "--out", str(out), "--no-progress"]
    for s in (*TINY, "model.name='slab_plugin_mod:ln_mlp'"):
        args += ["--set", s]
    assert main(args) == 0, capsys.readouterr().err
    capsys.readouterr()
    sys.modules.pop("slab_plugin_mod", None)
    assert main(["analyze", str(out), "--no-report", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--trust-plugins" in err[0] and "slab_plugin_mod:ln_mlp" in err[0]
    assert "slab_plugin_mod" not in sys.modules
    assert "analysis" not in zarr.open_group(str(out), mode="r")


def test_layernorm_gelu_mlp_records_and_analyzes_from_the_cli(tmp_path, capsys):
    an = _record_and_analyze_cli(tmp_path, capsys, "model.name='slab_plugin_mod:ln_mlp'",
                                 "model.options.width=12")
    inst = an.instability.sel(kind="imp").values
    assert np.isfinite(inst).all() and (inst >= -1e-9).all()
    ds = stabilitylab.open_study(str(tmp_path / "s.zarr"))
    names = [s["name"] for s in ds.attrs["param_layout"]]
    assert "norm.weight" in names and "hidden.weight" in names
    prunable = {s["name"]: s["prunable"] for s in ds.attrs["param_layout"]}
    assert prunable["hidden.weight"] and not prunable["norm.weight"]  # norms are never pruned
    assert ds.attrs["config"]["model"]["options"] == {"width": 12}
    # The pruned level really is sparser; LayerNorm parameters stay dense.
    density = ds.density.sel(kind="imp").values
    assert density[1].max() < 1.0 and density[0].min() == 1.0


def test_groupnorm_conv_on_a_dataset_plugin_records_and_analyzes_from_the_cli(tmp_path, capsys):
    an = _record_and_analyze_cli(tmp_path, capsys, "model.name='slab_plugin_mod:gn_conv'",
                                 "data.name='slab_plugin_mod:blobs'", "data.options.side=4",
                                 "training.batch_size=20")
    assert np.isfinite(an.instability.sel(kind="imp").values).all()
    assert np.isfinite(an.disagreement.sel(kind="imp").values).all()
    ds = stabilitylab.open_study(str(tmp_path / "s.zarr"))
    assert float(ds.final_test_acc.sel(kind="imp", level=0).mean()) > 0.7  # it learned
    assert ds.attrs["config"]["data"]["options"] == {"side": 4}


def test_python_api_with_a_notebook_builder_and_in_memory_tensors(tmp_path):
    from torch import nn

    def make_net(cfg, input_shape, num_classes):  # a local function: no registry entry
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, num_classes))

    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 1, 4, 4, generator=g)
    y = (x.flatten(1).sum(1) > 0).long()
    tensors = (x[:200], y[:200], x[200:], y[200:])
    out = tmp_path / "py.zarr"
    stabilitylab.record_study(None, out, model=make_net, data=tensors, overrides=TINY,
                              progress=False)
    analysis = stabilitylab.analyze_study(out, measures=["trajectory", "interpolation"],
                                          progress=False, n_boot=20)
    assert "instability" in analysis and np.isfinite(analysis.instability.sel(kind="imp")).all()
    cfg = stabilitylab.open_study(str(out)).attrs["config"]
    assert cfg["model"]["name"].startswith("python:") and cfg["data"]["name"].startswith("python:data-")


def test_a_zero_argument_factory_is_a_model_too(tmp_path):
    from torch import nn

    from stabilitylab.api import make_config

    cfg = make_config(
        None, model=lambda: nn.Sequential(nn.Flatten(), nn.Linear(40, 10)), overrides=TINY)
    assert cfg.model.name.startswith("python:")


def test_entry_points_are_listed_and_resolved(monkeypatch, capsys):
    from stabilitylab.core import registry as core_registry

    def fake(group):
        return {"stabilitylab.models": {"ln-mlp": "slab_plugin_mod:ln_mlp"},
                "stabilitylab.datasets": {"blobs": "slab_plugin_mod:blobs"}}.get(group, {})

    monkeypatch.setattr(core_registry, "entry_points", fake)
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert "ln-mlp" in text and "slab_plugin_mod:ln_mlp" in text and "conv1d" in text
    assert main(["datasets"]) == 0
    text = capsys.readouterr().out
    assert "blobs" in text and "mnist1d" in text
    cfg = load_config(None, [*TINY, "model.name='ln-mlp'", "data.name='blobs'",
                             "training.batch_size=20"])
    assert cfg.model.name == "ln-mlp"


def test_a_plugin_dataset_is_loaded_once_and_one_that_states_its_sizes_not_at_all(plugin_module):
    from stabilitylab.config import validate
    from stabilitylab.data import load_dataset

    mod = __import__(plugin_module)
    sets = [*TINY, "training.batch_size=20", "model.name='slab_plugin_mod:gn_conv'"]
    cfg = load_config(None, [*sets, "data.name='slab_plugin_mod:counted'"])
    validate(cfg)
    ds = load_dataset(cfg.data)
    assert mod.CALLS["counted"] == 1 and ds.train_size == 60 and ds.num_classes == 2
    cfg = load_config(None, [*sets, "data.name='slab_plugin_mod:stated'"])
    r = validate(cfg)
    assert mod.CALLS["stated"] == 0 and r.iterations_per_epoch == 60 // 20  # sizes, no load
    assert load_dataset(cfg.data).input_shape == (1, 4, 4) and mod.CALLS["stated"] == 1


@pytest.mark.parametrize("name,reason", [
    ("branchy", r"module '<root>' \(Branchy\): data-dependent Python control flow"),
    ("counter", r"module '<root>' \(Counter\) updates buffer 'seen' in place"),
    ("nonzero", r"module '<root>' \(Nonzero\): an operation vmap does not support"),
    ("scaled", r"parameter .*scale.* no initialization rule|does not know how to initialize"),
])
def test_models_the_batched_engine_cannot_run_are_refused_at_validation(name, reason):
    with pytest.raises(ConfigError, match=reason) as info:
        load_config(None, [*TINY, f"model.name='slab_plugin_mod:{name}'"])
    assert "\n" not in str(info.value) and f"slab_plugin_mod:{name}" in str(info.value)


@pytest.mark.parametrize("sets,match", [
    (["model.name='no_such_mod_xyz:f'"], "cannot import module 'no_such_mod_xyz'"),
    (["model.name='slab_plugin_mod:missing'"], "has no 'missing'"),
    (["model.name='slab_plugin_mod:ln_mlp'", "model.options.depth=3"],
     "takes no option 'depth'; its options: width"),
    (["data.name='slab_plugin_mod:blobs'", "data.options.colour=1"], "takes no option 'colour'"),
    (["data.options.n=1"], "dataset mnist1d takes no options"),
    (["model.name='nonsense'"], "unknown model 'nonsense'"),
])
def test_bad_plugin_names_and_options_are_one_line_errors(sets, match):
    with pytest.raises(ConfigError, match=match) as info:
        load_config(None, [*TINY, *sets])
    assert "\n" not in str(info.value)


def test_shipped_model_options_keep_their_study_ids():
    # model.channels=4 (the old flat field) and model.options.channels=4 are one study,
    # with the id the flat field always had: the hash of {"model.channels": 4}.
    import hashlib
    import json

    a = load_config(None, ["model.channels=4"])
    b = load_config(None, ["model.options.channels=4"])
    expected = hashlib.sha256(json.dumps({"model.channels": 4}, sort_keys=True,
                                         separators=(",", ":")).encode()).hexdigest()[:12]
    assert study_id(a) == study_id(b) == expected
    assert study_id(load_config(None, ["model.options.channels=25"])) == study_id(load_config())
    assert load_config(None, ["model.hidden=[5]"]).model.options == {}  # conv1d ignores it


def test_softmax_regression_is_expressible():
    cfg = load_config(None, ["model.name='mlp'", "model.hidden=[]"])
    from stabilitylab.models import build_model

    m = build_model(cfg.model, (1, 40), 10, device="meta")
    assert len(m.hidden) == 0 and m.fc.in_features == 40
