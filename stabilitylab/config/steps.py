"""Step syntax: the one place where ``2000it``, ``2ep`` and ``1ep50it`` are parsed.

A step string is ``[<E>ep][<I>it]`` with at least one part, or a bare integer
(iterations). ``ep`` needs the number of iterations per epoch of the dataset and
batch size at hand.
"""

from __future__ import annotations

import re

from stabilitylab.core.errors import ConfigError

# Matched against the stripped text; ASCII digits only, and one \s* between tokens, so
# no input can make the match backtrack more than linearly.
_STEP_RE = re.compile(r"(?:(?P<ep>[0-9]+)\s*ep)?\s*(?:(?P<it>[0-9]+)\s*it)?")
_MAX_LEN = 64  # longer step strings are typos (and would hit int()'s digit limit)


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
    stripped = text.strip()
    if len(stripped) > _MAX_LEN:
        raise ConfigError(f"{field}: step string too long ({len(stripped)} characters)")
    if stripped.isascii() and stripped.isdigit():
        return int(stripped)
    match = _STEP_RE.fullmatch(stripped)
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
