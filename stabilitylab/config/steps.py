"""Step syntax: the one place where ``2000it``, ``2ep`` and ``1ep50it`` are parsed.

A step string is ``[<E>ep][<I>it]`` with at least one part, or a bare integer
(iterations). ``ep`` needs the number of iterations per epoch of the dataset and
batch size at hand.
"""

from __future__ import annotations

import re

from stabilitylab.errors import ConfigError

_STEP_RE = re.compile(r"^\s*(?:(?P<ep>\d+)\s*ep)?\s*(?:(?P<it>\d+)\s*it)?\s*$")


def parse_steps(text: str | int, iterations_per_epoch: int, *, field: str = "steps") -> int:
    """Turn a step string into a number of iterations.

    Parameters
    ----------
    text : str or int
        ``"2000it"``, ``"2ep"``, ``"1ep50it"`` or a non-negative integer.
    iterations_per_epoch : int
        Iterations in one epoch (``train_size // batch_size``).
    field : str
        Config field name, used in the error message.
    """
    if isinstance(text, bool):
        raise ConfigError(f"{field}: expected a step like '2000it', '2ep' or '1ep50it', got {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise ConfigError(f"{field}: steps must be >= 0, got {text}")
        return text
    if not isinstance(text, str):
        raise ConfigError(f"{field}: expected a step like '2000it', '2ep' or '1ep50it', got {text!r}")
    match = _STEP_RE.match(text)
    if text.strip().isdigit():
        return int(text)
    if not match or (match.group("ep") is None and match.group("it") is None):
        raise ConfigError(
            f"{field}: bad step string {text!r}; use '<N>it', '<N>ep' or '<E>ep<I>it'"
        )
    epochs = int(match.group("ep") or 0)
    iterations = int(match.group("it") or 0)
    return epochs * iterations_per_epoch + iterations


def format_steps(iterations: int) -> str:
    """The canonical string for a number of iterations (``"500it"``)."""
    return f"{int(iterations)}it"
