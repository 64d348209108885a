"""The upload: segments strictly in order from the durable resume point, into the spool.

Each segment is decrypted and authenticated before its ciphertext is appended to the spool;
the passport's byte limit is enforced while streaming; the resume point moves only after an
fsync (see ``intake``). The passport bounds the stream in time: an upload is refused at its
start, and at any segment, once the passport's ``exp`` plus ``limits.passport_leeway_seconds``
has passed (``cancel.refuse_late``) -- a transfer finishes within its passport, never on
a stream opened before it ran out. A broken stream keeps what verified. A byte-limit breach
refuses the transfer for good. Held data that no longer verifies (disk corruption) or that the
spool lost restarts the transfer from segment 0.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Iterable

from gateway import envelope
from gateway.config import PartnerConfig
from gateway.errors import (
    ByteLimitError,
    EnvelopeError,
    OfferMismatchError,
    PartialLostError,
    TrailingDataError,
    TransferConflictError,
    TruncatedStreamError,
    XbgwError,
)
from gateway.ledger import Inbound
from gateway.receiver.cancel import refuse_ended, refuse_late
from gateway.receiver.context import Context
from gateway.receiver.intake import Intake, Stripe
from gateway.transfer import SegmentIn, TransferState, UploadResult

log = logging.getLogger("xbgw.receiver")


def upload(
    ctx: Context,
    peer: PartnerConfig,
    segments: Iterable[SegmentIn],
    stripe: Stripe | None = None,
    *,
    owner_checked: bool = False,
) -> UploadResult:
    """``stripe``: this stream is one of a striped upload (``intake.StripedSession``); None:
    the transfer's one stream. ``owner_checked``: the caller has just seen the transfer be
    ``peer``'s (``Deliver``'s own offer), so the early check is not read again; the one under
    the guard always is."""
    iterator = iter(segments)
    first = next(iterator, None)
    if first is None:
        raise OfferMismatchError(
            "an upload must carry at least one segment (or its first message was larger "
            "than the transport limit)"
        )
    transfer_id = first.transfer_id
    if not owner_checked:
        ctx.owned(peer, transfer_id, "upload")  # before the guard: no oracle for others' ids
    if stripe is not None:
        return _striped(ctx, peer, transfer_id, stripe, itertools.chain([first], iterator))
    with ctx.busy(transfer_id, "upload", peer.id):
        row = ctx.owned(peer, transfer_id, "upload")  # read under the guard: it is current
        refuse_ended(row)
        if row.state is not TransferState.RECEIVING:
            raise TransferConflictError(f"transfer {transfer_id} is {row.state}, not receiving")
        refuse_late(ctx, row, "upload")
        # A list (Deliver's one segment) stays one: Intake takes it in this thread.
        stream = segments if isinstance(segments, list) else itertools.chain([first], iterator)
        return _upload(ctx, row, stream)


def _striped(
    ctx: Context,
    peer: PartnerConfig,
    transfer_id: str,
    stripe: Stripe,
    segments: Iterable[SegmentIn],
) -> UploadResult:
    """One stream of a striped upload: the first of its attempt makes the session's one
    intake under the same checks as :func:`upload`; every stream feeds it; the last to end
    settles it as :func:`_upload` settles its one stream."""
    session, creator = ctx.striped(transfer_id, peer.id, stripe)
    if creator:
        row_of: list[Inbound] = []

        def open_intake() -> Intake:
            row = ctx.owned(peer, transfer_id, "upload")  # read under the guard: current
            refuse_ended(row)
            if row.state is not TransferState.RECEIVING:
                raise TransferConflictError(f"transfer {transfer_id} is {row.state}, not receiving")
            refuse_late(ctx, row, "upload")
            row_of.append(row)
            return _intake(ctx, row)

        def settle(intake: Intake, failure: BaseException | None) -> UploadResult:
            return _settle(ctx, row_of[0], intake, failure)

        session.setup(open_intake, settle)
    return session.feed(stripe, segments)


def _upload(ctx: Context, row: Inbound, segments: Iterable[SegmentIn]) -> UploadResult:
    intake = _intake(ctx, row)
    try:
        intake.run(segments)
    except BaseException as exc:
        _settle(ctx, row, intake, exc)
        raise
    return _settle(ctx, row, intake, None)


def _settle(
    ctx: Context, row: Inbound, intake: Intake, failure: BaseException | None
) -> UploadResult:
    """The end of an upload, clean or not. A byte-limit breach refuses the transfer for
    good. Otherwise durable first: whatever ended the stream -- the sender gone (the request
    iterator raises once gRPC sees the reset, or keepalive the black hole), a bad segment, a
    full disk -- every segment that verified is fsynced and becomes the resume point before
    the error goes on, so each attempt keeps at least what it brought."""
    transfer_id = row.transfer_id
    if isinstance(failure, ByteLimitError):
        intake.discard()
        ctx.refuse(transfer_id, row.sender, str(failure), type(failure).__name__)
        return UploadResult(intake.next_index, intake.received, intake.done)
    intake.close()
    _keep_hash(ctx, row, intake)
    if failure is not None:
        _ended_early(row, intake, _why(failure))
    elif not intake.done:
        # A clean end before the final segment: the sender paused -- or gRPC ended the
        # request stream when keepalive found the connection dead (it ends it cleanly then).
        _ended_early(row, intake, "the stream ended before the final segment")
    return UploadResult(intake.next_index, intake.received, intake.done)


def _intake(ctx: Context, row: Inbound) -> Intake:
    """The transfer's one writer, from its durable resume point."""
    transfer_id = row.transfer_id
    if row.final_received:
        raise TrailingDataError(
            f"transfer {transfer_id} already received its final segment; send the manifest"
        )
    header = ctx.working.header(row)
    data_key = ctx.data_key(row)
    decryptor = envelope.StreamDecryptor(header, data_key, start_index=row.next_segment)
    segment_len = header.segment_size + envelope.TAG_LEN
    hasher = held_hash(ctx, row, header, data_key)  # before open_partial cuts the file back
    try:
        partial = ctx.spool.open_partial(
            transfer_id,
            row.stored_header,
            len(row.stored_header) + row.next_segment * segment_len,
        )
    except PartialLostError:
        ctx.ledger.record_progress(transfer_id, 0, 0, False)
        ctx.working.drop(transfer_id)
        raise

    def in_time() -> None:
        ctx.holds_lease(row)  # another node took the transfer over: stop writing at once
        refuse_late(ctx, row, "upload")

    return Intake(
        ctx.ledger,
        transfer_id,
        decryptor,
        hasher,
        partial,
        row.received_bytes,
        row.byte_limit,
        in_time=in_time,
    )


