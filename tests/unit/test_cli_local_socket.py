"""How ``xbgw`` words a failed call to the local daemon (``gateway.cli.local_socket``).

The three UNAVAILABLE cases must stay apart: gRPC could not reach the socket (is the daemon
running?), the daemon went away in the middle of this call (it stopped or died: repeat the
command), and the daemon itself reports an unreachable partner (passed on as it is).
"""

from __future__ import annotations

import grpc
import pytest

from gateway.cli.local_socket import rpc_error
from gateway.errors import DaemonUnavailableError, PartnerError

SOCKET = "/run/xbgw/local.sock"


class _Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_no_daemon_at_the_socket_asks_whether_it_runs() -> None:
    error = rpc_error(
        _Failed(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses"), SOCKET
    )
    assert isinstance(error, DaemonUnavailableError)
    assert str(error) == (
        f"the gateway at {SOCKET} does not answer: is it running? (systemctl status xbgw)"
    )


def test_a_daemon_that_went_away_mid_call_says_so_and_how_to_go_on() -> None:
    failed = _Failed(grpc.StatusCode.UNAVAILABLE, "Stream removed (Socket closed)")
    error = rpc_error(failed, SOCKET)
    assert isinstance(error, DaemonUnavailableError)
    assert str(error).startswith(f"the gateway at {SOCKET} went away during the call")
    assert "(Stream removed (Socket closed))" in str(error)
    assert "repeat the command" in str(error)


@pytest.mark.parametrize(
    ("code", "details"),
    [
        (grpc.StatusCode.UNAVAILABLE, "partner frankfurt is unreachable during the offer: x"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "partner frankfurt's storage is full: /s (ENOSPC)"),
    ],
)
def test_the_daemons_own_failures_pass_through(code: grpc.StatusCode, details: str) -> None:
    error = rpc_error(_Failed(code, details), SOCKET)
    assert isinstance(error, PartnerError) and not isinstance(error, DaemonUnavailableError)
    assert str(error) == details  # the status name only with --verbose
    assert error.grpc_status == code.name
