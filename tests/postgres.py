"""A real PostgreSQL server for the tests: one cluster per test session, made in a temp dir,
listening on 127.0.0.1 (an ephemeral port) and a socket in the temp dir, stopped by PID.

Why real: the PostgreSQL ledger is held to the same tests as the SQLite one, and a passport
spent once across nodes is decided by the server's unique constraints -- nothing a fake
could show. PostgreSQL refuses to run as root: as root the cluster belongs to the
``postgres`` user and its programs run through ``runuser -u postgres --``.

Use: ``from tests.postgres import postgres`` (a session fixture; the cluster is shared by
every module that imports it), then ``postgres.database("name")`` -- a fresh database made
from a template at the current schema in a few tens of milliseconds.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from gateway.ledger_schema import migrate
from gateway.store.postgres import PostgresDatabase

USER = "xbgw"
PASSWORD = "test-only-password"
TEMPLATE = "xbgw_template"


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        raise RuntimeError(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: install the "
            "Debian package `postgresql` (scripts/setup-env does) to run the ledger's "
            "PostgreSQL tests"
        )
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Cluster:
    """One running server; ``stop`` ends it by the PID in ``postmaster.pid``."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="xbgw-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.port = _free_port()
        self.pid: int | None = None  # the postmaster's, once started
        self._as: list[str] = []
        self._names = 0
        self._lock = threading.Lock()
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self.sockets.mkdir()

    def start(self) -> None:
        """initdb, start, and the template database at the current schema."""
        pwfile = self.root / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if self._as:
            owner = pwd.getpwnam("postgres")
            for path in (self.sockets, pwfile):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            USER,
            f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "--no-locale",  # C collation: the ledger's pages sort as SQLite's do
            "-E",
            "UTF8",
        )
        options = (
            f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=300"
        )
        self._run(
            "pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-o", options,
            "-l", str(self.root / "server.log"),
        )  # fmt: skip
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        self._admin(f"CREATE DATABASE {TEMPLATE}")
        template = PostgresDatabase(self.url(TEMPLATE), PASSWORD)
        try:
            migrate(template)
        finally:
            template.close()

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run(
            [*self._as, str(self.bin / program), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{program} failed: {done.stdout}{done.stderr}{tail}")

    def url(self, database: str) -> str:
        """Its address without the password (as gateway.yaml names it)."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        with psycopg.connect(self.url("postgres"), password=PASSWORD, autocommit=True) as admin:
            admin.execute(sql.encode())

    def database(self, prefix: str) -> str:
        """A new database at the current schema (copied from the template); its URL."""
        with self._lock:
            self._names += 1
            name = f"{prefix}_{self._names}"
        self._admin(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
        return self.url(name)

    def empty_database(self, prefix: str) -> str:
        """A new database with no schema at all (what ``xbgw db migrate`` starts from)."""
        with self._lock:
            self._names += 1
            name = f"{prefix}_{self._names}"
        self._admin(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        """``pg_ctl stop -m fast``, then SIGKILL by PID if the server is still there."""
        pidfile = self.data / "postmaster.pid"
        if self.pid is None and pidfile.exists():  # started, then failed before we read it
            self.pid = int(pidfile.read_text().split()[0])
        if self.pid is not None:
            with contextlib.suppress(RuntimeError):
                self._run("pg_ctl", "stop", "-m", "fast", "-w", "-t", "30", "-D", str(self.data))
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.pid = None
        shutil.rmtree(self.root, ignore_errors=True)


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
