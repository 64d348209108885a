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

When the server is away (down, or a dead route), a node must not have every call wait out
a timeout: :meth:`PostgresDatabase.reachable` probes it with a fresh connection bounded to
``PROBE_TIMEOUT`` (the daemon does so every ``LEDGER_CHECK_SECONDS``), and from the first
probe that fails -- or the first call that loses its connection -- every call is refused at
once with the reason, until a probe succeeds again. The pool's connections carry TCP
keepalive and a user timeout, so that a call caught on a connection into a dead route fails
within seconds rather than the kernel's quarter of an hour.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

try:
    import psycopg
    import psycopg.errors
    from psycopg.conninfo import conninfo_to_dict
    from psycopg.rows import RowMaker
    from psycopg_pool import ConnectionPool
    from psycopg_pool.errors import PoolClosed, PoolTimeout, TooManyRequests
except ImportError as exc:  # pragma: no cover - the optional extra is not installed
    raise ImportError(
        "state.database names a PostgreSQL database but psycopg is not installed: "
        "pip install 'xbgw[postgresql]'"
    ) from exc

from gateway.errors import StorageError
from gateway.store import (
    POSTGRESQL,
    ConstraintError,
    Dialect,
    SectionBusyError,
    UniqueViolationError,
)

#: How long a transaction waits for a free connection, or for the server, before the
#: ledger reports itself unavailable (a StorageError) rather than hang a handler.
CONNECT_TIMEOUT = 10
#: The longest a probe of :meth:`PostgresDatabase.reachable` may take, in seconds (libpq's
#: least ``connect_timeout``: it reads anything below as 2).
PROBE_TIMEOUT = 2
#: libpq settings of the pool's connections: a connection into a dead route (no FIN, no RST)
#: is found dead within about 10 s -- by keepalive probes while a call waits for an answer,
#: by the user timeout while what it sent stays unacknowledged -- and the call fails then.
TCP_SETTINGS: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": CONNECT_TIMEOUT * 1000,
}
#: SQLSTATEs of a server that went away under a connection: admin shutdown, crash shutdown,
#: cannot connect now (class 08, connection exception, is matched by its prefix).
_SERVER_GONE = frozenset({"57P01", "57P02", "57P03"})


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

    def serialise(self, section: str, wait_seconds: float | None = None) -> None:
        """Hold ``section``'s advisory lock until this transaction ends, on every node;
        ``SectionBusyError`` if it is not granted within ``wait_seconds`` (None: no limit)."""
        if wait_seconds is not None:
            self._connection.execute(
                f"SET LOCAL lock_timeout = {max(1, round(wait_seconds * 1000))}"  # ms; a number
            )
        try:
            self._connection.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (section,))
        except psycopg.errors.LockNotAvailable:
            raise SectionBusyError(
                f"the database lock {section!r} was not granted within {wait_seconds:g} s"
            ) from None


