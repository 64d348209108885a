"""The partner-facing gRPC servicer: authenticate the peer, translate, map errors.

Thin on purpose: every decision is in :mod:`gateway.receiver`; errors become statuses in
:mod:`gateway.status`, the same way as on the local socket.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import HealthServicer

from gateway._proto.xbgw.v1 import partner_pb2, partner_pb2_grpc
from gateway.audit.witness import Witness, WitnessError
from gateway.config import GatewayConfig, PartnerConfig
from gateway.errors import (
    DrainingError,
    MessageTooLargeError,
    OfferMismatchError,
    PartnerBusyError,
    XbgwError,
)
from gateway.metrics import Metrics
from gateway.receiver import Receiver
from gateway.receiver.intake import STRIPE_METADATA, Stripe
from gateway.status import abort_with
from gateway.tls import peer_partner
from gateway.transfer import DELIVER_STEP_KEY, FinishResult, SegmentIn, TransferState
from gateway.wire import (
    ParsedSegment,
    from_blob,
    parse_upload_message,
    segment_head,
    state_to_wire,
    to_blob,
)

log = logging.getLogger("xbgw.partner")
T = TypeVar("T")
PARTNER_SERVICE = "xbgw.v1.PartnerGateway"


def upload_slots(max_concurrent_transfers: int) -> int:
    """Uploads from all partners together that the partner listener runs at once."""
    return 2 * max_concurrent_transfers


class PartnerServicer(partner_pb2_grpc.PartnerGatewayServicer):
    def __init__(
        self,
        config: Callable[[], GatewayConfig],
        receiver: Receiver,
        metrics: Metrics,
        accepting: Callable[[], bool],
        witness: Witness | None = None,
    ) -> None:
        """``witness``: serves GetCheckpoint and Cosign (without it they are refused)."""
        self._config = config
        self._witness = witness
        self._receiver = receiver
        self._metrics = metrics
        self._accepting = accepting
        self._in_flight = 0
        self._by_partner: dict[str, int] = {}
        self._uploads = 0
        self._in_flight_lock = threading.Condition()

    @contextmanager
    def _per_partner(self, partner_id: str) -> Iterator[None]:
        """An upload slot: at most ``max_concurrent_transfers`` uploads per partner, so one
        partner holding streams open cannot lock the others out, and twice that in all
        (``upload_slots``), so uploads never take the threads the short calls need.

        A striped upload's N streams take N slots: the slots exist to keep threads free for
        the short calls, and each stream holds a thread for as long as it runs. A stripe
        refused here fails that attempt as a whole (the sender retries it after a pause), so
        a partner's ``connections`` should stay within ``max_concurrent_transfers``.

        Only uploads are counted, and they are refused here before any segment is read. The
        short calls -- above all Finish, which comes after the data crossed -- are never
        refused for load: they get threads of their own (``gateway.daemon``)."""
        cap = self._config().limits.max_concurrent_transfers
        total = upload_slots(cap)
        with self._in_flight_lock:
            if self._by_partner.get(partner_id, 0) >= cap:
                raise PartnerBusyError(
                    f"partner {partner_id} already has {cap} requests in flight, its limit "
                    "for uploads (limits.max_concurrent_transfers); retry when one has finished"
                )
            if self._uploads >= total:
                raise PartnerBusyError(
                    f"this gateway already has {total} requests in flight, its limit for "
                    "uploads from all partners (2 x limits.max_concurrent_transfers); retry "
                    "when one has finished"
                )
            self._by_partner[partner_id] = self._by_partner.get(partner_id, 0) + 1
            self._uploads += 1
        try:
            yield
        finally:
            with self._in_flight_lock:
                self._by_partner[partner_id] -= 1
                self._uploads -= 1

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no handler runs (after the server stopped); False on timeout."""
        with self._in_flight_lock:
            return self._in_flight_lock.wait_for(lambda: self._in_flight == 0, timeout)

    def _run(
        self,
        context: grpc.ServicerContext,
        rpc: str,
        action: Callable[[PartnerConfig], T],
        transfer_id: str | Callable[[], str] = "",
    ) -> T:
        partner_id = ""
        with self._in_flight_lock:
            self._in_flight += 1
        try:
            peer = peer_partner(self._config(), context)
            partner_id = peer.id
            if rpc in ("Offer", "Deliver") and not self._accepting():
                raise DrainingError("the gateway is shutting down; offer again shortly")
            if rpc != "Upload":
                return action(peer)
            with self._per_partner(peer.id):
                return action(peer)
        except XbgwError as error:
            self._metrics.refusals.labels(type(error).__name__, partner_id or "unknown").inc()
            if rpc == "Finish":
                self._metrics.transfers.labels("in", partner_id or "unknown", "refused").inc()
            named = transfer_id() if callable(transfer_id) else transfer_id
            abort_with(context, error, log, rpc, rpc=rpc, partner=partner_id, transfer_id=named)
            raise AssertionError("unreachable: abort raises") from error
        finally:
            with self._in_flight_lock:
                self._in_flight -= 1
                self._in_flight_lock.notify_all()

    def Offer(  # noqa: N802 - gRPC method name
        self, request: partner_pb2.OfferRequest, context: grpc.ServicerContext
    ) -> partner_pb2.OfferResponse:
        def act(peer: PartnerConfig) -> partner_pb2.OfferResponse:
            result = self._receiver.offer(peer, request.passport, request.envelope_header)
            self._metrics.offered_in(result.transfer_id)  # for xbgw_transfer_duration_seconds
            return partner_pb2.OfferResponse(
                transfer_id=result.transfer_id,
                next_segment=result.next_segment,
                received_bytes=result.received_bytes,
                state=state_to_wire(
                    TransferState.COMMITTED if result.committed else TransferState.RECEIVING
                ),
            )

        return self._run(context, "Offer", act)

    def Upload(  # noqa: N802
        self,
        request_iterator: Iterator[ParsedSegment | partner_pb2.Segment],
        context: grpc.ServicerContext,
    ) -> partner_pb2.UploadResponse:
        """Registered by :func:`add_partner_servicer` with :func:`parse_upload_message` as
        the deserialiser: each message arrives as its bytes, read where they lie (no
        protobuf copies, no ``ByteSize()`` re-serialisation). Registered the generated way
        it gets ``Segment`` messages: read once each, sized by their canonical length."""
        first_id: list[str] = []
        limit = self._config().limits.max_message_bytes

        def segments() -> Iterator[SegmentIn]:
            for m in request_iterator:
                segment, size = _upload_segment(m)
                if not first_id and segment is not None:
                    first_id.append(segment.transfer_id)
                if size > limit:
                    which = f"segment {segment.index}" if segment is not None else "a segment"
                    raise MessageTooLargeError(
                        f"{which} came in a {size}-byte message, larger than this "
                        f"gateway's max_message_bytes ({limit}); send smaller segments"
                    )
                if segment is None:
                    assert isinstance(m, ParsedSegment)
                    raise OfferMismatchError(
                        f"an Upload message is not a valid Segment ({m.error}); the sender "
                        "must send protobuf Segment messages"
                    )
                yield segment

        def act(peer: PartnerConfig) -> partner_pb2.UploadResponse:
            stripe = _stripe(context)
            if stripe is not None:
                # Cancelled by the sender (another stripe failed), this stream must end its
                # attempt at once: waiting for room in the reorder buffer, it never reads
                # the cancel (``Receiver.end_stripes``).
                def ended(stripe: Stripe = stripe) -> None:
                    if first_id:
                        self._receiver.end_stripes(peer.id, first_id[0], stripe)

                context.add_callback(ended)
            with self._metrics.stream("in"):
                result = self._receiver.upload(peer, segments(), stripe)
            return partner_pb2.UploadResponse(
                next_segment=result.next_segment,
                received_bytes=result.received_bytes,
                final_received=result.final_received,
            )

        return self._run(context, "Upload", act, lambda: first_id[0] if first_id else "")

    def Finish(  # noqa: N802
        self, request: partner_pb2.FinishRequest, context: grpc.ServicerContext
    ) -> partner_pb2.FinishResponse:
        def act(peer: PartnerConfig) -> partner_pb2.FinishResponse:
            done = self._receiver.finish(peer, request.transfer_id, from_blob(request.manifest))
            self._metrics.ended_in(request.transfer_id, "committed")
            return _finish_response(done)

        return self._run(context, "Finish", act, request.transfer_id)

    def Deliver(  # noqa: N802
        self, request: partner_pb2.DeliverRequest, context: grpc.ServicerContext
    ) -> partner_pb2.FinishResponse:
        """Offer, Upload and Finish of a one-segment transfer in one call
        (``gateway.receiver.deliver``). A refusal carries the step that made it in the
        trailing metadata ``DELIVER_STEP_KEY``, so the sender reads it as that call's."""
        steps: list[str] = []
        given = request.segment
        segment = SegmentIn(given.transfer_id, given.index, given.final, given.ciphertext)

        def act(peer: PartnerConfig) -> partner_pb2.FinishResponse:
            # Keyed as the offer is: by the transfer id (the segment's, checked against the
            # passport's before the segment is taken).
            self._metrics.offered_in(segment.transfer_id)  # for xbgw_transfer_duration_seconds
            try:
                done = self._receiver.deliver(
                    peer,
                    request.passport,
                    request.envelope_header,
                    segment,
                    from_blob(request.manifest),
                    steps.append,
                )
            except XbgwError:
                context.set_trailing_metadata(((DELIVER_STEP_KEY, steps[-1]),))
                raise
            self._metrics.ended_in(segment.transfer_id, "committed")
            return _finish_response(done)

        return self._run(context, "Deliver", act, lambda: segment.transfer_id)

    def GetTransfer(  # noqa: N802
        self, request: partner_pb2.GetTransferRequest, context: grpc.ServicerContext
    ) -> partner_pb2.TransferStatus:
        def act(peer: PartnerConfig) -> partner_pb2.TransferStatus:
            found = self._receiver.status(peer, request.transfer_id)
            status = partner_pb2.TransferStatus(
                transfer_id=found.transfer_id,
                state=state_to_wire(found.state),
                next_segment=found.next_segment,
                received_bytes=found.received_bytes,
            )
            if found.receipt is not None:
                status.receipt.CopyFrom(to_blob(found.receipt))
            return status

        return self._run(context, "GetTransfer", act, request.transfer_id)

    def GetKeySet(  # noqa: N802
        self, request: partner_pb2.GetKeySetRequest, context: grpc.ServicerContext
    ) -> partner_pb2.GetKeySetResponse:
        def act(_peer: PartnerConfig) -> partner_pb2.GetKeySetResponse:
            served = self._receiver.key_set()
            return partner_pb2.GetKeySetResponse(
                key_set=to_blob(served), endorsements=[to_blob(e) for e in served.endorsements]
            )

        return self._run(context, "GetKeySet", act)

    # -- witnessing (gateway.audit.witness) ------------------------------------------------

    def _witnessing(self) -> Witness:
        if self._witness is None:
            raise WitnessError("this gateway does not take part in witnessing")
        return self._witness

    def GetCheckpoint(  # noqa: N802
        self, request: partner_pb2.GetCheckpointRequest, context: grpc.ServicerContext
    ) -> partner_pb2.GetCheckpointResponse:
        def act(_peer: PartnerConfig) -> partner_pb2.GetCheckpointResponse:
            served = self._witnessing().serve_checkpoint(request.known_size)
            return partner_pb2.GetCheckpointResponse(
                checkpoint=served.note, consistency=list(served.consistency)
            )

        return self._run(context, "GetCheckpoint", act)

    def Cosign(  # noqa: N802
        self, request: partner_pb2.CosignRequest, context: grpc.ServicerContext
    ) -> partner_pb2.CosignResponse:
        def act(peer: PartnerConfig) -> partner_pb2.CosignResponse:
            self._witnessing().accept_cosignature(peer, request.checkpoint, request.cosignature)
            return partner_pb2.CosignResponse()

        return self._run(context, "Cosign", act)

    def Cancel(  # noqa: N802
        self, request: partner_pb2.CancelTransferRequest, context: grpc.ServicerContext
    ) -> partner_pb2.CancelTransferResponse:
        """The sender gave its transfer up: drop what we hold of it (``receiver.cancel``)."""

        def act(peer: PartnerConfig) -> partner_pb2.CancelTransferResponse:
            state = self._receiver.ends().cancel(request.transfer_id, request.reason, peer)
            return partner_pb2.CancelTransferResponse(state=state_to_wire(state))

        return self._run(context, "Cancel", act, request.transfer_id)


