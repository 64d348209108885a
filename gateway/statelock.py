"""One owner of a state directory at a time: the daemon, or an offline ``xbgw keys`` verb.

The ledger itself would let two processes write (SQLite serialises them), but the daemon
keeps state in memory -- the active key versions, the working set of transfers -- that an
offline change behind its back would make stale. So the daemon holds an exclusive ``flock``
on ``<state_dir>/xbgw.lock`` while it runs, and an offline verb takes the same lock or refuses.
The lock dies with its process (kill -9 included): there is never a stale lock to remove.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from gateway.errors import StateLockedError, StorageError

LOCK_NAME = "xbgw.lock"


class StateLock:
    """An exclusive lock on a state directory; the holder's pid is written in the file."""

    def __init__(self, state_dir: Path, holder: str) -> None:
        self.path = state_dir / LOCK_NAME
        self.holder = holder
        self._fd: int | None = None

    def acquire(self) -> StateLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StorageError.from_exception(exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 200, 0).decode("ascii", "replace").strip() or "another process"
            os.close(fd)
            raise StateLockedError(
                f"the state directory {self.path.parent} is in use by {other}; stop it first "
                "(systemctl stop xbgw), or talk to the running daemon through its socket"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.holder} (pid {os.getpid()})\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> StateLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
