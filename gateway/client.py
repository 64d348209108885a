"""The sending side: offer, stream from the resume point, manifest, verified receipt.

Resume safety (DESIGN.md): segment *i* of a transfer always uses the same nonce, so it must
always carry the same plaintext. Before a segment's ciphertext leaves this process, the
SHA-256 of its plaintext is recorded durably in the ledger; a later attempt (after a broken
stream or a crash) re-reads the source and refuses to go on if any segment differs from what
was encrypted before. The data key survives crashes re-wrapped to our own storage key.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.message import DecodeError

from gateway import envelope
from gateway._proto.xbgw.v1 import common_pb2, partner_pb2, partner_pb2_grpc
from gateway.config import GatewayConfig, PartnerConfig
from gateway.errors import (
    ByteLimitError,
    ManifestError,
    PartnerError,
    PassportReplayError,
    PeerNotAuthorizedError,
    PolicyDeniedError,
    SignatureError,
    SourceChangedError,
    TransferConflictError,
)
from gateway.hsm import Hsm
from gateway.keys import CurrentKeys, KeyRef, Purpose
from gateway.ledger import Ledger, Outbound
from gateway.passport import PassportVerifier, VerifiedPassport
from gateway.policy import BaselinePolicy, Direction, Policy, facts
from gateway.signed import Signed, sign, verify
from gateway.tls import channel_credentials
from gateway.wire import from_blob, to_blob

log = logging.getLogger("xbgw.sender")

DIGEST_BATCH = 8  # segments whose tags are committed together before they are sent
PIPELINE_DEPTH = 4  # encrypted segments queued ahead of the network
KEY_SET_TTL_SECONDS = 300
RPC_TIMEOUT_SECONDS = 30


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
class _Sent:
    """What the pipeline read from the source: the manifest's facts."""

    sha256: bytes
    size: int
    segments: int


@dataclass(frozen=True)
class Progress:
    kind: str  # "accepted" | "progress"
    transfer_id: str
    done_bytes: int
    total_bytes: int


def partner_error(exc: grpc.RpcError, partner: str, what: str) -> PartnerError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if code is grpc.StatusCode.UNAVAILABLE:
        hint = ""
        handshake_stage = what in ("the key-set request", "the offer")
        if handshake_stage and "socket closed" in (details or "").lower():
            hint = (
                " (the partner may have refused this gateway's TLS client certificate: check "
                "tls.certificate against the CA the partner trusts)"
            )
        return PartnerError(f"partner {partner} is unreachable during {what}: {details}{hint}")
    return PartnerError(f"partner {partner} refused {what} ({code.name}): {details}", code.name)


