"""Transfer state: progress, resume points, spent passports, receipts.

In one SQLite file in the state directory by default (``gateway.store.sqlite``), or in a
PostgreSQL database shared by several nodes of one gateway (``state.database``,
``gateway.store.postgres``); the SQL here is written once for both (``gateway.store``).

SQLite: WAL mode, ``synchronous=FULL`` by default; durable commits made at once share one
fsync of the log (a group commit: ``ledger_base.GroupSync``). Writes
whose loss on power failure is harmless skip the fsync (see ``Ledger._tx``): a resume point
that goes back is safe because the spool is cut back to it, and a lost offer is made again.
Commits happen per batch of segments, never per chunk, to keep the data path fast.

A passport is spent as soon as an inbound row with its ``jti`` (= transfer id) exists -- the
row's primary key decides, not a read before the write, so two nodes offered the same passport
at once cannot both accept it: a committed transfer refuses a second offer, an unfinished one
resumes only for the same peer and the same envelope header.

SQLite: one connection shared under a lock: SQLite serialises writers anyway, and the gateway
makes a few writes per second per transfer. PostgreSQL: a connection pool.

Failures of the database itself (disk full, I/O error, a locked or corrupt file) leave this
module as :class:`~gateway.errors.StorageError`, whatever called it; a constraint violation
is the caller's logic and is turned into the domain answer where it happens.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.audit import store as audit_store
from gateway.errors import PinSourceError, StorageError, TransferConflictError
from gateway.ledger_audit import AuditTables, Cosignature, PartnerCheckpoint, WitnessAlarm
from gateway.ledger_keys import KeyTables
from gateway.ledger_leases import LeaseTables
from gateway.ledger_schema import (
    NODE_HEARTBEAT,
    SCHEMA,
    SCHEMA_VERSION,
    check_schema,
    migrate,
    migrate_sqlite,
    passport_exp,
    storage_version_of,
)
from gateway.signed import Signed as Receipt
from gateway.store import Database, Row, Tx, UniqueViolationError
from gateway.store.sqlite import SqliteDatabase
from gateway.transfer import TransferState

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

log = logging.getLogger(__name__)

#: The database lock under which a new transfer is judged against the counters and recorded
#: (``Ledger.counters_locked``), and how long a node waits for it.
COUNTERS_SECTION = "compliance-counters"
COUNTERS_LOCK_SECONDS = 10

__all__ = [
    "LEDGER_FILE",
    "SCHEMA_VERSION",
    "Cosignature",
    "Count",
    "Counter",
    "Ended",
    "Inbound",
    "Ledger",
    "Outbound",
    "PartnerCheckpoint",
    "TransferLine",
    "WitnessAlarm",
    "storage_version_of",
]


@dataclass(frozen=True)
class Count:
    """What one transfer adds to the yearly compliance counters of its exporter once it
    commits: subjects of non-sensitive and of sensitive personal information."""

    exporter: str
    year: int
    subjects: int
    sensitive: int


@dataclass(frozen=True)
class Counter:
    """One row of ``xbgw policy counters``."""

    direction: str  # egress (we sent) or ingress (we received)
    exporter: str
    year: int
    subjects: int
    sensitive: int


@dataclass(frozen=True)
class Inbound:
    transfer_id: str
    sender: str
    passport: str
    passport_digest: bytes
    offered_header_digest: bytes
    stored_header: bytes
    byte_limit: int
    classification: str
    source_jurisdiction: str
    dataset_sha256: str | None  # the passport's ``sub``: the data set's SHA-256, if named
    state: TransferState
    next_segment: int
    received_bytes: int
    final_received: bool
    plaintext_sha256: bytes | None
    created_at: int
    committed_at: int | None
    refusal: str | None
    receipt: Receipt | None
    audit_leaf: int | None = None  # the leaf of its commit or delivery record
    expires_at: int | None = None  # the passport's exp (None: from before schema 6)
    ended: Ended | None = None  # cancelled or expired
    fetched_at: int | None = None  # the first Fetch that streamed to the end
    acknowledged_at: int | None = None
    deleted_at: int | None = None  # its data removed; ``deleted_cause`` says why
    deleted_cause: str | None = None


@dataclass(frozen=True)
class Ended:
    """How a transfer was cancelled or expired: when, by which gateway's operator (None:
    expired), and in whose words."""

    at: int
    by: str | None
    reason: str | None


@dataclass(frozen=True)
class TransferLine:
    """One line of ``xbgw status``: a transfer either way, newest first."""

    transfer_id: str
    direction: str  # "in" or "out"
    partner: str
    state: TransferState
    size: int
    created_at: int


@dataclass(frozen=True)
class Outbound:
    transfer_id: str
    partner: str
    passport_digest: bytes
    sent_header: bytes
    stored_header: bytes
    state: TransferState
    plaintext_size: int | None
    plaintext_sha256: bytes | None
    created_at: int
    delivered_at: int | None
    receipt: Receipt | None
    audit_leaf: int | None = None  # the leaf of its commit or delivery record
    evidence: str | None = None  # see deliver_outbound
    expires_at: int | None = None  # the passport's exp (None: not recorded)
    ended: Ended | None = None  # cancelled or expired


def _receipt(row: Row) -> Receipt | None:
    if row["receipt_body"] is None:
        return None
    return Receipt(bytes(row["receipt_body"]), bytes(row["receipt_signature"]), row["receipt_kid"])


class Ledger(AuditTables, KeyTables, LeaseTables):
    """The ledger of one gateway (of all its nodes, on PostgreSQL)."""

    def __init__(self, database: Path | Database, *, migrate_schema: bool = False) -> None:
        """``database``: a SQLite file's path (created, and brought up to this schema, as
        always: one node owns it), or an open :class:`~gateway.store.Database`. A shared
        database is not migrated behind the other nodes' backs: it must be at this schema
        (``xbgw db migrate``) unless ``migrate_schema`` -- what ``xbgw db migrate`` and the
        tests pass."""
        if isinstance(database, Path):
            store = SqliteDatabase.open(database)
            self._store = store
            try:
                self._migrate(database)
            except sqlite3.Error as exc:
                store.close()
                raise StorageError.from_exception(exc, database) from None
            except BaseException:
                store.close()
                raise
            return
        self._store = database
        if migrate_schema:
            migrate(database)
        else:
            check_schema(database)

    @classmethod
    def read_only(cls, path: Path) -> Ledger:
        """The ledger at ``path`` for reading only: ``xbgw policy`` reads the compliance
        counters with it, also while the daemon writes them.

        Opened ``mode=ro`` -- nothing is created, migrated or written, and in WAL mode a reader
        neither blocks the daemon nor waits for it. A ledger that does not exist yet reads as
        empty. Only the read methods may be used (a write is a ``StorageError``).
        """
        ledger = cls.__new__(cls)
        try:
            db = _connect_read_only(path) if path.exists() else None
            found = 0 if db is None else int(db.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.Error as exc:
            raise StorageError(f"cannot read the ledger {path}: {exc}") from None
        if found not in (0, SCHEMA_VERSION):
            assert db is not None
            db.close()
            newer = "newer" if found > SCHEMA_VERSION else "older"
            raise StorageError(
                f"the ledger {path} has schema version {found}, {newer} than this xbgw's "
                f"({SCHEMA_VERSION}): run the xbgw that matches it (the daemon of this one "
                "brings an older ledger up to date when it starts)",
                "FAILED_PRECONDITION",
            )
        if db is None or found == 0:  # none yet (or one created but never written): empty
            if db is not None:
                db.close()
            db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
            db.executescript(SCHEMA)
        ledger._store = SqliteDatabase(db, path)
        return ledger

    def _migrate(self, path: Path) -> None:
        """Create the schema, or bring a ledger of an older version up to this one."""
        migrate_sqlite(self._db, path)

    def close(self) -> None:
        """Stop renewing leases and the heartbeat (and leave the ``nodes`` table) before
        closing the database; leases still held expire by themselves."""
        self._stop_leases()
        beating = self._heartbeat
        if beating is not None:
            beating[0].set()
            beating[1].join()
            node = beating[2]
            try:
                with self._tx() as db:
                    db.execute("DELETE FROM nodes WHERE node = ?", (node,))
            except StorageError as exc:  # it ages out of the live window instead
                log.warning("could not remove node %s from the ledger database: %s", node, exc)
        self._store.close()

    #: (stop, thread, node) of the heartbeat of :meth:`announce_node`; None: none runs.
    _heartbeat: tuple[threading.Event, threading.Thread, str] | None = None

    def announce_node(self, node: str) -> None:
        """On a shared database: record this node and the schema it runs, then again every
        ``NODE_HEARTBEAT`` seconds until :meth:`close` -- ``xbgw db migrate`` refuses while a
        live node runs an older schema. A SQLite ledger has one node: nothing to do."""
        if not self._store.dialect.shared:
            return
        self._lease_holder = node  # its transfer leases name it too
        self._beat(node, started=True)
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(NODE_HEARTBEAT):
                try:
                    self._beat(node, started=False)
                except StorageError as exc:  # the database is away; try again next period
                    log.warning("node heartbeat failed: %s", exc)

        thread = threading.Thread(target=beat, name="xbgw-node-heartbeat", daemon=True)
        thread.start()
        self._heartbeat = (stop, thread, node)

    def _beat(self, node: str, started: bool) -> None:
        now = int(time.time())
        with self._tx(durable=False) as db:
            db.execute(
                "INSERT INTO nodes (node, schema_version, started_at, seen_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (node) DO UPDATE SET "
                "schema_version = excluded.schema_version, seen_at = excluded.seen_at",
                (node, SCHEMA_VERSION, now, now),
            )
            if started:  # the same name started again (a restart)
                db.execute("UPDATE nodes SET started_at = ? WHERE node = ?", (now, node))

    def nodes(self) -> list[tuple[str, int, int]]:
        """(node, schema version, last heartbeat) of the nodes recorded on a shared
        database, by name (a SQLite ledger: none)."""
        if not self._store.dialect.shared:
            return []
        rows = self._all("SELECT node, schema_version, seen_at FROM nodes ORDER BY node")
        return [(r["node"], int(r["schema_version"]), int(r["seen_at"])) for r in rows]

    @property
    def store(self) -> Database:
        """The database beneath (its ``dialect`` says which)."""
        return self._store

    # -- inbound ---------------------------------------------------------------------------

    def inbound(self, transfer_id: str) -> Inbound | None:
        row = self._one("SELECT * FROM inbound WHERE transfer_id = ?", (transfer_id,))
        return None if row is None else _inbound(row)

    def create_inbound(
        self,
        *,
        transfer_id: str,
        sender: str,
        passport: str,
        passport_digest: bytes,
        offered_header_digest: bytes,
        stored_header: bytes,
        byte_limit: int,
        classification: str,
        source_jurisdiction: str,
        dataset_sha256: str | None,
        transport_version: int | None = None,
        count: Count | None = None,
        audit: bytes | None = None,
    ) -> Inbound | None:
        """Record a new inbound transfer, spending the passport; None if the id is taken.

        ``transport_version``: our transport key the partner wrapped the data key to (kept
        so that the version is not retired while the transfer is open).

        Not fsynced: lost on power failure, the offer is made again; the commit that ends
        the transfer is durable and carries this row with it.
        """
        created_at, expires_at = int(time.time()), passport_exp(passport)
        try:
            self._insert_inbound(
                (
                    transfer_id,
                    sender,
                    passport,
                    passport_digest,
                    offered_header_digest,
                    stored_header,
                    byte_limit,
                    classification,
                    source_jurisdiction,
                    dataset_sha256,
                    transport_version,
                    storage_version_of(stored_header),
                    *_count_values(count),
                    created_at,
                    expires_at,
                ),
                audit,
            )
        except UniqueViolationError:
            return None  # a transfer id is a passport jti: single use, on every node
        # What was written, not read back (one ledger read less per offer).
        return Inbound(
            transfer_id=transfer_id,
            sender=sender,
            passport=passport,
            passport_digest=passport_digest,
            offered_header_digest=offered_header_digest,
            stored_header=stored_header,
            byte_limit=byte_limit,
            classification=classification,
            source_jurisdiction=source_jurisdiction,
            dataset_sha256=dataset_sha256,
            state=TransferState.RECEIVING,
            next_segment=0,
            received_bytes=0,
            final_received=False,
            plaintext_sha256=None,
            created_at=created_at,
            committed_at=None,
            refusal=None,
            receipt=None,
            expires_at=expires_at,
        )

    def _insert_inbound(self, values: tuple[object, ...], audit: bytes | None = None) -> None:
        with self._tx(durable=False) as db:
            db.execute(
                "INSERT INTO inbound (transfer_id, sender, passport, passport_digest, "
                "offered_header_digest, stored_header, byte_limit, classification, "
                "source_jurisdiction, dataset_sha256, transport_version, storage_version, "
                "count_exporter, count_year, count_subjects, count_sensitive, "
                "state, created_at, expires_at) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,'receiving',?,?)",
                values,
            )
            if audit is not None:
                audit_store.append(db, audit)

    def record_progress(
        self, transfer_id: str, next_segment: int, received_bytes: int, final_received: bool
    ) -> None:
        """Move the resume point (only after the spool bytes are on disk).

        Not fsynced: if a power loss takes it back, the spool is cut back to the older point.
        """
        with self._tx(durable=False) as db:
            self._fence_inbound(db, transfer_id)  # a writer whose lease was taken over: no
            db.execute(
                "UPDATE inbound SET next_segment = ?, received_bytes = ?, final_received = ? "
                "WHERE transfer_id = ? AND state = 'receiving'",
                (next_segment, received_bytes, int(final_received), transfer_id),
            )

    def commit_inbound(
        self,
        transfer_id: str,
        plaintext_sha256: bytes,
        receipt: Receipt,
        committed_at: int,
        audit: bytes | None = None,
        arrived: tuple[int, int] | None = None,
    ) -> int | None:
        """Commit, and add what the transfer counts to the ingress counters -- in the same
        transaction, so a count never exists without its commit or the reverse.

        ``arrived``: (next segment, bytes) of a transfer whose whole data came in the call
        that commits it (``Deliver``): its final resume point is recorded here, in the same
        durable transaction, rather than in one of its own before (the caller made the spool
        file durable first: ``Spool.commit``)."""
        progress = ""
        values: tuple[object, ...] = ()
        if arrived is not None:
            progress = "next_segment = ?, received_bytes = ?, final_received = 1, "
            values = arrived
        with self._tx() as db:
            self._fence_inbound(db, transfer_id)  # a writer whose lease was taken over: no
            done = db.execute(
                f"UPDATE inbound SET {progress}state = 'committed', plaintext_sha256 = ?, "  # noqa: S608
                "committed_at = ?, receipt_body = ?, receipt_signature = ?, receipt_kid = ? "
                "WHERE transfer_id = ? AND state = 'receiving'",
                (
                    *values,
                    plaintext_sha256,
                    committed_at,
                    receipt.body,
                    receipt.signature,
                    receipt.kid,
                    transfer_id,
                ),
            )
            if done.rowcount != 1:
                return None
            _add_to_counters(db, "ingress", "inbound", transfer_id)
            return self._audited(db, "inbound", transfer_id, audit)

    def refuse_inbound(self, transfer_id: str, reason: str, audit: bytes | None = None) -> None:
        """Mark a transfer refused for good; the passport stays spent."""
        with self._tx() as db:
            done = db.execute(
                "UPDATE inbound SET state = 'refused', refusal = ? "
                "WHERE transfer_id = ? AND state = 'receiving'",
                (reason, transfer_id),
            )
            if done.rowcount == 1:
                self._audited(db, "inbound", transfer_id, audit)

    @staticmethod
    def _audited(db: Tx, table: str, transfer_id: str, audit: bytes | None) -> int | None:
        """Append ``audit`` in the caller's transaction and note its leaf on the row."""
        if audit is None:
            return None
        leaf = audit_store.append(db, audit)
        db.execute(
            f"UPDATE {table} SET audit_leaf = ? WHERE transfer_id = ?",  # noqa: S608
            (leaf, transfer_id),
        )
        return leaf

    def committed_inbound(self) -> list[Inbound]:
        rows = self._all(
            "SELECT * FROM inbound WHERE state = 'committed' ORDER BY committed_at, transfer_id"
        )
        return [_inbound(row) for row in rows]

    def inbound_in_progress(self) -> list[Inbound]:
        rows = self._all("SELECT * FROM inbound WHERE state = 'receiving' ORDER BY created_at")
        return [_inbound(row) for row in rows]

    # -- outbound --------------------------------------------------------------------------

    def outbound(self, transfer_id: str) -> Outbound | None:
        row = self._one("SELECT * FROM outbound WHERE transfer_id = ?", (transfer_id,))
        return None if row is None else _outbound(row)

    def create_outbound(
        self,
        *,
        transfer_id: str,
        partner: str,
        passport_digest: bytes,
        sent_header: bytes,
        stored_header: bytes,
        count: Count | None = None,
        expires_at: int | None = None,
        segment_tags: list[tuple[int, bytes]] | None = None,
    ) -> Outbound:
        """``count``: what the send adds to the egress counters once delivered; until then it
        counts as in flight (:meth:`compliance_counts`). ``expires_at``: the passport's exp,
        after which (plus the retention grace) an unfinished send expires. ``segment_tags``:
        tags of segments sealed already (a one-call send's one segment), recorded in this
        durable transaction as :meth:`record_segment_tags` would, one commit fewer."""
        created_at = int(time.time())
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO outbound (transfer_id, partner, passport_digest, sent_header, "
                    "stored_header, storage_version, count_exporter, count_year, "
                    "count_subjects, count_sensitive, state, created_at, expires_at) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,'sending',?,?)",
                    (
                        transfer_id,
                        partner,
                        passport_digest,
                        sent_header,
                        stored_header,
                        storage_version_of(stored_header),
                        *_count_values(count),
                        created_at,
                        expires_at,
                    ),
                )
                if segment_tags:
                    db.executemany(
                        "INSERT INTO outbound_segments (transfer_id, idx, tag) VALUES (?,?,?)",
                        [(transfer_id, idx, tag) for idx, tag in segment_tags],
                    )
        except UniqueViolationError:
            raise TransferConflictError(
                f"transfer {transfer_id} already has an outbound record"
            ) from None
        # What was written, not read back: the row as the INSERT made it.
        return Outbound(
            transfer_id=transfer_id,
            partner=partner,
            passport_digest=passport_digest,
            sent_header=sent_header,
            stored_header=stored_header,
            state=TransferState.SENDING,
            plaintext_size=None,
            plaintext_sha256=None,
            created_at=created_at,
            delivered_at=None,
            receipt=None,
            expires_at=expires_at,
        )

    def segment_tags(self, transfer_id: str, start: int, stop: int) -> dict[int, bytes]:
        """Recorded GCM tags of segments ``start <= idx < stop`` (see client._Pipeline)."""
        rows = self._all(
            "SELECT idx, tag FROM outbound_segments WHERE transfer_id = ? AND idx >= ? AND idx < ?",
            (transfer_id, start, stop),
        )
        return {int(row["idx"]): bytes(row["tag"]) for row in rows}

    def record_segment_tags(self, transfer_id: str, tags: list[tuple[int, bytes]]) -> None:
        """Durably note each segment's tag before its ciphertext is sent (nonce-reuse guard)."""
        if not tags:
            return
        with self._tx() as db:
            db.executemany(
                "INSERT INTO outbound_segments (transfer_id, idx, tag) VALUES (?,?,?) "
                "ON CONFLICT DO NOTHING",
                [(transfer_id, idx, tag) for idx, tag in tags],
            )

    def deliver_outbound(
        self,
        transfer_id: str,
        plaintext_size: int,
        plaintext_sha256: bytes,
        receipt: Receipt,
        audit: bytes | None = None,
        evidence: str | None = None,
    ) -> int | None:
        """Mark delivered, keeping ``evidence`` (the JSON bundle ``xbgw receipt export``
        writes); the egress count and the audit record (``audit``: its leaf index is
        returned) go in the same transaction."""
        # Not fsynced: if lost, a resend finds the transfer committed and gets the receipt.
        # The count and the record go with it: lost together or kept together (a checkpoint
        # is signed only after a durable commit: gateway.audit.store).
        with self._tx(durable=False) as db:
            done = db.execute(
                "UPDATE outbound SET state = 'delivered', plaintext_size = ?, "
                "plaintext_sha256 = ?, delivered_at = ?, receipt_body = ?, "
                "receipt_signature = ?, receipt_kid = ?, evidence = ? "
                "WHERE transfer_id = ? AND state = 'sending'",
                (
                    plaintext_size,
                    plaintext_sha256,
                    int(time.time()),
                    receipt.body,
                    receipt.signature,
                    receipt.kid,
                    evidence,
                    transfer_id,
                ),
            )
            leaf = None
            if done.rowcount == 1:
                _add_to_counters(db, "egress", "outbound", transfer_id)
                leaf = self._audited(db, "outbound", transfer_id, audit)
            db.execute("DELETE FROM outbound_segments WHERE transfer_id = ?", (transfer_id,))
            return leaf

    # -- compliance counters ---------------------------------------------------------------

    def counters_locked(self) -> AbstractContextManager[None]:
        """Hold the compliance counters' lock while a new transfer is judged and recorded
        (``Border.reserving``): with several nodes on one database, two transfers decided
        on two nodes at once cannot both slip under a threshold, as two on one node cannot.
        Not granted within ``COUNTERS_LOCK_SECONDS``: a ``StorageError`` (UNAVAILABLE; the
        transfer was not started, senders retry). On SQLite nothing (one node)."""
        return self._section_locked(
            COUNTERS_SECTION,
            COUNTERS_LOCK_SECONDS,
            lambda: StorageError(
                "the compliance counters' lock was not granted within "
                f"{COUNTERS_LOCK_SECONDS} s: another node of this gateway has been deciding "
                "a transfer that long (is the database overloaded?); nothing was recorded: "
                "retry"
            ),
        )

    def compliance_counts(
        self, direction: str, exporter: str, year: int, excluding: str | None = None
    ) -> tuple[int, int]:
        """(subjects, sensitive) ``exporter`` has had moved in ``direction`` in ``year``:
        committed transfers, plus those still in flight -- a threshold is judged as if every
        open transfer commits, so that two sends decided at once cannot both slip under it.
        ``excluding``: a transfer judged again (a resume) does not count against itself."""
        # One statement, so one snapshot: a commit moves counts, never loses them. Two rows,
        # the committed counter (absent before the year's first commit) and the open sum.
        rows = self._all(
            _COUNTS[direction], (direction, exporter, year, exporter, year, excluding or "")
        )
        subjects = sum(int(row[0] or 0) for row in rows)
        sensitive = sum(int(row[1] or 0) for row in rows)
        return subjects, sensitive

    def compliance_counters(self) -> list[Counter]:
        """Every committed count, by direction, exporter and year."""
        rows = self._all(
            "SELECT * FROM compliance_counters ORDER BY year DESC, direction, exporter"
        )
        return [
            Counter(
                r["direction"],
                r["exporter"],
                int(r["year"]),
                int(r["subjects"]),
                int(r["sensitive"]),
            )
            for r in rows
        ]

    def compliance_in_flight(self) -> list[Counter]:
        """What transfers still open will add to the counters if they commit (the counts
        :meth:`compliance_counts` already judges with), by direction, exporter and year."""
        rows = self._all(
            "SELECT 'egress' AS direction, count_exporter AS exporter, count_year AS year, "
            "SUM(count_subjects) AS subjects, SUM(count_sensitive) AS sensitive FROM outbound "
            "WHERE state = 'sending' AND count_exporter IS NOT NULL GROUP BY 2, 3 "
            "UNION ALL SELECT 'ingress', count_exporter, count_year, SUM(count_subjects), "
            "SUM(count_sensitive) FROM inbound "
            "WHERE state = 'receiving' AND count_exporter IS NOT NULL GROUP BY 2, 3 "
            "ORDER BY year DESC, direction, exporter"
        )
        return [
            Counter(
                r["direction"],
                r["exporter"],
                int(r["year"]),
                int(r["subjects"]),
                int(r["sensitive"]),
            )
            for r in rows
        ]

    def discard_unsent_outbound(self, transfer_id: str, refused_tags: bool = False) -> bool:
        """Delete a send that never released a segment (no tag recorded), so that it can be
        sealed again under a new header -- the partner refused the offer, so nothing of it
        exists there. False, and nothing deleted, once anything was sent or it was delivered:
        a segment that left must never be re-encrypted under another header.

        ``refused_tags``: the caller knows its recorded tags went only with the first offer
        of this header, which the partner refused before recording anything (a one-call
        Deliver, ``gateway.sender``): the tags go too."""
        with self._tx() as db:
            if refused_tags:
                db.execute("DELETE FROM outbound_segments WHERE transfer_id = ?", (transfer_id,))
            done = db.execute(
                "DELETE FROM outbound WHERE transfer_id = ? AND state = 'sending' AND NOT "
                "EXISTS (SELECT 1 FROM outbound_segments WHERE transfer_id = ?)",
                (transfer_id, transfer_id),
            )
            return done.rowcount == 1

    def recent(self, limit: int = 20) -> list[tuple[str, str, str, TransferState, int]]:
        """(transfer_id, direction, partner, state, bytes) for ``xbgw status``."""
        rows = self._all(
            "SELECT transfer_id, 'in' AS direction, sender AS partner, state, "
            "received_bytes AS bytes, created_at FROM inbound "
            "UNION ALL SELECT transfer_id, 'out', partner, state, "
            "COALESCE(plaintext_size, 0), created_at FROM outbound "
            "ORDER BY created_at DESC LIMIT ?",
            (limit,),
        )
        return [
            (
                r["transfer_id"],
                r["direction"],
                r["partner"],
                TransferState(r["state"]),
                int(r["bytes"]),
            )
            for r in rows
        ]

    # -- data lifecycle (gateway.retention, gateway.receiver.cancel) ------------------------

    def end_transfer(
        self,
        direction: str,
        transfer_id: str,
        state: TransferState,
        at: int,
        by: str | None = None,
        reason: str | None = None,
        audit: bytes | None = None,
    ) -> bool:
        """Mark an unfinished transfer cancelled or expired, with its audit record, in one
        transaction; False (nothing changed) if it is not unfinished any more.

        Its stored data key goes with it (the header is emptied and its storage version
        cleared, so no key retirement waits for it and no rewrap touches it); an outbound
        transfer's segment tags too. The row, its passport digest and counts stay."""
        assert state.ended
        table, unfinished = _UNFINISHED[direction]
        with self._tx() as db:
            done = db.execute(
                f"UPDATE {table} SET state = ?, ended_at = ?, ended_by = ?, "  # noqa: S608
                "end_reason = ?, stored_header = ?, storage_version = NULL "
                "WHERE transfer_id = ? AND state = ?",
                (state.value, at, by, reason, b"", transfer_id, unfinished),
            )
            if done.rowcount != 1:
                return False
            if direction == "out":
                db.execute("DELETE FROM outbound_segments WHERE transfer_id = ?", (transfer_id,))
            if audit is not None:
                audit_store.append(db, audit)
            return True

    def unfinished_before(self, cutoff: int) -> list[tuple[str, str, str, int | None]]:
        """(direction, transfer_id, partner, passport exp) of unfinished transfers whose
        passport expired at or before ``cutoff``; an outbound one from before schema 6 (exp not
        recorded) counts from its creation, the earliest its passport can have expired."""
        rows = self._all(
            "SELECT 'in' AS direction, transfer_id, sender AS partner, expires_at FROM inbound "
            "WHERE state = 'receiving' AND COALESCE(expires_at, created_at) <= ? "
            "UNION ALL SELECT 'out', transfer_id, partner, expires_at FROM outbound "
            "WHERE state = 'sending' AND COALESCE(expires_at, created_at) <= ? "
            "ORDER BY 2",
            (cutoff, cutoff),
        )
        return [
            (r["direction"], r["transfer_id"], r["partner"], _int_or_none(r["expires_at"]))
            for r in rows
        ]

    def mark_fetched(self, transfer_id: str, at: int) -> None:
        """Note the first Fetch that streamed a committed transfer to its end (retention's
        ``fetched`` counts from it). Not fsynced: lost, the next fetch notes it again."""
        with self._tx(durable=False) as db:
            db.execute(
                "UPDATE inbound SET fetched_at = ? "
                "WHERE transfer_id = ? AND state = 'committed' AND fetched_at IS NULL",
                (at, transfer_id),
            )

    def acknowledge_inbox(self, transfer_id: str, at: int, audit: bytes | None = None) -> bool:
        """``xbgw inbox ack``; False if already acknowledged (not an error: a repeat)."""
        with self._tx() as db:
            done = db.execute(
                "UPDATE inbound SET acknowledged_at = ? WHERE transfer_id = ? "
                "AND state = 'committed' AND acknowledged_at IS NULL",
                (at, transfer_id),
            )
            if done.rowcount == 1 and audit is not None:
                audit_store.append(db, audit)
            return done.rowcount == 1

    def delete_inbox_data(
        self, transfer_id: str, at: int, cause: str, audit: bytes | None = None
    ) -> bool:
        """Record that a committed transfer's data is removed (the caller removes the file
        after this commits: a crash between leaves a file the next sweep removes); its stored
        data key goes too. False if it was deleted before."""
        with self._tx() as db:
            done = db.execute(
                "UPDATE inbound SET deleted_at = ?, deleted_cause = ?, stored_header = ?, "
                "storage_version = NULL "
                "WHERE transfer_id = ? AND state = 'committed' AND deleted_at IS NULL",
                (at, cause, b"", transfer_id),
            )
            if done.rowcount == 1 and audit is not None:
                audit_store.append(db, audit)
            return done.rowcount == 1

    def inbox_due(
        self, now: int, fetched: int, acknowledged: int, unfetched: int
    ) -> list[tuple[str, str]]:
        """(transfer_id, rule) of inbox items whose data retention says to remove now; each
        rule in seconds, 0 = never. The first rule that applies names the cause."""
        rules = [
            ("acknowledged", "acknowledged_at", acknowledged),
            ("fetched", "fetched_at", fetched),
            ("unfetched", "committed_at", unfetched),
        ]
        due: dict[str, str] = {}
        for rule, column, seconds in rules:
            if seconds <= 0:
                continue
            rows = self._all(
                f"SELECT transfer_id FROM inbound WHERE state = 'committed' "  # noqa: S608
                f"AND deleted_at IS NULL AND {column} IS NOT NULL AND {column} <= ? "
                "ORDER BY transfer_id",
                (now - seconds,),
            )
            for row in rows:
                due.setdefault(row["transfer_id"], rule)
        return sorted(due.items())

    def inbox_page(
        self, limit: int, after: tuple[int, str] | None, unacknowledged_only: bool = False
    ) -> list[Inbound]:
        """Committed inbound transfers whose data is held, oldest commit first, from after
        the key ``after`` = (committed_at, transfer_id): new commits sort last, so a walk
        through the pages neither skips nor repeats an item while transfers arrive."""
        committed_at, transfer_id = after if after is not None else (-1, "")
        pending = " AND acknowledged_at IS NULL" if unacknowledged_only else ""
        rows = self._all(
            "SELECT * FROM inbound WHERE state = 'committed' AND deleted_at IS NULL"  # noqa: S608
            f"{pending} AND (committed_at, transfer_id) > (?, ?) "
            "ORDER BY committed_at, transfer_id LIMIT ?",
            (committed_at, transfer_id, limit),
        )
        return [_inbound(row) for row in rows]

    def transfers_page(self, limit: int, before: tuple[int, str, str] | None) -> list[TransferLine]:
        """Transfers either way, newest first, from before the key ``before`` = (created_at,
        direction, transfer_id): a transfer created meanwhile sorts before the first page,
        so a walk neither skips nor repeats one."""
        created_at, direction, transfer_id = before if before is not None else (1 << 62, "", "")
        rows = self._all(
            "SELECT * FROM (SELECT transfer_id, 'in' AS direction, sender AS partner, state, "
            "received_bytes AS bytes, created_at FROM inbound "
            "UNION ALL SELECT transfer_id, 'out', partner, state, "
            "COALESCE(plaintext_size, 0), created_at FROM outbound) AS transfers "
            "WHERE (created_at, direction, transfer_id) < (?, ?, ?) "
            "ORDER BY created_at DESC, direction DESC, transfer_id DESC LIMIT ?",
            (created_at, direction or "~", transfer_id, limit),
        )
        return [
            TransferLine(
                r["transfer_id"],
                r["direction"],
                r["partner"],
                TransferState(r["state"]),
                int(r["bytes"]),
                int(r["created_at"]),
            )
            for r in rows
        ]

    def without_data(self, transfer_ids: list[str]) -> set[str]:
        """Of ``transfer_ids`` (files found in the spool), those whose data must not be held:
        ended, refused, or committed and deleted -- leftovers of a crash between the ledger's
        decision and the file's removal. A file without a row is not ours to judge."""
        found: set[str] = set()
        for start in range(0, len(transfer_ids), 500):
            batch = transfer_ids[start : start + 500]
            marks = ",".join("?" * len(batch))
            rows = self._all(
                f"SELECT transfer_id FROM inbound WHERE transfer_id IN ({marks}) AND "  # noqa: S608
                "(state IN ('cancelled', 'expired', 'refused') OR deleted_at IS NOT NULL)",
                tuple(batch),
            )
            found.update(row["transfer_id"] for row in rows)
        return found


