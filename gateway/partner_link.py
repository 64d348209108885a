"""The gRPC :class:`~gateway.transfer.PartnerLink`: mutual-TLS channels to partners.

Everything gRPC about sending lives here: one channel per partner (rebuilt on reload), the
message conversions, and the mapping of ``grpc.RpcError`` to
:class:`~gateway.errors.PartnerError` with the partner's reason, so the sender never sees
gRPC.

A reload must not cut sends in flight: the old channels are retired, not closed -- new
transfers use new channels (new certificate, CA, endpoint) while running streams finish on
the old ones, which are closed at shutdown.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc

from gateway._proto.xbgw.v1 import partner_pb2, partner_pb2_grpc
from gateway.audit.witness import ServedCheckpoint
from gateway.config import GatewayConfig, PartnerConfig
from gateway.documents import EndorsedKeySet
from gateway.errors import PartnerError
from gateway.signed import Signed
from gateway.tls import channel_credentials
from gateway.transfer import (
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
from gateway.wire import from_blob, state_from_wire, to_blob

RPC_TIMEOUT_SECONDS = 30
FINISH_TIMEOUT_SECONDS = RPC_TIMEOUT_SECONDS * 4  # the receiver re-hashes after a restart


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


class GrpcPartnerLink:
    """One mutual-TLS channel per partner; the five partner calls in domain types, and the
    two of witnessing (:class:`gateway.audit.witness.WitnessLink`)."""

    def __init__(self, config: GatewayConfig, key_pem: bytes) -> None:
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._retired: list[grpc.Channel] = []
        self.reconfigure(config, key_pem)

    def reconfigure(self, config: GatewayConfig, key_pem: bytes) -> None:
        with self._lock:
            self._retired.extend(self._channels.values())
            self._config, self._key_pem = config, key_pem
            self._channels = {}

    def _stub(self, partner: PartnerConfig) -> partner_pb2_grpc.PartnerGatewayStub:
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

    def key_set(self, partner: PartnerConfig) -> EndorsedKeySet:
        try:
            response = self._stub(partner).GetKeySet(
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
            response = self._stub(partner).Offer(
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
        messages = (
            partner_pb2.Segment(
                transfer_id=s.transfer_id, index=s.index, final=s.final, ciphertext=s.ciphertext
            )
            for s in segments
        )
        try:
            response = self._stub(partner).Upload(messages, timeout=None)
        except grpc.RpcError as exc:
            raise partner_error(exc, partner.id, "upload") from None
        return UploadResult(response.next_segment, response.received_bytes, response.final_received)

    def finish(self, partner: PartnerConfig, transfer_id: str, manifest: Signed) -> FinishResult:
        try:
            response = self._stub(partner).Finish(
                partner_pb2.FinishRequest(transfer_id=transfer_id, manifest=to_blob(manifest)),
                timeout=FINISH_TIMEOUT_SECONDS,
            )
        except grpc.RpcError as exc:
            raise partner_error(exc, partner.id, "finish") from None
        proof = None
        if response.HasField("proof"):
            given = response.proof
            proof = CommitProof(
                bytes(given.record), given.leaf, given.checkpoint, tuple(given.inclusion)
            )
        return FinishResult(from_blob(response.receipt), proof)

    def status(self, partner: PartnerConfig, transfer_id: str) -> TransferStatus:
        try:
            response = self._stub(partner).GetTransfer(
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
            response = self._stub(partner).GetCheckpoint(
                partner_pb2.GetCheckpointRequest(known_size=known_size),
                timeout=RPC_TIMEOUT_SECONDS,
            )
        except grpc.RpcError as exc:
            raise witness_error(exc, partner.id, "the checkpoint request") from None
        return ServedCheckpoint(response.checkpoint, tuple(response.consistency))

    def cosign(self, partner: PartnerConfig, checkpoint: str, cosignature: str) -> None:
        try:
            self._stub(partner).Cosign(
                partner_pb2.CosignRequest(checkpoint=checkpoint, cosignature=cosignature),
                timeout=RPC_TIMEOUT_SECONDS,
            )
        except grpc.RpcError as exc:
            raise witness_error(exc, partner.id, "the cosignature") from None

    def close(self) -> None:
        with self._lock:
            channels = [*self._channels.values(), *self._retired]
            self._channels, self._retired = {}, []
        for channel in channels:
            channel.close()
