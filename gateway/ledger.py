"""Transfer state in SQLite: progress, resume points, spent passports, receipts.

One database file in the state directory, WAL mode, ``synchronous=FULL`` by default. Writes
whose loss on power failure is harmless skip the fsync (see ``Ledger._tx``): a resume point
that goes back is safe because the spool is cut back to it, and a lost offer is made again.
Commits happen per batch of segments, never per chunk, to keep the data path fast.

A passport is spent as soon as an inbound row with its ``jti`` (= transfer id) exists: a
committed transfer refuses a second offer, an unfinished one resumes only for the same peer
and the same envelope header.

One connection shared under a lock: SQLite serialises writers anyway, and the gateway makes
a few writes per second per transfer.

Failures of the database itself (disk full, I/O error, a locked or corrupt file) leave this
module as :class:`~gateway.errors.StorageError`, whatever called it; a constraint violation
is the caller's logic and is turned into the domain answer where it happens.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gateway.audit import store as audit_store
from gateway.audit.merkle import consistency_proof_at, inclusion_proof_at
from gateway.envelope import Header, WrapKind
from gateway.errors import EnvelopeError, StorageError, TransferConflictError
from gateway.keys import KeyState, KeyVersion, Purpose
from gateway.passport import inspect
from gateway.signed import Signed as Receipt
from gateway.transfer import TransferState

#: 1: the first schema. 2: inbound.dataset_sha256 (the passport's ``sub``, kept at the offer
#: so that finish need not parse the stored passport again). 3: key lifecycle -- the states of
#: our key versions, what we learnt of partners' keys, and on each transfer the key versions
#: it depends on (so a version in use is never retired).
SCHEMA_VERSION = 5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inbound (
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
    state TEXT NOT NULL CHECK (state IN ('receiving', 'committed', 'refused')),
    next_segment INTEGER NOT NULL DEFAULT 0,
    received_bytes INTEGER NOT NULL DEFAULT 0,
    final_received INTEGER NOT NULL DEFAULT 0,
    plaintext_sha256 BLOB,
    created_at INTEGER NOT NULL,
    committed_at INTEGER,
    refusal TEXT,
    receipt_body BLOB,
    receipt_signature BLOB,
    receipt_kid TEXT
);
CREATE TABLE IF NOT EXISTS outbound (
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
    state TEXT NOT NULL CHECK (state IN ('sending', 'delivered')),
    plaintext_size INTEGER,
    plaintext_sha256 BLOB,
    created_at INTEGER NOT NULL,
    delivered_at INTEGER,
    receipt_body BLOB,
    receipt_signature BLOB,
    receipt_kid TEXT
);
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
"""
_SCHEMA += audit_store.SCHEMA  # schema 5: the audit log (gateway.audit.store)


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


@dataclass(frozen=True)
class PartnerCheckpoint:
    """The newest checkpoint of a partner's audit log this gateway verified (witnessing)."""

    partner: str
    size: int
    root: bytes
    note: str  # the signed note as the partner served it
    seen_at: int


@dataclass(frozen=True)
class WitnessAlarm:
    """A fork or rollback seen in a partner's log, and the checkpoint that showed it."""

    partner: str
    raised_at: int
    reason: str
    size: int
    root: bytes
    note: str
    acknowledged_at: int | None


@dataclass(frozen=True)
class Cosignature:
    """A partner's verified cosignature of our checkpoint of ``size`` (``at``: its time)."""

    size: int
    witness: str
    line: str
    at: int


def _receipt(row: sqlite3.Row) -> Receipt | None:
    if row["receipt_body"] is None:
        return None
    return Receipt(bytes(row["receipt_body"]), bytes(row["receipt_signature"]), row["receipt_kid"])


