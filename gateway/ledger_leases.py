"""Transfer leases: the one-writer-per-transfer guard across the nodes of one gateway.

Why: each node guards its own streams in memory (``Context.busy``, ``Sender._sending``), but
nodes that share a PostgreSQL database and a spool must also keep each other off a transfer
one of them is writing -- two writers would interleave segments in the same partial file.
A lease is a row (its name, the node that holds it, when it expires by the server's clock):
taken with one ``INSERT ... ON CONFLICT`` that wins only if the row is absent, expired, or
already this node's; renewed while the stream runs; deleted at its end. A node that dies
stops renewing, so its transfers are taken over once their leases expire.

**A lease lost** (this node stalled, or was cut from the database, longer than a lease
lives, and another node took the transfer over): the old writer must stop, and must not move
the durable state the new one continues from. Two fences, cheap to the fast path:

* the *resume point* is fenced in the database: the ledger's writes of a leased transfer's
  progress and commit (``Ledger.record_progress``, ``commit_inbound``) renew the lease in
  the same transaction (:meth:`LeaseTables._fence_inbound`) -- an ``UPDATE`` of the lease
  row that matches only while this node holds it, and locks the row until the commit, so a
  takeover waits for that commit and then reads the point it made. A writer whose lease is
  gone changes nothing and gets ``LeaseLostError``;
* the *writing* is fenced in memory, before each segment (:meth:`LeaseTables.check_lease`):
  a lease the renewal found taken over, or one not confirmed for a whole lifetime (the
  database does not answer: another node may hold it by now), stops the stream at once.

The partial file itself is shared, and a stalled writer could still append between its last
check and noticing -- at most the segment it was taking. That cannot corrupt the transfer:
segment ``i`` is the same ciphertext on every attempt (same data key, nonce from the index;
the sender refuses a changed source), written at the same offset, so a late append rewrites
bytes the new writer writes the same, or lands beyond its resume point, which the next
opener cuts back to. What must never move behind the new writer's back is the resume point:
that is the database fence.

On SQLite (one node owns the file) there are no leases: every method returns at once and
nothing is written -- the in-memory guard is the whole guard, as before.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time

from gateway.errors import LeaseLostError, StorageError
from gateway.ledger_base import LedgerBase
from gateway.store import Tx

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
        #: Until when (``time.monotonic``) each held lease is surely this node's: the start of
        #: its last successful take or renewal plus its lifetime (the server counted from
        #: later than that start).
        self.confirmed: dict[str, float] = {}
        #: Held leases the renewal (or a fence) found taken over, until dropped.
        self.lost: set[str] = set()
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
        started = time.monotonic()
        with self._tx() as db:  # durable: a lease lost to a server crash would admit two
            taken = db.execute(_TAKE, (name, holder, self.lease_seconds)).rowcount
        if taken != 1:
            raise LeaseTakenError(f"lease {name} is held by another node")
        leases = self._leases()
        with leases.lock:
            leases.held.add(name)
            leases.lost.discard(name)
            leases.confirmed[name] = started + self.lease_seconds
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
            leases.confirmed.pop(name, None)
            if name in leases.lost:  # another node's now: nothing of ours to delete
                leases.lost.discard(name)
                return
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
        over by another node after they expired: this node stalled for a lease's lifetime).
        A lost lease is no longer renewed: its writer stops at its next check."""
        leases = self._leases()
        with leases.lock:
            held = sorted(leases.held)
        if not held:
            return set()
        started = time.monotonic()
        with self._tx(durable=False) as db:  # lost: the next renewal is a period away
            rows = db.execute(_RENEW, (self.lease_seconds, self.lease_holder, held)).fetchall()
        renewed = {row[0] for row in rows}
        with leases.lock:
            for name in renewed & leases.held:
                leases.confirmed[name] = started + self.lease_seconds
        return self._lost_now(leases, set(held) - renewed)

    def _lost_now(self, leases: _Leases, names: set[str]) -> set[str]:
        """Mark ``names`` lost (those still held: one dropped meanwhile is not) and log each
        once; the ones marked."""
        with leases.lock:
            lost = names & leases.held
            leases.held -= lost
            leases.lost |= lost
            for name in lost:
                leases.confirmed.pop(name, None)
        for name in sorted(lost):
            log.error(
                "lease %s was taken over by another node: this node stalled (or was cut "
                "from the shared ledger) longer than %.0f s while writing the transfer; it "
                "stops writing it",
                name,
                self.lease_seconds,
            )
        return lost

    def check_lease(self, name: str) -> None:
        """Before writing more under the lease ``name``: ``LeaseLostError`` if another node
        took it over, a ``StorageError`` (UNAVAILABLE) if it has not been confirmed for a
        whole lifetime -- the database did not answer, so another node may hold it by now.
        Memory only (called per segment); nothing for a lease not held, or on SQLite."""
        if not self._store.dialect.shared:
            return
        leases = self._leases()
        with leases.lock:
            lost = name in leases.lost
            until = leases.confirmed.get(name)
        if lost:
            raise LeaseLostError(lease_lost_message(name, self.lease_seconds))
        if until is not None and time.monotonic() > until:
            raise StorageError(_unconfirmed_message(name, self.lease_seconds))

    def _fence_inbound(self, db: Tx, transfer_id: str) -> None:
        """Inside the transaction that moves an inbound transfer's resume point or commits
        it: if this node writes it under a lease, renew that lease here -- matched only while
        this node holds it, and its row locked until this transaction ends, so a node taking
        it over waits for the commit and then reads what it wrote. ``LeaseLostError`` (the
        transaction rolls back) if another node took it over. Nothing on SQLite, or for a
        transfer this ledger holds no lease on."""
        if not self._store.dialect.shared:
            return
        leases = self._leases()
        suffix = f"/{transfer_id}"
        with leases.lock:
            names = [
                n
                for n in leases.held | leases.lost
                if n.startswith("inbound/") and n.endswith(suffix)
            ]
        for name in names:
            with leases.lock:
                if name in leases.lost:
                    raise LeaseLostError(lease_lost_message(name, self.lease_seconds))
            started = time.monotonic()
            renewed = db.execute(_RENEW, (self.lease_seconds, self.lease_holder, [name]))
            if renewed.fetchone() is None:
                self._lost_now(leases, {name})
                raise LeaseLostError(lease_lost_message(name, self.lease_seconds))
            with leases.lock:
                if name in leases.held:
                    leases.confirmed[name] = started + self.lease_seconds

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


