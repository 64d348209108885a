"""The local socket of a running daemon, as the CLI's daemon verbs reach it.

Shared by :mod:`gateway.cli.daemon` (send, inbox, fetch, status) and
:mod:`gateway.cli.lifecycle` (the key verbs), so both find the socket, connect and turn gRPC
failures into the one error tree the same way.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from gateway import DEFAULT_SOCKET
from gateway._proto.xbgw.v1 import local_pb2_grpc
from gateway.errors import DaemonUnavailableError, PartnerError, XbgwError

MAX_MESSAGE = 16 << 20


def socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    if args.config:
        from gateway.config import load_config

        return str(load_config(args.config).listen.local_socket)
    return os.environ.get("XBGW_SOCKET", DEFAULT_SOCKET)


def hand_over_file(args: argparse.Namespace, fd: int) -> bytes | None:
    """Hand the open file ``fd`` to the daemon (``gateway.fdpass``); its ticket, or None when
    the daemon has no file-handover socket (a daemon older than this xbgw: stream instead)."""
    from gateway.fdpass import fd_socket_path, hand_over

    path = fd_socket_path(socket_path(args))
    try:
        return hand_over(path, fd)
    except (FileNotFoundError, ConnectionRefusedError):
        return None
    except PermissionError:
        raise DaemonUnavailableError(
            f"permission denied on {path}: add yourself to group xbgw (and log in again)"
        ) from None
    except TimeoutError:
        raise DaemonUnavailableError(
            f"the gateway's file-handover socket {path} does not answer: is it running?"
        ) from None
    except OSError as exc:
        raise DaemonUnavailableError(
            f"cannot hand the file to the gateway at {path}: {exc.strerror or exc}"
        ) from None


def stub(args: argparse.Namespace) -> tuple[grpc.Channel, local_pb2_grpc.LocalGatewayStub]:
    path = socket_path(args)
    try:
        os.stat(path)
    except PermissionError:
        raise DaemonUnavailableError(
            f"permission denied on {path}: add yourself to group xbgw (and log in again)"
        ) from None
    except OSError:
        raise DaemonUnavailableError(
            f"no gateway socket at {path}: is the daemon running? (systemctl status xbgw)"
        ) from None
    channel = grpc.insecure_channel(
        f"unix:{path}",
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
        ],
    )
    return channel, local_pb2_grpc.LocalGatewayStub(channel)


@contextmanager
def connect(args: argparse.Namespace) -> Iterator[local_pb2_grpc.LocalGatewayStub]:
    """A stub whose channel is closed when the block ends, however it ends: the CLI exits
    right after, and a channel left to the garbage collector at interpreter shutdown can
    hang the exit."""
    channel, gateway_stub = stub(args)
    try:
        yield gateway_stub
    finally:
        channel.close()


def rpc_error(exc: grpc.RpcError, socket: str) -> XbgwError:
    code = exc.code()
    # Only gRPC's own failure to reach the socket means the daemon is down. The daemon's
    # UNAVAILABLE ("partner X is unreachable ...: failed to connect to all addresses") must
    # reach the operator as it is, not as "is it running?": gRPC's message *starts* so.
    details = (exc.details() or "").lower()
    if code is grpc.StatusCode.UNAVAILABLE and details.startswith("failed to connect"):
        if "permission denied" in details:
            return DaemonUnavailableError(
                f"permission denied on {socket}: add yourself to group xbgw (and log in again)"
            )
        return DaemonUnavailableError(f"the gateway at {socket} does not answer: is it running?")
    if code is grpc.StatusCode.UNAVAILABLE and details.startswith("stream removed"):
        # The daemon's end of this very call went away: it stopped or died mid-call.
        return DaemonUnavailableError(
            f"the gateway at {socket} went away during the call ({exc.details()}): check "
            "that it runs again, then repeat the command (a send resumes where it stopped)"
        )
    return PartnerError(f"{exc.details()} [{code.name}]", code.name)
