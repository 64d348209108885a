"""The ledger's key tables: the states of our key versions, what we learnt of partners'
keys, and the questions key lifecycle asks of the transfers (which storage version each
stored header is wrapped to, which offers are open to a transport version)."""

from __future__ import annotations

from contextlib import AbstractContextManager

from gateway.errors import KeyLifecycleError
from gateway.keys import KeyState, KeyVersion, Purpose
from gateway.ledger_base import LedgerBase
from gateway.ledger_schema import storage_version_of
from gateway.store import Row

#: The database lock that lets one node at a time change key states (``serialise``).
KEY_STATES_SECTION = "key-states"
#: How long a key verb waits for another node's change before it gives up and says so.
KEY_STATES_LOCK_SECONDS = 30


class KeyTables(LedgerBase):
    """Key states and partners' keys, as methods of the ``Ledger``."""

    # -- our key versions ------------------------------------------------------------------

    def key_versions(self) -> list[KeyVersion]:
        rows = self._all("SELECT * FROM key_versions ORDER BY purpose, version")
        return [_key_version(row) for row in rows]

    def key_states_locked(self) -> AbstractContextManager[None]:
        """Hold the key states' lock for the block: one node at a time rotates, retires,
        destroys or rewraps, so that two nodes rotating at once cannot both make a new
        active version (nor make the same version twice on the shared token). Waiting
        longer than ``KEY_STATES_LOCK_SECONDS`` is a ``KeyLifecycleError``. On SQLite
        nothing: one node owns the file, and its daemon and offline verbs exclude each other
        by the state-directory lock (``LedgerBase._section_locked``)."""
        return self._section_locked(
            KEY_STATES_SECTION,
            KEY_STATES_LOCK_SECONDS,
            lambda: KeyLifecycleError(
                "the key states' lock was not granted: another node has been changing key "
                f"states for more than {KEY_STATES_LOCK_SECONDS} s; try again when it is done"
            ),
        )

    def add_key_version(self, purpose: Purpose, version: int, state: KeyState, at: int) -> None:
        """Record a version (pending, or found on the token); an existing row is kept."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO key_versions (purpose, version, state, created_at, "
                "activated_at) VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING",
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
            "WHERE state != 'refused' AND length(stored_header) > 0 "  # emptied: data gone
            "AND COALESCE(storage_version, -1) != ? "
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
                "ON CONFLICT (partner) DO UPDATE SET issued_at = CASE WHEN excluded.issued_at > "
                "partner_key_sets.issued_at THEN excluded.issued_at ELSE "
                "partner_key_sets.issued_at END, seen_at = excluded.seen_at",
                (partner, issued_at, at),
            )


def _key_version(row: Row) -> KeyVersion:
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
