"""The local socket of a running daemon, as the CLI's daemon verbs reach it.

Shared by :mod:`gateway.cli.daemon` (send, inbox, fetch, status) and
:mod:`gateway.cli.lifecycle` (the key verbs), so both find the socket, connect and turn gRPC
failures into the one error tree the same way.
"""

from __future__ import annotations

import argparse
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from gateway import DEFAULT_SOCKET
from gateway._proto.xbgw.v1 import local_pb2_grpc
from gateway.errors import DaemonUnavailableError, PartnerError, XbgwError

MAX_MESSAGE = 16 << 20


#: Where ``scripts/install`` puts the config and the systemd unit reads it from
#: (``ExecStart=/usr/bin/xbgw serve -c /etc/xbgw/gateway.yaml``).
DEFAULT_CONFIG = "/etc/xbgw/gateway.yaml"

_FOUND = "_xbgw_socket_found"  # where find_socket keeps its answer on the Namespace


@dataclass(frozen=True)
class SocketChoice:
    """The socket a daemon verb talks to, and how it was found: ``source`` names the flag,
    config or variable that gave it (None: the defaults), ``tried`` every place looked at,
    in order, with what was there (for the error when nothing answers)."""

    path: str
    source: str | None
    tried: tuple[str, ...]


def find_socket(args: argparse.Namespace) -> SocketChoice:
    """The daemon's local socket: ``--socket``, else ``-c CONFIG``'s ``listen.local_socket``,
    else ``$XBGW_SOCKET``, else the installed config's, else :data:`gateway.DEFAULT_SOCKET`.

    Named places are binding: a path the person gave (flag, config, variable) is the one
    used, never silently replaced by a default that may be another gateway. ``-c`` beats
    ``$XBGW_SOCKET``, as a flag beats the environment: ``xbgw keys rotate -c other.yaml``
    must not act on whichever gateway a variable left in the shell points to. Only the
    defaults fall through: the installed config when it is there, then the systemd path.
    The answer is kept on ``args``, so the error after a failed call names the same path."""
    found = getattr(args, _FOUND, None)
    if isinstance(found, SocketChoice):
        return found
    found = _find_socket(args)
    setattr(args, _FOUND, found)
    return found


def _find_socket(args: argparse.Namespace) -> SocketChoice:
    socket = getattr(args, "socket", None)
    if socket:
        return SocketChoice(str(socket), "--socket", ())
    config = getattr(args, "config", None)
    if config:
        from gateway.config import load_config

        path = str(load_config(config).listen.local_socket)
        return SocketChoice(path, f"-c {config}, listen.local_socket", ())
    variable = os.environ.get("XBGW_SOCKET", "")
    if variable:
        return SocketChoice(variable, "$XBGW_SOCKET", ())
    tried = ["-c (not given)", "$XBGW_SOCKET (unset)"]
    installed, why = _installed_socket(DEFAULT_CONFIG)
    if installed is not None:
        tried.append(f"{DEFAULT_CONFIG}: {installed} ({_state(installed)})")
        if os.path.exists(installed) or installed == DEFAULT_SOCKET:
            return SocketChoice(installed, None, tuple(tried))
    else:
        tried.append(f"{DEFAULT_CONFIG} ({why})")
    tried.append(f"{DEFAULT_SOCKET} ({_state(DEFAULT_SOCKET)})")
    return SocketChoice(DEFAULT_SOCKET, None, tuple(tried))


def _installed_socket(config: str) -> tuple[str | None, str]:
    """``listen.local_socket`` of the installed config, or None and why not.

    Only that one key is read, not the whole config checked: the daemon checked it when it
    started, and a file it names may be unreadable to an operator who may use the socket."""
    import yaml

    try:
        text = Path(config).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, "absent"
    except PermissionError:
        return None, "not readable by you"
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"unreadable: {getattr(exc, 'strerror', None) or exc}"
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return None, f"not valid YAML: xbgw check -c {config}"
    listen = doc.get("listen") if isinstance(doc, dict) else None
    value = listen.get("local_socket") if isinstance(listen, dict) else None
    if not isinstance(value, str) or not value:
        return None, "no listen.local_socket"
    return str(Path(config).parent / value), ""  # relative to the file, as load_config does