class PostgresDatabase:
    """A PostgreSQL database shared by the gateway's nodes (``Database`` of
    ``gateway.store``)."""

    dialect: Dialect = POSTGRESQL

    def __init__(self, url: str, password: str | None = None, max_connections: int = 16) -> None:
        """Connect once to check (a clear reason now rather than a pool timeout later),
        then open the pool; a ``StorageError`` naming the database otherwise."""
        self.where = display(url)
        self.address = address(url)
        extra: dict[str, Any] = {"autocommit": True}
        if password is not None:
            extra["password"] = password
        self._url = url
        self._extra = extra
        #: Why the database is taken as unreachable (calls are refused at once), or None.
        #: Only once :meth:`reachable` probes it: someone must also find it back.
        self._problem: str | None = None
        self._watched = False
        try:
            psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT, **extra).close()
        except psycopg.Error as exc:
            raise StorageError(
                f"cannot connect to the ledger database {self.where}: {_reason(exc)}"
            ) from None
        self.pool = ConnectionPool(
            url,
            kwargs=extra | TCP_SETTINGS | {"connect_timeout": CONNECT_TIMEOUT},
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
        self._refuse_while_away()
        with (
            pg_errors(self.where, self._lost),
            self.pool.connection() as connection,
            connection.transaction(),
        ):
            if not durable:
                connection.execute("SET LOCAL synchronous_commit = off")
            yield PgTx(connection)

    @contextmanager
    def snapshot(self) -> Iterator[PgTx]:
        self._refuse_while_away()
        with (
            pg_errors(self.where, self._lost),
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
        self._refuse_while_away()
        with pg_errors(self.where, self._lost), self.pool.connection() as connection:
            return PgTx(connection).execute(sql, args).fetchone()

    def all(self, sql: str, args: Sequence[object] = ()) -> list[Any]:
        self._refuse_while_away()
        with pg_errors(self.where, self._lost), self.pool.connection() as connection:
            return PgTx(connection).execute(sql, args).fetchall()

    def reachable(self) -> str | None:
        """Probe the server with a connection of its own (the pool's may be caught in a dead
        route), bounded to ``PROBE_TIMEOUT``: None if it answers, else why not. From here on
        the database is watched: while the last probe failed, or a call lost its connection
        since, every call is refused at once (:meth:`unreachable`). When it answers again the
        pool's idle connections are checked first, so that none broken by the outage fails
        the next call."""
        self._watched = True
        try:
            with psycopg.connect(
                self._url,
                connect_timeout=PROBE_TIMEOUT,
                tcp_user_timeout=PROBE_TIMEOUT * 1000,
                options=f"-c statement_timeout={PROBE_TIMEOUT * 1000}",
                **self._extra,
            ) as probe:
                probe.execute("SELECT 1")
        except psycopg.Error as exc:
            self._problem = _reason(exc).removeprefix("connection failed: ")
            return self._problem
        if self._problem is not None:
            try:
                self.pool.check()
            except psycopg.Error as exc:  # gone again meanwhile: the next probe says
                self._problem = _reason(exc)
                return self._problem
        self._problem = None
        return None

    def unreachable(self, reason: str) -> str:
        """What a call refused while the server is away says, for a person to act on."""
        return (
            f"the shared ledger at {self.address} is unreachable ({reason}); the node refuses "
            "new transfers until it answers again"
        )

    def _lost(self, exc: psycopg.Error) -> str | None:
        """A call failed: if it lost its connection (or found the server away) and the
        database is watched, refuse every call from now until a probe finds it back; the
        message to raise then (None: the call's own failure)."""
        if self._watched and _connection_lost(exc):
            self._problem = _reason(exc)
        problem = self._problem
        return None if problem is None else self.unreachable(problem)

    def _refuse_while_away(self) -> None:
        problem = self._problem
        if problem is not None:
            raise StorageError(self.unreachable(problem))

    def close(self) -> None:
        self.pool.close()


@contextmanager
def pg_errors(
    where: str, lost: Callable[[psycopg.Error], str | None] = lambda _: None
) -> Iterator[None]:
    """psycopg's failures as the ledger's: a unique or other constraint violation is the
    caller's logic; anything else is the database failing (unreachable, full, ...).
    ``lost``: told of such a failure; the message to raise instead, if it has one."""
    try:
        yield
    except psycopg.errors.UniqueViolation as exc:
        raise UniqueViolationError(_reason(exc)) from exc
    except psycopg.errors.IntegrityError as exc:
        raise ConstraintError(_reason(exc)) from exc
    except psycopg.Error as exc:
        message = lost(exc)
        if message is not None:
            raise StorageError(message) from None
        raise StorageError(
            f"the ledger database {where} failed: {_reason(exc)}; the transfer's data so far "
            "is kept: resume later"
        ) from None


def _connection_lost(exc: psycopg.Error) -> bool:
    """Whether a call failed because the server is away: its connection broke or could not
    be made (no SQLSTATE: the client's own error), a connection exception (class 08), or
    the server shutting down. Not the pool's own timeouts (every connection may simply be
    busy): the probe decides those."""
    if isinstance(exc, (PoolClosed, PoolTimeout, TooManyRequests)):
        return False
    state = exc.sqlstate
    return isinstance(exc, psycopg.OperationalError) and (
        state is None or state.startswith("08") or state in _SERVER_GONE
    )


def _reason(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def address(url: str) -> str:
    """``HOST:PORT/DATABASE`` of ``url``: where the server is, for an operator to look."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.Error:
        return "(an unreadable PostgreSQL URL)"
    port = parts.get("port") or "5432"
    return f"{parts.get('host') or 'localhost'}:{port}/{parts.get('dbname') or ''}"


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