def _finish_response(done: FinishResult) -> partner_pb2.FinishResponse:
    """The answer of Finish and of Deliver: the receipt, and the commit's proof if any."""
    response = partner_pb2.FinishResponse(receipt=to_blob(done.receipt))
    if done.proof is not None:
        response.proof.CopyFrom(
            partner_pb2.CommitProof(
                record=done.proof.record,
                leaf=done.proof.leaf,
                checkpoint=done.proof.checkpoint,
                inclusion=list(done.proof.inclusion),
            )
        )
    return response


def _stripe(context: grpc.ServicerContext) -> Stripe | None:
    """The stripe an Upload call says it is (``xbgw-stripe`` metadata); None: the transfer's
    one stream, as before striping."""
    for key, value in context.invocation_metadata() or ():
        if key == STRIPE_METADATA:
            return Stripe.decode(
                value if isinstance(value, str) else value.decode("ascii", "replace")
            )
    return None


def _upload_segment(m: ParsedSegment | partner_pb2.Segment) -> tuple[SegmentIn | None, int]:
    """The segment an Upload message carries (None if it carries none) and its size."""
    if isinstance(m, ParsedSegment):
        return m.segment, m.size
    ciphertext = m.ciphertext  # a copy on every read: read once
    head = segment_head(m.transfer_id, m.index, m.final, len(ciphertext))
    return SegmentIn(m.transfer_id, m.index, m.final, ciphertext), len(head) + len(ciphertext)