def _inbound(row: Row) -> Inbound:
    return Inbound(
        transfer_id=row["transfer_id"],
        sender=row["sender"],
        passport=row["passport"],
        passport_digest=bytes(row["passport_digest"]),
        offered_header_digest=bytes(row["offered_header_digest"]),
        stored_header=bytes(row["stored_header"]),
        byte_limit=int(row["byte_limit"]),
        classification=row["classification"],
        source_jurisdiction=row["source_jurisdiction"],
        dataset_sha256=row["dataset_sha256"],
        state=TransferState(row["state"]),
        next_segment=int(row["next_segment"]),
        received_bytes=int(row["received_bytes"]),
        final_received=bool(row["final_received"]),
        plaintext_sha256=None
        if row["plaintext_sha256"] is None
        else bytes(row["plaintext_sha256"]),
        created_at=int(row["created_at"]),
        committed_at=None if row["committed_at"] is None else int(row["committed_at"]),
        refusal=row["refusal"],
        receipt=_receipt(row),
        audit_leaf=None if row["audit_leaf"] is None else int(row["audit_leaf"]),
        expires_at=_int_or_none(row["expires_at"]),
        ended=_ended(row),
        fetched_at=_int_or_none(row["fetched_at"]),
        acknowledged_at=_int_or_none(row["acknowledged_at"]),
        deleted_at=_int_or_none(row["deleted_at"]),
        deleted_cause=row["deleted_cause"],
    )


