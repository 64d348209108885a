"""Handing an open file to the daemon instead of streaming it through the local socket.

``xbgw send FILE`` opens the file with the caller's rights and passes the open descriptor to
the daemon (``SCM_RIGHTS``) over a small side socket next to the local one,
``<listen.local_socket>.fd`` (gRPC cannot carry a descriptor). The daemon checks it at once
-- a regular file, open for reading -- and answers with a random ticket; the caller's
``Send`` names the ticket (``SendStart.file_ticket``) instead of streaming data, and the
daemon reads the file itself with ``os.pread``. The daemon never opens a path in the
caller's name: it reads only what the caller could open, so a file the daemon's user cannot
open still goes, and one the caller cannot open never does. Because the daemon holds the
file, not a stream of it, a resume within the send can read any segment again (by offset,
checked against the tag recorded when it first left): see ``gateway.pipeline``.

Why a ticket: the side socket and the gRPC call are separate connections. The ticket is 32
random bytes, single use, expires ``TICKET_SECONDS`` after the handover and at most
``MAX_TICKETS`` are outstanding (one more is refused): a client that hands files over and
never sends cannot make the daemon hold more than that many descriptors for longer than
that. Who may hand a file over is decided, as for the local socket, by the socket file's
owner, group and mode (the same as the local socket's); the peer's uid and pid
(``SO_PEERCRED``) are logged with the send.

The side socket is ``SOCK_SEQPACKET``: one ``sendmsg`` is one message, so a request is
exactly one message of ``HANDOVER_MAGIC`` with exactly one descriptor, and the answer one
message: ``OK`` + ticket, or ``REFUSED`` + a line for a person.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import selectors
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from gateway.config import FD_SOCKET_SUFFIX
from gateway.errors import ConfigError, UsageError, XbgwError

log = logging.getLogger("xbgw.fdpass")

TICKET_BYTES = 32
TICKET_SECONDS = 30.0
MAX_TICKETS = 64
HANDOVER_MAGIC = b"xbgw-fd/1"
OK, REFUSED = b"\x00", b"\x01"
#: Read buffer for a request: a longer message is truncated by the kernel and refused.
MAX_REQUEST = 64
#: Descriptors read from one message: enough to see (and close) more than the one allowed.
MAX_FDS = 8
MAX_REPLY = 512
#: A connection that sends nothing in this long is closed (it holds no ticket).
CONNECTION_SECONDS = 5.0
#: Connections the listener keeps open at once; more are closed at accept.
MAX_CONNECTIONS = 64
CLIENT_TIMEOUT = 10.0
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_TICK = 1.0  # the listener expires tickets and idle connections this often


def fd_socket_path(local_socket: Path | str) -> Path:
    """The side socket beside ``local_socket`` (config.py keeps both paths within sun_path)."""
    return Path(f"{local_socket}{FD_SOCKET_SUFFIX}")


class HandoverRefusedError(UsageError):
    """The daemon refused a handed-over descriptor (not a regular file open for reading, or
    too many outstanding); the message says why."""


class FileTicketError(XbgwError):
    """A ``Send`` named a ticket the daemon does not hold: never issued, already used, or
    expired (its descriptor then closed). NOT_FOUND: the thing the request names is not
    there; the same request can never succeed, a fresh handover (``xbgw send`` again) can."""

    grpc_status = "NOT_FOUND"


@dataclass(frozen=True)
class Peer:
    """Who handed a file over (``SO_PEERCRED`` of the side socket's connection)."""

    pid: int
    uid: int
    gid: int


class HandedFile:
    """An open regular file handed over by a client: read by offset, closed exactly once.

    Reads and the close take one lock, so a read never runs on a descriptor number that
    was closed (and perhaps reused by another open) under it: a read after :meth:`close`
    raises ``ValueError`` instead."""

    def __init__(self, fd: int, size: int, peer: Peer) -> None:
        self.size = size
        self.peer = peer
        self._fd: int | None = fd
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return self._fd is None

    def read_at(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` (fewer only at the end of the file).

        A fresh ``bytes`` per read (one copy, from the page cache): the sender's pipeline
        keeps segments beyond the next read (a lookahead segment, hashing and encryption in
        other threads), so a reused buffer would not be provably safe there, and measured
        it saves nothing here (1 GiB: 0.08 CPU-s either way)."""
        with self._lock:
            if self._fd is None:
                raise ValueError("the handed-over file was closed: the send ended")
            return os.pread(self._fd, length, offset)

    def size_now(self) -> int:
        """The file's size now (``fstat``). ``size`` is what it had at the handover: a send
        that reads part of the file again (a resume the replay window cannot serve, see
        ``gateway.pipeline``) refuses a file whose size changed since. An open descriptor
        cannot change its type: checked a regular file at the handover, it still is."""
        with self._lock:
            if self._fd is None:
                raise ValueError("the handed-over file was closed: the send ended")
            return os.fstat(self._fd).st_size

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> HandedFile:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


def check_descriptor(fd: int) -> int:
    """The size of ``fd`` if it is a regular file open for reading; ``HandoverRefusedError``
    with the reason otherwise."""
    try:
        info = os.fstat(fd)
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError as exc:
        raise HandoverRefusedError(f"the descriptor cannot be examined: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise HandoverRefusedError(
            f"the descriptor is {_kind(info.st_mode)}, not a regular file: stream it instead"
        )
    if flags & getattr(os, "O_PATH", 0):
        raise HandoverRefusedError("the file was opened with O_PATH: open it for reading")
    if flags & os.O_ACCMODE not in (os.O_RDONLY, os.O_RDWR):
        raise HandoverRefusedError("the file is open for writing only: open it for reading")
    return info.st_size


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a pipe"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


@dataclass
class _Held:
    file: HandedFile
    expires: float


class FileTickets:
    """Descriptors handed over and not yet claimed by a ``Send``, by ticket."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        ttl: float = TICKET_SECONDS,
        cap: int = MAX_TICKETS,
    ) -> None:
        self._clock = clock
        self._ttl = ttl
        self._cap = cap
        self._held: dict[bytes, _Held] = {}
        self._lock = threading.Lock()

    @property
    def outstanding(self) -> int:
        with self._lock:
            return len(self._held)

    def deposit(self, fd: int, peer: Peer) -> bytes:
        """Take ``fd`` (closed here if refused) and return its ticket."""
        try:
            size = check_descriptor(fd)
            self.expire()
            with self._lock:
                if len(self._held) >= self._cap:
                    raise HandoverRefusedError(
                        f"{self._cap} handed-over files wait for their sends; try again in a moment"
                    )
                ticket = secrets.token_bytes(TICKET_BYTES)
                self._held[ticket] = _Held(HandedFile(fd, size, peer), self._clock() + self._ttl)
        except BaseException:
            os.close(fd)
            raise
        return ticket

    def take(self, ticket: bytes) -> HandedFile:
        """The file of ``ticket``, which is used up (the caller closes the file)."""
        if len(ticket) != TICKET_BYTES:
            raise UsageError(f"a file_ticket is {TICKET_BYTES} bytes, got {len(ticket)}")
        self.expire()
        with self._lock:
            held = self._held.pop(ticket, None)
        if held is None:
            raise FileTicketError(
                "no handed-over file for this file_ticket: a ticket is used once and expires "
                f"{self._ttl:g} s after the handover; hand the file over again (run xbgw send "
                "again)"
            )
        return held.file

    def expire(self) -> int:
        """Close the descriptors of expired tickets; how many."""
        now = self._clock()
        with self._lock:
            gone = [t for t, held in self._held.items() if held.expires <= now]
            files = [self._held.pop(t).file for t in gone]
        for file in files:
            file.close()
        return len(files)

    def close(self) -> None:
        """Close every descriptor still held (the daemon stops)."""
        with self._lock:
            files = [held.file for held in self._held.values()]
            self._held.clear()
        for file in files:
            file.close()


class HandoverListener:
    """The side socket: one thread, non-blocking, serves handovers into ``tickets``."""

    def __init__(self, path: Path, tickets: FileTickets, like: Path) -> None:
        """``like``: the local socket, whose owner, group and mode this socket takes."""
        self.path = path
        self._tickets = tickets
        self._like = like
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._server: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()

    def start(self) -> None:
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()
        server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            server.bind(str(self.path))
            # Owner, group and mode before listen(): nobody can connect before they hold.
            like = os.stat(self._like)
            if (like.st_uid, like.st_gid) != (os.getuid(), os.getgid()):
                os.chown(self.path, like.st_uid, like.st_gid)
            os.chmod(self.path, stat.S_IMODE(like.st_mode))
            server.listen(MAX_CONNECTIONS)
            server.setblocking(False)
        except OSError as exc:
            server.close()
            raise ConfigError(
                f"cannot listen on the file-handover socket {self.path}: {exc.strerror or exc}"
            ) from None
        self._server = server
        self._thread = threading.Thread(target=self._run, name="xbgw-fdpass", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, remove the socket file, close every descriptor not yet claimed."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._wake_r.close()
        self._wake_w.close()
        self._tickets.close()

    def _run(self) -> None:
        assert self._server is not None
        selector = selectors.DefaultSelector()
        selector.register(self._server, selectors.EVENT_READ)
        selector.register(self._wake_r, selectors.EVENT_READ)
        deadlines: dict[socket.socket, float] = {}
        try:
            while not self._stop.is_set():
                for key, _ in selector.select(_TICK):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._server:
                        self._accept(selector, deadlines)
                    elif sock is not self._wake_r:
                        selector.unregister(sock)
                        del deadlines[sock]
                        with sock:
                            self._serve(sock)
                now = time.monotonic()
                for sock in [s for s, at in deadlines.items() if at <= now]:
                    selector.unregister(sock)
                    del deadlines[sock]
                    sock.close()
                self._tickets.expire()
        except Exception:  # the thread must not die silently: sends fall back to streaming
            log.exception("the file-handover socket stopped serving")
        finally:
            for sock in deadlines:
                sock.close()
            selector.close()

    def _accept(
        self, selector: selectors.BaseSelector, deadlines: dict[socket.socket, float]
    ) -> None:
        assert self._server is not None
        try:
            conn, _ = self._server.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return
        if len(deadlines) >= MAX_CONNECTIONS:
            conn.close()
            return
        conn.setblocking(False)
        selector.register(conn, selectors.EVENT_READ)
        deadlines[conn] = time.monotonic() + CONNECTION_SECONDS

    def _serve(self, conn: socket.socket) -> None:
        """One request on a readable connection: a ticket or a refusal, then closed."""
        try:
            message, fds, flags, _ = socket.recv_fds(
                conn, MAX_REQUEST, MAX_FDS, socket.MSG_CMSG_CLOEXEC
            )
        except (BlockingIOError, ConnectionError):
            return
        if not message and not fds:
            return  # closed without a request
        try:
            ticket = self._deposit(conn, message, fds, flags)
        except HandoverRefusedError as refused:
            log.warning("file handover refused: %s", refused, extra={"outcome": "refused"})
            reply = REFUSED + str(refused).encode()
        else:
            reply = OK + ticket
        try:
            conn.send(reply)
        except OSError:
            if reply[:1] == OK:  # the client is gone: nobody can use the ticket
                with contextlib.suppress(FileTicketError):
                    self._tickets.take(reply[1:]).close()

    def _deposit(self, conn: socket.socket, message: bytes, fds: list[int], flags: int) -> bytes:
        """The ticket for the one descriptor in the request; every other one is closed."""
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(fds) > 1:
            _close_all(fds)
            raise HandoverRefusedError(
                "a handover is one short message with exactly one descriptor"
            )
        if message != HANDOVER_MAGIC:
            _close_all(fds)
            raise HandoverRefusedError("not an xbgw file handover (wrong message)")
        if not fds:
            raise HandoverRefusedError("the handover carried no descriptor")
        pid, uid, gid = _UCRED.unpack(
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
        return self._tickets.deposit(fds[0], Peer(pid, uid, gid))


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


# -- the client side -----------------------------------------------------------------------


def hand_over(path: Path | str, fd: int, timeout: float = CLIENT_TIMEOUT) -> bytes:
    """Hand ``fd`` to the daemon listening on ``path``; its ticket.

    ``OSError`` as ``connect`` raises it when nobody listens there (``FileNotFoundError``,
    ``ConnectionRefusedError``: a daemon without a side socket; stream instead),
    ``HandoverRefusedError`` with the daemon's reason when it refuses the descriptor."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as conn:
        conn.settimeout(timeout)
        conn.connect(str(path))
        socket.send_fds(conn, [HANDOVER_MAGIC], [fd])
        reply = conn.recv(MAX_REPLY)
    if reply[:1] == OK and len(reply) == 1 + TICKET_BYTES:
        return reply[1:]
    if reply[:1] == REFUSED:
        reason = reply[1:].decode("utf-8", "replace")
        raise HandoverRefusedError(f"the gateway refused the file: {reason}")
    raise HandoverRefusedError(
        f"the gateway's file-handover socket {path} answered {len(reply)} bytes that are not "
        "a ticket: is the daemon the same version as this xbgw?"
    )
