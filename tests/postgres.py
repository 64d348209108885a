"""A real PostgreSQL server for the tests: one cluster per test session, made in a temp dir,
listening on 127.0.0.1 (an ephemeral port) and a socket in the temp dir, stopped by PID.

Why real: the PostgreSQL ledger is held to the same tests as the SQLite one, and a passport
spent once across nodes is decided by the server's unique constraints -- nothing a fake
could show. The server itself is :class:`devtools.postgres.Cluster` (the benchmark starts
one too); this module shares one among the tests of a session.

Use: ``from tests.postgres import postgres`` (a session fixture; the cluster is shared by
every module that imports it), then ``postgres.database("name")`` -- a fresh database made
from a template at the current schema in a few tens of milliseconds. A module whose tests run
on both databases imports ``pg_url`` (its own database) and ``ledger_on`` as well.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from devtools.postgres import PASSWORD, TEMPLATE, USER, Cluster
from gateway.ledger import Ledger
from gateway.store.postgres import PostgresDatabase

__all__ = [
    "PASSWORD",
    "TEMPLATE",
    "USER",
    "Cluster",
    "ledger_on",
    "pg_url",
    "postgres",
    "truncate_all",
]


def truncate_all(url: str) -> None:
    """Empty every ledger table of the database at ``url`` (its schema stays)."""
    with psycopg.connect(url, password=PASSWORD, autocommit=True) as db:
        tables = [
            row[0]
            for row in db.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename != 'schema_migrations'"
            ).fetchall()
        ]
        db.execute(f"TRUNCATE {', '.join(tables)}".encode())


@pytest.fixture(scope="module")
def pg_url(request: pytest.FixtureRequest, postgres: Cluster) -> str:
    """The importing module's own database, named after it (made once per module;
    :func:`ledger_on` empties it for each test)."""
    return postgres.database(request.module.__name__.rpartition(".")[2])


def ledger_on(request: pytest.FixtureRequest, sqlite_path: Path) -> Ledger:
    """The ledger a test parametrised over ``["sqlite", "postgresql"]`` runs on: a SQLite
    file at ``sqlite_path``, or the module's PostgreSQL database (its ``pg_url`` fixture),
    emptied -- the same tests held to both databases."""
    if request.param == "sqlite":
        return Ledger(sqlite_path)
    url = request.getfixturevalue("pg_url")
    truncate_all(url)
    return Ledger(PostgresDatabase(url, PASSWORD))


_shared: list[Cluster] = []
_users = [0]  # how many importing modules' fixtures hold the cluster
_users_lock = threading.Lock()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    """The session's cluster (started by the first module that asks, stopped after the
    last: every importing module has its own copy of this fixture)."""
    with _users_lock:
        if not _shared:
            started = Cluster()
            try:
                started.start()
            except BaseException:
                started.stop()
                raise
            _shared.append(started)
        _users[0] += 1
        cluster = _shared[0]
    try:
        yield cluster
    finally:
        with _users_lock:
            _users[0] -= 1
            if _users[0] == 0:
                _shared.pop().stop()