def _state(path: str) -> str:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file"
    except PermissionError:
        return "permission denied"
    except OSError as exc:
        return exc.strerror or str(exc)
    return "a socket" if stat.S_ISSOCK(mode) else "not a socket"


def socket_path(args: argparse.Namespace) -> str:
    """The path of :func:`find_socket` (which may not exist: ``stub`` says so)."""
    return find_socket(args).path


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
    choice = find_socket(args)
    path = choice.path
    try:
        os.stat(path)
    except PermissionError:
        raise DaemonUnavailableError(
            f"permission denied on {path}: add yourself to group xbgw (and log in again)"
        ) from None
    except OSError:
        raise DaemonUnavailableError(_no_socket(choice)) from None
    channel = grpc.insecure_channel(
        f"unix:{path}",
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
        ],
    )
    return channel, local_pb2_grpc.LocalGatewayStub(channel)


def _no_socket(choice: SocketChoice) -> str:
    """No socket file: where the path came from, or every default tried, in order; and what
    to do: start the daemon, or name the one that runs."""
    if choice.source is not None:
        return (
            f"no gateway socket at {choice.path} (from {choice.source}): is the daemon "
            "running? (systemctl status xbgw, or check the path)"
        )
    return (
        f"no gateway socket: tried {', '.join(choice.tried)}: is the daemon running? "
        "(systemctl status xbgw) for another gateway, give -c CONFIG or set XBGW_SOCKET"
    )


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


#: What to do after a status that gRPC itself gives (not the daemon's refusals, whose message
#: says it): the call timed out, or the daemon is older than this xbgw.
_OWN_STATUS = {
    "DEADLINE_EXCEEDED": "the gateway at {socket} did not answer in time: it may be "
    "overloaded; try again, and see its log (journalctl -u xbgw) if it persists",
    "UNIMPLEMENTED": "the gateway at {socket} does not know this request: it runs an older "
    "xbgw than this command; upgrade and restart it (systemctl restart xbgw)",
}


def rpc_error(exc: grpc.RpcError, socket: str) -> XbgwError:
    """A failed call as one error a person reads first: what happened and what to do.

    The place the gRPC status is attached, once: on the error (``grpc_status``) and, with
    gRPC's own words, as a note -- ``xbgw --verbose`` prints both, plain runs neither (the
    daemon's JSON log has them too). The daemon's own refusals already say what happened
    and what to do; they pass through as they are."""
    code = exc.code()
    raw = exc.details() or ""
    error = _rpc_error(code, raw, socket)
    error.add_note(f"gRPC status {code.name}: {raw or '(no details)'}")
    return error


def _rpc_error(code: grpc.StatusCode, raw: str, socket: str) -> XbgwError:
    # Only gRPC's own failure to reach the socket means the daemon is down. The daemon's
    # UNAVAILABLE ("partner X is unreachable ...: failed to connect to all addresses") must
    # reach the operator as it is, not as "is it running?": gRPC's message *starts* so.
    details = raw.lower()
    if code is grpc.StatusCode.UNAVAILABLE and details.startswith("failed to connect"):
        if "permission denied" in details:
            return DaemonUnavailableError(
                f"permission denied on {socket}: add yourself to group xbgw (and log in again)"
            )
        return DaemonUnavailableError(
            f"the gateway at {socket} does not answer: is it running? (systemctl status xbgw)"
        )
    if code is grpc.StatusCode.UNAVAILABLE and details.startswith("stream removed"):
        # The daemon's end of this very call went away: it stopped or died mid-call.
        return DaemonUnavailableError(
            f"the gateway at {socket} went away during the call ({raw}): check "
            "that it runs again, then repeat the command (a send resumes where it stopped)"
        )
    if (code is grpc.StatusCode.DEADLINE_EXCEEDED and details == "deadline exceeded") or (
        code is grpc.StatusCode.UNIMPLEMENTED and details == "method not found!"
    ):
        return PartnerError(_OWN_STATUS[code.name].format(socket=socket), code.name)
    return PartnerError(raw or f"the gateway at {socket} failed the call", code.name)
