"""The optimizer table: every entry is tested against its torch reference, config validation
reads it, and an entry with only a fused rule trains on the eager path too."""

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


@pytest.mark.parametrize("case", [["training.optimizer='adam'", "training.weight_decay=0.001"],
                                  ["training.optimizer='radam'"]])
def test_entry_without_an_eager_rule_matches_torch(case, data, monkeypatch):  # noqa: F811
    """A new optimizer needs only its fused rule: the eager path then applies it with a per-step
    row of step_scalars, and still matches torch.optim."""
    name = case[0].split("=")[1].strip("'")
    entry = optim.OPTIMIZERS[name]
    monkeypatch.setitem(optim.OPTIMIZERS, name, optim.Optimizer(
        entry.state, entry.fused, entry.reference, eager=None, scalars=entry.scalars))
    resolved = resolved_for(*case, "training.lr=0.01", "training.compile='off'")
    _, result, refs = run_both(tiny_mlp(), data, resolved, seeds=[3, 4])
    for r, ref in enumerate(refs):
        for n, p in ref.named_parameters():
            torch.testing.assert_close(result.params[n][r], p.detach(), rtol=1e-4, atol=1e-5)


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
