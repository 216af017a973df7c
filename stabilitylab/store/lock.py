"""The single-writer lock of a local study store.

``record`` (and ``record --resume``) hold an advisory lock on ``<store>/.stabilitylab.lock``
while they write: an exclusive ``flock`` on that file, which records the owner's pid, host
and start time as JSON. The kernel drops the lock when its process dies (also on
SIGKILL), so a lock file left behind by a dead writer is *stale* by construction: the
next writer acquires it and takes it over. A second live writer gets one line: "store
is being written by pid N on HOST since T".

Where the file system has no ``flock`` (ENOLCK, EOPNOTSUPP), the file's content decides:
a lock of a pid that no longer exists on this host is taken over, anything else refuses.

Object stores (``s3://`` and other fsspec URLs) have no such lock; see docs/store-schema.md.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import socket
from pathlib import Path

from stabilitylab.core.errors import StoreError

log = logging.getLogger(__name__)

LOCK_NAME = ".stabilitylab.lock"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def read_owner(store: Path) -> dict | None:
    """The owner recorded in a store's lock file, or None (no file, or unreadable)."""
    try:
        owner = json.loads((Path(store) / LOCK_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _describe(owner: dict | None) -> str:
    if not owner:
        return "another process"
    return f"pid {owner.get('pid', '?')} on {owner.get('host', '?')} since {owner.get('started', '?')}"


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError, TypeError):
        return True  # exists (another user's) or unreadable: assume alive
    return True


class WriterLock:
    """An acquired lock; :meth:`release` (idempotent) unlocks and removes the file."""

    def __init__(self, path: Path, fd: int, owner: dict, flocked: bool):
        self.path, self.fd, self.owner, self.flocked = path, fd, owner, flocked
        self.acquired_at = owner["acquired"]

    def release(self) -> None:
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            # only our own file: a writer that took over a stale lock has its own inode
            if os.fstat(self.fd).st_ino == os.stat(self.path).st_ino:
                os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = -1


def acquire(store: Path, where: str) -> WriterLock:
    """Take the writer lock of the local store folder ``store`` (which must exist)."""
    import time

    path = Path(store) / LOCK_NAME
    for _ in range(20):  # retried only when the file is replaced while we lock it
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:
            raise StoreError(f"cannot lock store at {where}: {e.strerror or e}") from None
        flocked = True
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            os.close(fd)
            raise StoreError(f"store is being written by {_describe(read_owner(store))}; "
                             f"wait for it to finish (or stop it), then use --resume") from None
        except (ImportError, OSError) as e:
            if isinstance(e, OSError) and e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise StoreError(f"cannot lock store at {where}: {e.strerror or e}") from None
            flocked = False
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except OSError:
            same = False
        if not same:  # released (and unlinked) between our open and our flock: try again
            os.close(fd)
            time.sleep(0.01)
            continue
        previous = read_owner(store)
        if not flocked and previous and previous.get("pid") != os.getpid() and (
                previous.get("host") != socket.gethostname() or _pid_alive(previous.get("pid"))):
            os.close(fd)
            raise StoreError(f"store is being written by {_describe(previous)} (no file "
                             f"locking here: delete {path} if that process is gone)")
        if previous:
            log.info("taking over the stale lock of %s (that process is gone)", _describe(previous))
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(),
                 "acquired": time.time()}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(owner).encode(), 0)
        except OSError as e:
            os.close(fd)
            raise StoreError(f"cannot lock store at {where}: {e.strerror or e}") from None
        return WriterLock(path, fd, owner, flocked)
    raise StoreError(f"cannot lock store at {where}: the lock file keeps changing")


def held_by_other(store: Path) -> dict | None:
    """The owner of a live lock on ``store`` held by another process, else None."""
    path = Path(store) / LOCK_NAME
    if not path.is_file():
        return None
    try:
        import fcntl

        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except (ImportError, OSError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return read_owner(store) or {}
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def describe_owner(owner: dict | None) -> str:
    return _describe(owner)