class PartnerChannels:
    """One mutual-TLS channel per partner, rebuilt when the configuration changes.

    A reload must not cut sends in flight: the old channels are retired, not closed -- new
    transfers use new channels (new certificate, CA, endpoint) while running streams finish
    on the old ones, which are closed at shutdown.
    """

    def __init__(self, config: GatewayConfig, key_pem: bytes) -> None:
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._retired: list[grpc.Channel] = []
        self._key_sets: dict[str, tuple[float, partner_pb2.KeySet]] = {}
        self.reconfigure(config, key_pem)

    def reconfigure(self, config: GatewayConfig, key_pem: bytes) -> None:
        with self._lock:
            self._retired.extend(self._channels.values())
            self._config, self._key_pem = config, key_pem
            self._channels, self._key_sets = {}, {}

    def stub(self, partner: PartnerConfig) -> partner_pb2_grpc.PartnerGatewayStub:
        with self._lock:
            channel = self._channels.get(partner.id)
            if channel is None:
                limit = self._config.limits.max_message_bytes
                channel = grpc.secure_channel(
                    str(partner.endpoint),
                    channel_credentials(self._config, partner, self._key_pem),
                    options=[
                        ("grpc.ssl_target_name_override", partner.identity),
                        ("grpc.max_send_message_length", limit),
                        ("grpc.max_receive_message_length", limit),
                        ("grpc.keepalive_time_ms", 30_000),
                    ],
                )
                self._channels[partner.id] = channel
            return partner_pb2_grpc.PartnerGatewayStub(channel)

    def key_set(self, partner: PartnerConfig) -> partner_pb2.KeySet:
        """The partner's transport keys, verified under its pinned signing key (cached)."""
        with self._lock:
            cached = self._key_sets.get(partner.id)
        if cached is not None and time.monotonic() - cached[0] < KEY_SET_TTL_SECONDS:
            return cached[1]
        try:
            response = self.stub(partner).GetKeySet(
                partner_pb2.GetKeySetRequest(), timeout=RPC_TIMEOUT_SECONDS
            )
        except grpc.RpcError as exc:
            raise partner_error(exc, partner.id, "the key-set request") from None
        blob = from_blob(response.key_set)
        verify(blob, partner.signing_public_key, partner.id, f"key set of {partner.id}")
        try:
            key_set = partner_pb2.KeySet.FromString(blob.body)
        except DecodeError:
            raise SignatureError(f"the key set of {partner.id} is not a KeySet message") from None
        if key_set.gateway_id != partner.id:
            raise SignatureError(f"key set names {key_set.gateway_id!r}, expected {partner.id!r}")
        if not any(k.version == key_set.current_version for k in key_set.keys):
            raise SignatureError(f"key set of {partner.id} lacks its current version")
        with self._lock:
            self._key_sets[partner.id] = (time.monotonic(), key_set)
        return key_set

    def forget_key_set(self, partner_id: str) -> None:
        with self._lock:
            self._key_sets.pop(partner_id, None)

    def close(self) -> None:
        with self._lock:
            channels = [*self._channels.values(), *self._retired]
            self._channels, self._retired = {}, []
        for channel in channels:
            channel.close()


def _segments(chunks: Iterable[bytes], size: int) -> Iterator[tuple[int, bool, bytes]]:
    """Re-cut arbitrary plaintext chunks into ``size``-byte segments, flagging the last."""
    buffer = bytearray()
    index = 0
    pending: bytes | None = None
    for chunk in chunks:
        if not buffer and len(chunk) == size:
            # Aligned chunk (the CLI reads segment-sized blocks): no copy.
            if pending is not None:
                yield index, False, pending
                index += 1
            pending = chunk
            continue
        buffer += chunk
        while len(buffer) >= size:
            if pending is not None:
                yield index, False, pending
                index += 1
            pending = bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        if pending is not None:
            yield index, False, pending
            index += 1
        yield index, True, bytes(buffer)
    elif pending is not None:
        yield index, True, pending
    else:
        yield 0, True, b""


