"""The embedded ledger database: one SQLite file, one connection under one lock.

Why one connection: SQLite serialises writers anyway, and the gateway makes a few writes per
second per transfer. WAL mode; each transaction commits at the ``synchronous`` level it
needs: ``FULL`` (fsync at commit), or ``NORMAL`` for one that may lose its last commit to a
power failure (``durable=False``). The level is set only when it changes, not around every
transaction: the ledger commits all of its transactions at ``NORMAL`` and makes them durable
with one fsync of the log per group (``ledger_base.GroupSync``), so a daemon sets it once,
not in two PRAGMAs around each BEGIN ... COMMIT.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gateway.errors import StorageError
from gateway.store import SQLITE, ConstraintError, Dialect, UniqueViolationError

#: The result codes of a violated PRIMARY KEY or UNIQUE constraint (``sqlite_errorname``).
_UNIQUE = {"SQLITE_CONSTRAINT_PRIMARYKEY", "SQLITE_CONSTRAINT_UNIQUE"}


class SqliteDatabase:
    """A ledger file (``Database`` of ``gateway.store``)."""

    dialect: Dialect = SQLITE

    def __init__(self, connection: sqlite3.Connection, path: Path | None) -> None:
        connection.row_factory = sqlite3.Row
        self.connection = connection
        self.path = path
        self.where = str(path) if path is not None else "the ledger"
        self.lock = threading.Lock()
        self._synchronous: str | None = None  # the level set last; None: not set by us yet

    @classmethod
    def open(cls, path: Path) -> SqliteDatabase:
        """The file at ``path`` (created with its directory if absent), for reading and
        writing; a ``StorageError`` naming it if it cannot be opened."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=5000")
        except (OSError, sqlite3.Error) as exc:
            raise StorageError.from_exception(exc, path) from None
        database = cls(db, path)
        database._synchronous = "FULL"
        return database

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction; ``durable=False`` skips the fsync at commit.

        In WAL mode a commit without fsync survives a process crash but perhaps not a power
        loss -- until the next durable commit, which fsyncs the log with everything before it.
        """
        with self.lock, storage_errors(self.path):
            self._commit_at("FULL" if durable else "NORMAL")
            self.connection.execute("BEGIN IMMEDIATE")
            try:
                yield self.connection
                self.connection.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    @contextmanager
    def owned(self) -> Iterator[sqlite3.Connection]:
        """The connection itself, under the lock and at ``synchronous=FULL``, for code that
        runs its own transactions on it (the schema migration)."""
        with self.lock:
            with storage_errors(self.path):
                self._commit_at("FULL")
            yield self.connection

    def _commit_at(self, level: str) -> None:
        """Called holding the lock: commits from now on are made at ``level``."""
        if self._synchronous != level:
            self._synchronous = None  # unknown until the PRAGMA has run
            self.connection.execute(f"PRAGMA synchronous={level}")
            self._synchronous = level

    def _rollback(self) -> None:
        """Undo the open transaction -- if SQLite has not already: on SQLITE_FULL (and some
        I/O errors) it rolls back by itself, and a second ROLLBACK would raise "no
        transaction is active" in place of the reason that matters (the disk is full)."""
        if self.connection.in_transaction:
            self.connection.execute("ROLLBACK")

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        with self.lock, storage_errors(self.path):
            yield self.connection

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """WAL readers neither block the daemon nor wait for it."""
        with self.lock:
            try:
                self.connection.execute("BEGIN")
                try:
                    yield self.connection
                finally:
                    self.connection.execute("ROLLBACK")
            except sqlite3.Error as exc:
                raise StorageError(f"cannot read the ledger: {exc}") from None

    def one(self, sql: str, args: Sequence[object] = ()) -> Any:
        with self.lock, storage_errors(self.path):
            return self.connection.execute(sql, args).fetchone()

    def all(self, sql: str, args: Sequence[object] = ()) -> list[Any]:
        with self.lock, storage_errors(self.path):
            return self.connection.execute(sql, args).fetchall()

    def reachable(self) -> str | None:
        """The file is the node's own: if it fails, each call says why (never refused ahead)."""
        return None

    def close(self) -> None:
        with self.lock:
            self.connection.close()


@contextmanager
def storage_errors(path: Path | None = None) -> Iterator[None]:
    """The database failed: a StorageError the servicers map once -- a StorageFullError
    naming ``path`` when its file system is full; a violated constraint is the caller's
    logic: :class:`~gateway.store.UniqueViolationError` (a key taken) or
    :class:`~gateway.store.ConstraintError`."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        if exc.sqlite_errorname in _UNIQUE:
            raise UniqueViolationError(str(exc)) from exc
        raise ConstraintError(str(exc)) from exc
    except sqlite3.Error as exc:
        raise StorageError.from_exception(exc, path or "the ledger") from None
