"""gateway.fdpass: the ticket table, the descriptor checks and the side socket, in process.

The side socket is a real ``SOCK_SEQPACKET`` socket in a temporary directory, served by the
real listener thread; the client is :func:`gateway.fdpass.hand_over`, or a raw socket where
a test must send what ``hand_over`` never sends. "Closed" is checked on this process's
descriptor table (``/proc/self/fd``): the listener runs in this process.
"""

from __future__ import annotations

import copy
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.errors import UsageError
from gateway.fdpass import (
    HANDOVER_MAGIC,
    MAX_REPLY,
    OK,
    REFUSED,
    TICKET_BYTES,
    FileTicketError,
    FileTickets,
    HandedFile,
    HandoverListener,
    HandoverRefusedError,
    Peer,
    fd_socket_path,
    hand_over,
)
from tests.system.harness import wait_until
from tests.unit.test_config import full_config, material, problems, tree, write  # noqa: F401

ME = Peer(os.getpid(), os.getuid(), os.getgid())


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def copies(target: str) -> int:
    """Descriptors of this process open on ``target`` (a path, or ``pipe:[inode]``)."""
    found = 0
    for name in open_fds():
        try:
            found += os.readlink(f"/proc/self/fd/{name}") == target
        except FileNotFoundError:
            continue  # closed while we looked
    return found


def none_left(target: str) -> None:
    """No descriptor on ``target`` left in this process (the test closed its own): every
    copy the listener received was closed (it answers first, then closes the connection)."""
    wait_until(lambda: copies(target) == 0, 10, f"every descriptor on {target} to be closed")


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(3000))
    return path


# -- the checks ------------------------------------------------------------------------------


def test_a_regular_file_gets_a_ticket_used_once(data_file: Path) -> None:
    tickets = FileTickets()
    fd = os.open(data_file, os.O_RDONLY)
    ticket = tickets.deposit(fd, ME)
    assert len(ticket) == TICKET_BYTES and tickets.outstanding == 1
    with tickets.take(ticket) as handed:
        assert handed.size == 3000 and handed.peer == ME
        assert handed.read_at(0, 1000) + handed.read_at(1000, 5000) == data_file.read_bytes()
        assert handed.read_at(3000, 10) == b""
    assert not is_open(fd)
    with pytest.raises(ValueError, match="was closed"):
        handed.read_at(0, 1)
    with pytest.raises(FileTicketError, match="a ticket is used once") as info:
        tickets.take(ticket)
    assert info.value.grpc_status == "NOT_FOUND"


def test_a_read_write_file_is_taken(data_file: Path) -> None:
    fd = os.open(data_file, os.O_RDWR)
    FileTickets().deposit(fd, ME)
    assert is_open(fd)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        ("pipe", "the descriptor is a pipe, not a regular file: stream it instead"),
        ("directory", "the descriptor is a directory, not a regular file"),
        ("socket", "the descriptor is a socket, not a regular file"),
        ("write-only", "the file is open for writing only: open it for reading"),
        ("o-path", "the file was opened with O_PATH: open it for reading"),
        ("device", "the descriptor is a character device, not a regular file"),
    ],
)
def test_anything_but_a_readable_regular_file_is_refused_and_closed(
    tmp_path: Path, data_file: Path, make: str, reason: str
) -> None:
    others: list[int] = []
    if make == "pipe":
        fd, other = os.pipe()
        others.append(other)
    elif make == "directory":
        fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    elif make == "socket":
        left, right = socket.socketpair()
        fd = left.detach()
        others.append(right.detach())
    elif make == "write-only":
        fd = os.open(data_file, os.O_WRONLY)
    elif make == "o-path":
        fd = os.open(data_file, os.O_PATH)
    else:
        fd = os.open("/dev/null", os.O_RDONLY)
    tickets = FileTickets()
    with pytest.raises(HandoverRefusedError) as info:
        tickets.deposit(fd, ME)
    assert str(info.value).startswith(reason), str(info.value)
    assert not is_open(fd)
    assert tickets.outstanding == 0
    for other in others:
        os.close(other)


def test_an_unknown_or_malformed_ticket_is_refused() -> None:
    tickets = FileTickets()
    with pytest.raises(FileTicketError, match="no handed-over file for this file_ticket"):
        tickets.take(os.urandom(TICKET_BYTES))
    with pytest.raises(UsageError, match="a file_ticket is 32 bytes, got 5"):
        tickets.take(b"short")


def test_a_ticket_expires_and_its_descriptor_is_closed(data_file: Path) -> None:
    clock = Clock()
    tickets = FileTickets(clock=clock, ttl=30)
    fd = os.open(data_file, os.O_RDONLY)
    ticket = tickets.deposit(fd, ME)
    clock.now += 29.9
    assert tickets.expire() == 0 and is_open(fd)
    clock.now += 0.1
    with pytest.raises(FileTicketError, match="expires 30 s after the handover"):
        tickets.take(ticket)
    assert not is_open(fd)


def test_outstanding_tickets_are_capped(data_file: Path) -> None:
    tickets = FileTickets(cap=2)
    first = tickets.deposit(os.open(data_file, os.O_RDONLY), ME)
    tickets.deposit(os.open(data_file, os.O_RDONLY), ME)
    third = os.open(data_file, os.O_RDONLY)
    with pytest.raises(HandoverRefusedError, match="2 handed-over files wait for their sends"):
        tickets.deposit(third, ME)
    assert not is_open(third)
    tickets.take(first).close()
    tickets.deposit(os.open(data_file, os.O_RDONLY), ME)  # room again
    assert tickets.outstanding == 2
    tickets.close()
    assert tickets.outstanding == 0


