"""Device resolution: ``study.device`` / ``--device`` (auto, cpu, cuda) to a torch device."""

from __future__ import annotations

from stabilitylab.core.errors import ConfigError


def resolve_device(name: str):
    """The ``torch.device`` for ``name``; ConfigError (one line) for cuda without a GPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("study.device: cuda requested but torch sees no CUDA device")
    return torch.device(name)
