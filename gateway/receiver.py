"""The receiving side of a transfer: offer, upload, finish -- without gRPC.

The servicer in ``partner.py`` authenticates the mutual-TLS peer, turns wire messages into
calls here, and maps :mod:`gateway.errors` to statuses. Everything that decides lives here:

* **offer**: passport (signature, issuer, time, audience), sender = authenticated peer,
  header context = passport, policy, single use; the data key is unwrapped with our transport
  key (ECDH in the HSM), checked against the key commitment, and at once re-wrapped to our
  storage key; only the re-wrapped header is stored.
* **upload**: segments strictly in order from the durable resume point; each is decrypted and
  authenticated before its ciphertext is appended to the spool; the passport's byte limit is
  enforced while streaming; the resume point moves only after an fsync (every
  ``SYNC_EVERY_SEGMENTS`` segments and at the end of every stream, clean or broken).
* **finish**: the sender's manifest is verified under its pinned key and must agree with what
  arrived; then the spool file is committed atomically and a receipt signed in the HSM.

A refusal that cannot be fixed by resuming (byte limit, manifest mismatch) marks the transfer
refused for good and deletes its partial data; the passport stays spent.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from gateway import envelope
from gateway._proto.xbgw.v1 import partner_pb2
from gateway.config import GatewayConfig, PartnerConfig
from gateway.errors import (
    ByteLimitError,
    EnvelopeError,
    KeyNotFoundError,
    ManifestError,
    NoUsableWrappedKeyError,
    OfferMismatchError,
    PartialLostError,
    PassportReplayError,
    PeerNotAuthorizedError,
    PolicyDeniedError,
    TrailingDataError,
    TransferConflictError,
    UnknownTransferError,
)
from gateway.hsm import Hsm
from gateway.intake import Intake, SegmentIn
from gateway.keys import CurrentKeys, KeyRef, Purpose
from gateway.ledger import Inbound, Ledger
from gateway.passport import PassportVerifier, VerifiedPassport, inspect
from gateway.policy import BaselinePolicy, Direction, Policy, facts
from gateway.signed import Signed, sign, verify
from gateway.spool import Spool, check_transfer_id

log = logging.getLogger("xbgw.receiver")

TAG_LEN = 16
OFFERED_KEYS_MAX = 256


@dataclass(frozen=True)
class OfferResult:
    transfer_id: str
    next_segment: int
    received_bytes: int
    resumed: bool
    committed: bool = False


@dataclass(frozen=True)
class UploadResult:
    next_segment: int
    received_bytes: int
    final_received: bool


class _Hashers:
    """Running plaintext SHA-256 per transfer, valid up to a segment index.

    A running hash cannot be persisted, so after a restart the receiver recomputes it from
    the spool (decrypting what it already holds); within one process it carries over.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[str, tuple[int, hashlib._Hash]] = {}

    def take(self, transfer_id: str, next_segment: int) -> hashlib._Hash | None:
        with self._lock:
            entry = self._by_id.pop(transfer_id, None)
        if entry is not None and entry[0] == next_segment:
            return entry[1]
        return None

    def put(self, transfer_id: str, next_segment: int, hasher: hashlib._Hash) -> None:
        with self._lock:
            self._by_id[transfer_id] = (next_segment, hasher)

    def drop(self, transfer_id: str) -> None:
        with self._lock:
            self._by_id.pop(transfer_id, None)