class _Pipeline:
    """Segment, hash and encrypt in a producer thread; the gRPC upload pulls from a queue.

    Three stages: the producer (hash, encrypt), the committer (tags to the ledger, which
    waits on fsync) and the gRPC thread (send). Both ``hashlib`` and AES-GCM release the GIL,
    so the stages overlap.

    Before any ciphertext is queued, the GCM tag of each segment is checked against the tag
    recorded at the first attempt, and recorded durably if new: same key and nonce give the
    same tag only for the same plaintext, so a changed source is refused before a reused
    nonce can leave the process. (The tag stands in for a per-segment SHA-256 at no cost.)
    """

    _END = object()

    def __init__(
        self,
        ledger: Ledger,
        transfer_id: str,
        encryptor: envelope.StreamEncryptor,
        start: int,
        on_bytes: Callable[[int], None],
    ) -> None:
        self._ledger = ledger
        self._transfer_id = transfer_id
        self._encryptor = encryptor
        self._start = start
        self._on_bytes = on_bytes
        self._queue: queue.Queue[object] = queue.Queue(maxsize=PIPELINE_DEPTH)
        self._batches: queue.Queue[object] = queue.Queue(maxsize=2)
        self._stop = threading.Event()
        self._abandoned = threading.Event()
        self._committer: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.hasher = hashlib.sha256()
        self.bytes = 0
        self.segments = 0

    def start(self, segments: Iterator[tuple[int, bool, bytes]]) -> None:
        self._thread = threading.Thread(
            target=self._produce, args=(segments,), name="xbgw-encrypt", daemon=True
        )
        self._committer = threading.Thread(target=self._commit, name="xbgw-tags", daemon=True)
        self._thread.start()
        self._committer.start()

    def _put(self, target: queue.Queue[object], item: object) -> None:
        while not self._stop.is_set():
            try:
                target.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _produce(self, segments: Iterator[tuple[int, bool, bytes]]) -> None:
        """Hash and encrypt; hand batches to the committer (which may be waiting on fsync)."""
        try:
            batch: list[tuple[int, bool, bytes]] = []
            for index, final, plaintext in segments:
                if self._stop.is_set():
                    return
                self.hasher.update(plaintext)
                self.bytes += len(plaintext)
                self.segments = index + 1
                batch.append(
                    (index, final, self._encryptor.encrypt_segment(index, plaintext, final))
                )
                if len(batch) >= DIGEST_BATCH or final:
                    self._put(self._batches, (batch, self.bytes))
                    batch = []
        except BaseException as exc:
            self._failure = exc
        finally:
            self._put(self._batches, self._END)

    def _commit(self) -> None:
        """Record tags durably, then release the batch's ciphertext to the network."""
        try:
            while True:
                item = self._get(self._batches)
                if item is self._END or self._failure is not None:
                    return
                assert isinstance(item, tuple)
                batch, done_bytes = item
                self._check_tags(batch)
                for segment in batch:
                    if segment[0] >= self._start:
                        self._put(self._queue, segment)
                self._on_bytes(done_bytes)
        except BaseException as exc:
            self._failure = exc
            self._stop.set()
        finally:
            self._end_queue()

    def _get(self, source: queue.Queue[object]) -> object:
        """Next item, or the end marker once the pipeline is stopped."""
        while not self._stop.is_set():
            try:
                return source.get(timeout=0.2)
            except queue.Empty:
                continue
        return self._END

    def _end_queue(self) -> None:
        while True:
            try:
                self._queue.put(self._END, timeout=0.5)
                return
            except queue.Full:
                if self._abandoned.is_set():
                    return

    def _check_tags(self, batch: list[tuple[int, bool, bytes]]) -> None:
        first, last = batch[0][0], batch[-1][0] + 1
        recorded = self._ledger.segment_tags(self._transfer_id, first, last)
        for index, _final, ciphertext in batch:
            known = recorded.get(index)
            if known is not None and known != ciphertext[-envelope.TAG_LEN :]:
                raise SourceChangedError(
                    f"segment {index} of transfer {self._transfer_id} differs from what was "
                    "sent before; resend the original data or use a new passport"
                )
        self._ledger.record_segment_tags(
            self._transfer_id,
            [(i, c[-envelope.TAG_LEN :]) for i, _f, c in batch if i not in recorded],
        )

    def messages(self) -> Iterator[partner_pb2.Segment]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            assert isinstance(item, tuple)
            index, final, ciphertext = item
            yield partner_pb2.Segment(
                transfer_id=self._transfer_id, index=index, final=final, ciphertext=ciphertext
            )

    def abandon(self) -> None:
        """The upload failed: tell both threads to stop; never wait on the local client.

        The producer may be blocked reading the local stream; it ends when that stream does
        (the caller's error ends it), so only the committer is joined.
        """
        self._stop.set()
        self._abandoned.set()
        if self._committer is not None:
            self._committer.join(timeout=10)

    def raise_failure(self) -> None:
        """Raise the producer's or committer's error, if any (after the stream completed)."""
        if not self._abandoned.is_set():
            for thread in (self._thread, self._committer):
                if thread is not None:
                    thread.join()
        if self._failure is not None:
            raise self._failure


