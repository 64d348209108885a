"""A real PostgreSQL server in a temp dir, for the tests and the benchmark: listening on
127.0.0.1 (a port from ``devtools.provision.free_port``) and a socket in the temp dir, stopped
by PID.

PostgreSQL refuses to run as root: as root the cluster belongs to the ``postgres`` user and
its programs run through ``runuser -u postgres --``. The tests' session fixture is in
``tests/postgres.py``; ``bench/multinode.py`` starts one of its own.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

import psycopg

from devtools.provision import free_port
from gateway.ledger_schema import migrate
from gateway.store.postgres import PostgresDatabase

USER = "xbgw"
PASSWORD = "test-only-password"  # noqa: S105 - a throw-away cluster on loopback
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


class Cluster:
    """One running server; ``stop`` ends it by the PID in ``postmaster.pid``."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="xbgw-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.port = free_port()
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