def _ended_early(row: Inbound, intake: Intake, why: str) -> None:
    log.info(
        "upload ended early (%s); resume point %d is durable",
        why,
        intake.next_index,
        extra={
            "transfer_id": row.transfer_id,
            "partner": row.sender,
            "outcome": f"resume at segment {intake.next_index}",
            "bytes": intake.received,
        },
    )


def _why(exc: BaseException) -> str:
    """Why a stream ended: our own errors say it; a gRPC cancellation (the peer is gone)
    carries no message, only its type."""
    return str(exc) if isinstance(exc, XbgwError) else f"the stream broke: {type(exc).__name__}"


def _keep_hash(ctx: Context, row: Inbound, intake: Intake) -> None:
    fingerprint = ctx.spool.fingerprint(row.transfer_id)
    ctx.working.put_hasher(row, intake.next_index, intake.hasher, fingerprint)


def held_hash(
    ctx: Context, row: Inbound, header: envelope.Header, data_key: bytes
) -> hashlib._Hash:
    """The plaintext hash of the segments held: the running one if the file is unchanged,
    else recomputed; held data that is gone or fails verification restarts the transfer."""
    hasher = ctx.working.take_hasher(row, ctx.spool.fingerprint(row.transfer_id))
    if hasher is not None:
        return hasher
    if row.next_segment and not ctx.spool.holds(row.transfer_id):
        raise ctx.restart(row, "is gone")
    try:
        return rehash(ctx, row, header, data_key)
    except TruncatedStreamError:
        raise ctx.restart(row, "is shorter than its resume point") from None
    except EnvelopeError:
        raise ctx.restart(row, "failed verification (changed on disk?)") from None


def rehash(ctx: Context, row: Inbound, header: envelope.Header, data_key: bytes) -> hashlib._Hash:
    """Recompute the plaintext hash of the segments already held (after a restart).

    A crash between the rename into the inbox and the ledger commit leaves only the
    committed file: the retried Finish hashes that one (``Spool.read_held``).
    """
    hasher = hashlib.sha256()
    if row.next_segment == 0:
        return hasher
    decryptor = envelope.StreamDecryptor(header, data_key)
    with ctx.spool.read_held(row.transfer_id) as src:
        src.seek(len(row.stored_header))
        for plaintext in envelope.decrypt_segments(
            src, decryptor, count=row.next_segment, last_is_final=row.final_received
        ):
            hasher.update(plaintext)
    return hasher
