"""The offer: may this partner send this transfer, and from where does it resume?

Checked in this order, each before anything is stored: the passport (signature, issuer,
time, audience), the partner not under a witness alarm (``gateway.audit.witness``), its
sender = the authenticated peer, the header's context = the passport, the ingress rules,
the segment size against our message limit. A known transfer id resumes
(same peer, same header) or is refused as a replay. A new one is unwrapped with our transport
key in the HSM (checked against the key commitment), re-wrapped at once to our storage key,
and recorded -- which spends the passport.
"""

from __future__ import annotations

import hashlib
import logging

from gateway import envelope
from gateway.audit.records import AuditRecord
from gateway.audit.witness import check_offers
from gateway.compliance.facts import Direction
from gateway.config import PartnerConfig
from gateway.errors import (
    FETCH_A_FRESH_KEY_SET,
    KeyNotFoundError,
    NoUsableWrappedKeyError,
    OfferMismatchError,
    PassportReplayError,
    PeerNotAuthorizedError,
    TransferConflictError,
    TransportKeyNotAcceptedError,
    XbgwError,
)
from gateway.keys import KeyRef, Purpose
from gateway.ledger import Count, Inbound
from gateway.passport import PassportVerifier, VerifiedPassport
from gateway.receiver.cancel import refuse_ended
from gateway.receiver.context import Context
from gateway.spool import check_transfer_id
from gateway.transfer import OfferResult, TransferState

log = logging.getLogger("xbgw.receiver")

MESSAGE_OVERHEAD = envelope.TAG_LEN + 1024  # a segment's tag and its message's other fields