def lease_lost_message(name: str, lease_seconds: float) -> str:
    """Why a writer stops whose lease another node took over (``inbound/<sender>/<id>``: a
    stream of the receiver; ``outbound/<id>``: a send)."""
    why = (
        f"this node stalled, or was cut from the shared ledger, for longer than "
        f"{lease_seconds:.0f} s"
    )
    kind, _, rest = name.partition("/")
    if kind == "outbound":
        return (
            f"send {rest}: this node lost the send's lease to another node of this gateway "
            f"({why}), which sends it now; this send stops here"
        )
    return (
        f"transfer {rest.rpartition('/')[2]}: this node lost the transfer's lease to another "
        f"node ({why}); the sender resumes there"
    )


def _unconfirmed_message(name: str, lease_seconds: float) -> str:
    """Why a writer stops whose lease could not be renewed for a whole lifetime."""
    kind, _, rest = name.partition("/")
    what = f"send {rest}" if kind == "outbound" else f"transfer {rest.rpartition('/')[2]}"
    then = (
        "send again to resume"
        if kind == "outbound"
        else "the sender resumes on a node that reaches it"
    )
    return (
        f"{what}: this node could not renew its lease for {lease_seconds:.0f} s (the shared "
        f"ledger does not answer), so another node may take it over; it stops writing it: "
        f"{then}"
    )
