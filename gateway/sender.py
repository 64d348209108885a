"""The sending side of a transfer: passport, offer, stream from the resume point, receipt.

The sender talks to a partner only through a :class:`~gateway.transfer.PartnerLink` (the
gRPC one is in ``partner_link.py``; the tests' loopback calls a receiver in-process) and to
the HSM only through the small key protocols, so every protocol case can run without
processes, sockets or a token.

* **Before the offer** the passport is verified as the receiver will verify it (issuer,
  signature, time, audience = the partner), its sender must be this gateway, the egress rules
  must allow it, and the data must fit its byte limit and, when the caller declared the
  data's SHA-256 and the passport names one (``sub``), be that data set: a refusal here
  spends nothing. A declared digest also binds the stream: ``pipeline`` never releases the
  final segment of data that does not hash to it.
* **Within the passport**: every partner call of the transfer (offer, each upload attempt,
  manifest) is made only before ``exp`` plus ``limits.passport_leeway_seconds`` -- the
  receiver refuses after it -- and no wait for a busy or unreachable partner sleeps past it.
* **Resume**: the data key survives crashes re-wrapped to our own storage key (the outbound
  record); segment ``i`` must carry the same plaintext on every attempt -- see ``pipeline``.
  Within a send, an attempt resumes from the partner's point out of the replay window
  (``retry.SegmentReplay``); a point older than the window reaches is read again from a
  handed-over file (``reread``: by offset, each segment checked against its recorded tag),
  while a stream can only end the send -- send again to resume.
* **Striping** (``partners[].connections: N`` > 1, for long links, where one TCP
  connection's buffers cap the rate): each upload attempt runs N Upload calls at once, each
  on its own connection (``partner_link``), and segment ``i`` goes on stream ``i mod N``,
  each stream in increasing order (``gateway.striping``). The streams are fed from the one
  pipeline through one slot per stream: a stream that falls behind holds the reader, so no
  stream runs more than N segments ahead of the slowest -- the receiver's reorder window is
  at least that, so it never has to hold back the segment it waits for -- and the memory
  outside the budget is at most one segment per stream. When any stream fails the others
  are ended (their calls cancelled) and the send resumes, as for one stream, from the
  partner's contiguous point, which the next offer tells. Each attempt carries a fresh
  random token, so the receiver never mixes its streams with a late one of an older attempt.
  The stripes must all reach the one node writing the transfer: behind a TCP balancer they
  may not (it places each connection on some node, and the node without the transfer's
  lease refuses its stripes as held by another node). Then the send goes on unstriped,
  over the transfer's one lane, after one pause (the holder ends its streams meanwhile),
  and so do all uploads to that partner for ``UNSTRIPED_SECONDS`` (logged once): one stream
  to one node always works, and resumes from the partner's contiguous point like any other.
  When the holder got none of segment 0's stripe, that point may be older than the segments
  the send still holds (the split attempt pushed them out): a handed-over file is read
  again from there; a stream ends the send as after any such loss -- send again to resume
  -- and the next send does not stripe. An attempt runs on no more streams than it has
  segments left (a stream names its transfer in its first segment), and when the partner
  refuses some stripes as busy (it takes fewer uploads of ours at once than N) a send with
  a wait goes on, after the pause, over those it admitted (one fewer at least each time);
  one without says to lower ``connections`` or to send with ``--wait``.
* **After the upload** the manifest is signed in the HSM and the receipt verified under the
  partner's pinned key and compared with the manifest before the transfer counts as
  delivered.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TypeVar

from gateway import envelope
from gateway.audit.evidence import Evidence
from gateway.audit.merkle import ProofError
from gateway.audit.proof import check_commit_proof
from gateway.audit.records import AuditRecord
from gateway.compliance.border import Border
from gateway.compliance.facts import Direction
from gateway.config import GatewayConfig, PartnerConfig
from gateway.documents import KeySet, Manifest, read_own_receipt, sign_manifest
from gateway.errors import (
    ByteLimitError,
    DatasetMismatchError,
    ManifestError,
    PartnerError,
    PassportExpiredError,
    PassportReplayError,
    PeerNotAuthorizedError,
    SignatureError,
    SourceChangedError,
    SourceSizeError,
    TransferConflictError,
    UsageError,
)
from gateway.keyring import KeyRing
from gateway.keys import KeyRef, Purpose
from gateway.ledger import Count, Ledger, Outbound
from gateway.ledger_leases import LeaseTakenError
from gateway.partner_keys import PartnerKeys
from gateway.passport import PassportVerifier, VerifiedPassport
from gateway.pipeline import Pipeline, Rereadable
from gateway.receiver.context import when
from gateway.retention import refuse_final
from gateway.retry import REAL_TIMER, REPLAY_BYTES, Patience, ReplayLostError, Timer, Waiting
from gateway.signed import Signed
from gateway.striping import StripesBusyError, StripesSplitError, upload_striped
from gateway.transfer import (
    CALL_NAMES,
    CommitProof,
    FinishResult,
    GatewayKeys,
    OfferResult,
    PartnerLink,
    SegmentIn,
    TransferState,
    stale_transport_key,
    transient,
)

log = logging.getLogger("xbgw.sender")
T = TypeVar("T")

#: Statuses of an offer refused before the receiver records anything (its passport, party
#: and rule checks come first; ALREADY_EXISTS, busy or storage errors may follow a record).
REFUSED_BEFORE_RECORDING = frozenset({"PERMISSION_DENIED", "UNAUTHENTICATED"})
#: What a Deliver message carries besides the ciphertext, passport and header: the segment's
#: other fields, the signed manifest and the framing (a manifest is ~300 bytes).
ONE_CALL_OVERHEAD = 4096
#: How long a partner's uploads go unstriped after its stripes reached different nodes: the
#: balancer keeps each connection where it placed it, so striping again at once would only
#: split again -- and a split attempt can cost its send (below). A reload forgets it.
UNSTRIPED_SECONDS = 600


@dataclass(frozen=True)
class ReceiptSummary:
    transfer_id: str
    partner: str
    plaintext_sha256: bytes
    plaintext_size: int
    committed_at: int
    signed_by: str
    receipt: Signed


@dataclass(frozen=True)
class Progress:
    kind: str  # "accepted" | "progress" | "waiting" (then ``waiting`` says for what)
    transfer_id: str
    done_bytes: int
    total_bytes: int
    waiting: Waiting | None = None


class Sender:
    """Sending-side domain logic of one gateway."""

    def __init__(
        self,
        config: GatewayConfig,
        keys: GatewayKeys,
        ring: KeyRing,
        ledger: Ledger,
        link: PartnerLink,
        clock: Callable[[], float] = time.time,
        partner_keys: PartnerKeys | None = None,
        border: Border | None = None,
        timer: Timer = REAL_TIMER,
    ) -> None:
        """``partner_keys``: the gateway's one view of its partners' keys, shared with its
        receiver; by default one that fetches key sets through ``link``. ``timer``: what
        waits for an unreachable or busy partner sleep on."""
        self._timer = timer
        # Late-bound: the link's method is looked up at each fetch (a test may replace it).
        fetch = lambda partner: link.key_set(partner)  # noqa: E731, PLW0108
        self._partner_keys = partner_keys or PartnerKeys(config, ledger, fetch, clock)
        self._keys = keys
        self._ring = ring
        self._ledger = ledger
        self._link = link
        #: The compliance rules, shared with the receiver in the daemon.
        self._border = border or Border(config.compliance, ledger, clock)
        self._clock = clock
        self._active: set[str] = set()
        self._active_lock = threading.Lock()
        #: Partners whose stripes reached different nodes, and until when (monotonic) their
        #: uploads go unstriped (guarded by ``_active_lock``; forgotten on reconfigure).
        self._unstriped: dict[str, float] = {}
        self._config = config

    def reconfigure(self, config: GatewayConfig) -> None:
        """Adopt a new configuration (a partner whose pinned key changed is re-pinned by
        ``partner_keys`` at its next use)."""
        with self._active_lock:
            self._config = config
            self._unstriped.clear()  # a partner pointed elsewhere may stripe again
        self._partner_keys.reconfigure(config)
        self._border.reconfigure(config.compliance)

    @property
    def me(self) -> str:
        return self._config.id

    def send(
        self,
        partner_id: str,
        token: str,
        chunks: Iterable[bytes],
        total_size: int | None,
        on_progress: Callable[[Progress], None] = lambda _: None,
        wait_seconds: float | None = None,
        plaintext_sha256: bytes | None = None,
        reread: Rereadable | None = None,
    ) -> ReceiptSummary:
        """Send ``chunks`` to ``partner_id`` under passport ``token``; return the receipt.

        ``total_size`` binds: the data must be exactly that long (None: not known ahead).
        ``wait_seconds``: how long an outage of the partner (unreachable, busy) may last
        before the send gives up, retrying with backoff meanwhile and resuming where the
        partner stands (None: ``limits.partner_wait_seconds``; 0: give up at once).
        ``plaintext_sha256``: the SHA-256 of all of ``chunks``, if the caller could compute
        it first (None: not declared); binding like ``total_size``. ``reread``: the file
        ``chunks`` reads from offset 0, if it can be read again by offset (a handed-over
        regular file): a resume older than the replay window re-reads it (None: a stream).
        """
        config = self._config
        partner = config.partner(partner_id)
        passport = self._check_passport(config, partner, token)
        wait = config.limits.partner_wait_seconds if wait_seconds is None else wait_seconds
        claims = passport.claims
        until = _PassportTime(
            claims.jti, claims.exp, config.limits.passport_leeway_seconds, self._clock
        )
        patience = Patience(wait, until.bounding(self._timer))
        retry = _Retry(claims.jti, partner.id, patience, on_progress, until)
        with self._sending(claims.jti):
            return self._send(
                partner,
                passport,
                self._leased(claims.jti, chunks),
                total_size,
                on_progress,
                retry,
                plaintext_sha256,
                reread,
            )

    def _check_passport(
        self, config: GatewayConfig, partner: PartnerConfig, token: str
    ) -> VerifiedPassport:
        """What the receiver will check, checked first: a refusal here spends nothing."""
        verifier = PassportVerifier(
            config.trusted_issuer_keys(),
            audience=partner.id,
            leeway_seconds=config.limits.passport_leeway_seconds,
            max_token_bytes=config.limits.max_passport_bytes,
            clock=self._clock,
        )
        passport = verifier.verify(token)
        claims = passport.claims
        if claims.xbgw.sender != self.me:
            raise PeerNotAuthorizedError(
                f"passport {claims.jti} is for sender {claims.xbgw.sender!r}, not this "
                f"gateway ({self.me})"
            )
        self._judge(config, partner, passport)
        return passport

    def _judge(
        self,
        config: GatewayConfig,
        partner: PartnerConfig,
        passport: VerifiedPassport,
        again: bool = False,
    ) -> Count:
        """The compliance rules of this side (egress: always enforced); what it counts."""
        return self._border.judge(
            Direction.EGRESS,
            passport.claims.xbgw,
            transfer_id=passport.claims.jti,
            sender=(self.me, config.gateway.jurisdiction),
            receiver=(partner.id, partner.jurisdiction),
            again=again,
            has_digest=passport.claims.sub is not None,
        )

    def hold(self, transfer_id: str) -> AbstractContextManager[None]:
        """Keep a send of ``transfer_id`` from starting while its stored header is rewritten
        (``gateway.rewrap``); refused at once if one is at work."""
        return self._sending(transfer_id)

    @contextmanager
    def _sending(self, transfer_id: str) -> Iterator[None]:
        """One send per transfer at a time: a second would race the first's nonces and rows."""
        with self._active_lock:
            if transfer_id in self._active:
                raise TransferConflictError(
                    f"transfer {transfer_id} is already being sent by this gateway; wait for "
                    "that send to finish or fail, then resend to resume"
                )
            self._active.add(transfer_id)
        try:
            # Nodes sharing the ledger: the same guard across them (no-op on SQLite).
            lease = _outbound_lease(transfer_id)
            try:
                self._ledger.take_lease(lease)
            except LeaseTakenError:
                raise TransferConflictError(
                    f"transfer {transfer_id} is already being sent by another node of this "
                    "gateway; wait for that send to finish or fail, then resend to resume"
                ) from None
            try:
                yield
            finally:
                self._ledger.drop_lease(lease)
        finally:
            with self._active_lock:
                self._active.discard(transfer_id)

    def _leased(self, transfer_id: str, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """``chunks``, each read only while this node still holds the send's lease (memory
        only; nothing on SQLite): once another node took the send over (this node stalled,
        or was cut from the shared ledger, longer than a lease lives) the send stops with
        ``LeaseLostError`` -- or a ``StorageError`` if the lease went a lifetime unrenewed --
        rather than race that node; the partner's own lease keeps one writer there."""
        lease = _outbound_lease(transfer_id)
        for chunk in chunks:
            self._ledger.check_lease(lease)
            yield chunk

    def _send(
        self,
        partner: PartnerConfig,
        passport: VerifiedPassport,
        chunks: Iterable[bytes],
        total_size: int | None,
        on_progress: Callable[[Progress], None],
        retry: _Retry,
        declared_sha256: bytes | None,
        reread: Rereadable | None = None,
    ) -> ReceiptSummary:
        claims = passport.claims
        transfer_id = claims.jti
        if total_size is not None and total_size > claims.xbgw.byte_limit:
            # Refuse before the offer: streaming up to the limit would only burn the passport.
            raise ByteLimitError(
                f"the data is {total_size} bytes; passport {transfer_id} allows "
                f"{claims.xbgw.byte_limit}"
            )
        _check_declared(transfer_id, claims.sub, declared_sha256)
        row = self._ledger.outbound(transfer_id)
        if row is not None and row.state is TransferState.DELIVERED:
            raise PassportReplayError(
                f"transfer {transfer_id} was already delivered to {row.partner}"
            )
        if row is not None and row.partner != partner.id:
            raise PassportReplayError(f"transfer {transfer_id} is in use for {row.partner}")
        if row is not None and row.state.ended:
            refuse_final(row)  # xbgw cancel or expiry: its data key is gone
        first: _FirstSegment | None = None
        if row is None:
            if total_size is not None and total_size <= self._config.limits.segment_size:
                first = _FirstSegment(b"".join(_held_to(chunks, total_size, transfer_id)))
                chunks = [first.data]
            row, data_key = self._prepare(partner, passport, retry, first, declared_sha256)
        else:  # resuming: the data key survives only re-wrapped to our storage key
            data_key = envelope.open_header(
                envelope.Header.decode(row.stored_header), self.me, self._keys
            )
        if self._fits_one_call(partner, passport, row, total_size):
            assert total_size is not None
            data = b"".join(_held_to(chunks, total_size, transfer_id))
            done = self._deliver(
                partner,
                passport,
                row,
                data_key,
                data,
                declared_sha256,
                on_progress,
                retry,
                sealed=first.ciphertext if first is not None else None,
            )
            if done is not None:
                return done
            chunks = [data]  # the partner has no Deliver (an older gateway): three calls
        try:
            offer = self._offer_retried(partner, passport, row, retry)
        except PartnerError as exc:
            if not self._reseal_allowed(exc, partner, transfer_id):
                raise
            row, data_key = self._prepare(partner, passport, retry)
            offer = self._offer_retried(partner, passport, row, retry)
        sent_header = envelope.Header.decode(row.sent_header)
        total = total_size or 0
        on_progress(Progress("accepted", transfer_id, offer.received_bytes, total))
        log.info(
            "transfer accepted",
            extra={
                "transfer_id": transfer_id,
                "partner": partner.id,
                "outcome": f"from {offer.next_segment}",
            },
        )
        pipeline = Pipeline(
            self._ledger,
            transfer_id,
            envelope.StreamEncryptor(sent_header, data_key),
            offer.next_segment,
            lambda done: on_progress(Progress("progress", transfer_id, done, total)),
            expect_sha256=declared_sha256,
            reread=reread,
        )
        held = chunks if total_size is None else _held_to(chunks, total_size, transfer_id)
        pipeline.start(envelope.cut_segments(held, sent_header.segment_size))
        if offer.committed:
            # Delivered before, receipt lost: re-read the source for the manifest only.
            for _ in pipeline.segments():
                pass
        else:
            try:
                self._upload(partner, passport, row, pipeline, offer.next_segment, retry, total)
            except BaseException:
                pipeline.abandon()
                pipeline.raise_failure()  # the source's failure explains more, if any
                raise
        pipeline.raise_failure()
        manifest = Manifest(
            transfer_id=transfer_id,
            sender=self.me,
            receiver=partner.id,
            header_core_digest=sent_header.core_digest(),
            passport_digest=passport.digest,
            plaintext_sha256=pipeline.hasher.digest(),
            plaintext_size=pipeline.size,
            segment_count=pipeline.segment_count,
        )
        if claims.sub is not None and claims.sub != manifest.plaintext_sha256.hex():
            raise ManifestError(
                f"the data sent is not the data set passport {transfer_id} names (sub "
                f"{claims.sub[:16]}..., sent {manifest.plaintext_sha256.hex()[:16]}...); "
                "nothing was committed"
            )
        retry.progressed()  # the data has crossed: the manifest gets the whole wait
        return self._finish(partner, manifest, retry)

    def _upload(
        self,
        partner: PartnerConfig,
        passport: VerifiedPassport,
        row: Outbound,
        pipeline: Pipeline,
        start: int,
        retry: _Retry,
        total: int,
    ) -> None:
        """Upload from segment ``start``; a stream cut or refused as busy is offered again
        after a pause and continues from where the partner then stands (the segments in
        flight are replayed from memory, older ones read again from a handed-over file),
        until the wait runs out. With ``connections: N`` the upload is striped
        (:func:`gateway.striping.upload_striped`); a cut of any stripe ends the attempt and
        resumes from the partner's contiguous point the same way.

        The partner may hold every segment already (the stream or the manifest broke after
        the final one): then there is nothing to upload -- an empty upload is refused -- and
        the manifest alone finishes the transfer."""
        lanes = self._lanes(partner)
        # Each connection has its own data in flight to replay after a cut (still paid out of
        # the shared budget, so under load each send keeps less).
        replay = pipeline.replay(REPLAY_BYTES * lanes)
        while True:
            try:
                segments = replay.attempt(start)
            except ReplayLostError as exc:
                raise PartnerError(
                    f"partner {partner.id} lost part of transfer {row.transfer_id} in the "
                    f"outage ({exc}): send the same data with the same passport again to "
                    "resume",
                    "ABORTED",
                ) from None
            first = next(segments, None)
            if first is None:
                return
            try:
                retry.within_passport("upload")
                stream = itertools.chain([first], segments)
                if lanes > 1:
                    upload_striped(self._link, partner, stream, lanes)  # type: ignore[arg-type]
                else:
                    self._link.upload(partner, stream)
                return
            except StripesSplitError as exc:
                lanes = 1
                with self._active_lock:
                    self._unstriped[partner.id] = time.monotonic() + UNSTRIPED_SECONDS
                log.warning(
                    "the stripes of the upload reached different nodes of %s (a balancer in "
                    "front of it places each connection); uploads to it go on unstriped, over "
                    "one connection, for %d min: %s",
                    partner.id,
                    UNSTRIPED_SECONDS // 60,
                    exc,
                    extra={
                        "transfer_id": row.transfer_id,
                        "partner": partner.id,
                        "outcome": "unstriped",
                    },
                )
                retry.pause_or_raise(exc)  # as for busy: the holder ends its streams meanwhile
            except StripesBusyError as exc:
                # The partner ran some stripes: the next attempt asks no more of it (fewer
                # each time, so this ends at one stream). After the pause, as for busy: the
                # partner ends this attempt's streams meanwhile, so the next offer tells
                # where they left the transfer.
                lanes = max(1, min(exc.admitted, lanes - 1))
                log.info(
                    "%s refused some stripes as busy; the upload goes on over %d",
                    partner.id,
                    lanes,
                    extra={"transfer_id": row.transfer_id, "partner": partner.id},
                )
                retry.pause_or_raise(exc)
            except PartnerError as exc:
                retry.pause_or_raise(exc)
            offer = self._offer_retried(partner, passport, row, retry)
            if offer.next_segment > start:
                retry.progressed()
            start = offer.next_segment
            retry.report(Progress("accepted", row.transfer_id, offer.received_bytes, total))

    def _lanes(self, partner: PartnerConfig) -> int:
        """TCP connections to stripe an upload to ``partner`` over: its ``connections``, if
        the link can stripe (a link without ``upload_stripe`` uploads as one stream) and its
        stripes did not reach different nodes lately (``UNSTRIPED_SECONDS``)."""
        with self._active_lock:
            until = self._unstriped.get(partner.id)
        if until is not None and time.monotonic() < until:
            return 1
        if partner.connections > 1 and callable(getattr(self._link, "upload_stripe", None)):
            return partner.connections
        return 1

    def _prepare(
        self,
        partner: PartnerConfig,
        passport: VerifiedPassport,
        retry: _Retry,
        first: _FirstSegment | None = None,
        declared_sha256: bytes | None = None,
    ) -> tuple[Outbound, bytes]:
        """The outbound record with a new header and data key. ``first``: the whole data of
        a send that may go in one call; if it does (:meth:`_fits_one_call`) and is the data
        declared and named, its one segment is sealed here and its tag recorded in the
        record's own transaction (one durable commit, not two), left in ``first``."""
        transfer_id, passport_digest = passport.claims.jti, passport.digest
        key_set = retry.call(lambda: self._key_set(partner))
        context = envelope.StreamContext(transfer_id, self.me, partner.id, passport_digest)
        header, data_key = envelope.seal_header(
            context,
            KeyRef(partner.id, Purpose.TRANSPORT, key_set.current_version),
            key_set.current,
            segment_size=self._config.limits.segment_size,
        )
        stored = envelope.rewrap_for_storage(
            header, data_key, KeyRef(self.me, Purpose.STORAGE, self._ring.storage), self._keys
        )
        tags: list[tuple[int, bytes]] = []
        if first is not None and first.sealable(passport, header, declared_sha256, self._config):
            first.ciphertext = envelope.StreamEncryptor(header, data_key).encrypt_segment(
                0, first.data, True
            )
            tags.append((0, first.ciphertext[-envelope.TAG_LEN :]))
        # Judged again with the record made under one lock: the counters include every send
        # decided before this one, so two cannot both slip under a threshold.
        with self._border.reserving():
            count = self._judge(self._config, partner, passport, again=True)
            row = self._ledger.create_outbound(
                transfer_id=transfer_id,
                partner=partner.id,
                passport_digest=passport_digest,
                sent_header=header.encode(),
                stored_header=stored.encode(),
                count=count,
                expires_at=passport.claims.exp,
                segment_tags=tags,
            )
        return row, data_key

    def _key_set(self, partner: PartnerConfig) -> KeySet:
        """The partner's key set, followed from its pinned signing key (cached for
        ``keys.key_set_refresh`` seconds)."""
        return self._partner_keys.key_set(partner)

    def _offer(
        self, partner: PartnerConfig, passport: VerifiedPassport, row: Outbound
    ) -> OfferResult:
        """Offer the transfer. A refusal the partner makes before it records anything (the
        passport, the parties or its rules: statuses in ``REFUSED_BEFORE_RECORDING``) also
        drops our record of a send that never released a segment: nothing of it exists
        there, and its count must not stay reserved against the exporter's yearly totals."""
        try:
            return self._link.offer(partner, passport.token, row.sent_header)
        except PartnerError as exc:
            if exc.grpc_status in REFUSED_BEFORE_RECORDING and not stale_transport_key(exc):
                self._ledger.discard_unsent_outbound(row.transfer_id)
            raise

    def _offer_retried(
        self, partner: PartnerConfig, passport: VerifiedPassport, row: Outbound, retry: _Retry
    ) -> OfferResult:
        return retry.call(lambda: self._offer(partner, passport, row), "offer")

    def _reseal_allowed(
        self, error: PartnerError, partner: PartnerConfig, transfer_id: str
    ) -> bool:
        """The partner refused the offer as sealed to a transport key it no longer accepts
        (it rotated, and our cached key set is stale): seal again to its fresh key set -- once,
        and only if no segment of the send ever left (the refused offer created nothing
        there, so the passport is not spent)."""
        if not stale_transport_key(error):
            return False
        if not self._ledger.discard_unsent_outbound(transfer_id):
            return False
        self._partner_keys.forget(partner.id)
        log.info(
            "offer refused as sealed to a stale transport key; sealing again to a fresh key set",
            extra={"transfer_id": transfer_id, "partner": partner.id, "outcome": "reseal"},
        )
        return True

    def _finish(self, partner: PartnerConfig, manifest: Manifest, retry: _Retry) -> ReceiptSummary:
        signed = sign_manifest(
            self._keys, KeyRef(self.me, Purpose.SIGNING, self._ring.signing), manifest
        )
        # Retried like every call: the partner holds the data, and Finish is idempotent (a
        # commit whose reply was lost answers again with the same receipt).
        finished = retry.call(
            lambda: self._link.finish(partner, manifest.transfer_id, signed), "manifest"
        )
        return self._receipt(partner, manifest, signed, finished)

    def _receipt(
        self, partner: PartnerConfig, manifest: Manifest, signed: Signed, finished: FinishResult
    ) -> ReceiptSummary:
        """The partner's answer to our manifest (Finish or Deliver): the receipt verified and
        compared with the manifest, the commit proof checked, the delivery recorded."""
        receipt_blob = finished.receipt
        # Under the partner's key history; a version not learnt yet, or a signature that does
        # not verify, fetches its key set once before the receipt is refused.
        try:
            kid = self._partner_keys.verify(
                partner, receipt_blob, "receipt", refetch_on_failure=True
            )
        except SignatureError as exc:
            # The partner has most likely committed: the transfer stays resumable, and a
            # resend once the key is trusted collects the same receipt (its offer answers
            # "committed") rather than sending the data again.
            raise SignatureError(
                f"{exc}; {partner.id} may have committed transfer {manifest.transfer_id}: "
                "once its key is trusted, send again to collect the receipt"
            ) from None
        receipt = read_own_receipt(receipt_blob, partner.id)
        if not receipt.confirms(manifest, signed.digest):
            raise ManifestError(f"receipt from {partner.id} does not match what was sent")
        record = AuditRecord(
            "transfer.delivered",
            receipt.committed_at,
            {
                "transfer_id": manifest.transfer_id,
                "partner": partner.id,
                "passport_digest": manifest.passport_digest.hex(),
                "manifest_digest": signed.digest.hex(),
                "plaintext_sha256": manifest.plaintext_sha256.hex(),
                "plaintext_size": manifest.plaintext_size,
                "receipt_digest": receipt_blob.digest.hex(),
                "receipt_key": receipt_blob.kid,
            },
        )
        evidence = Evidence(
            manifest.transfer_id,
            self.me,
            partner.id,
            signed,
            receipt_blob,
            self._checked_proof(partner, manifest.transfer_id, receipt_blob, finished.proof),
        )
        self._ledger.deliver_outbound(
            manifest.transfer_id,
            manifest.plaintext_size,
            manifest.plaintext_sha256,
            receipt_blob,
            record.encode(self.me),
            evidence.to_json(),
        )
        log.info(
            "transfer delivered",
            extra={
                "transfer_id": manifest.transfer_id,
                "partner": partner.id,
                "outcome": "delivered",
                "bytes": manifest.plaintext_size,
            },
        )
        return ReceiptSummary(
            transfer_id=manifest.transfer_id,
            partner=partner.id,
            plaintext_sha256=manifest.plaintext_sha256,
            plaintext_size=manifest.plaintext_size,
            committed_at=receipt.committed_at,
            signed_by=str(kid),
            receipt=receipt_blob,
        )

    # --- a transfer of one segment in one partner call (issue 14) ---------------------------

    def _fits_one_call(
        self,
        partner: PartnerConfig,
        passport: VerifiedPassport,
        row: Outbound,
        total_size: int | None,
    ) -> bool:
        """A known size that fits one segment of the sealed header, in a Deliver message
        within our message limit (``ONE_CALL_OVERHEAD`` for the rest of it)."""
        if total_size is None:
            return False
        header = envelope.Header.decode(row.sent_header)
        return _one_call_fits(total_size, passport, header, self._config)

    def _deliver(
        self,
        partner: PartnerConfig,
        passport: VerifiedPassport,
        row: Outbound,
        data_key: bytes,
        data: bytes,
        declared_sha256: bytes | None,
        on_progress: Callable[[Progress], None],
        retry: _Retry,
        resealed: bool = False,
        sealed: bytes | None = None,
    ) -> ReceiptSummary | None:
        """Send ``data`` (one segment) as one Deliver call -- no pipeline, no threads; the
        same checks, ledger rows, progress events and receipt checks as the three calls.
        None if the partner has no Deliver: the caller makes the three calls.

        The segment's GCM tag is recorded before the call, as the pipeline records every
        tag before its segment leaves (resume safety: see ``pipeline``). A refusal of the
        offer step is handled as a refused Offer is (a refusal before recording drops our
        record, a stale transport key seals once more) only when this was the first message
        ever to carry the header: otherwise the partner may hold what an earlier one brought.

        ``sealed``: the segment, sealed by :meth:`_prepare` with its tag recorded in the new
        record (so it is the first message to carry the header)."""
        transfer_id = passport.claims.jti
        header = envelope.Header.decode(row.sent_header)
        digest = hashlib.sha256(data).digest()
        if declared_sha256 is not None and digest != declared_sha256:
            raise DatasetMismatchError(
                f"the data of transfer {transfer_id} does not hash to the SHA-256 declared for "
                f"it (declared {declared_sha256.hex()[:16]}..., read {digest.hex()[:16]}...): "
                "nothing was sent or delivered; if the file changed while it was sent, send it "
                "again"
            )
        manifest = Manifest(
            transfer_id=transfer_id,
            sender=self.me,
            receiver=partner.id,
            header_core_digest=header.core_digest(),
            passport_digest=passport.digest,
            plaintext_sha256=digest,
            plaintext_size=len(data),
            segment_count=1,
        )
        sub = passport.claims.sub
        if sub is not None and sub != digest.hex():
            raise ManifestError(
                f"the data sent is not the data set passport {transfer_id} names (sub "
                f"{sub[:16]}..., sent {digest.hex()[:16]}...); nothing was committed"
            )
        if sealed is not None:
            ciphertext, first_message = sealed, True
        else:
            ciphertext = envelope.StreamEncryptor(header, data_key).encrypt_segment(0, data, True)
            first_message = self._record_tag(transfer_id, ciphertext[-envelope.TAG_LEN :])
        signed = sign_manifest(
            self._keys, KeyRef(self.me, Purpose.SIGNING, self._ring.signing), manifest
        )
        segment = SegmentIn(transfer_id, 0, True, ciphertext)
        attempts = [0]

        def attempt() -> FinishResult | None:
            attempts[0] += 1
            return self._link.deliver(partner, passport.token, row.sent_header, segment, signed)

        try:
            finished = retry.call(attempt, "delivery")
        except PartnerError as exc:
            clean = first_message and attempts[0] == 1 and _refused_offer(exc)
            stale = stale_transport_key(exc)
            if not clean or not (stale or exc.grpc_status in REFUSED_BEFORE_RECORDING):
                raise
            discarded = self._ledger.discard_unsent_outbound(transfer_id, refused_tags=True)
            if not stale or not discarded or resealed:
                raise
            self._partner_keys.forget(partner.id)
            log.info(
                "delivery refused as sealed to a stale transport key; sealing again to a "
                "fresh key set",
                extra={"transfer_id": transfer_id, "partner": partner.id, "outcome": "reseal"},
            )
            row, data_key = self._prepare(partner, passport, retry)
            return self._deliver(
                partner, passport, row, data_key, data, declared_sha256, on_progress, retry, True
            )
        if finished is None:
            return None
        total = len(data)
        on_progress(Progress("accepted", transfer_id, 0, total))
        on_progress(Progress("progress", transfer_id, total, total))
        return self._receipt(partner, manifest, signed, finished)

    def _record_tag(self, transfer_id: str, tag: bytes) -> bool:
        """Record segment 0's tag before it leaves; True if it was not recorded before (no
        segment of this header ever left). A different tag recorded: the source changed."""
        known = self._ledger.segment_tags(transfer_id, 0, 1).get(0)
        if known is not None and known != tag:
            raise SourceChangedError(
                f"segment 0 of transfer {transfer_id} differs from what was sent before; "
                "resend the original data or use a new passport"
            )
        if known is None:
            self._ledger.record_segment_tags(transfer_id, [(0, tag)])
        return known is None

    def _checked_proof(
        self,
        partner: PartnerConfig,
        transfer_id: str,
        receipt: Signed,
        proof: CommitProof | None,
    ) -> CommitProof | None:
        """The partner's commit proof if it checks out under its signing keys; otherwise an
        error line (the receipt itself verified: the transfer is delivered) and no proof."""
        if proof is None:
            return None
        keys = self._partner_keys.signing_keys(partner)
        try:
            check_commit_proof(proof, receipt, partner.id, transfer_id, keys)
        except ProofError as exc:
            log.error(
                "the commit proof of %s does not check out: %s",
                partner.id,
                exc,
                extra={"transfer_id": transfer_id, "partner": partner.id, "outcome": "bad-proof"},
            )
            return None
        return proof


def _one_call_fits(
    total_size: int, passport: VerifiedPassport, header: envelope.Header, config: GatewayConfig
) -> bool:
    """A size that fits one segment of ``header``, in a Deliver message within our message
    limit (``ONE_CALL_OVERHEAD`` for the rest of it)."""
    message = (
        total_size + envelope.TAG_LEN + len(passport.token) + len(header.encode())
    ) + ONE_CALL_OVERHEAD
    return total_size <= header.segment_size and message <= config.limits.max_message_bytes


@dataclass
class _FirstSegment:
    """The whole data of a new send that may go in one call, and its one segment once
    :meth:`Sender._prepare` sealed it (None: it did not)."""

    data: bytes
    ciphertext: bytes | None = None

    def sealable(
        self,
        passport: VerifiedPassport,
        header: envelope.Header,
        declared_sha256: bytes | None,
        config: GatewayConfig,
    ) -> bool:
        """Whether the segment may be sealed and its tag recorded with the record: it goes
        in one call, and it is the data the caller declared and the passport names (else
        ``_deliver`` refuses it, and a tag recorded would keep the record from being
        discarded)."""
        if not _one_call_fits(len(self.data), passport, header, config):
            return False
        if declared_sha256 is None and passport.claims.sub is None:
            return True
        digest = hashlib.sha256(self.data).digest()
        sub = passport.claims.sub
        return declared_sha256 in (None, digest) and sub in (None, digest.hex())


class _Retry:
    """One send's retries: which failures are worth a pause (``transfer.transient``), and
    each pause told to the caller and logged."""

    def __init__(
        self,
        transfer_id: str,
        partner: str,
        patience: Patience,
        report: Callable[[Progress], None],
        until: _PassportTime,
    ) -> None:
        self._transfer_id = transfer_id
        self._partner = partner
        self._patience = patience
        self.report = report
        self._until = until
        self._last_failure: str | None = None  # of this outage, for the expiry's message

    def call(self, attempt: Callable[[], T], doing: str | None = None) -> T:
        """``attempt()``, again after a pause while it fails transiently and the wait lasts.

        ``doing``: the partner call of the transfer this is (offer, manifest), made only
        within the passport; None for one that is not the transfer's (the key set)."""
        while True:
            if doing is not None:
                self.within_passport(doing)
            try:
                done = attempt()
            except PartnerError as exc:
                self.pause_or_raise(exc)
                continue
            self._last_failure = None
            return done

    def within_passport(self, doing: str) -> None:
        """Raise ``PassportExpiredError`` if the passport no longer covers the ``doing``."""
        self._until.check(doing, cause=self._last_failure)

    def pause_or_raise(self, error: PartnerError) -> None:
        """Pause before the next attempt; raise ``error`` if it is final or the wait is spent,
        and ``PassportExpiredError`` if the passport ended while the partner was away (no
        attempt after it could succeed: waiting on would only hide why the send failed)."""
        if not transient(error):
            raise error
        self._last_failure = str(error)
        self._until.check("send", cause=self._last_failure)
        if not self._patience.pause(str(error), self._waiting):
            raise error

    def progressed(self) -> None:
        self._patience.progressed()

    def _waiting(self, waiting: Waiting) -> None:
        log.info(
            "partner unreachable or busy; retrying in %.1fs (waited %.0fs of %.0fs): %s",
            waiting.retry_in,
            waiting.waited,
            waiting.wait,
            waiting.reason,
            extra={
                "transfer_id": self._transfer_id,
                "partner": self._partner,
                "outcome": "waiting",
            },
        )
        self.report(Progress("waiting", self._transfer_id, 0, 0, waiting))


class _PassportTime:
    """The end of a transfer's passport for its partner calls: ``exp`` plus
    ``limits.passport_leeway_seconds`` on this gateway's clock -- the rule the receiver applies
    to each call, so the sender stops with the receiver's words instead of sending a call
    that can only be refused (or, with an older receiver, accepted past the passport)."""

    def __init__(self, transfer_id: str, exp: int, leeway: int, clock: Callable[[], float]) -> None:
        self._transfer_id = transfer_id
        self._exp = exp
        self._leeway = leeway
        self._clock = clock

    def left(self) -> float:
        """Seconds until the passport ends (<= 0: it has)."""
        return self._exp + self._leeway - self._clock()

    def check(self, doing: str, cause: str | None = None) -> None:
        if self.left() > 0:
            return
        during = "" if cause is None else f" while waiting for the partner ({cause})"
        raise PassportExpiredError(
            f"passport {self._transfer_id} expired at {when(self._exp)} (leeway "
            f"{self._leeway} s also passed){during}; the {doing} was not made: a transfer "
            "must finish within its passport -- send the data again under a new passport"
        )

    def bounding(self, timer: Timer) -> Timer:
        """``timer`` whose sleeps end when the passport does: a ``--wait`` longer than what
        is left of the passport never waits past it."""
        return _SleepWithin(timer, self)


class _SleepWithin:
    def __init__(self, timer: Timer, until: _PassportTime) -> None:
        self._timer = timer
        self._until = until

    def monotonic(self) -> float:
        return self._timer.monotonic()

    def sleep(self, seconds: float) -> None:
        self._timer.sleep(max(0.0, min(seconds, self._until.left())))


def _refused_offer(error: PartnerError) -> bool:
    """True if ``error`` is the partner's refusal of the offer (step) itself."""
    return f" refused {CALL_NAMES['offer']} ({error.grpc_status}): " in str(error)


def _check_declared(transfer_id: str, sub: str | None, declared: bytes | None) -> None:
    """A declared digest against the data set the passport names, before anything is sent.

    A passport with ``sub`` and no declared digest (a program streaming data it cannot hash
    first) is checked only at the manifest, after the data has crossed."""
    if declared is None:
        return
    if len(declared) != 32:
        raise UsageError(
            f"the declared plaintext_sha256 must be 32 bytes (a SHA-256), got {len(declared)}"
        )
    if sub is not None and sub != declared.hex():
        raise DatasetMismatchError(
            f"the data is not the data set passport {transfer_id} names (sub {sub}, this "
            f"file {declared.hex()}); nothing was sent, the passport is still usable"
        )


def _held_to(chunks: Iterable[bytes], size: int, transfer_id: str) -> Iterator[bytes]:
    """``chunks``, which must add up to exactly ``size`` bytes.

    The end of a stream is no proof that the data ended (a local client that dies ends its
    stream the same way): a short stream must never become the final segment. The error is
    raised before the segmenter can release its last segment, so nothing final is sent.
    """
    received = 0
    for chunk in chunks:
        received += len(chunk)
        if received > size:
            raise SourceSizeError(
                f"the data runs past the declared size of {size} bytes; nothing was delivered"
            )
        yield chunk
    if received != size:
        raise SourceSizeError(
            f"the data ended after {received} of {size} bytes; nothing was delivered: send the "
            f"same data with the same passport to resume transfer {transfer_id}"
        )


def _outbound_lease(transfer_id: str) -> str:
    """The name of a send's lease (``Ledger.take_lease``)."""
    return f"outbound/{transfer_id}"
