"""The documented error types. Anything the user can cause raises one of these.

Each carries a one-line message meant to be printed as-is by the CLI.
"""


class StabilityLabError(Exception):
    """Base class of every error stabilitylab raises on bad input or bad state."""


class ConfigError(StabilityLabError, ValueError):
    """An invalid configuration value, override, preset or TOML file."""


class DataMissingError(StabilityLabError, FileNotFoundError):
    """A dataset that must be present on disk is not."""


class StoreError(StabilityLabError):
    """A store that is not ours, is damaged, or clashes with the requested study."""


class CheckpointError(StabilityLabError):
    """A checkpoint file (compare, import) that is missing, unreadable, unsafe, or does not
    fit the model."""


class ResourceError(StabilityLabError):
    """A study that does not fit the machine or the user's caps."""