class Ledger:
    """The SQLite ledger of one gateway."""

    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._lock = threading.Lock()
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._migrate(path)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError.from_exception(exc) from None

    @classmethod
    def read_only(cls, path: Path) -> Ledger:
        """The ledger at ``path`` for reading only: ``xbgw policy`` reads the compliance
        counters with it, also while the daemon writes them.

        Opened ``mode=ro`` -- nothing is created, migrated or written, and in WAL mode a reader
        neither blocks the daemon nor waits for it. A ledger that does not exist yet reads as
        empty. Only the read methods may be used (a write is a ``StorageError``).
        """
        ledger = cls.__new__(cls)
        ledger._lock = threading.Lock()
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
            db.executescript(_SCHEMA)
        db.row_factory = sqlite3.Row
        ledger._db = db
        return ledger

    def _migrate(self, path: Path) -> None:
        """Create the schema, or bring a ledger of an older version up to this one."""
        found = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if found > SCHEMA_VERSION:
            raise StorageError(
                f"the ledger {path} has schema version {found}, newer than this xbgw's "
                f"({SCHEMA_VERSION}): run the newer xbgw, or restore a matching backup",
                "FAILED_PRECONDITION",
            )
        tables = {
            row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        if "inbound" in tables:  # an existing ledger: each step in its own transaction
            for version, step in ((2, _to_2), (3, _to_3), (4, _to_4), (5, _to_5)):
                if found < version:
                    self._db.execute("BEGIN IMMEDIATE")
                    step(self._db)
                    self._db.execute(f"PRAGMA user_version={version}")
                    self._db.execute("COMMIT")
        # executescript commits on its own; CREATE ... IF NOT EXISTS makes it idempotent.
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction; ``durable=False`` skips the fsync at commit.

        In WAL mode a commit without fsync survives a process crash but perhaps not a power
        loss -- until the next durable commit, which fsyncs the log with everything before
        it. Only writes whose loss is harmless use it: a resume point that goes back is safe
        (the spool is cut back to it); a lost offer is simply made again.
        """
        with self._lock, _storage():
            if not durable:
                self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            finally:
                if not durable:
                    self._db.execute("PRAGMA synchronous=FULL")

    def _one(self, sql: str, args: tuple[object, ...]) -> sqlite3.Row | None:
        with self._lock, _storage():
            row: sqlite3.Row | None = self._db.execute(sql, args).fetchone()
            return row

    def _all(self, sql: str, args: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        with self._lock, _storage():
            return list(self._db.execute(sql, args).fetchall())

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
                    int(time.time()),
                ),
                audit,
            )
        except sqlite3.IntegrityError:
            return None  # a transfer id is a passport jti: single use
        return self.inbound(transfer_id)

    def _insert_inbound(self, values: tuple[object, ...], audit: bytes | None = None) -> None:
        with self._tx(durable=False) as db:
            db.execute(
                "INSERT INTO inbound (transfer_id, sender, passport, passport_digest, "
                "offered_header_digest, stored_header, byte_limit, classification, "
                "source_jurisdiction, dataset_sha256, transport_version, storage_version, "
                "count_exporter, count_year, count_subjects, count_sensitive, "
                "state, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,'receiving',?)",
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
    ) -> int | None:
        """Commit, and add what the transfer counts to the ingress counters -- in the same
        transaction, so a count never exists without its commit or the reverse."""
        with self._tx() as db:
            done = db.execute(
                "UPDATE inbound SET state = 'committed', plaintext_sha256 = ?, committed_at = ?, "
                "receipt_body = ?, receipt_signature = ?, receipt_kid = ? "
                "WHERE transfer_id = ? AND state = 'receiving'",
                (
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
    def _audited(
        db: sqlite3.Connection, table: str, transfer_id: str, audit: bytes | None
    ) -> int | None:
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
    ) -> Outbound:
        """``count``: what the send adds to the egress counters once delivered; until then it
        counts as in flight (:meth:`compliance_counts`)."""
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO outbound (transfer_id, partner, passport_digest, sent_header, "
                    "stored_header, storage_version, count_exporter, count_year, "
                    "count_subjects, count_sensitive, state, created_at) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,'sending',?)",
                    (
                        transfer_id,
                        partner,
                        passport_digest,
                        sent_header,
                        stored_header,
                        storage_version_of(stored_header),
                        *_count_values(count),
                        int(time.time()),
                    ),
                )
        except sqlite3.IntegrityError:
            raise TransferConflictError(
                f"transfer {transfer_id} already has an outbound record"
            ) from None
        created = self.outbound(transfer_id)
        assert created is not None
        return created

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
                "INSERT OR IGNORE INTO outbound_segments (transfer_id, idx, tag) VALUES (?,?,?)",
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

    # -- the audit log (gateway.audit.store) -------------------------------------------------

    @contextmanager
    def read_snapshot(self) -> Iterator[sqlite3.Connection]:
        """The connection inside one read transaction, for a reader that must see one
        committed state across many queries (``xbgw audit verify``); WAL readers neither
        block the daemon nor wait for it. Only reads may be made through it."""
        with self._lock:
            try:
                self._db.execute("BEGIN")
                try:
                    yield self._db
                finally:
                    self._db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                raise StorageError(f"cannot read the ledger: {exc}") from None

    def append_audit(self, record: bytes) -> int:
        """Append one canonical record on its own (events with no row to commit); its leaf."""
        with self._tx() as db:
            return audit_store.append(db, record)

    def audit_size(self) -> int:
        with self._lock, _storage():
            return audit_store.size(self._db)

    def audit_records(self, start: int, stop: int) -> list[tuple[int, bytes]]:
        """(leaf index, record) for ``start <= idx < stop``, in order."""
        rows = self._all(
            "SELECT idx, record FROM audit_records WHERE idx >= ? AND idx < ? ORDER BY idx",
            (start, stop),
        )
        return [(int(r["idx"]), bytes(r["record"])) for r in rows]

    def audit_root(self, size: int) -> bytes:
        with self._lock, _storage():
            return audit_store.root(self._db, size)

    def audit_inclusion(self, index: int, size: int) -> list[bytes]:
        with self._lock, _storage():
            return inclusion_proof_at(audit_store.hash_reader(self._db), index, size)

    def audit_consistency(self, old_size: int, new_size: int) -> list[bytes]:
        with self._lock, _storage():
            return consistency_proof_at(audit_store.hash_reader(self._db), old_size, new_size)

    def audit_nodes(self) -> list[tuple[int, int, bytes]]:
        """Every stored node (level, index, hash), for ``xbgw audit verify``."""
        rows = self._all("SELECT level, idx, hash FROM audit_nodes ORDER BY level, idx")
        return [(int(r["level"]), int(r["idx"]), bytes(r["hash"])) for r in rows]

    def begin_checkpoint(self) -> tuple[int, bytes]:
        """(size, root) of the log now, recorded in a durable transaction before it is signed:
        that commit fsyncs every leaf before it (see gateway.audit.store)."""
        with self._tx() as db:
            tree_size = audit_store.size(db)
            root_hash = audit_store.root(db, tree_size)
            db.execute(
                "INSERT OR IGNORE INTO audit_checkpoints (size, root) VALUES (?, ?)",
                (tree_size, root_hash),
            )
            return tree_size, root_hash

    def finish_checkpoint(self, size: int, note: str, signed_at: int) -> None:
        """Keep the signed note. Not fsynced: the root it signs was made durable first
        (``begin_checkpoint``); a note lost to a power failure is signed again."""
        with self._tx(durable=False) as db:
            db.execute(
                "UPDATE audit_checkpoints SET note = ?, signed_at = ? WHERE size = ?",
                (note, signed_at, size),
            )

    def latest_checkpoint(self, at_least: int = 0) -> tuple[int, bytes, str] | None:
        """The newest signed checkpoint (size, root, note), if its size is ``at_least``."""
        row = self._one(
            "SELECT size, root, note FROM audit_checkpoints WHERE note IS NOT NULL "
            "ORDER BY size DESC LIMIT 1",
            (),
        )
        if row is None or int(row["size"]) < at_least:
            return None
        return int(row["size"]), bytes(row["root"]), str(row["note"])

    def checkpoint_note(self, size: int) -> str | None:
        """The signed note of our checkpoint of ``size`` (None: none signed at that size)."""
        row = self._one("SELECT note FROM audit_checkpoints WHERE size = ?", (size,))
        return None if row is None or row["note"] is None else str(row["note"])

    def checkpoints(self) -> list[tuple[int, bytes, str | None]]:
        rows = self._all("SELECT size, root, note FROM audit_checkpoints ORDER BY size")
        return [(int(r["size"]), bytes(r["root"]), r["note"]) for r in rows]

    # -- witnessing (gateway.audit.witness) --------------------------------------------------

    def partner_checkpoint(self, partner: str) -> PartnerCheckpoint | None:
        row = self._one("SELECT * FROM partner_checkpoints WHERE partner = ?", (partner,))
        return None if row is None else _partner_checkpoint(row)

    def partner_checkpoints(self) -> list[PartnerCheckpoint]:
        rows = self._all("SELECT * FROM partner_checkpoints ORDER BY partner")
        return [_partner_checkpoint(r) for r in rows]

    def store_partner_checkpoint(
        self, checkpoint: PartnerCheckpoint, base: tuple[int, bytes] | None
    ) -> bool:
        """Replace the partner's stored checkpoint if it is still ``base`` (size, root; None:
        none stored) and no alarm is open for the partner; False otherwise (a concurrent
        round got there first). The network round trip happens outside any lock, so the
        check is made here, in the write."""
        with self._tx() as db:
            row = db.execute(
                "SELECT size, root FROM partner_checkpoints WHERE partner = ?",
                (checkpoint.partner,),
            ).fetchone()
            current = None if row is None else (int(row["size"]), bytes(row["root"]))
            if current != base or _open_alarm(db, checkpoint.partner) is not None:
                return False
            _put_partner_checkpoint(db, checkpoint)
            return True

    def raise_witness_alarm(self, alarm: WitnessAlarm, audit: bytes | None = None) -> bool:
        """Record ``alarm`` (and its audit record, in the same transaction); False if one is
        already open for the partner (it stands)."""
        with self._tx() as db:
            done = db.execute(
                "INSERT OR IGNORE INTO witness_alarms (partner, raised_at, reason, size, root, "
                "note) VALUES (?,?,?,?,?,?)",
                (alarm.partner, alarm.raised_at, alarm.reason, alarm.size, alarm.root, alarm.note),
            )
            if done.rowcount == 1 and audit is not None:
                audit_store.append(db, audit)
            return done.rowcount == 1

    def witness_alarm(self, partner: str) -> WitnessAlarm | None:
        """The open alarm of ``partner``, if any (read on every offer: one indexed row)."""
        with self._lock, _storage():
            return _open_alarm(self._db, partner)

    def witness_alarms(self) -> list[WitnessAlarm]:
        """Every open alarm, by partner."""
        rows = self._all(
            "SELECT * FROM witness_alarms WHERE acknowledged_at IS NULL ORDER BY partner"
        )
        return [_witness_alarm(r) for r in rows]

    def acknowledge_witness_alarm(
        self, partner: str, at: int, audit: bytes | None = None
    ) -> WitnessAlarm | None:
        """Close the open alarm of ``partner`` and make the checkpoint that raised it the base
        the next one must extend; the alarm as it was (None: none was open)."""
        with self._tx() as db:
            alarm = _open_alarm(db, partner)
            if alarm is None:
                return None
            db.execute(
                "UPDATE witness_alarms SET acknowledged_at = ? "
                "WHERE partner = ? AND acknowledged_at IS NULL",
                (at, partner),
            )
            _put_partner_checkpoint(
                db, PartnerCheckpoint(partner, alarm.size, alarm.root, alarm.note, at)
            )
            if audit is not None:
                audit_store.append(db, audit)
            return alarm

    def add_cosignature(self, cosignature: Cosignature) -> None:
        """Keep a witness's verified cosignature of our checkpoint (a newer one of the same
        checkpoint by the same witness replaces it)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO cosignatures (size, witness, line, at) VALUES (?,?,?,?) "
                "ON CONFLICT (size, witness) DO UPDATE SET line = excluded.line, at = excluded.at",
                (cosignature.size, cosignature.witness, cosignature.line, cosignature.at),
            )

    def cosignatures(self, size: int | None = None) -> list[Cosignature]:
        """The cosignatures of our checkpoint of ``size``; without it, each witness's newest."""
        if size is not None:
            rows = self._all("SELECT * FROM cosignatures WHERE size = ? ORDER BY witness", (size,))
        else:
            rows = self._all(
                "SELECT c.* FROM cosignatures c WHERE c.size = (SELECT MAX(size) FROM "
                "cosignatures WHERE witness = c.witness) ORDER BY c.witness"
            )
        return [Cosignature(int(r["size"]), r["witness"], r["line"], int(r["at"])) for r in rows]

    # -- compliance counters ---------------------------------------------------------------

    def compliance_counts(
        self, direction: str, exporter: str, year: int, excluding: str | None = None
    ) -> tuple[int, int]:
        """(subjects, sensitive) ``exporter`` has had moved in ``direction`` in ``year``:
        committed transfers, plus those still in flight -- a threshold is judged as if every
        open transfer commits, so that two sends decided at once cannot both slip under it.
        ``excluding``: a transfer judged again (a resume) does not count against itself."""
        with self._lock, _storage():  # one snapshot: a commit moves counts, never loses them
            counted = self._db.execute(
                "SELECT subjects, sensitive FROM compliance_counters "
                "WHERE direction = ? AND exporter = ? AND year = ?",
                (direction, exporter, year),
            ).fetchone()
            in_flight = self._db.execute(
                _IN_FLIGHT[direction], (exporter, year, excluding or "")
            ).fetchone()
        total = [0, 0]
        for row in (counted, in_flight):
            if row is not None:
                total[0] += int(row[0] or 0)
                total[1] += int(row[1] or 0)
        return total[0], total[1]

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

    def discard_unsent_outbound(self, transfer_id: str) -> bool:
        """Delete a send that never released a segment (no tag recorded), so that it can be
        sealed again under a new header -- the partner refused the offer, so nothing of it
        exists there. False, and nothing deleted, once anything was sent or it was delivered:
        a segment that left must never be re-encrypted under another header."""
        with self._tx() as db:
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

    # -- our key versions ------------------------------------------------------------------

    def key_versions(self) -> list[KeyVersion]:
        rows = self._all("SELECT * FROM key_versions ORDER BY purpose, version")
        return [_key_version(row) for row in rows]

    def add_key_version(self, purpose: Purpose, version: int, state: KeyState, at: int) -> None:
        """Record a version (pending, or found on the token); an existing row is kept."""
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO key_versions (purpose, version, state, created_at, "
                "activated_at) VALUES (?,?,?,?,?)",
                (purpose.value, version, state.value, at, at if state is KeyState.ACTIVE else None),
            )

    def activate_key_version(self, purpose: Purpose, version: int, at: int) -> None:
        """``version`` becomes the active one; the active one before it is replaced."""
        replaced = KeyState.replaced(purpose)
        with self._tx() as db:
            db.execute(
                "UPDATE key_versions SET state = ?, deactivated_at = ? "
                "WHERE purpose = ? AND state = 'active' AND version != ?",
                (replaced.value, at, purpose.value, version),
            )
            db.execute(
                "UPDATE key_versions SET state = 'active', activated_at = ? "
                "WHERE purpose = ? AND version = ?",
                (at, purpose.value, version),
            )

    def set_key_state(self, purpose: Purpose, version: int, state: KeyState, at: int) -> None:
        """Retire or destroy a version (the time goes to the state's own column)."""
        column = {KeyState.RETIRED: "retired_at", KeyState.DESTROYED: "destroyed_at"}[state]
        with self._tx() as db:
            db.execute(
                f"UPDATE key_versions SET state = ?, {column} = ? "  # noqa: S608 - fixed names
                "WHERE purpose = ? AND version = ?",
                (state.value, at, purpose.value, version),
            )

    def storage_version_users(self, version: int) -> int:
        """Stored data keys still wrapped to storage ``version``: transfers received and not
        refused, and sends not yet delivered."""
        row = self._one(
            "SELECT (SELECT COUNT(*) FROM inbound WHERE storage_version = ? AND state != "
            "'refused') + (SELECT COUNT(*) FROM outbound WHERE storage_version = ? AND "
            "state = 'sending') AS n",
            (version, version),
        )
        return int(row["n"]) if row is not None else 0

    def open_offers_to_transport(self, version: int) -> int:
        """Transfers still being received whose data key came wrapped to transport ``version``."""
        row = self._one(
            "SELECT COUNT(*) AS n FROM inbound WHERE transport_version = ? AND state = 'receiving'",
            (version,),
        )
        return int(row["n"]) if row is not None else 0

    def stored_headers_not_under(self, version: int) -> list[tuple[str, str, bytes]]:
        """(direction, transfer_id, stored_header) of every stored data key that matters and is
        not wrapped to storage ``version`` (what a rewrap has to do)."""
        rows = self._all(
            "SELECT 'in' AS direction, transfer_id, stored_header FROM inbound "
            "WHERE state != 'refused' AND COALESCE(storage_version, -1) != ? "
            "UNION ALL SELECT 'out', transfer_id, stored_header FROM outbound "
            "WHERE state = 'sending' AND COALESCE(storage_version, -1) != ? "
            "ORDER BY 1, 2",
            (version, version),
        )
        return [(r["direction"], r["transfer_id"], bytes(r["stored_header"])) for r in rows]

    def replace_stored_header(
        self, direction: str, transfer_id: str, old: bytes, new: bytes
    ) -> bool:
        """Swap a stored header for its re-wrapped form if it is still ``old``; False if the
        row changed meanwhile (the rewrap will see it again)."""
        table = {"in": "inbound", "out": "outbound"}[direction]
        with self._tx() as db:
            done = db.execute(
                f"UPDATE {table} SET stored_header = ?, storage_version = ? "  # noqa: S608
                "WHERE transfer_id = ? AND stored_header = ?",
                (new, storage_version_of(new), transfer_id, old),
            )
            return done.rowcount == 1

    # -- what we learnt of partners' keys --------------------------------------------------

    def partner_keys(self, partner: str) -> list[tuple[Purpose, int, bytes, str, int, str]]:
        """(purpose, version, public point, state, learned_at, source) of ``partner``."""
        rows = self._all(
            "SELECT * FROM partner_keys WHERE partner = ? ORDER BY purpose, version", (partner,)
        )
        return [
            (
                Purpose(r["purpose"]),
                int(r["version"]),
                bytes(r["public_point"]),
                r["state"],
                int(r["learned_at"]),
                r["source"],
            )
            for r in rows
        ]

    def learn_partner_key(
        self,
        partner: str,
        purpose: Purpose,
        version: int,
        public_point: bytes,
        state: str,
        source: str,
        at: int,
    ) -> None:
        """Record (or update the state of) a partner key version; its point never changes."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO partner_keys (partner, purpose, version, public_point, state, "
                "learned_at, source) VALUES (?,?,?,?,?,?,?) "
                "ON CONFLICT (partner, purpose, version) DO UPDATE SET state = excluded.state "
                "WHERE partner_keys.public_point = excluded.public_point",
                (partner, purpose.value, version, public_point, state, at, source),
            )

    def partner_key_set_issued(self, partner: str) -> int | None:
        """``issued_at`` of the newest key set of ``partner`` verified so far."""
        row = self._one("SELECT issued_at FROM partner_key_sets WHERE partner = ?", (partner,))
        return None if row is None else int(row["issued_at"])

    def forget_partner_keys(self, partner: str) -> int:
        """Drop everything learnt of ``partner``'s keys and key sets (a new trust root was
        configured for it); the number of key versions dropped."""
        with self._tx() as db:
            dropped = db.execute("DELETE FROM partner_keys WHERE partner = ?", (partner,))
            db.execute("DELETE FROM partner_key_sets WHERE partner = ?", (partner,))
            return dropped.rowcount

    def record_partner_key_set(self, partner: str, issued_at: int, at: int) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO partner_key_sets (partner, issued_at, seen_at) VALUES (?,?,?) "
                "ON CONFLICT (partner) DO UPDATE SET issued_at = MAX(issued_at, "
                "excluded.issued_at), seen_at = excluded.seen_at",
                (partner, issued_at, at),
            )


def _inbound(row: sqlite3.Row) -> Inbound:
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
    )


def _partner_checkpoint(row: sqlite3.Row) -> PartnerCheckpoint:
    return PartnerCheckpoint(
        row["partner"], int(row["size"]), bytes(row["root"]), row["note"], int(row["seen_at"])
    )


def _put_partner_checkpoint(db: sqlite3.Connection, checkpoint: PartnerCheckpoint) -> None:
    db.execute(
        "INSERT INTO partner_checkpoints (partner, size, root, note, seen_at) VALUES (?,?,?,?,?) "
        "ON CONFLICT (partner) DO UPDATE SET size = excluded.size, root = excluded.root, "
        "note = excluded.note, seen_at = excluded.seen_at",
        (
            checkpoint.partner,
            checkpoint.size,
            checkpoint.root,
            checkpoint.note,
            checkpoint.seen_at,
        ),
    )


def _witness_alarm(row: sqlite3.Row) -> WitnessAlarm:
    acknowledged = row["acknowledged_at"]
    return WitnessAlarm(
        partner=row["partner"],
        raised_at=int(row["raised_at"]),
        reason=row["reason"],
        size=int(row["size"]),
        root=bytes(row["root"]),
        note=row["note"],
        acknowledged_at=None if acknowledged is None else int(acknowledged),
    )


def _open_alarm(db: sqlite3.Connection, partner: str) -> WitnessAlarm | None:
    row = db.execute(
        "SELECT * FROM witness_alarms WHERE partner = ? AND acknowledged_at IS NULL", (partner,)
    ).fetchone()
    return None if row is None else _witness_alarm(row)


def _outbound(row: sqlite3.Row) -> Outbound:
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
    )


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


_IN_FLIGHT = {
    "egress": "SELECT SUM(count_subjects), SUM(count_sensitive) FROM outbound "
    "WHERE state = 'sending' AND count_exporter = ? AND count_year = ? AND transfer_id != ?",
    "ingress": "SELECT SUM(count_subjects), SUM(count_sensitive) FROM inbound "
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


def _add_to_counters(db: sqlite3.Connection, direction: str, table: str, transfer_id: str) -> None:
    """Add what ``transfer_id`` counts to the counters (inside the caller's transaction)."""
    query = (
        "INSERT INTO compliance_counters (direction, exporter, year, subjects, sensitive) "
        "SELECT ?, count_exporter, count_year, count_subjects, count_sensitive FROM %s "
        "WHERE transfer_id = ? AND count_exporter IS NOT NULL "
        "ON CONFLICT (direction, exporter, year) DO UPDATE SET "
        "subjects = subjects + excluded.subjects, sensitive = sensitive + excluded.sensitive"
    )
    db.execute(query % table, (direction, transfer_id))


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


def _key_version(row: sqlite3.Row) -> KeyVersion:
    def optional(name: str) -> int | None:
        return None if row[name] is None else int(row[name])

    return KeyVersion(
        purpose=Purpose(row["purpose"]),
        version=int(row["version"]),
        state=KeyState(row["state"]),
        created_at=int(row["created_at"]),
        activated_at=optional("activated_at"),
        deactivated_at=optional("deactivated_at"),
        retired_at=optional("retired_at"),
        destroyed_at=optional("destroyed_at"),
    )


@contextmanager
def _storage() -> Iterator[None]:
    """The database failed (not a constraint): a StorageError the servicers map once."""
    try:
        yield
    except sqlite3.IntegrityError:
        raise
    except sqlite3.Error as exc:
        raise StorageError.from_exception(exc) from None
