"""Config: presets, overrides, step syntax, one-line errors, stable study ids."""

import dataclasses

import pytest

from stabilitylab.config import (
    Config,
    available_presets,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_steps,
    study_id,
    validate,
)
from stabilitylab.core.errors import ConfigError


def test_presets_load_and_validate():
    names = available_presets()
    assert {"mnist1d_default", "lenet_300_100_mnist", "resnet20_cifar10", "vgg16_cifar10"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert validate(cfg).total_steps > 0


def test_default_preset_equals_dataclass_defaults():
    assert load_config() == Config()


@pytest.mark.parametrize("text,expected", [
    ("2000it", 2000), ("2ep", 80), ("1ep50it", 90), ("0it", 0), ("7", 7), (12, 12),
])
def test_step_syntax(text, expected):
    assert parse_steps(text, 40) == expected


@pytest.mark.parametrize("text", ["", "ep", "2 epochs", "-3it", "1it2ep", "2.5ep", True])
def test_bad_step_strings(text):
    with pytest.raises(ConfigError) as err:
        parse_steps(text, 40, field="training.steps")
    assert "training.steps" in str(err.value)


def test_epoch_steps_resolve_with_dataset_size():
    r = validate(load_config(None, ["training.steps='2ep'", "study.rewinds=['0it','1ep']"]))
    assert r.total_steps == 2 * (4000 // 100) and r.rewinds == (0, 40)


def test_overrides_are_type_checked():
    cfg = load_config(None, ["training.lr=0.05", "model.name='mlp'", "model.hidden=[64, 32]",
                             "study.replicas=4"])
    assert cfg.training.lr == 0.05 and cfg.model.options["hidden"] == [64, 32]
    assert cfg.study.replicas == 4
    with pytest.raises(ConfigError, match="training.lr: expected a number"):
        load_config(None, ["training.lr=fast"])
    with pytest.raises(ConfigError, match="study.replicas: expected an integer"):
        load_config(None, ["study.replicas=2.5"])


@pytest.mark.parametrize("override,field", [
    ("model.name='resnet7'", "model.name"),
    ("pruning.fraction=1.5", "pruning.fraction"),
    ("pruning.fraction=0", "pruning.fraction"),
    ("study.rewinds=['0it','3000it']", "study.rewinds"),
    ("study.rewinds=['0it','5bananas']", "study.rewinds[1]"),
    ("training.steps='soon'", "training.steps"),
    ("training.optimizer='adagrad'", "training.optimizer"),
    ("study.replicas=1", "study.replicas"),
    ("data.name='imagenet'", "data.name"),
    ("training.nope=1", "training.nope"),
    ("nosection.key=1", "nosection"),
    ("training.batch_size=100000", "training.batch_size"),
    ("study.record='sometimes'", "study.record"),
    ("study.controls=['magic']", "study.controls"),
])
def test_each_bad_value_gives_one_line_naming_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert field in message
    assert "\n" not in message


def test_malformed_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[training\nlr = 0.1")
    with pytest.raises(ConfigError, match="malformed TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("no_such_preset")


def test_toml_file_round_trip(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('[training]\nlr = 0.05\nsteps = "200it"\n[study]\nrewinds = ["0it", "50it"]\n')
    cfg = load_config(f)
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_a_study_from_a_config_file_is_named_after_the_file(tmp_path):
    mine = tmp_path / "mine.toml"
    mine.write_text('[model]\nname = "mlp"\n')
    cfg = load_config(mine)
    assert cfg.study.name == "mine" and cfg.model.name == "mlp"
    assert load_config(mine, ["study.name='other'"]).study.name == "other"
    assert study_id(cfg) == study_id(load_config(None, ["model.name='mlp'"]))  # a label only
    named = tmp_path / "named.toml"
    named.write_text('[study]\nname = "kept"\n')
    assert load_config(named).study.name == "kept"
    assert load_config("mnist1d_default").study.name == "mnist1d-default"  # presets: theirs


def test_study_id_is_stable_and_pinned():
    # Pinned: changing these means every existing store path changes. Update deliberately.
    assert study_id(Config()) == "44136fa355b3"
    assert study_id(load_config(None, ["training.lr=0.05"])) == "74ab1c048aac"
    assert study_id(load_config(None, ["study.name='x'"])) == study_id(Config())


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().training.lr = 1.0  # type: ignore[misc]


def test_record_schedule_includes_rewinds_and_ends():
    r = validate(load_config(None, ["study.record='every:1000'"]))
    assert {0, r.total_steps, *r.rewinds} <= set(r.record_steps)
    r = validate(Config())
    assert len(r.record_steps) < 250 and r.record_steps == tuple(sorted(set(r.record_steps)))