class Receiver:
    """Receiving-side domain logic of one gateway."""

    def __init__(
        self,
        config: GatewayConfig,
        hsm: Hsm,
        keys: CurrentKeys,
        ledger: Ledger,
        spool: Spool,
        policy: Policy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._hsm = hsm
        self._keys = keys
        self._ledger = ledger
        self._spool = spool
        self._policy: Policy = policy or BaselinePolicy()
        self._clock = clock
        self._hashers = _Hashers()
        # Data keys unwrapped at the offer, handed to the upload that follows (saves an HSM
        # unwrap per transfer); bounded, and dropped on first use.
        self._offered_keys: dict[str, bytes] = {}
        self._held_transport: set[int] | None = None
        self._offered_lock = threading.Lock()
        self._active: set[str] = set()
        self._active_lock = threading.Lock()
        #: Called as ``on_commit(partner_id, plaintext_bytes)`` once per newly committed
        #: transfer (metrics); not on an idempotent repeat of Finish.
        self.on_commit: Callable[[str, int], None] | None = None
        self.reconfigure(config)

    def reconfigure(self, config: GatewayConfig) -> None:
        """Adopt a new configuration (partners, issuers, limits); transfers in flight go on."""
        self._config = config
        self._verifier = PassportVerifier(
            config.trusted_issuer_keys(),
            audience=config.id,
            leeway_seconds=config.limits.passport_leeway_seconds,
            max_token_bytes=config.limits.max_passport_bytes,
            clock=self._clock,
        )

    @property
    def me(self) -> str:
        return self._config.id

    # -- offer -----------------------------------------------------------------------------

    def offer(self, peer: PartnerConfig, token: str, header_bytes: bytes) -> OfferResult:
        passport = self._verifier.verify(token)
        claims = passport.claims
        if claims.xbgw.sender != peer.id:
            raise PeerNotAuthorizedError(
                f"passport {claims.jti} names sender {claims.xbgw.sender!r}, but the "
                f"connection is from partner {peer.id!r}"
            )
        header = envelope.Header.decode(header_bytes)
        self._check_context(header, passport, peer)
        self._check_policy(passport, peer)
        if header.segment_size + TAG_LEN + 1024 > self._config.limits.max_message_bytes:
            raise OfferMismatchError(
                f"segment size {header.segment_size} does not fit this gateway's message "
                f"limit of {self._config.limits.max_message_bytes} bytes"
            )
        transfer_id = check_transfer_id(claims.jti)
        offered_digest = hashlib.sha256(header_bytes).digest()
        existing = self._ledger.inbound(transfer_id)
        if existing is not None:
            return self._resume(existing, peer, offered_digest)
        with self._busy(transfer_id, "offer"):
            return self._create(peer, passport, header, offered_digest)

    def _create(
        self,
        peer: PartnerConfig,
        passport: VerifiedPassport,
        header: envelope.Header,
        offered_digest: bytes,
    ) -> OfferResult:
        """A new inbound transfer: ledger row and partial file, made under the busy guard."""
        claims = passport.claims
        transfer_id = claims.jti
        data_key = self._open_offered(header)
        stored = envelope.rewrap_for_storage(
            header, data_key, KeyRef(self.me, Purpose.STORAGE, self._keys.storage), self._hsm
        )
        stored_bytes = stored.encode()
        byte_limit = claims.xbgw.byte_limit
        if peer.max_transfer_bytes is not None:
            byte_limit = min(byte_limit, peer.max_transfer_bytes)
        created = self._ledger.create_inbound(
            transfer_id=transfer_id,
            sender=peer.id,
            passport=passport.token,
            passport_digest=passport.digest,
            offered_header_digest=offered_digest,
            stored_header=stored_bytes,
            byte_limit=byte_limit,
            classification=claims.xbgw.classification,
            source_jurisdiction=claims.xbgw.src,
        )
        if created is None:  # a concurrent offer of the same passport won the race
            raced = self._ledger.inbound(transfer_id)
            assert raced is not None
            return self._resume(raced, peer, offered_digest)
        self._spool.open_partial(transfer_id, stored_bytes, len(stored_bytes)).close()
        with self._offered_lock:
            if len(self._offered_keys) >= OFFERED_KEYS_MAX:
                self._offered_keys.pop(next(iter(self._offered_keys)))
            self._offered_keys[transfer_id] = data_key
        log.info(
            "transfer offered",
            extra={"transfer_id": transfer_id, "partner": peer.id, "outcome": "accepted"},
        )
        return OfferResult(transfer_id, 0, 0, resumed=False)

    def _check_context(
        self, header: envelope.Header, passport: VerifiedPassport, peer: PartnerConfig
    ) -> None:
        context = header.context
        problems = []
        if context.transfer_id != passport.claims.jti:
            problems.append(
                f"header transfer id {context.transfer_id!r} is not the passport's "
                f"jti {passport.claims.jti!r}"
            )
        if context.sender_id != peer.id:
            problems.append(f"header sender {context.sender_id!r} is not {peer.id!r}")
        if context.receiver_id != self.me:
            problems.append(f"header receiver {context.receiver_id!r} is not {self.me!r}")
        if context.passport_digest != passport.digest:
            problems.append("header passport digest does not match the passport offered")
        if problems:
            raise OfferMismatchError("; ".join(problems))

    def _check_policy(self, passport: VerifiedPassport, peer: PartnerConfig) -> None:
        decision = self._policy.decide(
            facts(
                Direction.INGRESS,
                passport.claims.xbgw,
                sender=(peer.id, peer.jurisdiction),
                receiver=(self.me, self._config.gateway.jurisdiction),
            )
        )
        if not decision.allow:
            raise PolicyDeniedError("; ".join(decision.reasons) or "refused by policy")

    def _open_offered(self, header: envelope.Header) -> bytes:
        ours = [w for w in header.wrapped_keys if w.key_ref.owner == self.me]
        if not ours:
            raise NoUsableWrappedKeyError(f"no wrapped key in the header is addressed to {self.me}")
        held = self._transport_versions()
        usable = [w for w in ours if w.key_ref.purpose is Purpose.TRANSPORT]
        if not any(w.key_ref.version in held for w in usable):
            self._held_transport = None  # a key made since (rotation) would be found now
            held = self._transport_versions()
        if not any(w.key_ref.version in held for w in usable):
            versions = ", ".join(str(w.key_ref) for w in ours)
            raise NoUsableWrappedKeyError(
                f"the data key is wrapped to {versions}, which this gateway does not hold "
                f"(transport versions held: {sorted(held)}); fetch a fresh key set"
            )
        try:
            # A partner's header may only use our transport keys, never our storage key.
            return envelope.open_header(header, self.me, self._hsm, storage_versions=())
        except KeyNotFoundError as exc:
            raise NoUsableWrappedKeyError(str(exc)) from None

    def _transport_versions(self) -> set[int]:
        """Transport versions on the token; cached, re-read when a header names another."""
        if self._held_transport is None:
            self._held_transport = set(self._hsm.versions(Purpose.TRANSPORT))
        return self._held_transport

    def _resume(self, row: Inbound, peer: PartnerConfig, offered_digest: bytes) -> OfferResult:
        same_offer = row.sender == peer.id and row.offered_header_digest == offered_digest
        if row.state == "committed" and same_offer:
            # The sender lost our receipt (crash before it arrived): let it ask again.
            return OfferResult(
                row.transfer_id, row.next_segment, row.received_bytes, True, committed=True
            )
        if row.state == "committed":
            raise PassportReplayError(
                f"passport {row.transfer_id} was already used: the transfer was committed"
            )
        if row.state == "refused":
            raise PassportReplayError(
                f"passport {row.transfer_id} was already used: the transfer was refused "
                f"({row.refusal})"
            )
        if row.sender != peer.id:
            raise PassportReplayError(f"passport {row.transfer_id} was already used")
        if row.offered_header_digest != offered_digest:
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

    # -- upload ----------------------------------------------------------------------------

    @contextmanager
    def _busy(self, transfer_id: str, doing: str) -> Iterator[None]:
        """One writer per transfer: creating it, uploading to it, or committing it.

        Never waits: a second writer is refused at once (the sender retries), so a stale
        stream cannot block a gRPC thread, and no step sees a row another step is changing.
        """
        with self._active_lock:
            if transfer_id in self._active:
                raise TransferConflictError(
                    f"transfer {transfer_id} is busy on another stream; {doing} again shortly"
                )
            self._active.add(transfer_id)
        try:
            yield
        finally:
            with self._active_lock:
                self._active.discard(transfer_id)

    def upload(self, peer: PartnerConfig, segments: Iterable[SegmentIn]) -> UploadResult:
        iterator = iter(segments)
        first = next(iterator, None)
        if first is None:
            raise OfferMismatchError(
                "an upload must carry at least one segment (or its first message was larger "
                "than the transport limit)"
            )
        transfer_id = first.transfer_id
        with self._busy(transfer_id, "upload"):
            row = self._receiving(peer, transfer_id)  # read under the guard: it is current
            return self._upload(row, first, iterator)

    def _receiving(self, peer: PartnerConfig, transfer_id: str) -> Inbound:
        row = self._ledger.inbound(transfer_id)
        if row is None or row.sender != peer.id:
            raise UnknownTransferError(
                f"no transfer {transfer_id!r} from {peer.id}; offer it first"
            )
        if row.state != "receiving":
            raise TransferConflictError(f"transfer {transfer_id} is {row.state}, not receiving")
        return row

    def _upload(self, row: Inbound, first: SegmentIn, rest: Iterable[SegmentIn]) -> UploadResult:
        transfer_id = row.transfer_id
        if row.final_received:
            raise TrailingDataError(
                f"transfer {transfer_id} already received its final segment; send the manifest"
            )
        header = envelope.Header.decode(row.stored_header)
        with self._offered_lock:
            data_key = self._offered_keys.pop(transfer_id, None)
        if data_key is None:
            data_key = envelope.open_header(header, self.me, self._hsm)
        decryptor = envelope.StreamDecryptor(header, data_key, start_index=row.next_segment)
        segment_len = header.segment_size + TAG_LEN
        try:
            partial = self._spool.open_partial(
                transfer_id,
                row.stored_header,
                len(row.stored_header) + row.next_segment * segment_len,
            )
        except PartialLostError:
            self._ledger.record_progress(transfer_id, 0, 0, False)
            self._hashers.drop(transfer_id)
            raise
        hasher = self._hashers.take(transfer_id, row.next_segment)
        if hasher is None:
            try:
                hasher = self._rehash(row, header, data_key)
            except EnvelopeError:
                # What we hold no longer verifies (disk corruption): start again from zero.
                partial.close()
                self._ledger.record_progress(transfer_id, 0, 0, False)
                raise PartialLostError(
                    f"the data held for transfer {transfer_id} failed verification; offer it "
                    "again to restart from segment 0"
                ) from None
            except BaseException:
                partial.close()
                raise
        intake = Intake(
            self._ledger,
            transfer_id,
            decryptor,
            hasher,
            partial,
            row.received_bytes,
            row.byte_limit,
        )
        try:
            intake.run(itertools.chain([first], rest))
        except ByteLimitError as exc:
            intake.discard()
            self._refuse(transfer_id, row.sender, str(exc))
            raise
        except BaseException:
            # Keep what verified: make it durable so a resumed stream continues from here.
            intake.close()
            self._hashers.put(transfer_id, intake.next_index, intake.hasher)
            raise
        intake.close()
        self._hashers.put(transfer_id, intake.next_index, intake.hasher)
        return UploadResult(intake.next_index, intake.received, intake.done)

    def _rehash(self, row: Inbound, header: envelope.Header, data_key: bytes) -> hashlib._Hash:
        """Recompute the plaintext hash of the segments already held (after a restart)."""
        hasher = hashlib.sha256()
        if row.next_segment == 0:
            return hasher
        segment_len = header.segment_size + TAG_LEN
        decryptor = envelope.StreamDecryptor(header, data_key)
        partial = self._spool.partial_path(row.transfer_id)
        committed = self._spool.committed_path(row.transfer_id)
        # A crash between the rename into the inbox and the ledger commit leaves only the
        # committed file: the retried Finish hashes that one.
        source = partial if partial.exists() or not committed.exists() else committed
        with source.open("rb") as src:
            src.seek(len(row.stored_header))
            for index in range(row.next_segment):
                chunk = src.read(segment_len)
                final = row.final_received and index == row.next_segment - 1
                hasher.update(decryptor.decrypt_segment(index, chunk, final))
        return hasher

    def _refuse(self, transfer_id: str, partner: str, reason: str) -> None:
        self._ledger.refuse_inbound(transfer_id, reason)
        self._spool.discard(transfer_id)
        self._hashers.drop(transfer_id)
        log.warning(
            "transfer refused for good: %s",
            reason,
            extra={"transfer_id": transfer_id, "partner": partner, "outcome": "discarded"},
        )

    # -- finish ----------------------------------------------------------------------------

    def finish(self, peer: PartnerConfig, transfer_id: str, manifest: Signed) -> Signed:
        with self._busy(transfer_id, "finish"):
            return self._finish(peer, transfer_id, manifest)

    def _finish(self, peer: PartnerConfig, transfer_id: str, manifest: Signed) -> Signed:
        row = self._ledger.inbound(transfer_id)
        if row is None or row.sender != peer.id:
            raise UnknownTransferError(f"no transfer {transfer_id!r} from {peer.id}")
        verify(manifest, peer.signing_public_key, peer.id, "manifest")
        try:
            body = partner_pb2.Manifest.FromString(manifest.body)
        except DecodeError:
            raise ManifestError("the signed manifest is not a Manifest message") from None
        if row.state == "committed" and row.receipt is not None:
            receipt_body = partner_pb2.ReceiptBody.FromString(row.receipt.body)
            if receipt_body.manifest_digest != manifest.digest:
                raise ManifestError(f"transfer {transfer_id} was committed with another manifest")
            return row.receipt
        if row.state != "receiving":
            raise TransferConflictError(f"transfer {transfer_id} is {row.state}")
        if not row.final_received:
            raise TransferConflictError(
                f"transfer {transfer_id} is incomplete: next segment is {row.next_segment}; "
                "resume the upload before sending the manifest"
            )
        header = envelope.Header.decode(row.stored_header)
        hasher = self._hashers.take(transfer_id, row.next_segment)
        if hasher is None:
            hasher = self._rehash(row, header, envelope.open_header(header, self.me, self._hsm))
        problems = _manifest_problems(body, row, header, self.me, hasher.digest())
        if problems:
            reason = "manifest disagrees with what arrived: " + "; ".join(problems)
            self._refuse(transfer_id, peer.id, reason)
            raise ManifestError(reason)
        committed_at = int(self._clock())
        receipt = sign(
            self._hsm,
            KeyRef(self.me, Purpose.SIGNING, self._keys.signing),
            partner_pb2.ReceiptBody(
                transfer_id=transfer_id,
                sender=peer.id,
                receiver=self.me,
                manifest_digest=manifest.digest,
                plaintext_sha256=body.plaintext_sha256,
                plaintext_size=row.received_bytes,
                passport_digest=row.passport_digest,
                committed_at=committed_at,
            ).SerializeToString(deterministic=True),
        )
        if self._spool.partial_path(transfer_id).exists():
            self._spool.commit(transfer_id)
        elif not self._spool.committed_path(transfer_id).exists():
            raise EnvelopeError(f"the spool file of transfer {transfer_id} is missing")
        self._ledger.commit_inbound(transfer_id, body.plaintext_sha256, receipt, committed_at)
        self._hashers.drop(transfer_id)
        if self.on_commit is not None:
            self.on_commit(peer.id, row.received_bytes)
        log.info(
            "transfer committed",
            extra={
                "transfer_id": transfer_id,
                "partner": peer.id,
                "outcome": "committed",
                "bytes": row.received_bytes,
            },
        )
        return receipt

    # -- queries ---------------------------------------------------------------------------

    def status(self, peer: PartnerConfig, transfer_id: str) -> Inbound:
        row = self._ledger.inbound(transfer_id)
        if row is None or row.sender != peer.id:
            raise UnknownTransferError(f"no transfer {transfer_id!r} from {peer.id}")
        return row

    def key_set(self) -> Signed:
        """Our transport public keys, signed by our signing key."""
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        keys = [
            partner_pb2.TransportKey(
                version=version,
                public_point=self._hsm.public_key(Purpose.TRANSPORT, version).public_bytes(
                    Encoding.X962, PublicFormat.UncompressedPoint
                ),
            )
            for version in self._hsm.versions(Purpose.TRANSPORT)
        ]
        body = partner_pb2.KeySet(
            gateway_id=self.me,
            keys=keys,
            current_version=self._keys.transport,
            issued_at=int(self._clock()),
        )
        return sign(
            self._hsm,
            KeyRef(self.me, Purpose.SIGNING, self._keys.signing),
            body.SerializeToString(deterministic=True),
        )


def _manifest_problems(
    body: partner_pb2.Manifest,
    row: Inbound,
    header: envelope.Header,
    me: str,
    plaintext_sha256: bytes,
) -> list[str]:
    problems = []
    if body.transfer_id != row.transfer_id:
        problems.append(f"transfer id {body.transfer_id!r}")
    if body.sender != row.sender or body.receiver != me:
        problems.append(f"parties {body.sender!r} -> {body.receiver!r}")
    if body.header_core_digest != header.core_digest():
        problems.append("header digest")
    if body.passport_digest != row.passport_digest:
        problems.append("passport digest")
    if body.segment_count != row.next_segment:
        problems.append(f"segment count {body.segment_count} (received {row.next_segment})")
    if body.plaintext_size != row.received_bytes:
        problems.append(f"size {body.plaintext_size} (received {row.received_bytes})")
    if body.plaintext_sha256 != plaintext_sha256:
        problems.append("plaintext SHA-256")
    # The passport was verified at the offer; its optional dataset digest binds the content.
    sub = inspect(row.passport)[1].get("sub")
    if sub is not None and sub != plaintext_sha256.hex():
        problems.append("data set SHA-256 is not the passport's sub")
    return problems
