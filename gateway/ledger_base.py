"""The ledger's connection discipline, shared by every part of the ledger: one connection
under one lock, write transactions with or without the fsync at commit, and database failures
turned into :class:`~gateway.errors.StorageError` (``Ledger`` is composed of this base and the
parts in ``ledger_keys`` and ``ledger_audit``).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway.errors import StorageError


class LedgerBase:
    """What every part of the ledger uses: the connection and its transactions."""

    _db: sqlite3.Connection
    _lock: threading.Lock
    #: The database file, named when its file system is full (None: "the ledger").
    _path: Path | None = None

    @contextmanager
    def _tx(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction; ``durable=False`` skips the fsync at commit.

        In WAL mode a commit without fsync survives a process crash but perhaps not a power
        loss -- until the next durable commit, which fsyncs the log with everything before
        it. Only writes whose loss is harmless use it: a resume point that goes back is safe
        (the spool is cut back to it); a lost offer is simply made again.
        """
        with self._lock, storage_errors(self._path):
            if not durable:
                self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    self._db.execute("COMMIT")
                except BaseException:
                    self._rollback()
                    raise
            finally:
                if not durable:
                    self._db.execute("PRAGMA synchronous=FULL")

    def _rollback(self) -> None:
        """Undo the open transaction -- if SQLite has not already: on SQLITE_FULL (and some
        I/O errors) it rolls back by itself, and a second ROLLBACK would raise "no
        transaction is active" in place of the reason that matters (the disk is full)."""
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _one(self, sql: str, args: tuple[object, ...]) -> sqlite3.Row | None:
        with self._lock, storage_errors(self._path):
            row: sqlite3.Row | None = self._db.execute(sql, args).fetchone()
            return row

    def _all(self, sql: str, args: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        with self._lock, storage_errors(self._path):
            return list(self._db.execute(sql, args).fetchall())

    @contextmanager
    def read_snapshot(self) -> Iterator[sqlite3.Connection]:
        """The connection inside one read transaction, for a reader that must see one
        committed state across many queries (``xbgw audit verify``); WAL readers neither
        block the daemon nor wait for it. Only reads may be made through it."""
        with self._lock:
            try:
                self._db.execute("BEGIN")
                try:
                    yield self._db
                finally:
                    self._db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                raise StorageError(f"cannot read the ledger: {exc}") from None


@contextmanager
def storage_errors(path: Path | None = None) -> Iterator[None]:
    """The database failed (not a constraint): a StorageError the servicers map once --
    a StorageFullError naming ``path`` when its file system is full."""
    try:
        yield
    except sqlite3.IntegrityError:
        raise
    except sqlite3.Error as exc:
        raise StorageError.from_exception(exc, path or "the ledger") from None
