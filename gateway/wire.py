"""Domain values to and from their common wire messages: signed blobs and transfer states.

The one place a :class:`~gateway.transfer.TransferState` becomes a protobuf enum and back, so
the partner servicer, the local servicer, the gRPC partner link and the CLI cannot disagree.
"""

from __future__ import annotations

from gateway._proto.xbgw.v1 import common_pb2
from gateway.signed import Signed
from gateway.transfer import TransferState

_TO_WIRE: dict[TransferState, common_pb2.TransferState] = {
    TransferState.RECEIVING: common_pb2.TRANSFER_STATE_RECEIVING,
    TransferState.COMMITTED: common_pb2.TRANSFER_STATE_COMMITTED,
    TransferState.REFUSED: common_pb2.TRANSFER_STATE_REFUSED,
    TransferState.SENDING: common_pb2.TRANSFER_STATE_SENDING,
    TransferState.DELIVERED: common_pb2.TRANSFER_STATE_DELIVERED,
    TransferState.CANCELLED: common_pb2.TRANSFER_STATE_CANCELLED,
    TransferState.EXPIRED: common_pb2.TRANSFER_STATE_EXPIRED,
}
_FROM_WIRE: dict[int, TransferState] = {int(wire): state for state, wire in _TO_WIRE.items()}


def to_blob(signed: Signed) -> common_pb2.SignedBlob:
    return common_pb2.SignedBlob(body=signed.body, signature=signed.signature, kid=signed.kid)


def from_blob(blob: common_pb2.SignedBlob) -> Signed:
    return Signed(bytes(blob.body), bytes(blob.signature), blob.kid)


def state_to_wire(state: TransferState) -> common_pb2.TransferState:
    return _TO_WIRE[state]


def state_from_wire(value: int) -> TransferState | None:
    """The state a peer sent; None for UNSPECIFIED or a value newer than this gateway."""
    return _FROM_WIRE.get(value)
