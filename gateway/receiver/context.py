"""What the receiver's steps share: their parts, the one-writer guard, and the working set.

The durable truth of a transfer is its ledger row and spool file; the *working set* holds
what one step hands the next in memory -- the decoded header, the data key unwrapped at the
offer, the running plaintext hash -- so that nothing is decoded, unwrapped or re-hashed on
every call. It is bounded and may forget anything: after a restart each value is derived
again from the row and the spool (``data_key`` and ``upload.rehash``).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from gateway import envelope
from gateway.audit.records import AuditRecord
from gateway.compliance.border import Border
from gateway.config import GatewayConfig, PartnerConfig
from gateway.errors import (
    PartialLostError,
    TransferConflictError,
    UnknownTransferError,
)
from gateway.keyring import KeyRing
from gateway.keys import KeyRef, Purpose
from gateway.ledger import Inbound, Ledger
from gateway.ledger_leases import LeaseTakenError
from gateway.partner_keys import PartnerKeys
from gateway.receiver.intake import Stripe, StripeBrokenError, StripedSession
from gateway.spool import Spool
from gateway.transfer import GatewayKeys

log = logging.getLogger("xbgw.receiver")

WORKING_SET_MAX = 256


@dataclass
class _Held:
    header: envelope.Header
    data_key: bytes | None = None  # unwrapped at the offer; taken by the first upload
    # The plaintext hash of the held segments: valid up to a segment, and only while the
    # partial file is the one it was computed over (its fingerprint, see Spool.fingerprint).
    hashed: tuple[int, hashlib._Hash, object] | None = None


def _lease(sender: str, transfer_id: str) -> str:
    """The name of an inbound transfer's lease (``Ledger.take_lease``)."""
    return f"inbound/{sender}/{transfer_id}"


def when(at: int) -> str:
    """A time as operators read it in messages (UTC); both sides name times this way."""
    return f"{datetime.datetime.fromtimestamp(at, datetime.UTC):%Y-%m-%d %H:%M:%SZ}"


class WorkingSet:
    """Per-transfer values in memory, least recently used first out."""

    def __init__(self, limit: int = WORKING_SET_MAX) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._by_id: OrderedDict[str, _Held] = OrderedDict()

    def _entry(self, row: Inbound) -> _Held:
        held = self._by_id.get(row.transfer_id)
        if held is None:
            held = _Held(envelope.Header.decode(row.stored_header))
            self._by_id[row.transfer_id] = held
            while len(self._by_id) > self._limit:
                self._by_id.popitem(last=False)
        self._by_id.move_to_end(row.transfer_id)
        return held

    def header(self, row: Inbound) -> envelope.Header:
        """The stored header of ``row``, decoded once."""
        with self._lock:
            return self._entry(row).header

    def offered(self, transfer_id: str, header: envelope.Header, data_key: bytes) -> None:
        with self._lock:
            self._by_id[transfer_id] = _Held(header, data_key)
            self._by_id.move_to_end(transfer_id)
            while len(self._by_id) > self._limit:
                self._by_id.popitem(last=False)

    def take_data_key(self, row: Inbound) -> bytes | None:
        with self._lock:
            held = self._entry(row)
            data_key, held.data_key = held.data_key, None
            return data_key

    def take_hasher(self, row: Inbound, fingerprint: object) -> hashlib._Hash | None:
        """The running hash, if it covers exactly the segments the row says are held, in the
        file it was computed over (a file changed outside this process is hashed again)."""
        with self._lock:
            held = self._entry(row)
            hashed, held.hashed = held.hashed, None
        if hashed is not None and hashed[0] == row.next_segment and hashed[2] == fingerprint:
            return hashed[1]
        return None

    def put_hasher(
        self, row: Inbound, next_segment: int, hasher: hashlib._Hash, fingerprint: object
    ) -> None:
        with self._lock:
            self._entry(row).hashed = (next_segment, hasher, fingerprint)

    def drop(self, transfer_id: str) -> None:
        with self._lock:
            self._by_id.pop(transfer_id, None)


