"""The ledger's audit tables: the Merkle log (``gateway.audit.store``), its checkpoints,
and what witnessing partners' logs keeps (their checkpoints, alarms, their cosignatures of
ours)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.audit import store as audit_store
from gateway.audit.merkle import (
    consistency_nodes,
    consistency_proof_at,
    inclusion_nodes,
    inclusion_proof_at,
)
from gateway.ledger_base import LedgerBase
from gateway.store import Row, Tx


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


class AuditTables(LedgerBase):
    """The audit log and witnessing, as methods of the ``Ledger``."""

    # -- the audit log (gateway.audit.store) -------------------------------------------------

    def append_audit(self, record: bytes) -> int:
        """Append one canonical record on its own (events with no row to commit); its leaf."""
        with self._tx() as db:
            return audit_store.append(db, record)

    def audit_size(self) -> int:
        with self._reading() as db:
            return audit_store.size(db)

    def audit_records(self, start: int, stop: int) -> list[tuple[int, bytes]]:
        """(leaf index, record) for ``start <= idx < stop``, in order."""
        rows = self._all(
            "SELECT idx, record FROM audit_records WHERE idx >= ? AND idx < ? ORDER BY idx",
            (start, stop),
        )
        return [(int(r["idx"]), bytes(r["record"])) for r in rows]

    def audit_root(self, size: int) -> bytes:
        with self._reading() as db:
            return audit_store.root(db, size)

    def audit_inclusion(self, index: int, size: int) -> list[bytes]:
        with self._reading() as db:
            wanted = inclusion_nodes(index, size)
            return inclusion_proof_at(audit_store.hash_reader(db, wanted), index, size)

    def audit_consistency(self, old_size: int, new_size: int) -> list[bytes]:
        with self._reading() as db:
            wanted = consistency_nodes(old_size, new_size)
            return consistency_proof_at(audit_store.hash_reader(db, wanted), old_size, new_size)

    def audit_nodes(self) -> list[tuple[int, int, bytes]]:
        """Every stored node (level, index, hash), for ``xbgw audit verify``."""
        rows = self._all("SELECT level, idx, hash FROM audit_nodes ORDER BY level, idx")
        return [(int(r["level"]), int(r["idx"]), bytes(r["hash"])) for r in rows]

    def begin_checkpoint(self) -> tuple[int, bytes]:
        """(size, root) of the log now, recorded in a durable transaction before it is signed:
        that commit fsyncs every leaf before it (see gateway.audit.store)."""
        with self._tx() as db:
            # The root from the stored right edge (one row), not from popcount(size) node
            # reads: the same hash, as both are written by the same append.
            edge = audit_store.frontier(db)
            tree_size, root_hash = edge.size, edge.root()
            db.execute(
                "INSERT INTO audit_checkpoints (size, root) VALUES (?, ?) ON CONFLICT DO NOTHING",
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
                "INSERT INTO witness_alarms (partner, raised_at, reason, size, root, note) "
                "VALUES (?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                (alarm.partner, alarm.raised_at, alarm.reason, alarm.size, alarm.root, alarm.note),
            )
            if done.rowcount == 1 and audit is not None:
                audit_store.append(db, audit)
            return done.rowcount == 1

    def witness_alarm(self, partner: str) -> WitnessAlarm | None:
        """The open alarm of ``partner``, if any (read on every offer: one indexed row)."""
        with self._reading() as db:
            return _open_alarm(db, partner)

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


def _partner_checkpoint(row: Row) -> PartnerCheckpoint:
    return PartnerCheckpoint(
        row["partner"], int(row["size"]), bytes(row["root"]), row["note"], int(row["seen_at"])
    )


def _put_partner_checkpoint(db: Tx, checkpoint: PartnerCheckpoint) -> None:
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


def _witness_alarm(row: Row) -> WitnessAlarm:
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


def _open_alarm(db: Tx, partner: str) -> WitnessAlarm | None:
    row = db.execute(
        "SELECT * FROM witness_alarms WHERE partner = ? AND acknowledged_at IS NULL", (partner,)
    ).fetchone()
    return None if row is None else _witness_alarm(row)
