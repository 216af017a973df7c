"""Study configuration: dataclasses, TOML presets, overrides and the config's own checks.

This layer checks syntax, types and ranges only and imports nothing above ``core``. A
config becomes a :class:`Study` (registry checks, iterations, run kinds, id) through
:func:`stabilitylab.study.resolve.resolve_study`, once per command.
"""

from stabilitylab.config.checks import check_config
from stabilitylab.config.loader import (
    available_presets,
    config_from_dict,
    config_to_dict,
    load_config,
)
from stabilitylab.config.schedule import Study
from stabilitylab.config.schema import (
    Config,
    DataConfig,
    ModelConfig,
    PruningConfig,
    StudyConfig,
    TrainingConfig,
)
from stabilitylab.config.steps import format_steps, parse_steps

__all__ = [
    "Config",
    "DataConfig",
    "ModelConfig",
    "PruningConfig",
    "Study",
    "StudyConfig",
    "TrainingConfig",
    "available_presets",
    "check_config",
    "config_from_dict",
    "config_to_dict",
    "format_steps",
    "load_config",
    "parse_steps",
]
