"""Transfer leases: the one-writer-per-transfer guard across the nodes of one gateway.

Why: each node guards its own streams in memory (``Context.busy``, ``Sender._sending``), but
nodes that share a PostgreSQL database and a spool must also keep each other off a transfer
one of them is writing -- two writers would interleave segments in the same partial file.
A lease is a row (its name, the node that holds it, when it expires by the server's clock):
taken with one ``INSERT ... ON CONFLICT`` that wins only if the row is absent, expired, or
already this node's; renewed while the stream runs; deleted at its end. A node that dies
stops renewing, so its transfers are taken over once their leases expire.

On SQLite (one node owns the file) there are no leases: every method returns at once and
nothing is written -- the in-memory guard is the whole guard, as before.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading

from gateway.errors import StorageError
from gateway.ledger_base import LedgerBase

log = logging.getLogger(__name__)

#: How long a lease lives without renewal: how long a transfer whose node died stays busy
#: before another node takes it over. Renewed every third of it.
LEASE_SECONDS = 15.0

#: The lease table (PostgreSQL only; part of its schema 6). ``expires_at``: seconds since the
#: epoch by the database server's clock, so that the nodes' clocks need not agree.
LEASE_SCHEMA = """
CREATE TABLE IF NOT EXISTS transfer_leases (
    lease TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
"""

#: Times are the server's (``clock_timestamp()`` as seconds since the epoch).
_TAKE = (
    "INSERT INTO transfer_leases (lease, holder, expires_at) "
    "VALUES (?, ?, EXTRACT(EPOCH FROM clock_timestamp())::float8 + ?) "
    "ON CONFLICT (lease) DO UPDATE SET holder = excluded.holder, "
    "expires_at = excluded.expires_at "
    "WHERE transfer_leases.holder = excluded.holder "
    "OR transfer_leases.expires_at < EXTRACT(EPOCH FROM clock_timestamp())::float8"
)

_RENEW = (
    "UPDATE transfer_leases SET expires_at = EXTRACT(EPOCH FROM clock_timestamp())::float8 + ? "
    "WHERE holder = ? AND lease = ANY(?) RETURNING lease"
)

#: Guards the lazily made per-ledger lease state (a Ledger has several constructors).
_SETUP = threading.Lock()


class LeaseTakenError(Exception):
    """Another node holds the lease and it has not expired: the transfer is busy there.
    Callers answer as their in-memory guard does (busy: retry shortly)."""


class _Leases:
    """What one ledger holds: its leases' names and the thread that renews them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held: set[str] = set()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None


class LeaseTables(LedgerBase):
    """Leases on a shared database (mixed into ``Ledger``)."""

    #: The lease's lifetime; a test may shorten it on one ledger.
    lease_seconds: float = LEASE_SECONDS
    #: How often held leases are renewed (None: every third of ``lease_seconds``); a test
    #: makes a node that stalls by setting it beyond the lifetime.
    lease_renew_seconds: float | None = None
    #: Who holds this ledger's leases: the node name of ``announce_node``, else a name made
    #: once for this ledger object (two ledgers in one process are two holders).
    _lease_holder: str | None = None
    _lease_state: _Leases | None = None

    @property
    def lease_holder(self) -> str:
        with _SETUP:
            if self._lease_holder is None:
                self._lease_holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
            return self._lease_holder

    def _leases(self) -> _Leases:
        with _SETUP:
            if self._lease_state is None:
                self._lease_state = _Leases()
            return self._lease_state

    def take_lease(self, name: str) -> None:
        """Hold the lease ``name`` (e.g. ``inbound/<sender>/<transfer id>``) until
        :meth:`drop_lease`, renewed meanwhile. ``LeaseTakenError`` if another node holds it
        and it has not expired; a ``StorageError`` if the database is away. SQLite: nothing."""
        if not self._store.dialect.shared:
            return
        holder = self.lease_holder
        with self._tx() as db:  # durable: a lease lost to a server crash would admit two
            taken = db.execute(_TAKE, (name, holder, self.lease_seconds)).rowcount
        if taken != 1:
            raise LeaseTakenError(f"lease {name} is held by another node")
        leases = self._leases()
        with leases.lock:
            leases.held.add(name)
            if leases.thread is None:
                leases.thread = threading.Thread(
                    target=self._renew_leases,
                    args=(leases,),
                    name="xbgw-lease-renewal",
                    daemon=True,
                )
                leases.thread.start()

    def drop_lease(self, name: str) -> None:
        """Give up the lease ``name``; if the database is away it expires by itself (logged,
        never raised: the stream that held it has ended either way). SQLite: nothing."""
        if not self._store.dialect.shared:
            return
        leases = self._leases()
        with leases.lock:
            leases.held.discard(name)
        try:
            with self._tx(durable=False) as db:  # lost: it expires
                db.execute(
                    "DELETE FROM transfer_leases WHERE lease = ? AND holder = ?",
                    (name, self.lease_holder),
                )
        except StorageError as exc:
            log.warning("could not drop lease %s (it expires by itself): %s", name, exc)

    def renew_leases(self) -> set[str]:
        """Renew every lease this ledger holds now; the names of those found lost (taken
        over by another node after they expired: this node stalled for a lease's lifetime)."""
        leases = self._leases()
        with leases.lock:
            held = sorted(leases.held)
        if not held:
            return set()
        with self._tx(durable=False) as db:  # lost: the next renewal is a period away
            rows = db.execute(_RENEW, (self.lease_seconds, self.lease_holder, held)).fetchall()
        lost = set(held) - {row[0] for row in rows}
        with leases.lock:
            lost &= leases.held  # one dropped meanwhile is not lost
        for name in sorted(lost):
            log.error(
                "lease %s was taken over by another node: this node stalled longer than "
                "%.0f s while writing the transfer",
                name,
                self.lease_seconds,
            )
        return lost

    def _renew_leases(self, leases: _Leases) -> None:
        while not leases.stop.wait(self.lease_renew_seconds or self.lease_seconds / 3):
            try:
                self.renew_leases()
            except StorageError as exc:  # the database is away; try again next period
                log.warning("lease renewal failed: %s", exc)

    def _stop_leases(self) -> None:
        """Stop renewing and give up what is still held (before the database closes), so
        that another node takes those transfers over at once; if the database is away they
        expire by themselves."""
        state = self._lease_state
        if state is None:
            return
        state.stop.set()
        if state.thread is not None:
            state.thread.join()
        with state.lock:
            held, state.held = sorted(state.held), set()
        if not held:
            return
        try:
            with self._tx(durable=False) as db:
                db.execute(
                    "DELETE FROM transfer_leases WHERE holder = ? AND lease = ANY(?)",
                    (self.lease_holder, held),
                )
        except StorageError as exc:
            log.warning("could not drop %d leases (they expire by themselves): %s", len(held), exc)
