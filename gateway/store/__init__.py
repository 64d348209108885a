"""Where the ledger keeps its tables: one interface, two databases.

Why an interface: one node keeps its ledger in an embedded SQLite file (the default, and the
demo's); several nodes acting as one gateway share a PostgreSQL database, so that a passport
is spent once whichever node it reaches. The ledger (``gateway.ledger``) writes portable SQL
against :class:`Database`; what differs stays in the adapters:

* placeholders: the ledger writes ``?``; the PostgreSQL adapter turns them into ``%s``;
* types: the schema is written for SQLite (BLOB, INTEGER, WITHOUT ROWID) and translated
  for PostgreSQL (BYTEA, BIGINT) by :func:`gateway.store.postgres.translate_schema`;
* transactions: ``BEGIN IMMEDIATE`` and the fsync PRAGMA on SQLite, ``BEGIN`` and
  ``synchronous_commit`` on PostgreSQL; a section that must be serialised across nodes
  (the audit log's append) asks :func:`serialise`, a no-op on SQLite, whose writers are
  serialised already;
* errors: each adapter turns its driver's failures into :class:`~gateway.errors.StorageError`
  and a violated unique constraint into :class:`UniqueViolationError` at its edge, so that no
  driver exception leaves this package.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol


class ConstraintError(Exception):
    """A write broke a constraint of the schema: the caller's logic, never the database's
    failure (those are ``StorageError``)."""


class UniqueViolationError(ConstraintError):
    """A row with the same key exists: e.g. a passport already spent (its ``jti`` is the
    inbound row's key). Raised by the database itself, so two nodes cannot both win."""


class SectionBusyError(Exception):
    """A section's database lock was not granted within the wait asked
    (:func:`serialise` with ``wait_seconds``): another node holds it, or has for that long."""


class Row(Protocol):
    """A result row, by column name or position (``sqlite3.Row`` is one)."""

    def __getitem__(self, key: int | str, /) -> Any: ...


class Cursor(Protocol):
    """What an ``execute`` returns: its rows and how many rows it changed."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Tx(Protocol):
    """A connection inside one transaction (``sqlite3.Connection`` is one): ``?``
    placeholders, positional parameters."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor: ...


@dataclass(frozen=True)
class Dialect:
    """The few things the ledger must know of the database beneath it."""

    name: Literal["sqlite", "postgresql"]
    #: Whether several processes (nodes) may write at once: then sections that read before
    #: they write (the audit log's frontier) take a database lock (:func:`serialise`).
    shared: bool


SQLITE = Dialect("sqlite", shared=False)
POSTGRESQL = Dialect("postgresql", shared=True)


class Database(Protocol):
    """One ledger database: transactions, reads, and a consistent snapshot."""

    dialect: Dialect
    #: What messages name: the SQLite file, or the PostgreSQL database without its password.
    where: str

    def transaction(self, durable: bool = True) -> AbstractContextManager[Tx]:
        """One write transaction, committed when the block ends and rolled back if it
        raises; ``durable=False`` skips the flush to disk at commit (see ``Ledger._tx``)."""
        ...

    def reading(self) -> AbstractContextManager[Tx]:
        """The connection for a few reads that belong together; no writes."""
        ...

    def snapshot(self) -> AbstractContextManager[Tx]:
        """One read transaction over one committed state (``xbgw audit verify``)."""
        ...

    def one(self, sql: str, args: Sequence[object] = ()) -> Any: ...

    def all(self, sql: str, args: Sequence[object] = ()) -> list[Any]: ...

    def reachable(self) -> str | None:
        """Whether the database answers now: None, else why not (for a person to read).

        A cheap, bounded probe (a few seconds at the most), which a node runs on a beat to
        turn its health NOT_SERVING while its shared ledger is away. A shared database also
        refuses its calls at once from the first probe that fails (or the first call that
        loses its connection) until a probe succeeds again, rather than have each call wait
        out a timeout. A SQLite file is part of the node itself: always None."""
        ...

    def close(self) -> None: ...


def serialise(db: Tx, section: str, wait_seconds: float | None = None) -> None:
    """Hold ``section``'s database lock until the transaction ends -- where several nodes
    write (PostgreSQL), so that a read-then-write section (the audit log's append reads the
    frontier, then writes the next leaf) runs one node at a time. SQLite's writers are
    serialised by ``BEGIN IMMEDIATE`` already: nothing to do. ``wait_seconds``: give up
    after that long (``SectionBusyError``) rather than wait as long as the holder holds it."""
    lock = getattr(db, "serialise", None)
    if lock is not None:
        lock(section, wait_seconds)


def is_postgresql(location: str) -> bool:
    """Whether ``state.database`` names a PostgreSQL database (otherwise: a SQLite file)."""
    return location.startswith(("postgresql://", "postgres://"))
