"""Study configuration: dataclasses, TOML presets, overrides, validation, ids."""

from stabilitylab.config.loader import (
    available_presets,
    config_from_dict,
    config_to_dict,
    load_config,
    non_default_settings,
    study_id,
)
from stabilitylab.config.schema import (
    Config,
    DataConfig,
    ModelConfig,
    PruningConfig,
    StudyConfig,
    TrainingConfig,
)
from stabilitylab.config.steps import format_steps, parse_steps
from stabilitylab.config.validate import Resolved, resolve, validate

__all__ = [
    "Config",
    "DataConfig",
    "ModelConfig",
    "PruningConfig",
    "Resolved",
    "StudyConfig",
    "TrainingConfig",
    "available_presets",
    "config_from_dict",
    "config_to_dict",
    "format_steps",
    "load_config",
    "non_default_settings",
    "parse_steps",
    "resolve",
    "study_id",
    "validate",
]
