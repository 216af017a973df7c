"""The optimizer registry: every entry is tested against its torch reference, config
validation reads it, each is one self-registering file, and a registration is all the
engine needs."""

import pytest
import torch
from engine_helpers import OPTIMIZER_CASES, data, tiny_mlp  # noqa: F401 (fixture)
from test_engine import resolved_for, run_both

from stabilitylab.core.errors import ConfigError
from stabilitylab.study.resolve import load_study
from stabilitylab.train import optim
from stabilitylab.train.reference import make_torch_optimizer


def test_every_table_entry_has_an_engine_case():
    """test_engine and test_compiled compare each OPTIMIZER_CASES entry with torch.optim."""
    cased = {o.split("=")[1].strip("'") for case in OPTIMIZER_CASES for o in case
             if o.startswith("training.optimizer=")}
    assert cased == set(optim.OPTIMIZERS)


@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_reference_is_the_torch_class(name):
    resolved = resolved_for(f"training.optimizer='{name}'")
    opt = make_torch_optimizer(tiny_mlp(), resolved.config.training)
    expected = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
                "radam": torch.optim.RAdam}[name]
    assert type(opt) is expected
    assert opt.defaults["lr"] == resolved.config.training.lr


def test_unknown_optimizer_names_the_table():
    with pytest.raises(ConfigError) as err:
        load_study(None, ["training.optimizer='lion'"])
    assert "\n" not in str(err.value)
    assert str(err.value).endswith("choose from " + ", ".join(optim.OPTIMIZERS))


def test_state_names_come_from_the_table():
    assert optim.state_names(resolved_for("training.optimizer='sgd'").config.training) == (
        "momentum",)
    assert optim.state_names(resolved_for("training.momentum=0.0").config.training) == ()
    assert optim.state_names(resolved_for("training.optimizer='radam'", "training.lookahead=true")
                             .config.training) == ("exp_avg", "exp_avg_sq", "slow")


def test_one_file_per_optimizer_registers_itself():
    """Each module of stabilitylab.train.optimizers (but base) registers the optimizer it is
    named after, and the package imports every module (adding a file adds an optimizer)."""
    import pkgutil

    from stabilitylab.train import optimizers

    files = {m.name for m in pkgutil.iter_modules(optimizers.__path__)} - {"base"}
    assert files == set(optim.OPTIMIZERS)
    for name, entry in optim.OPTIMIZERS.items():
        assert entry.name == name
        assert entry.update.__module__ == f"stabilitylab.train.optimizers.{name}"


def test_a_registered_optimizer_trains_on_the_eager_path(data, monkeypatch):  # noqa: F811
    """A registration is all the engine needs: a new name with SGD's rule and torch
    reference passes config validation and the eager engine reproduces torch.optim.SGD."""
    import dataclasses

    entry = dataclasses.replace(optim.OPTIMIZERS["sgd"], name="heavyball")
    monkeypatch.delitem(optim.OPTIMIZERS, "heavyball", raising=False)
    optim.register(entry)
    try:
        resolved = resolved_for("training.optimizer='heavyball'", "training.lr=0.01",
                                "training.weight_decay=0.001", "training.compile='off'")
        _, result, refs = run_both(tiny_mlp(), data, resolved, seeds=[3, 4])
    finally:
        optim.OPTIMIZERS.pop("heavyball", None)
    for r, ref in enumerate(refs):
        for n, p in ref.named_parameters():
            torch.testing.assert_close(result.params[n][r], p.detach(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="already registered"):
        optim.register(optim.OPTIMIZERS["sgd"])


def test_the_report_lists_the_fields_an_optimizer_declares(monkeypatch):
    """report/document.py knows no optimizer: it shows the training.* fields the table's
    entry declares (Optimizer.fields), for the optimizer the study uses."""
    import dataclasses

    from stabilitylab.config import config_to_dict
    from stabilitylab.report.tables import config_rows

    def keys(*sets):
        return {r["key"] for r in config_rows(config_to_dict(load_study(None, list(sets)).config))}

    sgd, adam = keys(), keys("training.optimizer='adam'")
    assert {"training.momentum", "training.nesterov"} <= sgd and "training.beta1" not in sgd
    assert {"training.beta1", "training.beta2", "training.eps"} <= adam
    assert "training.momentum" not in adam
    monkeypatch.setitem(optim.OPTIMIZERS, "sgd",
                        dataclasses.replace(optim.OPTIMIZERS["sgd"], fields=("momentum", "eps")))
    now = keys()
    assert {"training.momentum", "training.eps"} <= now and "training.beta1" not in now