class Offers:
    """The offer step of one receiver."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def offer(
        self,
        verifier: PassportVerifier,
        peer: PartnerConfig,
        token: str,
        header_bytes: bytes,
    ) -> OfferResult:
        try:
            passport = verifier.verify(token)
        except XbgwError as exc:
            self._refused(peer, None, exc)
            raise
        try:
            return self._offer(passport, peer, header_bytes)
        except XbgwError as exc:
            self._refused(peer, passport, exc)
            raise

    def _refused(
        self, peer: PartnerConfig, passport: VerifiedPassport | None, error: XbgwError
    ) -> None:
        """One audit record per refused offer: the error type and status, the rules that
        applied; the transfer id only from a passport that verified (otherwise it is the
        partner's text)."""
        if isinstance(error, TransferConflictError):
            return  # busy: the same offer is made again shortly; nothing was decided
        ctx = self._ctx
        transfer_id = None if passport is None else passport.claims.jti
        rules = [] if transfer_id is None else ctx.border.trail(Direction.INGRESS, transfer_id)
        record = AuditRecord(
            "offer.refused",
            int(ctx.clock()),
            {
                "transfer_id": transfer_id,
                "partner": peer.id,
                "error": type(error).__name__,
                "status": error.grpc_status,
                "rules": rules,
            },
        )
        ctx.ledger.append_audit(record.encode(ctx.me))

    def _offer(
        self, passport: VerifiedPassport, peer: PartnerConfig, header_bytes: bytes
    ) -> OfferResult:
        ctx = self._ctx
        # A partner whose audit log showed a fork or rollback sends nothing until an operator
        # has looked (gateway.audit.witness); resumes of its open transfers included.
        check_offers(ctx.ledger, ctx.me, peer.id)
        claims = passport.claims
        if claims.xbgw.sender != peer.id:
            raise PeerNotAuthorizedError(
                f"passport {claims.jti} names sender {claims.xbgw.sender!r}, but the "
                f"connection is from partner {peer.id!r}"
            )
        header = envelope.Header.decode(header_bytes)
        self._check_context(header, passport, peer)
        self._judge(passport, peer)
        limit = ctx.config.limits.max_message_bytes
        if header.segment_size + MESSAGE_OVERHEAD > limit:
            raise OfferMismatchError(
                f"segment size {header.segment_size} does not fit this gateway's message "
                f"limit of {limit} bytes"
            )
        transfer_id = check_transfer_id(claims.jti)
        offered_digest = hashlib.sha256(header_bytes).digest()
        existing = ctx.ledger.inbound(transfer_id)
        if existing is not None:
            return _resume(existing, peer, offered_digest)
        with ctx.busy(transfer_id, "offer", peer.id):
            return self._create(peer, passport, header, offered_digest)

    def _create(
        self,
        peer: PartnerConfig,
        passport: VerifiedPassport,
        header: envelope.Header,
        offered_digest: bytes,
    ) -> OfferResult:
        """A new inbound transfer: ledger row and partial file, made under the busy guard."""
        ctx = self._ctx
        claims = passport.claims
        transfer_id = claims.jti
        data_key, transport_version = self._open_offered(header)
        stored = envelope.rewrap_for_storage(
            header, data_key, KeyRef(ctx.me, Purpose.STORAGE, ctx.ring.storage), ctx.keys
        )
        stored_bytes = stored.encode()
        byte_limit = claims.xbgw.byte_limit
        if peer.max_transfer_bytes is not None:
            byte_limit = min(byte_limit, peer.max_transfer_bytes)
        # Judged again with the record made under one lock (see compliance.border).
        with ctx.border.reserving():
            count = self._judge(passport, peer, again=True)
            created = ctx.ledger.create_inbound(
                transfer_id=transfer_id,
                sender=peer.id,
                passport=passport.token,
                passport_digest=passport.digest,
                offered_header_digest=offered_digest,
                stored_header=stored_bytes,
                byte_limit=byte_limit,
                classification=claims.xbgw.classification,
                source_jurisdiction=claims.xbgw.src,
                dataset_sha256=claims.sub,
                transport_version=transport_version,
                count=count,
                audit=AuditRecord(
                    "offer.accepted",
                    int(ctx.clock()),
                    {
                        "transfer_id": transfer_id,
                        "partner": peer.id,
                        "passport_digest": passport.digest.hex(),
                        "rules": ctx.border.trail(Direction.INGRESS, transfer_id),
                    },
                ).encode(ctx.me),
            )
        if created is None:  # a concurrent offer of the same passport won the race
            raced = ctx.ledger.inbound(transfer_id)
            assert raced is not None
            return _resume(raced, peer, offered_digest)
        ctx.spool.open_partial(transfer_id, stored_bytes, len(stored_bytes)).close()
        ctx.working.offered(transfer_id, stored, data_key)
        log.info(
            "transfer offered",
            extra={"transfer_id": transfer_id, "partner": peer.id, "outcome": "accepted"},
        )
        return OfferResult(transfer_id, 0, 0, resumed=False)

    def _check_context(
        self, header: envelope.Header, passport: VerifiedPassport, peer: PartnerConfig
    ) -> None:
        context = header.context
        me = self._ctx.me
        problems = []
        if context.transfer_id != passport.claims.jti:
            problems.append(
                f"header transfer id {context.transfer_id!r} is not the passport's "
                f"jti {passport.claims.jti!r}"
            )
        if context.sender_id != peer.id:
            problems.append(f"header sender {context.sender_id!r} is not {peer.id!r}")
        if context.receiver_id != me:
            problems.append(f"header receiver {context.receiver_id!r} is not {me!r}")
        if context.passport_digest != passport.digest:
            problems.append("header passport digest does not match the passport offered")
        if problems:
            raise OfferMismatchError("; ".join(problems))

    def _judge(self, passport: VerifiedPassport, peer: PartnerConfig, again: bool = False) -> Count:
        """The compliance rules at ingress (enforced or recorded, as configured)."""
        return self._ctx.border.judge(
            Direction.INGRESS,
            passport.claims.xbgw,
            transfer_id=passport.claims.jti,
            sender=(peer.id, peer.jurisdiction),
            receiver=(self._ctx.me, self._ctx.config.gateway.jurisdiction),
            again=again,
            has_digest=passport.claims.sub is not None,  # as the sender judged it
        )

    def _open_offered(self, header: envelope.Header) -> tuple[bytes, int]:
        """The data key, and the transport version that opened it."""
        me, ring = self._ctx.me, self._ctx.ring
        ours = [w for w in header.wrapped_keys if w.key_ref.owner == me]
        if not ours:
            raise NoUsableWrappedKeyError(f"no wrapped key in the header is addressed to {me}")
        usable = [
            w.key_ref.version
            for w in ours
            if w.key_ref.purpose is Purpose.TRANSPORT
            and ring.opens(Purpose.TRANSPORT, w.key_ref.version)
        ]
        if not usable:
            versions = ", ".join(str(w.key_ref) for w in ours)
            raise TransportKeyNotAcceptedError(
                f"the data key is wrapped to {versions}, which this gateway does not accept "
                f"(transport versions in service: {ring.in_service(Purpose.TRANSPORT)}, "
                f"active: {ring.transport}); {FETCH_A_FRESH_KEY_SET}"
            )
        try:
            # A partner's header may only use our transport keys, never our storage key.
            data_key = envelope.open_header(
                header, me, self._ctx.keys, transport_versions=usable, storage_versions=()
            )
        except KeyNotFoundError as exc:
            raise NoUsableWrappedKeyError(str(exc)) from None
        return data_key, usable[0]


def _resume(row: Inbound, peer: PartnerConfig, offered_digest: bytes) -> OfferResult:
    if row.sender != peer.id:
        # Say no more than that: another partner's transfer, its outcome and its refusal
        # reason are none of this partner's business.
        raise PassportReplayError(f"passport {row.transfer_id} was already used")
    refuse_ended(row)
    same_offer = row.offered_header_digest == offered_digest
    if row.state is TransferState.COMMITTED and same_offer:
        # The sender lost our receipt (crash before it arrived): let it ask again.
        return OfferResult(
            row.transfer_id, row.next_segment, row.received_bytes, True, committed=True
        )
    if row.state is TransferState.COMMITTED:
        raise PassportReplayError(
            f"passport {row.transfer_id} was already used: the transfer was committed"
        )
    if row.state is TransferState.REFUSED:
        raise PassportReplayError(
            f"passport {row.transfer_id} was already used: the transfer was refused ({row.refusal})"
        )
    if not same_offer:
        raise TransferConflictError(
            f"transfer {row.transfer_id} is in progress with a different envelope header; "
            "a resumed send must offer the same header"
        )
    log.info(
        "transfer resumed",
        extra={
            "transfer_id": row.transfer_id,
            "partner": peer.id,
            "outcome": f"resume at segment {row.next_segment}",
        },
    )
    return OfferResult(row.transfer_id, row.next_segment, row.received_bytes, resumed=True)
