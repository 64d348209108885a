"""The ledger's connection discipline, shared by every part of the ledger: one database
(``gateway.store``: a SQLite file, or PostgreSQL shared by several nodes), write transactions
with or without the flush at commit, and database failures turned into
:class:`~gateway.errors.StorageError` (``Ledger`` is composed of this base and the parts in
``ledger_keys`` and ``ledger_audit``).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from gateway.errors import StorageError
from gateway.store import Database, SectionBusyError, Tx, serialise
from gateway.store.sqlite import SqliteDatabase, storage_errors

__all__ = ["LedgerBase", "storage_errors"]


class LedgerBase:
    """What every part of the ledger uses: the database and its transactions."""

    _store: Database

    @property
    def _db(self) -> sqlite3.Connection:
        """The SQLite connection itself, for what only SQLite has (PRAGMAs in tests, the
        backup API); a ledger on PostgreSQL has none."""
        if not isinstance(self._store, SqliteDatabase):
            raise TypeError(f"the ledger at {self._store.where} is not a SQLite file")
        return self._store.connection

    @property
    def shared(self) -> bool:
        """Several nodes may write this database (PostgreSQL): what one node keeps in memory
        of it can go stale behind its back."""
        return self._store.dialect.shared

    #: The group commit of a SQLite ledger file (made at its first durable transaction).
    _group: GroupSync | None = None

    def _tx(self, durable: bool = True) -> AbstractContextManager[Tx]:
        """One write transaction; ``durable=False`` skips the flush at commit.

        In SQLite's WAL mode a commit without fsync survives a process crash but perhaps not
        a power loss -- until the next durable commit, which fsyncs the log with everything
        before it (PostgreSQL: ``synchronous_commit = off``, the same promise). Only writes
        whose loss is harmless use it: a resume point that goes back is safe (the spool is
        cut back to it); a lost offer is simply made again.

        A durable transaction on a SQLite file is a group commit (:class:`GroupSync`): it
        commits without the fsync, under the ledger's lock as always, then waits -- outside
        the lock -- until an fsync of the log that began after its commit has ended. One
        fsync serves every transaction that committed while the previous one ran, and the
        other transactions go on meanwhile; the caller returns only once its commit is on
        disk, as before. What changes: another thread may read the commit during that fsync
        (a fraction of a millisecond) -- nothing here answers a partner or signs on such a
        read: a receipt goes out, a checkpoint is signed and a segment leaves only after the
        durable commit that records it has returned. PostgreSQL groups concurrent commits in
        the server itself (``commit_delay``): its durable transactions stay as they are.
        """
        store = self._store
        if not durable or not isinstance(store, SqliteDatabase) or store.path is None:
            return store.transaction(durable)
        if self._group is None:
            self._group = GroupSync(Path(f"{store.path}-wal"))
        return self._grouped(store, self._group)

    @staticmethod
    @contextmanager
    def _grouped(store: SqliteDatabase, group: GroupSync) -> Iterator[Tx]:
        with store.transaction(durable=False) as db:
            yield db
        group.sync()  # committed; durable once this returns

    @contextmanager
    def _section_locked(
        self, section: str, wait_seconds: float, refused: Callable[[], Exception]
    ) -> Iterator[None]:
        """Hold ``section``'s database lock for the block: one node at a time runs it.

        On PostgreSQL a transaction-scoped advisory lock, held by a transaction of its own
        on one pooled connection (the block's reads and writes go through their own
        transactions, which commit on their own); not granted within ``wait_seconds``:
        ``refused()`` is raised. On SQLite nothing: one node owns the file. Callers take
        their in-process lock first, so a node waits with one connection at the most. Not
        reentrant across connections: never nest it."""
        if not self._store.dialect.shared:
            yield
            return
        with self._tx(durable=False) as db:  # it writes nothing: nothing to flush
            try:
                serialise(db, section, wait_seconds)
            except SectionBusyError:
                raise refused() from None
            yield

    def _reading(self) -> AbstractContextManager[Tx]:
        """A few reads that belong together (no writes)."""
        return self._store.reading()

    def _one(self, sql: str, args: tuple[object, ...]) -> Any:
        return self._store.one(sql, args)

    def _all(self, sql: str, args: tuple[object, ...] = ()) -> list[Any]:
        return self._store.all(sql, args)

    def read_snapshot(self) -> AbstractContextManager[Any]:
        """The connection inside one read transaction, for a reader that must see one
        committed state across many queries (``xbgw audit verify``); readers neither block
        the daemon nor wait for it. Only reads may be made through it (a ``Tx``; typed
        loosely for ``gateway.audit.verify``, which reads it as a ``sqlite3.Connection``)."""
        return self._store.snapshot()


class GroupSync:
    """One fsync of a SQLite write-ahead log for every commit made while the last one ran.

    Each caller has committed (its frames are written to the log) before it calls
    :meth:`sync`, which numbers it. A caller that finds no fsync running becomes the leader:
    it fsyncs the log for every number handed out so far, then wakes everyone those cover;
    callers that come while it runs wait for the next round, which one of them leads. An
    fsync that began after a commit flushes that commit's frames (any descriptor of the file
    will do), which is exactly what ``synchronous=FULL`` does at each commit itself.

    A failed fsync is every covered caller's :class:`StorageError`: their commits may not be
    on disk (and Linux may not report the same failure twice), so none is told it is.
    """

    def __init__(self, wal: Path) -> None:
        self._wal = wal
        self._cond = threading.Condition()
        self._issued = 0  # numbers handed out to committed callers
        self._synced = 0  # every number up to this is durable
        self._running = False
        #: (from, to, why) of every round whose fsync failed: kept, not overwritten by a later
        #: round, so that a caller woken late still finds its own failure (there are few).
        self._failed: list[tuple[int, int, StorageError]] = []
        #: fsyncs made, and callers served (for tests and the benchmark's figures).
        self.fsyncs = 0
        self.commits = 0

    def sync(self) -> None:
        """Return once a commit made before this call is durable; StorageError if not."""
        with self._cond:
            self._issued += 1
            self.commits += 1
            ticket = self._issued
            while self._synced < ticket:
                if not self._running:
                    self._lead()
                    continue
                self._cond.wait()
            for first, last, why in self._failed:
                if first <= ticket <= last:
                    raise why

    def _lead(self) -> None:
        """Called holding the condition: fsync for every number issued so far."""
        start, upto = self._synced + 1, self._issued
        self._running = True
        self._cond.release()
        error: StorageError | None = None
        try:
            self._fsync()
        except StorageError as exc:
            error = exc
        finally:
            self._cond.acquire()
            self._running = False
            self.fsyncs += 1
            if error is not None:
                self._failed.append((start, upto, error))
            self._synced = max(self._synced, upto)
            self._cond.notify_all()

    def _fsync(self) -> None:
        """The log opened anew each time: SQLite may remove it when its last connection
        closes and make another later."""
        try:
            fd = os.open(self._wal, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageError.from_exception(exc, self._wal) from None
