"""The gRPC :class:`~gateway.transfer.PartnerLink`: mutual-TLS channels to partners.

Everything gRPC about sending lives here: one channel per partner (rebuilt on reload) --
plus, for a partner with ``connections: N`` > 1, N - 1 more ("lanes" 1..N-1), each with a
subchannel pool of its own so that each is its own TCP connection (one connection carries
at most its TCP window per round trip) -- the message conversions, and the mapping of
``grpc.RpcError`` to :class:`~gateway.errors.PartnerError` with the partner's reason, so
the sender never sees gRPC.

Which lane a call takes (``connections: N`` > 1; with N = 1 every call takes the one): the
partner's nodes may sit behind a TCP balancer, which places each connection on some node,
so the lanes are how one partner's calls spread over its nodes. Every call is answered from
the partner's shared ledger and spool, so any lane is correct; what differs is where a
transfer's working state is (the data key handed from offer to upload, the running hash
the finish needs, the transfer's lease while a stream writes it). Hence:

* ``Deliver`` (a whole transfer in one call): the next lane, round robin -- how two nodes
  carry more of one partner's small transfers than one;
* the calls of a streamed transfer (offer, its unstriped upload, finish, status, cancel):
  the transfer's own lane (:func:`home_lane`, from its id), so they all meet one node and
  a finish there does not re-hash the upload;
* stripe ``i`` of a striped upload: lane ``i`` (all N lanes, once each);
* the key set and witnessing: lane 0.

A reload must not cut sends in flight: the old channels are retired, not closed at once --
new transfers use new channels (new certificate, CA, endpoint) while running streams finish
on the old ones. Each channel counts the calls it carries, and a retired one is closed when
its last call ends (a reload would otherwise leave one open socket per partner behind).

A partner that restarts must be usable again as soon as it listens: the channel's own
reconnect backoff is kept as short as the sender's retries (``RECONNECT_BACKOFF_MS``), so
the first send after the partner is back does not wait out gRPC's default of up to 2 min;
each connection attempt still has gRPC's 20 s (``CONNECT_TIMEOUT_MS``) on a long path.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc

from gateway import envelope
from gateway._proto.xbgw.v1 import partner_pb2, partner_pb2_grpc
from gateway.audit.witness import ServedCheckpoint
from gateway.config import GatewayConfig, PartnerConfig
from gateway.documents import EndorsedKeySet
from gateway.errors import EnvelopeError, PartnerError
from gateway.receiver.intake import STRIPE_METADATA, Stripe
from gateway.signed import Signed
from gateway.tls import channel_credentials
from gateway.transfer import (
    DELIVER_STEP_KEY,
    DELIVER_STEPS,
    CommitProof,
    FinishResult,
    OfferResult,
    SegmentIn,
    TransferState,
    TransferStatus,
    UploadResult,
    refused_by,
    unreachable,
)
from gateway.wire import (
    WireSegment,
    ciphertext_len,
    deliver_request,
    from_blob,
    segment_head,
    state_from_wire,
    to_blob,
)

RPC_TIMEOUT_SECONDS = 30
FINISH_TIMEOUT_SECONDS = RPC_TIMEOUT_SECONDS * 4  # the receiver re-hashes after a restart
#: gRPC's reconnect backoff on partner channels: (initial, max), in milliseconds.
RECONNECT_BACKOFF_MS = (200, 5_000)
#: How long one connection attempt may take. gRPC reads it from ``min_reconnect_backoff_ms``
#: (its subchannel's "min connect timeout"), so that setting must not follow the short
#: initial backoff: TCP, TLS and HTTP/2's SETTINGS take three round trips or more, and at
#: Shanghai-Frankfurt's ~200 ms a 200 ms limit failed every first attempt until the backoff
#: had grown past it. 20 s is gRPC's own default.
CONNECT_TIMEOUT_MS = 20_000


def partner_error(exc: grpc.RpcError, partner: str, call: str) -> PartnerError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if code is grpc.StatusCode.UNAVAILABLE:
        hint = ""
        if call in ("key_set", "offer") and "socket closed" in (details or "").lower():
            hint = (
                " (the partner may have refused this gateway's TLS client certificate: check "
                "tls.certificate against the CA the partner trusts)"
            )
        return unreachable(partner, call, f"{details}{hint}")
    return refused_by(partner, call, code.name, details or "")


def witness_error(exc: grpc.RpcError, partner: str, what: str) -> PartnerError:
    """:func:`partner_error` for the witnessing calls (not the sender's: no hints)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if code is grpc.StatusCode.UNAVAILABLE:
        return PartnerError(f"partner {partner} is unreachable during {what}: {details}")
    return PartnerError(f"partner {partner} refused {what} ({code.name}): {details}", code.name)


#: The partner's Upload, called with each Segment already serialised (see :func:`segment_wire`).
UPLOAD_METHOD = "/xbgw.v1.PartnerGateway/Upload"


def segment_wire(segment: SegmentIn) -> bytes:
    """``partner_pb2.Segment(...).SerializeToString()`` for ``segment``, byte for byte, with
    at most one copy of the ciphertext instead of three -- none for a :class:`WireSegment`
    (the pipeline encrypts into the message itself).

    Why by hand: protobuf copies a ``bytes`` field into the message, and serialising copies
    it twice more; with several uploads running each copy is a megabyte per stream the
    sending daemon holds at once. The layout is :func:`gateway.wire.segment_head`'s.
    """
    head = segment_head(segment.transfer_id, segment.index, segment.final, ciphertext_len(segment))
    if (
        isinstance(segment, WireSegment)
        and segment.end == len(segment.wire)
        and segment.wire[: segment.start] == head
    ):
        return segment.wire  # already the canonical message (a received one may not be)
    return b"".join((head, segment.ciphertext))


def home_lane(transfer_id: str, lanes: int) -> int:
    """The lane every call of a streamed transfer takes: the same on every call and after a
    restart of this gateway (no state to keep), spread evenly over the lanes (random ids)."""
    if lanes <= 1:
        return 0
    digest = hashlib.sha256(transfer_id.encode()).digest()
    return int.from_bytes(digest[:4], "big") % lanes


def _header_lane(header: bytes, lanes: int) -> int:
    """:func:`home_lane` of the transfer an offer's header names; lane 0 for a header that
    does not decode (the partner refuses it, with the reason, whichever node it reaches)."""
    if lanes <= 1:
        return 0
    try:
        transfer_id = envelope.Header.decode(header).context.transfer_id
    except (EnvelopeError, ValueError):  # a field out of range may surface as either
        return 0
    return home_lane(transfer_id, lanes)


@dataclass(eq=False)  # one entry is one channel: compared by identity
class _Channel:
    """A channel and the calls it carries now (guarded by the link's lock).

    ``upload`` is the Upload method without a request serialiser: it takes the bytes of
    :func:`segment_wire`."""

    channel: grpc.Channel
    stub: partner_pb2_grpc.PartnerGatewayStub
    upload: grpc.StreamUnaryMultiCallable[bytes, partner_pb2.UploadResponse]
    calls: int = 0
    #: The partner answered Deliver with UNIMPLEMENTED (an older gateway): for this
    #: channel's life -- a reload makes a new one, and asks again -- it gets the three calls.
    no_deliver: bool = False


def channel_options(config: GatewayConfig, partner: PartnerConfig) -> list[tuple[str, object]]:
    """The partner channel's settings: message limits, keepalive, reconnect backoff.

    Keepalive (``limits.keepalive_seconds``): a ping after that much silence, and the
    connection dropped when it is not answered within as long again -- so a silent black
    hole fails the call in about twice the setting rather than at TCP's retransmission
    timeout. Pings go only while calls run (an idle channel has nothing to lose), but then
    without limit: a stalled upload sends no data, and must still be probed."""
    limit = config.limits.max_message_bytes
    keepalive_ms = config.limits.keepalive_seconds * 1000
    initial_ms, max_ms = RECONNECT_BACKOFF_MS
    return [
        ("grpc.ssl_target_name_override", partner.identity),
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", keepalive_ms),
        # grpcio 1.85 waits this long for a ping's ack (default a minute) whatever
        # keepalive_timeout_ms says: without it a black hole is noticed only after 60 s.
        ("grpc.http2.ping_timeout_ms", keepalive_ms),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", initial_ms),
        ("grpc.min_reconnect_backoff_ms", CONNECT_TIMEOUT_MS),
        ("grpc.max_reconnect_backoff_ms", max_ms),
    ]


class GrpcPartnerLink:
    """One mutual-TLS channel per partner; the five partner calls in domain types, and the
    two of witnessing (:class:`gateway.audit.witness.WitnessLink`)."""

    def __init__(self, config: GatewayConfig, key_pem: bytes) -> None:
        self._lock = threading.Lock()
        self._channels: dict[str, _Channel] = {}
        self._retired: list[_Channel] = []
        #: The next Deliver's lane, by partner id (round robin; see the module docstring).
        self._turns: dict[str, itertools.count[int]] = {}
        self.reconfigure(config, key_pem)

    def reconfigure(self, config: GatewayConfig, key_pem: bytes) -> None:
        """New calls use new channels; the old ones close once their last call ends."""
        with self._lock:
            idle = [c for c in self._channels.values() if c.calls == 0]
            self._retired.extend(c for c in self._channels.values() if c.calls > 0)
            self._config, self._key_pem = config, key_pem
            self._channels = {}
        for entry in idle:
            entry.channel.close()

    def open_channels(self) -> int:
        """Channels not closed yet, current and retired (what a reload must not grow)."""
        with self._lock:
            return len(self._channels) + len(self._retired)

    @contextmanager
    def _stub(
        self, partner: PartnerConfig, lane: int = 0
    ) -> Iterator[partner_pb2_grpc.PartnerGatewayStub]:
        """The partner's stub on ``lane`` for the length of one call, counted on its channel."""
        with self._entry(partner, lane) as entry:
            yield entry.stub

    def _next_lane(self, partner: PartnerConfig) -> int:
        """The partner's lanes in turn (0 while it has one)."""
        if partner.connections <= 1:
            return 0
        with self._lock:
            turn = self._turns.setdefault(partner.id, itertools.count())
            return next(turn) % partner.connections

    @contextmanager
    def _entry(self, partner: PartnerConfig, lane: int = 0) -> Iterator[_Channel]:
        """The partner's channel for the length of one call, counted on it. ``lane``: which
        of its connections (module docstring); lane 0 is the partner's usual channel."""
        key = partner.id if lane == 0 else f"{partner.id}\0{lane}"
        with self._lock:
            entry = self._channels.get(key)
            if entry is None:
                options = channel_options(self._config, partner)
                if lane:
                    # Channels of one process with equal arguments share one TCP connection
                    # (gRPC's global subchannel pool); a pool of its own gives this one its own.
                    options.append(("grpc.use_local_subchannel_pool", 1))
                channel = grpc.secure_channel(
                    str(partner.endpoint),
                    channel_credentials(self._config, partner, self._key_pem),
                    options=options,
                )
                upload = channel.stream_unary(
                    UPLOAD_METHOD,
                    request_serializer=None,
                    response_deserializer=partner_pb2.UploadResponse.FromString,
                )
                entry = _Channel(channel, partner_pb2_grpc.PartnerGatewayStub(channel), upload)
                self._channels[key] = entry
            entry.calls += 1
        try:
            yield entry
        finally:
            with self._lock:
                entry.calls -= 1
                done = entry.calls == 0 and entry in self._retired
                if done:
                    self._retired.remove(entry)
            if done:
                entry.channel.close()

    def key_set(self, partner: PartnerConfig) -> EndorsedKeySet:
        try:
            with self._stub(partner) as stub:
                response = stub.GetKeySet(
                    partner_pb2.GetKeySetRequest(), timeout=RPC_TIMEOUT_SECONDS
                )
        except grpc.RpcError as exc:
            raise partner_error(exc, partner.id, "key_set") from None
        signed = from_blob(response.key_set)
        return EndorsedKeySet(
            signed.body,
            signed.signature,
            signed.kid,
            tuple(from_blob(blob) for blob in response.endorsements),
        )

    def offer(self, partner: PartnerConfig, passport: str, header: bytes) -> OfferResult:
        try:
            lane = _header_lane(header, partner.connections)
            with self._stub(partner, lane) as stub:
                response = stub.Offer(
                    partner_pb2.OfferRequest(passport=passport, envelope_header=header),
                    timeout=RPC_TIMEOUT_SECONDS,
                )
        except grpc.RpcError as exc:
            raise partner_error(exc, partner.id, "offer") from None
        state = state_from_wire(response.state)
        return OfferResult(
            transfer_id=response.transfer_id,
            next_segment=response.next_segment,
            received_bytes=response.received_bytes,
            resumed=response.next_segment > 0 or state is TransferState.COMMITTED,
            committed=state is TransferState.COMMITTED,
        )

    def upload(self, partner: PartnerConfig, segments: Iterator[SegmentIn]) -> UploadResult:
        """One stream, on the transfer's own lane (its first segment names the transfer)."""
        lane = 0
        if partner.connections > 1:
            first = next(segments, None)
            if first is not None:
                lane = home_lane(first.transfer_id, partner.connections)
                segments = itertools.chain([first], segments)
        messages = (segment_wire(segment) for segment in segments)
        try:
            with self._entry(partner, lane) as entry:
                response = entry.upload(messages, timeout=None)
        except grpc.RpcError as exc:
            raise partner_error(exc, partner.id, "upload") from None
        return UploadResult(response.next_segment, response.received_bytes, response.final_received)

    def upload_stripe(
        self,
        partner: PartnerConfig,
        segments: Iterator[SegmentIn],
        stripe: Stripe,
        on_abort: Callable[[Callable[[], object]], None],
    ) -> UploadResult:
        """One stripe of a striped upload, on its own TCP connection (stripe ``i`` on lane
        ``i``: stripe 0 on the partner's usual one), naming itself in the ``xbgw-stripe``
        metadata. ``on_abort`` is given the call's cancel, which the sender calls when
        another stripe failed (a stripe stuck in flow control would otherwise wait for the
        receiver to end it)."""
        messages = (segment_wire(segment) for segment in segments)
        try:
            with self._entry(partner, stripe.index) as entry:
                future = entry.upload.future(
                    messages, timeout=None, metadata=((STRIPE_METADATA, stripe.encode()),)
                )
                on_abort(future.cancel)
                response = future.result()
        except grpc.FutureCancelledError:
            raise unreachable(
                partner.id, "upload", "this stripe was ended because another one failed"
            ) from None
        except grpc.RpcError as exc:
            raise partner_error(exc, partner.id, "upload") from None
        return UploadResult(response.next_segment, response.received_bytes, response.final_received)

    def finish(self, partner: PartnerConfig, transfer_id: str, manifest: Signed) -> FinishResult:
        try:
            with self._stub(partner, home_lane(transfer_id, partner.connections)) as stub:
                response = stub.Finish(
                    partner_pb2.FinishRequest(transfer_id=transfer_id, manifest=to_blob(manifest)),
                    timeout=FINISH_TIMEOUT_SECONDS,
                )
        except grpc.RpcError as exc:
            raise partner_error(exc, partner.id, "finish") from None
        return _finish_result(response)

    def deliver(
        self,
        partner: PartnerConfig,
        passport: str,
        header: bytes,
        segment: SegmentIn,
        manifest: Signed,
    ) -> FinishResult | None:
        """Offer, upload and finish in one call, on the partner's next lane (round robin);
        None if the partner has no Deliver (then remembered on that channel: behind a
        balancer each node answers for itself, an older one among newer). A refusal is
        worded as the step's that refused it (the partner's trailing metadata
        ``DELIVER_STEP_KEY``), so the sender tells a stale transport key or a refusal before
        recording just as from the three calls."""
        request = deliver_request(passport, header, segment, manifest)
        try:
            with self._entry(partner, self._next_lane(partner)) as entry:
                if entry.no_deliver:
                    return None
                try:
                    response = entry.stub.Deliver(request, timeout=FINISH_TIMEOUT_SECONDS)
                except grpc.RpcError as exc:
                    if hasattr(exc, "code") and exc.code() is grpc.StatusCode.UNIMPLEMENTED:
                        entry.no_deliver = True
                        return None
                    raise
        except grpc.RpcError as exc:
            raise partner_error(exc, partner.id, _deliver_step(exc)) from None
        return _finish_result(response)

    def status(self, partner: PartnerConfig, transfer_id: str) -> TransferStatus:
        try:
            with self._stub(partner, home_lane(transfer_id, partner.connections)) as stub:
                response = stub.GetTransfer(
                    partner_pb2.GetTransferRequest(transfer_id=transfer_id),
                    timeout=RPC_TIMEOUT_SECONDS,
                )
        except grpc.RpcError as exc:
            raise partner_error(exc, partner.id, "status") from None
        state = state_from_wire(response.state)
        if state is None:
            raise refused_by(
                partner.id, "status", "UNKNOWN", f"state {response.state} is not one xbgw knows"
            )
        return TransferStatus(
            transfer_id=response.transfer_id,
            state=state,
            next_segment=response.next_segment,
            received_bytes=response.received_bytes,
            receipt=from_blob(response.receipt) if response.HasField("receipt") else None,
        )

    def checkpoint(self, partner: PartnerConfig, known_size: int) -> ServedCheckpoint:
        try:
            with self._stub(partner) as stub:
                response = stub.GetCheckpoint(
                    partner_pb2.GetCheckpointRequest(known_size=known_size),
                    timeout=RPC_TIMEOUT_SECONDS,
                )
        except grpc.RpcError as exc:
            raise witness_error(exc, partner.id, "the checkpoint request") from None
        return ServedCheckpoint(response.checkpoint, tuple(response.consistency))

    def cosign(self, partner: PartnerConfig, checkpoint: str, cosignature: str) -> None:
        try:
            with self._stub(partner) as stub:
                stub.Cosign(
                    partner_pb2.CosignRequest(checkpoint=checkpoint, cosignature=cosignature),
                    timeout=RPC_TIMEOUT_SECONDS,
                )
        except grpc.RpcError as exc:
            raise witness_error(exc, partner.id, "the cosignature") from None

    def close(self) -> None:
        with self._lock:
            entries = [*self._channels.values(), *self._retired]
            self._channels, self._retired = {}, []
        for entry in entries:
            entry.channel.close()

    def cancel(self, partner: PartnerConfig, transfer_id: str, reason: str) -> TransferState:
        """Tell the partner we gave the transfer up (``xbgw cancel``); its state after."""
        try:
            with self._stub(partner, home_lane(transfer_id, partner.connections)) as stub:
                response = stub.Cancel(
                    partner_pb2.CancelTransferRequest(transfer_id=transfer_id, reason=reason),
                    timeout=RPC_TIMEOUT_SECONDS,
                )
        except grpc.RpcError as exc:
            raise partner_error(exc, partner.id, "cancel") from None
        state = state_from_wire(response.state)
        if state is None:
            raise refused_by(
                partner.id, "cancel", "UNKNOWN", f"state {response.state} is not one xbgw knows"
            )
        return state


def _finish_result(response: partner_pb2.FinishResponse) -> FinishResult:
    """The answer of Finish and of Deliver in domain types."""
    proof = None
    if response.HasField("proof"):
        given = response.proof
        proof = CommitProof(
            bytes(given.record), given.leaf, given.checkpoint, tuple(given.inclusion)
        )
    return FinishResult(from_blob(response.receipt), proof)


def _deliver_step(exc: grpc.RpcError) -> str:
    """The call a Deliver refusal is worded as: the step the partner names, else "deliver"
    (unreachable, or a refusal before any step -- the peer not a partner, draining)."""
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for item in trailing or ():
        value = item.value.decode() if isinstance(item.value, bytes) else str(item.value)
        if item.key == DELIVER_STEP_KEY and value in DELIVER_STEPS:
            return value
    return "deliver"