def _int_or_none(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


def _ended(row: Row) -> Ended | None:
    if row["ended_at"] is None:
        return None
    return Ended(int(row["ended_at"]), row["ended_by"], row["end_reason"])


def _outbound(row: Row) -> Outbound:
    return Outbound(
        transfer_id=row["transfer_id"],
        partner=row["partner"],
        passport_digest=bytes(row["passport_digest"]),
        sent_header=bytes(row["sent_header"]),
        stored_header=bytes(row["stored_header"]),
        state=TransferState(row["state"]),
        plaintext_size=None if row["plaintext_size"] is None else int(row["plaintext_size"]),
        plaintext_sha256=None
        if row["plaintext_sha256"] is None
        else bytes(row["plaintext_sha256"]),
        created_at=int(row["created_at"]),
        delivered_at=None if row["delivered_at"] is None else int(row["delivered_at"]),
        receipt=_receipt(row),
        audit_leaf=None if row["audit_leaf"] is None else int(row["audit_leaf"]),
        evidence=row["evidence"],
        expires_at=_int_or_none(row["expires_at"]),
        ended=_ended(row),
    )


#: Each direction's table and its unfinished state.
_UNFINISHED = {"in": ("inbound", "receiving"), "out": ("outbound", "sending")}

#: ``compliance_counts``: the committed counter, then what is in flight.
_COUNTS = {
    "egress": "SELECT subjects, sensitive FROM compliance_counters "
    "WHERE direction = ? AND exporter = ? AND year = ? UNION ALL "
    "SELECT SUM(count_subjects), SUM(count_sensitive) FROM outbound "
    "WHERE state = 'sending' AND count_exporter = ? AND count_year = ? AND transfer_id != ?",
    "ingress": "SELECT subjects, sensitive FROM compliance_counters "
    "WHERE direction = ? AND exporter = ? AND year = ? UNION ALL "
    "SELECT SUM(count_subjects), SUM(count_sensitive) FROM inbound "
    "WHERE state = 'receiving' AND count_exporter = ? AND count_year = ? AND transfer_id != ?",
}


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """``path`` opened read-only. A reader of a WAL database uses its ``-wal`` and ``-shm``
    files, and creates them if absent (SQLite gives them the database's owner); where it may
    not (a state directory this user can only read) and there is no ``-wal`` -- so no daemon
    has the ledger open and every commit is in the file -- it is opened as immutable."""
    uri = path.resolve().as_uri()
    db = sqlite3.connect(f"{uri}?mode=ro", uri=True, check_same_thread=False, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # opens the WAL index
        return db
    except sqlite3.OperationalError:
        db.close()
        if Path(f"{path}-wal").exists():
            raise
    immutable = f"{uri}?mode=ro&immutable=1"
    return sqlite3.connect(immutable, uri=True, check_same_thread=False, isolation_level=None)


def _count_values(count: Count | None) -> tuple[str | None, int | None, int, int]:
    if count is None:
        return (None, None, 0, 0)
    return (count.exporter, count.year, count.subjects, count.sensitive)


def _add_to_counters(db: Tx, direction: str, table: str, transfer_id: str) -> None:
    """Add what ``transfer_id`` counts to the counters (inside the caller's transaction)."""
    query = (
        "INSERT INTO compliance_counters (direction, exporter, year, subjects, sensitive) "
        "SELECT ?, count_exporter, count_year, count_subjects, count_sensitive FROM %s "
        "WHERE transfer_id = ? AND count_exporter IS NOT NULL "
        "ON CONFLICT (direction, exporter, year) DO UPDATE SET "
        "subjects = compliance_counters.subjects + excluded.subjects, "
        "sensitive = compliance_counters.sensitive + excluded.sensitive"
    )
    db.execute(query % table, (direction, transfer_id))


#: The SQLite ledger's file in the state directory.
LEDGER_FILE = "ledger.sqlite3"


def open_ledger(config: GatewayConfig, *, migrate_schema: bool = False) -> Ledger:
    """The ledger ``config`` names: the SQLite file in ``state_dir`` (brought up to date as it
    opens), or the PostgreSQL database of ``state.database``, which must be at this schema
    unless ``migrate_schema`` (what ``xbgw db migrate`` passes; a node only checks)."""
    if config.state.database is None:
        return Ledger(config.state_dir / LEDGER_FILE)
    database = open_database(config)
    try:
        ledger = Ledger(database, migrate_schema=migrate_schema)
    except BaseException:
        database.close()  # refused (another schema): its pool goes too
        raise
    ledger.lease_seconds = config.state.lease_seconds
    return ledger


def open_database(config: GatewayConfig) -> Database:
    """The ledger's database itself (``xbgw db``): its password, if any, read now from
    ``state.password``."""
    state = config.state
    if state.database is None:
        return SqliteDatabase.open(config.state_dir / LEDGER_FILE)
    from gateway.store.postgres import PostgresDatabase  # the optional extra, only if named

    password = None
    if state.password is not None:
        try:
            password = state.password.read()
        except PinSourceError as exc:  # its words name the HSM PIN: say which setting it was
            raise PinSourceError(f"state.password: {str(exc).removeprefix('HSM PIN: ')}") from None
    return PostgresDatabase(state.database, password)
