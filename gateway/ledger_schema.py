"""The ledger's schema and its migrations, one step per version.

Why apart: the schema changes with every capability that keeps state (key lifecycle,
compliance counters, the audit log), and each step must stay readable on its own.

Two databases (``gateway.store``):

* SQLite: the version is the file's ``user_version``; the ``Ledger`` applies the steps in
  order when it opens an older file (:func:`migrate_sqlite`) -- one node owns the file.
* PostgreSQL, shared by several nodes: the versions applied are rows of
  ``schema_migrations``; a node only checks (:func:`check_schema`) and ``xbgw db migrate``
  applies what is pending (:func:`migrate`), in one transaction, and refuses while a live
  node (a ``nodes`` row whose heartbeat is recent) still runs an older schema. Its history
  starts at version 6, created whole; a later version adds a step for each dialect.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from gateway.audit import store as audit_store
from gateway.envelope import Header, WrapKind
from gateway.errors import EnvelopeError, StorageError, XbgwError
from gateway.ledger_leases import LEASE_SCHEMA
from gateway.passport import inspect
from gateway.store import Database, Tx, serialise
from gateway.store.sqlite import SqliteDatabase

#: 1: the first schema. 2: inbound.dataset_sha256 (the passport's ``sub``, kept at the offer
#: so that finish need not parse the stored passport again). 3: key lifecycle -- the states of
#: our key versions, what we learnt of partners' keys, and on each transfer the key versions
#: it depends on (so a version in use is never retired). 4: compliance counters. 5: the audit
#: log. 6: the data lifecycle -- states CANCELLED and EXPIRED, the passport's exp, who ended a
#: transfer and why, an inbox item's first fetch, acknowledgement and deletion.
SCHEMA_VERSION = 6

#: The transfer tables, by name: schema 6 rebuilds them under a temporary name (a CHECK
#: constraint cannot be altered in SQLite).
INBOUND_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    transfer_id TEXT PRIMARY KEY,
    sender TEXT NOT NULL,
    passport TEXT NOT NULL,
    passport_digest BLOB NOT NULL,
    offered_header_digest BLOB NOT NULL,
    stored_header BLOB NOT NULL,
    byte_limit INTEGER NOT NULL,
    classification TEXT NOT NULL,
    source_jurisdiction TEXT NOT NULL,
    dataset_sha256 TEXT,
    transport_version INTEGER,
    storage_version INTEGER,
    count_exporter TEXT,  -- what the transfer counts towards the yearly counters (None: none)
    count_year INTEGER,
    count_subjects INTEGER NOT NULL DEFAULT 0,
    count_sensitive INTEGER NOT NULL DEFAULT 0,
    audit_leaf INTEGER,  -- the leaf of its commit (or refusal) record in the audit log
    state TEXT NOT NULL CHECK (state IN ('receiving', 'committed', 'refused', 'cancelled',
                                         'expired')),
    next_segment INTEGER NOT NULL DEFAULT 0,
    received_bytes INTEGER NOT NULL DEFAULT 0,
    final_received INTEGER NOT NULL DEFAULT 0,
    plaintext_sha256 BLOB,
    created_at INTEGER NOT NULL,
    committed_at INTEGER,
    refusal TEXT,
    receipt_body BLOB,
    receipt_signature BLOB,
    receipt_kid TEXT,
    expires_at INTEGER,  -- the passport's exp (None: not known, from before schema 6)
    ended_at INTEGER,  -- when it was cancelled or expired
    ended_by TEXT,  -- the gateway whose operator cancelled it
    end_reason TEXT,  -- the operator's words (kept here, not in the audit log)
    fetched_at INTEGER,  -- the first Fetch that streamed to the end
    acknowledged_at INTEGER,  -- xbgw inbox ack
    deleted_at INTEGER,  -- its data removed (xbgw inbox delete, or retention)
    deleted_cause TEXT  -- 'operator' or the retention rule, e.g. 'fetched'
);
"""
OUTBOUND_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    transfer_id TEXT PRIMARY KEY,
    partner TEXT NOT NULL,
    passport_digest BLOB NOT NULL,
    sent_header BLOB NOT NULL,
    stored_header BLOB NOT NULL,
    storage_version INTEGER,
    count_exporter TEXT,  -- what the transfer counts towards the yearly counters (None: none)
    count_year INTEGER,
    count_subjects INTEGER NOT NULL DEFAULT 0,
    count_sensitive INTEGER NOT NULL DEFAULT 0,
    audit_leaf INTEGER,  -- the leaf of its delivery record in the audit log
    evidence TEXT,  -- JSON: the signed manifest, the receipt, the receiver's commit proof
    state TEXT NOT NULL CHECK (state IN ('sending', 'delivered', 'cancelled', 'expired')),
    plaintext_size INTEGER,
    plaintext_sha256 BLOB,
    created_at INTEGER NOT NULL,
    delivered_at INTEGER,
    receipt_body BLOB,
    receipt_signature BLOB,
    receipt_kid TEXT,
    expires_at INTEGER,  -- the passport's exp (None: not known, from before schema 6)
    ended_at INTEGER,  -- when it was cancelled or expired
    ended_by TEXT,  -- the gateway whose operator cancelled it
    end_reason TEXT  -- the operator's words (kept here, not in the audit log)
);
"""

SCHEMA = (
    INBOUND_TABLE.format(name="inbound")
    + OUTBOUND_TABLE.format(name="outbound")
    + """
