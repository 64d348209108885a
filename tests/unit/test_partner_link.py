"""The gRPC link's error mapping and the wire form of transfer states (the gRPC link itself
runs against real daemons in tests/system)."""

from __future__ import annotations

import grpc
import pytest

from gateway._proto.xbgw.v1 import common_pb2
from gateway.partner_link import partner_error
from gateway.transfer import TransferState
from gateway.wire import state_from_wire, state_to_wire


class _RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_a_refusal_keeps_the_partners_status_and_reason() -> None:
    error = partner_error(
        _RpcError(grpc.StatusCode.ALREADY_EXISTS, "passport t-1 was already used"),
        "frankfurt",
        "offer",
    )
    assert error.grpc_status == "ALREADY_EXISTS"
    assert str(error) == (
        "partner frankfurt refused the offer (ALREADY_EXISTS): passport t-1 was already used"
    )


@pytest.mark.parametrize(
    ("call", "hinted"), [("offer", True), ("key_set", True), ("upload", False)]
)
def test_unreachable_hints_at_the_client_certificate_only_at_the_handshake(
    call: str, hinted: bool
) -> None:
    error = partner_error(
        _RpcError(grpc.StatusCode.UNAVAILABLE, "Socket closed"), "frankfurt", call
    )
    assert error.grpc_status == "UNAVAILABLE"
    assert str(error).startswith("partner frankfurt is unreachable during ")
    assert ("TLS client certificate" in str(error)) is hinted


def test_every_state_has_one_wire_value_and_back() -> None:
    wire = {state: state_to_wire(state) for state in TransferState}
    assert len(set(wire.values())) == len(TransferState)
    assert common_pb2.TRANSFER_STATE_UNSPECIFIED not in wire.values()
    assert wire[TransferState.REFUSED] == common_pb2.TRANSFER_STATE_REFUSED
    assert all(state_from_wire(value) is state for state, value in wire.items())
    assert state_from_wire(common_pb2.TRANSFER_STATE_UNSPECIFIED) is None
    assert state_from_wire(99) is None  # a state from a newer peer is unknown, not a crash