def add_partner_servicer(servicer: PartnerServicer, server: grpc.Server) -> None:
    """Register ``servicer`` on ``server`` as ``partner_pb2_grpc`` would, except Upload,
    whose messages are parsed by :func:`gateway.wire.parse_upload_message` (see
    :meth:`PartnerServicer.Upload`). The bytes on the wire are the same either way."""
    captured: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    class _Capture:
        """Takes the generated handlers instead of a server (so the other methods stay
        exactly as generated)."""

        def add_generic_rpc_handlers(self, handlers: object) -> None:
            pass

        def add_registered_method_handlers(
            self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
        ) -> None:
            captured.update(handlers)

    partner_pb2_grpc.add_PartnerGatewayServicer_to_server(servicer, cast(Any, _Capture()))
    captured["Upload"] = grpc.stream_unary_rpc_method_handler(
        servicer.Upload,
        request_deserializer=parse_upload_message,
        response_serializer=partner_pb2.UploadResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(PARTNER_SERVICE, captured),)
    )


class PartnerHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """Health on the partner port, for configured partners only.

    The partner port trusts every partner's CA, and a CA may issue certificates that name no
    partner of ours: such a caller gets no RPC answered (``PartnerServicer._run``), and so no
    health answer either -- it is told PERMISSION_DENIED, as for any other call. A configured
    partner gets what ``health`` (the daemon's one HealthServicer) says.
    """

    def __init__(self, config: Callable[[], GatewayConfig], health: HealthServicer) -> None:
        self._config = config
        self._health = health

    def _caller(self, context: grpc.ServicerContext) -> None:
        try:
            peer_partner(self._config(), context)
        except XbgwError as error:
            abort_with(context, error, log, "Health", rpc="Health")

    def Check(  # noqa: N802 - gRPC method name
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        self._caller(context)
        return self._health.Check(request, context)

    def Watch(  # noqa: N802
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
    ) -> Iterator[health_pb2.HealthCheckResponse]:
        self._caller(context)
        return self._health.Watch(request, context)  # type: ignore[no-any-return]