def test_a_handed_file_closes_once() -> None:
    read, write_end = os.pipe()
    os.close(write_end)
    handed = HandedFile(read, 0, ME)
    handed.close()
    handed.close()  # no second os.close of a number that may belong to someone else now
    assert handed.closed


# -- the side socket -------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[HandoverListener, FileTickets]]:
    like = tmp_path / "local.sock"
    like.write_bytes(b"")
    os.chmod(like, 0o640)
    tickets = FileTickets()
    listener = HandoverListener(fd_socket_path(like), tickets, like)
    listener.start()
    try:
        yield listener, tickets
    finally:
        listener.stop()


def raw(path: Path, messages: list[bytes], fds: list[int]) -> bytes:
    """One request as ``hand_over`` would never send it; the reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as conn:
        conn.settimeout(10)
        conn.connect(str(path))
        if fds:
            socket.send_fds(conn, messages, fds)
        else:
            conn.sendmsg(messages)
        return conn.recv(MAX_REPLY)


def test_the_side_socket_takes_the_mode_of_the_local_one_and_gives_a_ticket(
    served: tuple[HandoverListener, FileTickets], data_file: Path
) -> None:
    listener, tickets = served
    assert listener.path.name == "local.sock.fd"
    info = os.stat(listener.path)
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o640
    with data_file.open("rb") as src:
        ticket = hand_over(listener.path, src.fileno())
    # The caller closed its descriptor; the daemon's copy still reads the file.
    with tickets.take(ticket) as handed:
        assert handed.read_at(0, 5000) == data_file.read_bytes()
        assert handed.peer == ME


def test_the_side_socket_refuses_a_pipe_with_its_reason(
    served: tuple[HandoverListener, FileTickets],
) -> None:
    listener, tickets = served
    read, write_end = os.pipe()
    pipe = os.readlink(f"/proc/self/fd/{read}")
    try:
        with pytest.raises(HandoverRefusedError) as info:
            hand_over(listener.path, read)
    finally:
        os.close(read)
        os.close(write_end)
    assert str(info.value) == (
        "the gateway refused the file: the descriptor is a pipe, not a regular file: stream "
        "it instead"
    )
    assert tickets.outstanding == 0
    none_left(pipe)


@pytest.mark.parametrize(
    ("messages", "count", "reason"),
    [
        ([HANDOVER_MAGIC], 2, "a handover is one short message with exactly one descriptor"),
        ([HANDOVER_MAGIC], 0, "the handover carried no descriptor"),
        ([b"x" * 100], 1, "a handover is one short message with exactly one descriptor"),
        ([b"hello"], 1, "not an xbgw file handover (wrong message)"),
    ],
    ids=["two-descriptors", "none", "too-long", "wrong-message"],
)
def test_malformed_handovers_are_refused_and_every_descriptor_closed(
    served: tuple[HandoverListener, FileTickets],
    data_file: Path,
    messages: list[bytes],
    count: int,
    reason: str,
) -> None:
    listener, tickets = served
    fds = [os.open(data_file, os.O_RDONLY) for _ in range(count)]
    try:
        reply = raw(listener.path, messages, fds)
    finally:
        for fd in fds:
            os.close(fd)
    assert reply == REFUSED + reason.encode()
    assert tickets.outstanding == 0
    none_left(str(data_file))


def test_stopping_closes_unclaimed_descriptors_and_removes_the_socket(
    tmp_path: Path, data_file: Path
) -> None:
    like = tmp_path / "local.sock"
    like.write_bytes(b"")
    tickets = FileTickets()
    listener = HandoverListener(fd_socket_path(like), tickets, like)
    listener.start()
    with data_file.open("rb") as src:
        reply = raw(listener.path, [HANDOVER_MAGIC], [src.fileno()])
    assert reply[:1] == OK and tickets.outstanding == 1
    listener.stop()
    assert tickets.outstanding == 0
    assert not listener.path.exists()
    assert copies(str(data_file)) == 0


def test_nobody_listening_is_an_os_error_the_cli_streams_after(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        hand_over(tmp_path / "absent.sock.fd", 0)


# -- the configuration -----------------------------------------------------------------------


def test_a_local_socket_too_long_for_the_side_socket_is_refused(tree: Path) -> None:  # noqa: F811
    doc = copy.deepcopy(full_config())
    fits = "/run/" + "x" * 99  # 104 bytes: with ".fd", the 107 Unix sockets allow
    doc["listen"]["local_socket"] = fits
    write(tree, doc)
    from gateway.config import load_config

    assert str(load_config(tree / "gateway.yaml").listen.local_socket) == fits
    doc["listen"]["local_socket"] = fits + "y"
    write(tree, doc)
    assert problems() == [
        f"gateway.yaml: listen.local_socket: {fits}y is 105 bytes; the local socket may have "
        f"at most 104, for the file-handover socket beside it ({fits[5:]}y.fd) to fit in the "
        "107 bytes Unix sockets allow: choose a shorter path"
    ]
