"""Shared fixtures: one tiny recorded (and analyzed) study reused across test modules."""

import os
import shutil
from pathlib import Path

import pytest

import stabilitylab

# Tests keep datasets (the mnist1d cache) in the repository's gitignored datasets/cache, never
# in the user's ~/.cache; subprocesses (the CLI, Dask workers) inherit this.
os.environ["STABILITYLAB_DATA"] = str(Path(__file__).resolve().parents[1] / "datasets" / "cache")

TINY = [
    "training.steps='60it'", "study.rewinds=['0it','10it']", "study.replicas=2",
    "pruning.levels=2", "data.num_samples=500", "model.channels=4",
    "training.eval_every='30it'", "training.log_every='5it'", "study.record='every:5'",
]


#: A plugin module's source: ``images`` (40 train / 20 test 3×8×8 examples) and ``bn_net``
#: (conv, BatchNorm, linear); tests write it to a file and import it as a plugin.
BN_PLUGIN = (
    "import torch\n"
    "from torch import nn\n"
    "def images(cfg):\n"
    "    g = torch.Generator().manual_seed(0)\n"
    "    return (torch.randn(40, 3, 8, 8, generator=g), torch.arange(40) % 10,\n"
    "            torch.randn(20, 3, 8, 8, generator=g), torch.arange(20) % 10)\n"
    "def bn_net(cfg, input_shape, num_classes):\n"
    "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),\n"
    "                         nn.Flatten(), nn.Linear(4 * 36, num_classes))\n")


def tiny_config(*extra):
    return stabilitylab.load_config(None, TINY + list(extra))


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """A complete tiny study (read-only: copy it before changing it)."""
    out = tmp_path_factory.mktemp("study") / "tiny.zarr"
    stabilitylab.record_study(tiny_config(), str(out), progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_analyzed(tiny_study, tmp_path_factory):
    """The tiny study plus its analysis (a separate copy)."""
    from stabilitylab.analysis.run import analyze_store

    out = tmp_path_factory.mktemp("analyzed") / "tiny.zarr"
    shutil.copytree(tiny_study, out)
    result = analyze_store(str(out), progress=False, n_boot=200)
    return out, result
