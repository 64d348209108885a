"""The shared ledger database: PostgreSQL through psycopg 3 and a connection pool.

Why PostgreSQL: several nodes acting as one gateway must agree on every spent passport and
every audit leaf; an existing engine's unique constraints and locks do that, where each
node's own SQLite file cannot. The ledger's SQL is SQLite's, written portably; this adapter
turns its ``?`` placeholders into ``%s`` and its schema's types into PostgreSQL's
(:func:`translate_schema`), and the driver's failures into ``StorageError`` and
:class:`~gateway.store.UniqueViolationError` at its edge.

Transactions run at READ COMMITTED: a second insert of the same key waits for the first
transaction and then fails on the unique constraint -- the database, not a read before the
write, decides who spent a passport. A read-then-write section serialises itself with a
transaction-scoped advisory lock (:meth:`PgTx.serialise`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

try:
    import psycopg
    import psycopg.errors
    from psycopg.conninfo import conninfo_to_dict
    from psycopg.rows import RowMaker
    from psycopg_pool import ConnectionPool
except ImportError as exc:  # pragma: no cover - the optional extra is not installed
    raise ImportError(
        "state.database names a PostgreSQL database but psycopg is not installed: "
        "pip install 'xbgw[postgresql]'"
    ) from exc

from gateway.errors import StorageError
from gateway.store import POSTGRESQL, ConstraintError, Dialect, UniqueViolationError

#: How long a transaction waits for a free connection, or for the server, before the
#: ledger reports itself unavailable (a StorageError) rather than hang a handler.
CONNECT_TIMEOUT = 10


class PgRow:
    """A row by column name or position, like ``sqlite3.Row``."""

    __slots__ = ("_names", "_values")

    def __init__(self, names: dict[str, int], values: Sequence[Any]) -> None:
        self._names = names
        self._values = values

    def __getitem__(self, key: int | str) -> Any:
        return self._values[key if isinstance(key, int) else self._names[key]]

    def keys(self) -> list[str]:
        return list(self._names)


def _rows(cursor: psycopg.Cursor[Any]) -> RowMaker[PgRow]:
    names = {column.name: i for i, column in enumerate(cursor.description or ())}

    def make(values: Sequence[Any]) -> PgRow:
        return PgRow(names, values)

    return make


@lru_cache(maxsize=1024)
def placeholders(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled). The ledger's SQL
    has no ``?`` inside a string literal."""
    return sql.replace("%", "%%").replace("?", "%s")


def translate_schema(script: str) -> str:
    """The SQLite schema script in PostgreSQL's types: BLOB is BYTEA, INTEGER is BIGINT
    (sizes and times exceed 32 bits), and tables have no ``WITHOUT ROWID``."""
    script = re.sub(r"\bBLOB\b", "BYTEA", script)
    script = re.sub(r"\bINTEGER\b", "BIGINT", script)
    return re.sub(r"\)\s*WITHOUT ROWID", ")", script)


class PgTx:
    """One pooled connection inside a transaction (``Tx`` of ``gateway.store``)."""

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection

    def execute(self, sql: str, parameters: Any = (), /) -> psycopg.Cursor[PgRow]:
        """Without parameters the text goes as it is (a script of several statements may)."""
        cursor = self._connection.cursor(row_factory=_rows)
        if parameters:
            cursor.execute(placeholders(sql), parameters)
        else:
            cursor.execute(sql.encode())
        return cursor

    def executemany(
        self, sql: str, parameters: Iterable[Sequence[Any]], /
    ) -> psycopg.Cursor[PgRow]:
        cursor = self._connection.cursor(row_factory=_rows)
        cursor.executemany(placeholders(sql), parameters)
        return cursor

    def serialise(self, section: str) -> None:
        """Hold ``section``'s advisory lock until this transaction ends, on every node."""
        self._connection.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (section,))


class PostgresDatabase:
    """A PostgreSQL database shared by the gateway's nodes (``Database`` of
    ``gateway.store``)."""

    dialect: Dialect = POSTGRESQL

    def __init__(self, url: str, password: str | None = None, max_connections: int = 16) -> None:
        """Connect once to check (a clear reason now rather than a pool timeout later),
        then open the pool; a ``StorageError`` naming the database otherwise."""
        self.where = display(url)
        extra: dict[str, Any] = {"autocommit": True}
        if password is not None:
            extra["password"] = password
        try:
            psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT, **extra).close()
        except psycopg.Error as exc:
            raise StorageError(
                f"cannot connect to the ledger database {self.where}: {_reason(exc)}"
            ) from None
        self.pool = ConnectionPool(
            url,
            kwargs=extra | {"connect_timeout": CONNECT_TIMEOUT},
            min_size=1,
            max_size=max_connections,
            timeout=CONNECT_TIMEOUT,
            open=False,
            name="xbgw-ledger",
        )
        self.pool.open()

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[PgTx]:
        """``durable=False``: the commit does not wait for the server's WAL flush
        (``synchronous_commit = off``) -- lost only if the server crashes, never torn."""
        with (
            pg_errors(self.where),
            self.pool.connection() as connection,
            connection.transaction(),
        ):
            if not durable:
                connection.execute("SET LOCAL synchronous_commit = off")
            yield PgTx(connection)

    @contextmanager
    def snapshot(self) -> Iterator[PgTx]:
        with (
            pg_errors(self.where),
            self.pool.connection() as connection,
            connection.transaction(),
        ):
            connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield PgTx(connection)

    @contextmanager
    def reading(self) -> Iterator[PgTx]:
        """Reads that belong together see one snapshot (a commit on another node between
        them moves counts from in flight to committed, never loses them)."""
        with self.snapshot() as tx:
            yield tx

    def one(self, sql: str, args: Sequence[object] = ()) -> Any:
        with pg_errors(self.where), self.pool.connection() as connection:
            return PgTx(connection).execute(sql, args).fetchone()

    def all(self, sql: str, args: Sequence[object] = ()) -> list[Any]:
        with pg_errors(self.where), self.pool.connection() as connection:
            return PgTx(connection).execute(sql, args).fetchall()

    def close(self) -> None:
        self.pool.close()


@contextmanager
def pg_errors(where: str) -> Iterator[None]:
    """psycopg's failures as the ledger's: a unique or other constraint violation is the
    caller's logic; anything else is the database failing (unreachable, full, ...)."""
    try:
        yield
    except psycopg.errors.UniqueViolation as exc:
        raise UniqueViolationError(_reason(exc)) from exc
    except psycopg.errors.IntegrityError as exc:
        raise ConstraintError(_reason(exc)) from exc
    except psycopg.Error as exc:
        raise StorageError(
            f"the ledger database {where} failed: {_reason(exc)}; the transfer's data so far "
            "is kept: resume later"
        ) from None


def _reason(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def display(url: str) -> str:
    """``url`` as messages name it: never a password, even one written into the URL."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.Error:
        return "(an unreadable PostgreSQL URL)"
    user = f"{parts['user']}@" if parts.get("user") else ""
    host = parts.get("host") or "localhost"
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{host}{port}/{parts.get('dbname') or ''}"
