"""Replacing a local store's ``analysis`` group so that an interruption never loses it.

``zarr``'s ``mode="w"`` deletes the old group before it writes the new one, so a re-analyze
killed (SIGKILL, Ctrl-C, a full disk) in between lost the previous analysis. Here the new
analysis is written whole beside the old one, then swapped in by renames:

1. write ``.analysis-new-<token>`` (a complete group, its metadata consolidated);
2. rename ``analysis`` -> ``.analysis-old-<token>``;
3. rename ``.analysis-new-<token>`` -> ``analysis``;
4. delete ``.analysis-old-<token>``.

A rename within one folder is atomic (POSIX ``rename(2)``), so at every moment either
``analysis`` is a complete group, or (only between steps 2 and 3) it is absent and
``.analysis-old-*`` is the complete previous one: :func:`readable` then names that, so the
previous analysis still opens with the same values. Whatever an interruption leaves is
reported by ``validate`` (:func:`leftovers`) and put right by the next ``analyze``
(:func:`recover`), which holds the analysis lock (:mod:`stabilitylab.store.lock`) while it
does so. Object stores have no atomic rename: there the group is replaced in place.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

LIVE = "analysis"
NEW_PREFIX = ".analysis-new-"
OLD_PREFIX = ".analysis-old-"


def _complete(path: Path) -> bool:
    """A group written whole: its consolidated ``zarr.json`` is the last file xarray writes."""
    return (path / "zarr.json").is_file()


def _named(root: Path, prefix: str) -> list[Path]:
    try:
        found = [p for p in root.iterdir() if p.name.startswith(prefix) and p.is_dir()]
    except OSError:
        return []
    return sorted(found, key=lambda p: p.stat().st_mtime)


def readable(root: Path) -> str:
    """The group name holding the latest complete analysis: ``analysis``, or the previous
    one an analyze interrupted between its two renames left as ``.analysis-old-*``."""
    if _complete(root / LIVE):
        return LIVE
    old = [p for p in _named(root, OLD_PREFIX) if _complete(p)]
    if old:
        log.warning("%s: the last analyze was interrupted; reading the previous analysis from %s "
                    "(the next analyze puts it right)", root, old[-1].name)
        return old[-1].name
    return LIVE


def leftovers(root: Path) -> list[str]:
    """One line per thing an interrupted analyze left behind (empty when none)."""
    lines = []
    live = root / LIVE
    if live.is_dir() and not _complete(live):
        lines.append(f"the '{LIVE}' group is incomplete (no zarr.json: a write by an older "
                     "version was interrupted); analyze again to replace it")
    for p in _named(root, NEW_PREFIX):
        lines.append(f"leftover {p.name}: an unfinished analysis write (the previous analysis "
                     "is intact); the next analyze removes it")
    for p in _named(root, OLD_PREFIX):
        if not _complete(live):
            lines.append(f"the '{LIVE}' group is missing: an analyze was interrupted while "
                         f"swapping; the previous analysis is read from {p.name} and the next "
                         "analyze restores it")
        else:
            lines.append(f"leftover {p.name}: a replaced analysis not yet deleted; the next "
                         "analyze removes it")
    return lines


def recover(root: Path) -> None:
    """Put right what an interrupted analyze left (call with the analysis lock held):
    restore a swapped-out previous analysis, delete unfinished and replaced ones."""
    live = root / LIVE
    old = [p for p in _named(root, OLD_PREFIX) if _complete(p)]
    if not _complete(live) and old:
        if live.exists():
            shutil.rmtree(live)
        os.rename(old[-1], live)
        log.info("%s: restored the previous analysis from %s", root, old[-1].name)
    for p in _named(root, NEW_PREFIX) + _named(root, OLD_PREFIX):
        shutil.rmtree(p, ignore_errors=True)


def replace(root: Path, write: Callable[[str], None]) -> None:
    """Replace ``root/analysis`` by what ``write(group_name)`` writes into a new group of
    the store (call with the analysis lock held). An exception (also KeyboardInterrupt)
    while writing removes the new group and leaves the previous analysis as it was."""
    recover(root)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    new, old, live = root / (NEW_PREFIX + token), root / (OLD_PREFIX + token), root / LIVE
    try:
        write(new.name)
    except BaseException:
        from stabilitylab.store.schema import settle_zarr_tasks

        settle_zarr_tasks()  # zarr's I/O thread may still be writing into it (Ctrl-C)
        shutil.rmtree(new, ignore_errors=True)
        raise
    if live.exists():
        os.rename(live, old)
    os.rename(new, live)
    shutil.rmtree(old, ignore_errors=True)
