"""The ledger's connection discipline, shared by every part of the ledger: one database
(``gateway.store``: a SQLite file, or PostgreSQL shared by several nodes), write transactions
with or without the flush at commit, and database failures turned into
:class:`~gateway.errors.StorageError` (``Ledger`` is composed of this base and the parts in
``ledger_keys`` and ``ledger_audit``).
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from typing import Any

from gateway.store import Database, Tx
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

    def _tx(self, durable: bool = True) -> AbstractContextManager[Tx]:
        """One write transaction; ``durable=False`` skips the flush at commit.

        In SQLite's WAL mode a commit without fsync survives a process crash but perhaps not
        a power loss -- until the next durable commit, which fsyncs the log with everything
        before it (PostgreSQL: ``synchronous_commit = off``, the same promise). Only writes
        whose loss is harmless use it: a resume point that goes back is safe (the spool is
        cut back to it); a lost offer is simply made again.
        """
        return self._store.transaction(durable)

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