class Context:
    """The parts every step uses; one per receiver."""

    def __init__(
        self,
        config: GatewayConfig,
        keys: GatewayKeys,
        ring: KeyRing,
        ledger: Ledger,
        spool: Spool,
        clock: Callable[[], float],
        partner_keys: PartnerKeys,
        border: Border,
    ) -> None:
        self.config = config
        self.keys = keys
        self.ring = ring
        self.ledger = ledger
        self.spool = spool
        self.clock = clock
        self.partner_keys = partner_keys  # verifies the senders' manifests
        self.border = border  # the compliance rules at ingress
        self.working = WorkingSet()
        self._active: set[tuple[str, str]] = set()  # (sender, transfer id)
        self._active_lock = threading.Lock()
        #: Striped uploads running, by (sender, transfer id); each also holds its key in
        #: ``_active``, so every other step meets the one-writer guard as before.
        self._stripes: dict[tuple[str, str], StripedSession] = {}

    @property
    def me(self) -> str:
        return self.config.id

    def owned(self, peer: PartnerConfig, transfer_id: str, doing: str) -> Inbound:
        """The row of ``peer``'s transfer; the same NOT_FOUND for another partner's transfer
        as for none at all, so no partner learns what others send."""
        row = self.ledger.inbound(transfer_id)
        if row is None or row.sender != peer.id:
            hint = "; offer it first" if doing == "upload" else ""
            raise UnknownTransferError(f"no transfer {transfer_id!r} from {peer.id}{hint}")
        return row

    @contextmanager
    def busy(self, transfer_id: str, doing: str, sender: str | None = None) -> Iterator[None]:
        """One writer per transfer: creating it, uploading to it, or committing it.

        Never waits: a second writer is refused at once (the sender retries), so a stale
        stream cannot block a gRPC thread, and no step sees a row another step is changing.
        Keyed by (sender, transfer id), and every partner call checks ownership before it
        comes here: another partner naming the same id never meets this guard, so it can
        neither learn that the transfer is active nor make its sender's calls fail.
        ``sender``: the partner whose transfer it is; None (this gateway's own work: expiry,
        deletion, rewrap) takes it from the ledger row.
        """
        if sender is None:
            row = self.ledger.inbound(transfer_id)
            sender = "" if row is None else row.sender
        key = (sender, transfer_id)
        with self._active_lock:
            if key in self._active:
                raise TransferConflictError(
                    f"transfer {transfer_id} is busy on another stream; {doing} again shortly"
                )
            self._active.add(key)
        try:
            # Nodes sharing the ledger: the same guard across them (no-op on SQLite).
            lease = self._take_lease(sender, transfer_id, doing)
            try:
                yield
            finally:
                self.ledger.drop_lease(lease)
        finally:
            with self._active_lock:
                self._active.discard(key)

    def _take_lease(self, sender: str, transfer_id: str, doing: str) -> str:
        """The transfer's lease in a ledger shared by several nodes (``Ledger.take_lease``;
        nothing on SQLite): another node's live lease is refused as busy, in the words of
        the in-memory guard -- the sender retries, and takes over once a dead node's lease
        expires. Its name, for ``drop_lease``."""
        lease = _lease(sender, transfer_id)
        try:
            self.ledger.take_lease(lease)
        except LeaseTakenError:
            raise TransferConflictError(
                f"transfer {transfer_id} is busy on another stream; {doing} again shortly "
                "(another node of this gateway is writing it)"
            ) from None
        return lease

    def holds_lease(self, row: Inbound) -> None:
        """Before each segment an upload writes: this node still holds the transfer's lease
        (memory only; nothing on SQLite). ``LeaseLostError`` (ABORTED) once another node took
        the transfer over, a ``StorageError`` (UNAVAILABLE) once the lease has gone a whole
        lifetime unrenewed (``Ledger.check_lease``): the stream stops at once, and its save
        point cannot move the resume point either (``Ledger.record_progress`` is fenced)."""
        self.ledger.check_lease(_lease(row.sender, row.transfer_id))

    def striped(self, transfer_id: str, sender: str, stripe: Stripe) -> tuple[StripedSession, bool]:
        """Join the striped upload ``stripe`` belongs to, or start it (then True: the caller
        sets it up). The session takes the one-writer guard for all its streams; a stream of
        another attempt, or any other step, is refused as busy while it runs -- exactly as a
        second writer is refused by :meth:`busy`."""
        key = (sender, transfer_id)
        with self._active_lock:
            session = self._stripes.get(key)
            if (
                session is not None
                and session.attempt == stripe.attempt
                and session.count == stripe.count
            ):
                session.join(stripe.index)
                return session, False
            if key in self._active:
                raise TransferConflictError(
                    f"transfer {transfer_id} is busy on another stream; upload again shortly"
                )
            # Under the lock (a database write on PostgreSQL only): the other stripes of
            # this attempt must find the session, not a half-taken guard.
            lease = self._take_lease(sender, transfer_id, "upload")
            session = StripedSession(transfer_id, stripe)
            session.join(stripe.index)
            self._active.add(key)
            self._stripes[key] = session

        def closed() -> None:
            with self._active_lock:
                if self._stripes.get(key) is not session:
                    return
                del self._stripes[key]
            # The lease goes before the guard: a next stream on this node takes both anew.
            try:
                self.ledger.drop_lease(lease)
            finally:
                with self._active_lock:
                    self._active.discard(key)

        session.on_closed = closed
        return session, True

    def end_stripes(self, sender: str, transfer_id: str, stripe: Stripe) -> None:
        """End the striped upload attempt ``stripe`` belongs to, if it still runs: a stream
        the sender cancelled (another of its stripes failed -- e.g. refused by another node
        behind a balancer) may be waiting for room in the reorder buffer, where gRPC's cancel
        does not reach; the attempt would hold the transfer, and answer its old resume point
        to offers, for ``STRIPE_WAIT_SECONDS``. Its streams end now and the session settles
        as after any broken stripe. Nothing if the attempt is over (an answered stream)."""
        with self._active_lock:
            session = self._stripes.get((sender, transfer_id))
        if session is None or session.attempt != stripe.attempt or session.reorder is None:
            return
        session.reorder.fail(
            StripeBrokenError(
                f"stripe {stripe.index} of {stripe.count} of this upload ended early (the "
                "sender cancelled it); this upload attempt is ended: offer again to resume"
            )
        )

    def data_key(self, row: Inbound) -> bytes:
        """The data key: handed over by the offer, else unwrapped with our storage key."""
        data_key = self.working.take_data_key(row)
        if data_key is None:
            data_key = envelope.open_header(self.working.header(row), self.me, self.keys)
        return data_key

    def restart(self, row: Inbound, why: str) -> PartialLostError:
        """What is held of a transfer is lost or corrupt: back to segment 0 (the passport stays
        valid for this transfer); the error to raise tells the sender to offer again."""
        transfer_id = row.transfer_id
        self.ledger.record_progress(transfer_id, 0, 0, False)
        self.working.drop(transfer_id)
        self.spool.open_partial(transfer_id, row.stored_header, len(row.stored_header)).close()
        log.warning(
            "held data of the transfer %s; it restarts from segment 0",
            why,
            extra={"transfer_id": transfer_id, "outcome": "restart"},
        )
        return PartialLostError(
            f"the data held for transfer {transfer_id} {why}; offer it again to restart from "
            "segment 0"
        )

    def refuse(self, transfer_id: str, partner: str, reason: str, error: str) -> None:
        """Refuse a transfer for good: the passport stays spent, the partial data goes; the
        audit record names the error type (``error``), never the partner-influenced text."""
        record = AuditRecord(
            "transfer.refused",
            int(self.clock()),
            {"transfer_id": transfer_id, "partner": partner, "error": error},
        )
        self.ledger.refuse_inbound(transfer_id, reason, audit=record.encode(self.me))
        self.spool.discard(transfer_id)
        self.working.drop(transfer_id)
        log.warning(
            "transfer refused for good: %s",
            reason,
            extra={"transfer_id": transfer_id, "partner": partner, "outcome": "discarded"},
        )

    def signing_key(self) -> KeyRef:
        return KeyRef(self.me, Purpose.SIGNING, self.ring.signing)