CREATE TABLE IF NOT EXISTS key_versions (
    purpose TEXT NOT NULL CHECK (purpose IN ('transport', 'signing', 'storage')),
    version INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'active', 'decrypt-only', 'verify-only',
                                         'retired', 'destroyed')),
    created_at INTEGER NOT NULL,
    activated_at INTEGER,
    deactivated_at INTEGER,
    retired_at INTEGER,
    destroyed_at INTEGER,
    PRIMARY KEY (purpose, version)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS key_versions_one_active
    ON key_versions (purpose) WHERE state = 'active';
CREATE TABLE IF NOT EXISTS partner_keys (
    partner TEXT NOT NULL,
    purpose TEXT NOT NULL CHECK (purpose IN ('transport', 'signing')),
    version INTEGER NOT NULL,
    public_point BLOB NOT NULL,
    state TEXT NOT NULL,
    learned_at INTEGER NOT NULL,
    source TEXT NOT NULL,
    PRIMARY KEY (partner, purpose, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS partner_key_sets (
    partner TEXT PRIMARY KEY,
    issued_at INTEGER NOT NULL,
    seen_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS compliance_counters (
    direction TEXT NOT NULL CHECK (direction IN ('egress', 'ingress')),
    exporter TEXT NOT NULL,
    year INTEGER NOT NULL,
    subjects INTEGER NOT NULL DEFAULT 0,
    sensitive INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (direction, exporter, year)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS inbound_storage_version ON inbound (storage_version);
CREATE INDEX IF NOT EXISTS inbound_in_flight_counts
    ON inbound (count_exporter, count_year) WHERE state = 'receiving';
CREATE INDEX IF NOT EXISTS outbound_in_flight_counts
    ON outbound (count_exporter, count_year) WHERE state = 'sending';
CREATE INDEX IF NOT EXISTS outbound_storage_version ON outbound (storage_version);
CREATE TABLE IF NOT EXISTS outbound_segments (
    transfer_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    tag BLOB NOT NULL,
    PRIMARY KEY (transfer_id, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS inbound_inbox ON inbound (committed_at, transfer_id)
    WHERE state = 'committed' AND deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS inbound_unfinished ON inbound (expires_at) WHERE state = 'receiving';
CREATE INDEX IF NOT EXISTS outbound_unfinished ON outbound (expires_at) WHERE state = 'sending';
CREATE INDEX IF NOT EXISTS inbound_created ON inbound (created_at, transfer_id);
CREATE INDEX IF NOT EXISTS outbound_created ON outbound (created_at, transfer_id);
"""
)
SCHEMA += audit_store.SCHEMA  # schema 5: the audit log (gateway.audit.store)


def _to_2(db: sqlite3.Connection) -> None:
    """Schema 2: the passport's ``sub`` of unfinished transfers, from their stored passport
    (verified at its offer)."""
    db.execute("ALTER TABLE inbound ADD COLUMN dataset_sha256 TEXT")
    rows = db.execute("SELECT transfer_id, passport FROM inbound WHERE state = 'receiving'")
    for row in rows.fetchall():
        sub = inspect(row["passport"])[1].get("sub")
        db.execute(
            "UPDATE inbound SET dataset_sha256 = ? WHERE transfer_id = ?",
            (sub if isinstance(sub, str) else None, row["transfer_id"]),
        )


def _to_3(db: sqlite3.Connection) -> None:
    """Schema 3: the storage version each stored header is wrapped to (read from the header);
    the transport version of older offers is not known and blocks nothing."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    db.execute("ALTER TABLE inbound ADD COLUMN transport_version INTEGER")
    for table in ("inbound", "outbound"):
        if table not in tables:
            continue  # made whole by the schema script
        db.execute(f"ALTER TABLE {table} ADD COLUMN storage_version INTEGER")
        rows = db.execute(f"SELECT transfer_id, stored_header FROM {table}")  # noqa: S608
        for row in rows.fetchall():
            db.execute(
                f"UPDATE {table} SET storage_version = ? WHERE transfer_id = ?",  # noqa: S608
                (storage_version_of(bytes(row["stored_header"])), row["transfer_id"]),
            )


def _to_4(db: sqlite3.Connection) -> None:
    """Schema 4: what each transfer counts towards the yearly compliance counters (older
    transfers count towards nothing: they were decided without counters)."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    for table in ("inbound", "outbound"):
        if table in tables:
            for column in (
                "count_exporter TEXT",
                "count_year INTEGER",
                "count_subjects INTEGER NOT NULL DEFAULT 0",
                "count_sensitive INTEGER NOT NULL DEFAULT 0",
            ):
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")


def _to_5(db: sqlite3.Connection) -> None:
    """Schema 5: the audit log (its tables are made by the schema script); each transfer
    notes the leaf of its record (older transfers have none: the log starts now)."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    for table in ("inbound", "outbound"):
        if table in tables:
            db.execute(f"ALTER TABLE {table} ADD COLUMN audit_leaf INTEGER")
    if "outbound" in tables:
        db.execute("ALTER TABLE outbound ADD COLUMN evidence TEXT")


def _to_6(db: sqlite3.Connection) -> None:
    """Schema 6: both transfer tables rebuilt with the states CANCELLED and EXPIRED (SQLite
    cannot alter a CHECK constraint) and the lifecycle columns. Unfinished inbound transfers
    get their passport's ``exp`` from the stored passport; outbound ones keep none (the sender
    never stored the token): they expire by their creation time (``Ledger.unfinished_before``).
    Indexes go with the old tables; the schema script makes them again."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    for table, template in (("inbound", INBOUND_TABLE), ("outbound", OUTBOUND_TABLE)):
        if table not in tables:
            continue
        columns = ", ".join(row[1] for row in db.execute(f"PRAGMA table_info({table})"))
        db.execute(template.format(name=f"{table}_v6"))
        db.execute(f"INSERT INTO {table}_v6 ({columns}) SELECT {columns} FROM {table}")  # noqa: S608
        db.execute(f"DROP TABLE {table}")
        db.execute(f"ALTER TABLE {table}_v6 RENAME TO {table}")
    if "inbound" in tables:
        rows = db.execute("SELECT transfer_id, passport FROM inbound WHERE state = 'receiving'")
        for row in rows.fetchall():
            db.execute(
                "UPDATE inbound SET expires_at = ? WHERE transfer_id = ?",
                (passport_exp(row[1]), row[0]),
            )


def passport_exp(token: str) -> int | None:
    """The ``exp`` of a stored passport (verified when it was offered); None if unreadable."""
    try:
        exp = inspect(token)[1].get("exp")
    except XbgwError:
        return None
    return exp if isinstance(exp, int) and not isinstance(exp, bool) else None


def storage_version_of(stored_header: bytes) -> int | None:
    """The storage key version a stored header's data key is wrapped to (None: none is)."""
    try:
        header = Header.decode(stored_header)
    except EnvelopeError:
        return None
    versions = [
        w.key_ref.version for w in header.wrapped_keys if w.kind is WrapKind.STORAGE_A256KWP
    ]
    return versions[0] if versions else None


#: (version, step) in order: a ledger of version v - 1 is brought to v by step.
MIGRATIONS = ((2, _to_2), (3, _to_3), (4, _to_4), (5, _to_5), (6, _to_6))


# --- applying them ----------------------------------------------------------------------------


def migrate_sqlite(db: sqlite3.Connection, path: Path) -> None:
    """Create the schema in a SQLite file, or bring one of an older version up to this one
    (each step in its own transaction)."""
    found = int(db.execute("PRAGMA user_version").fetchone()[0])
    if found > SCHEMA_VERSION:
        raise StorageError(
            f"the ledger {path} has schema version {found}, newer than this xbgw's "
            f"({SCHEMA_VERSION}): run the newer xbgw, or restore a matching backup",
            "FAILED_PRECONDITION",
        )
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "inbound" in tables:  # an existing ledger
        for version, step in MIGRATIONS:
            if found < version:
                db.execute("BEGIN IMMEDIATE")
                step(db)
                db.execute(f"PRAGMA user_version={version}")
                db.execute("COMMIT")
    # executescript commits on its own; CREATE ... IF NOT EXISTS makes it idempotent.
    db.executescript(SCHEMA)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


#: What a shared database keeps of itself: the schema versions applied, and the nodes that
#: use it with the schema each runs (their heartbeat: ``Ledger.announce_node``).
SHARED_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    applied_at INTEGER NOT NULL,
    applied_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    node TEXT PRIMARY KEY,
    schema_version INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    seen_at INTEGER NOT NULL
);
"""

#: A node's heartbeat period, and how long after its last one it still counts as running.
NODE_HEARTBEAT = 10
NODE_LIVE = 3 * NODE_HEARTBEAT


def _shared_6(db: Tx) -> None:
    """Version 6 on PostgreSQL: the whole schema, in its types, and the transfer leases
    (the one-writer guard across nodes; SQLite, one node, has none)."""
    from gateway.store.postgres import translate_schema

    db.execute(translate_schema(SCHEMA))
    db.execute(LEASE_SCHEMA)


#: (version, step) for a shared database, in order.
SHARED_MIGRATIONS: tuple[tuple[int, Callable[[Tx], None]], ...] = ((6, _shared_6),)


def schema_version(database: Database) -> int:
    """The version ``database`` is at (0: none yet)."""
    if isinstance(database, SqliteDatabase):
        row = database.one("PRAGMA user_version")
        return int(row[0])
    if database.one("SELECT to_regclass('schema_migrations') IS NOT NULL")[0]:
        row = database.one("SELECT MAX(version) FROM schema_migrations")
        return int(row[0] or 0)
    return 0


def check_schema(database: Database) -> None:
    """Refuse a database at another schema than this xbgw's, saying what to do."""
    found = schema_version(database)
    if found == SCHEMA_VERSION:
        return
    if found > SCHEMA_VERSION:
        why = (
            f"newer than this xbgw's ({SCHEMA_VERSION}): run the newer xbgw on this node too, "
            "or restore a matching backup"
        )
    else:
        why = (
            f"older than this xbgw needs ({SCHEMA_VERSION}): run `xbgw db migrate -c "
            "gateway.yaml` once the nodes that run an older xbgw are stopped"
        )
    raise StorageError(
        f"the ledger database {database.where} has schema version {found}, {why}",
        "FAILED_PRECONDITION",
    )


def migrate(database: Database, live_within: int = NODE_LIVE) -> tuple[int, int]:
    """Apply what is pending to ``database``; (version before, version after).

    A shared database: in one transaction, under a lock that two ``xbgw db migrate`` share,
    and refused while a node whose heartbeat is younger than ``live_within`` seconds runs an
    older schema than this one (it would write rows the new schema no longer means).
    """
    if isinstance(database, SqliteDatabase):
        before = schema_version(database)
        assert database.path is not None
        with database.owned() as connection:
            try:
                migrate_sqlite(connection, database.path)
            except sqlite3.Error as exc:
                raise StorageError.from_exception(exc, database.path) from None
        return before, SCHEMA_VERSION
    now = int(time.time())
    with database.transaction() as db:
        serialise(db, "schema-migrate")
        db.execute(SHARED_SCHEMA)
        row = db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        found = int(row[0] or 0)
        if found > SCHEMA_VERSION:
            check_schema(database)  # says why, in the same words as a node
        if found == SCHEMA_VERSION:
            return found, found
        older = db.execute(
            "SELECT node, schema_version FROM nodes WHERE seen_at >= ? AND schema_version < ? "
            "ORDER BY node",
            (now - live_within, SCHEMA_VERSION),
        ).fetchall()
        if older:
            running = ", ".join(f"{r[0]} (schema {r[1]})" for r in older)
            raise StorageError(
                f"not migrating the ledger database {database.where} to schema "
                f"{SCHEMA_VERSION}: nodes still run an older one: {running}; stop them (or "
                f"wait {live_within} s after one died), then run `xbgw db migrate` again",
                "FAILED_PRECONDITION",
            )
        by = f"{socket.gethostname()}:{os.getpid()}"
        for version, step in SHARED_MIGRATIONS:
            if found < version:
                step(db)
                db.execute(
                    "INSERT INTO schema_migrations (version, applied_at, applied_by) "
                    "VALUES (?, ?, ?)",
                    (version, now, by),
                )
    return found, SCHEMA_VERSION