class Sender:
    """Sending-side domain logic of one gateway."""

    def __init__(
        self,
        config: GatewayConfig,
        hsm: Hsm,
        keys: CurrentKeys,
        ledger: Ledger,
        channels: PartnerChannels,
        policy: Policy | None = None,
    ) -> None:
        self._hsm = hsm
        self._keys = keys
        self._ledger = ledger
        self._channels = channels
        self._policy: Policy = policy or BaselinePolicy()
        self._active: set[str] = set()
        self._active_lock = threading.Lock()
        self.reconfigure(config)

    def reconfigure(self, config: GatewayConfig) -> None:
        self._config = config

    @property
    def me(self) -> str:
        return self._config.id

    def send(
        self,
        partner_id: str,
        token: str,
        chunks: Iterable[bytes],
        total_size: int,
        on_progress: Callable[[Progress], None] = lambda _: None,
    ) -> ReceiptSummary:
        config = self._config
        partner = config.partner(partner_id)
        verifier = PassportVerifier(
            config.trusted_issuer_keys(),
            audience=partner.id,
            leeway_seconds=config.limits.passport_leeway_seconds,
            max_token_bytes=config.limits.max_passport_bytes,
        )
        passport = verifier.verify(token)
        claims = passport.claims
        if claims.xbgw.sender != self.me:
            raise PeerNotAuthorizedError(
                f"passport {claims.jti} is for sender {claims.xbgw.sender!r}, not this "
                f"gateway ({self.me})"
            )
        decision = self._policy.decide(
            facts(
                Direction.EGRESS,
                claims.xbgw,
                sender=(self.me, config.gateway.jurisdiction),
                receiver=(partner.id, partner.jurisdiction),
            )
        )
        if not decision.allow:
            raise PolicyDeniedError("; ".join(decision.reasons))
        transfer_id = claims.jti
        with self._sending(transfer_id):
            return self._send(partner, token, passport, chunks, total_size, on_progress)

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
            yield
        finally:
            with self._active_lock:
                self._active.discard(transfer_id)

    def _send(
        self,
        partner: PartnerConfig,
        token: str,
        passport: VerifiedPassport,
        chunks: Iterable[bytes],
        total_size: int,
        on_progress: Callable[[Progress], None],
    ) -> ReceiptSummary:
        claims = passport.claims
        transfer_id = claims.jti
        if total_size > claims.xbgw.byte_limit:
            # Refuse before the offer: streaming up to the limit would only burn the passport.
            raise ByteLimitError(
                f"the data is {total_size} bytes; passport {transfer_id} allows "
                f"{claims.xbgw.byte_limit}"
            )
        row = self._ledger.outbound(transfer_id)
        if row is not None and row.state == "delivered":
            raise PassportReplayError(
                f"transfer {transfer_id} was already delivered to {row.partner}"
            )
        if row is not None and row.partner != partner.id:
            raise PassportReplayError(f"transfer {transfer_id} is in use for {row.partner}")
        if row is None:
            row, data_key = self._prepare(partner, transfer_id, passport.digest)
        else:  # resuming: the data key survives only re-wrapped to our storage key
            data_key = envelope.open_header(
                envelope.Header.decode(row.stored_header), self.me, self._hsm
            )
        sent_header = envelope.Header.decode(row.sent_header)
        stub = self._channels.stub(partner)
        try:
            offer = stub.Offer(
                partner_pb2.OfferRequest(passport=token, envelope_header=row.sent_header),
                timeout=RPC_TIMEOUT_SECONDS,
            )
        except grpc.RpcError as exc:
            raise partner_error(exc, partner.id, "the offer") from None
        start = offer.next_segment
        on_progress(Progress("accepted", transfer_id, offer.received_bytes, total_size))
        log.info(
            "transfer accepted",
            extra={"transfer_id": transfer_id, "partner": partner.id, "outcome": f"from {start}"},
        )
        pipeline = _Pipeline(
            self._ledger,
            transfer_id,
            envelope.StreamEncryptor(sent_header, data_key),
            start,
            lambda done: on_progress(Progress("progress", transfer_id, done, total_size)),
        )
        pipeline.start(_segments(chunks, sent_header.segment_size))
        if offer.state == common_pb2.TRANSFER_STATE_COMMITTED:
            # Delivered before, receipt lost: re-read the source for the manifest only.
            for _ in pipeline.messages():
                pass
        else:
            messages = pipeline.messages()
            # The partner may hold every segment already (the stream or the manifest broke
            # after the final one): then there is nothing to upload -- an empty Upload is
            # refused -- and the manifest alone finishes the transfer.
            first = next(messages, None)
            if first is not None:
                try:
                    stub.Upload(itertools.chain([first], messages), timeout=None)
                except grpc.RpcError as exc:
                    pipeline.abandon()
                    pipeline.raise_failure()
                    raise partner_error(exc, partner.id, "the upload") from None
        pipeline.raise_failure()
        sent = _Sent(pipeline.hasher.digest(), pipeline.bytes, pipeline.segments)
        if claims.sub is not None and claims.sub != sent.sha256.hex():
            raise ManifestError(
                f"the data sent is not the data set passport {transfer_id} names (sub "
                f"{claims.sub[:16]}..., sent {sent.sha256.hex()[:16]}...); nothing was committed"
            )
        return self._finish(partner, transfer_id, sent_header, passport.digest, sent)

    def _prepare(
        self, partner: PartnerConfig, transfer_id: str, passport_digest: bytes
    ) -> tuple[Outbound, bytes]:
        key_set = self._channels.key_set(partner)
        current = next(k for k in key_set.keys if k.version == key_set.current_version)
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), current.public_point)
        context = envelope.StreamContext(transfer_id, self.me, partner.id, passport_digest)
        header, data_key = envelope.seal_header(
            context,
            KeyRef(partner.id, Purpose.TRANSPORT, current.version),
            public,
            segment_size=self._config.limits.segment_size,
        )
        stored = envelope.rewrap_for_storage(
            header, data_key, KeyRef(self.me, Purpose.STORAGE, self._keys.storage), self._hsm
        )
        row = self._ledger.create_outbound(
            transfer_id=transfer_id,
            partner=partner.id,
            passport_digest=passport_digest,
            sent_header=header.encode(),
            stored_header=stored.encode(),
        )
        return row, data_key

    def _finish(
        self,
        partner: PartnerConfig,
        transfer_id: str,
        header: envelope.Header,
        passport_digest: bytes,
        sent: _Sent,
    ) -> ReceiptSummary:
        plaintext_sha256 = sent.sha256
        manifest = sign(
            self._hsm,
            KeyRef(self.me, Purpose.SIGNING, self._keys.signing),
            partner_pb2.Manifest(
                transfer_id=transfer_id,
                sender=self.me,
                receiver=partner.id,
                header_core_digest=header.core_digest(),
                passport_digest=passport_digest,
                plaintext_sha256=plaintext_sha256,
                plaintext_size=sent.size,
                segment_count=sent.segments,
            ).SerializeToString(deterministic=True),
        )
        try:
            response = self._channels.stub(partner).Finish(
                partner_pb2.FinishRequest(transfer_id=transfer_id, manifest=to_blob(manifest)),
                timeout=RPC_TIMEOUT_SECONDS * 4,
            )
        except grpc.RpcError as exc:
            raise partner_error(exc, partner.id, "the manifest") from None
        receipt = from_blob(response.receipt)
        kid = verify(receipt, partner.signing_public_key, partner.id, "receipt")
        try:
            body = partner_pb2.ReceiptBody.FromString(receipt.body)
        except DecodeError:
            raise ManifestError(f"the receipt from {partner.id} is not a ReceiptBody") from None
        if (
            body.transfer_id != transfer_id
            or body.manifest_digest != manifest.digest
            or body.plaintext_sha256 != plaintext_sha256
            or body.plaintext_size != sent.size
            or body.passport_digest != passport_digest
            or body.receiver != partner.id
            or body.sender != self.me
        ):
            raise ManifestError(f"receipt from {partner.id} does not match what was sent")
        self._ledger.deliver_outbound(transfer_id, sent.size, plaintext_sha256, receipt)
        log.info(
            "transfer delivered",
            extra={
                "transfer_id": transfer_id,
                "partner": partner.id,
                "outcome": "delivered",
                "bytes": sent.size,
            },
        )
        return ReceiptSummary(
            transfer_id=transfer_id,
            partner=partner.id,
            plaintext_sha256=plaintext_sha256,
            plaintext_size=sent.size,
            committed_at=body.committed_at,
            signed_by=str(kid),
            receipt=receipt,
        )
