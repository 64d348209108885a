"""Issue 14 item 1 with real daemons: ``xbgw send FILE`` hands the open file to lingang
(SCM_RIGHTS on ``<local_socket>.fd``, ``gateway.fdpass``) instead of streaming it through
the local socket; lingang reads it and frankfurt gets it byte for byte.

That the side channel carried the file is read from lingang's log -- its line names the
handing process's pid, which the test knows -- not guessed from timing. That lingang never
opens the path: the file is removed after the handover and before the send, and still goes.
Daemon and caller run as the same user here, so a file only the caller can open cannot be
arranged; the removed path stands in for it.

One running pair serves the module (lingang -> frankfurt, 64 KiB segments).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from devtools.pair import edit_config, provision_pair
from gateway._proto.xbgw.v1 import local_pb2, local_pb2_grpc
from gateway.fdpass import fd_socket_path, hand_over
from tests.system.faults import FaultProxy
from tests.system.harness import Gateway, Pair, running_pair, wait_until

SIZE = 1_000_003  # 15 whole segments of 64 KiB and a short one


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    with running_pair(tmp_path_factory.mktemp("pair")) as running:
        yield running


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(SIZE))
    return path


@pytest.fixture
def stub(pair: Pair) -> Iterator[local_pb2_grpc.LocalGatewayStub]:
    channel = grpc.insecure_channel(f"unix:{pair.lingang.paths.socket}")
    try:
        yield local_pb2_grpc.LocalGatewayStub(channel)
    finally:
        channel.close()


def delivered_id(stdout: str) -> str:
    line = next(line for line in stdout.splitlines() if line.startswith("delivered"))
    return line.split()[1]


def fetched(pair: Pair, transfer_id: str, tmp_path: Path) -> bytes:
    target = tmp_path / f"{transfer_id}.out"
    done = pair.frankfurt.cli("fetch", transfer_id, "-o", str(target))
    assert done.returncode == 0, done.stderr
    return target.read_bytes()


def handover_lines(gateway: Gateway) -> list[str]:
    return [line for line in gateway.log_text().splitlines() if "handed-over file" in line]


def holds(gateway: Gateway, path: Path) -> bool:
    """Whether the daemon has a descriptor open on ``path`` (``/proc/PID/fd``)."""
    fds = Path(f"/proc/{gateway.pid}/fd")
    links = []
    for entry in fds.iterdir():
        try:
            links.append(os.readlink(entry))
        except FileNotFoundError:
            continue  # closed while we looked
    return any(link.startswith(str(path)) for link in links)


def run_send(pair: Pair, *args: str, stdin: bytes | None = None) -> tuple[int, str, str, int]:
    """``xbgw send ARGS`` to the end; (exit code, stdout, stderr, its pid)."""
    process = subprocess.Popen(
        pair.lingang.cli_command("send", *args),
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=pair.lingang.cli_env(),
    )
    try:
        out, err = process.communicate(stdin, timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, out.decode(), err.decode(), process.pid


def start(pair: Pair, token: str, ticket: bytes, size: int = 0) -> local_pb2.SendRequest:
    return local_pb2.SendRequest(
        start=local_pb2.SendStart(
            partner="frankfurt", passport=token, size=size, file_ticket=ticket
        )
    )


def test_the_side_socket_sits_beside_the_local_one_with_its_mode(pair: Pair) -> None:
    local, side = (
        os.stat(pair.lingang.paths.socket),
        os.stat(fd_socket_path(pair.lingang.paths.socket)),
    )
    assert (side.st_uid, side.st_gid, side.st_mode) == (local.st_uid, local.st_gid, local.st_mode)


def test_xbgw_send_hands_the_file_over_and_it_arrives_byte_for_byte(
    pair: Pair, data: Path, tmp_path: Path
) -> None:
    token = pair.passport(byte_limit=SIZE)
    code, out, err, pid = run_send(pair, str(data), "--to", "frankfurt", "--passport", token)
    assert code == 0, err + pair.lingang.log_text()[-3000:]
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    assert digest in out
    assert fetched(pair, delivered_id(out), tmp_path) == data.read_bytes()
    # The side channel carried it: lingang's line names this very client process.
    lines = [line for line in handover_lines(pair.lingang) if f"pid {pid})" in line]
    assert len(lines) == 1, handover_lines(pair.lingang)
    assert f"handed-over file of {SIZE} bytes (uid {os.getuid()}, pid {pid})" in lines[0]
    # ... and closed it when the send ended.
    wait_until(lambda: not holds(pair.lingang, data), 10, "lingang to close the file")


def test_the_daemon_reads_the_descriptor_never_the_path(
    pair: Pair, data: Path, tmp_path: Path, stub: local_pb2_grpc.LocalGatewayStub
) -> None:
    content = data.read_bytes()
    with data.open("rb") as src:
        ticket = hand_over(fd_socket_path(pair.lingang.paths.socket), src.fileno())
    data.unlink()  # no path left to open: only the handed descriptor reaches the data
    token = pair.passport(byte_limit=SIZE)
    events = list(stub.Send(iter([start(pair, token, ticket)]), timeout=120))
    done = events[-1].done
    assert done.plaintext_size == SIZE
    assert done.plaintext_sha256 == hashlib.sha256(content).hexdigest()
    assert fetched(pair, done.transfer_id, tmp_path) == content
    wait_until(lambda: not holds(pair.lingang, data), 10, "lingang to close the removed file")


def test_a_ticket_is_used_once(
    pair: Pair, data: Path, stub: local_pb2_grpc.LocalGatewayStub
) -> None:
    with data.open("rb") as src:
        ticket = hand_over(fd_socket_path(pair.lingang.paths.socket), src.fileno())
    first = list(stub.Send(iter([start(pair, pair.passport(byte_limit=SIZE), ticket)])))
    assert first[-1].WhichOneof("kind") == "done"
    again = iter([start(pair, pair.passport(byte_limit=SIZE), ticket)])
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Send(again, timeout=60))
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    assert "a ticket is used once" in (info.value.details() or "")


@pytest.mark.parametrize("wrong", ["size", "data"])
def test_a_ticket_send_with_another_size_or_with_data_is_refused(
    pair: Pair, data: Path, stub: local_pb2_grpc.LocalGatewayStub, wrong: str
) -> None:
    with data.open("rb") as src:
        ticket = hand_over(fd_socket_path(pair.lingang.paths.socket), src.fileno())
    token = pair.passport(byte_limit=SIZE)
    if wrong == "size":
        requests = [start(pair, token, ticket, size=SIZE - 1)]
        expected = f"the send declares {SIZE - 1} bytes; the handed-over file has {SIZE}"
    else:
        requests = [start(pair, token, ticket), local_pb2.SendRequest(data=b"more")]
        expected = "a send with a file_ticket carries no 'data' messages"
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Send(iter(requests), timeout=60))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (info.value.details() or "")
    wait_until(lambda: not holds(pair.lingang, data), 10, "lingang to close the refused file")


def test_a_pipe_is_still_streamed(pair: Pair, data: Path, tmp_path: Path) -> None:
    content = data.read_bytes()
    token = pair.passport(byte_limit=SIZE)
    code, out, err, pid = run_send(
        pair, "/dev/stdin", "--to", "frankfurt", "--passport", token, stdin=content
    )
    assert code == 0, err + pair.lingang.log_text()[-3000:]
    assert fetched(pair, delivered_id(out), tmp_path) == content
    assert not [line for line in handover_lines(pair.lingang) if f"pid {pid})" in line]


# -- a resume older than the replay window (a pair of its own, through a FaultProxy) ---------

MIB = 1 << 20  # the default segment size: the partner syncs its resume point every 32 segments
BIG = 24 * MIB + 5
REREAD = "older than the replay window holds: reading the file again from there"


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[Pair, FaultProxy]]:
    """Lingang and frankfurt with 1 MiB segments; lingang reaches frankfurt through a proxy."""
    pair = provision_pair(tmp_path / "proxied", segment_size=MIB)
    with FaultProxy(("127.0.0.1", pair.port("frankfurt"))) as proxy:
        edit_config(
            pair.lingang.paths.config,
            lambda d: next(p for p in d["partners"] if p["id"] == "frankfurt").update(
                endpoint=proxy.endpoint
            ),
        )
        with pair.running():
            yield pair, proxy


def test_a_handed_over_file_resumes_from_before_the_replay_window(
    proxied: tuple[Pair, FaultProxy], tmp_path: Path
) -> None:
    """Frankfurt is killed mid-stream (SIGKILL) before its first periodic sync: its durable
    point is segment 0, while lingang's replay window (4 MiB) holds only the last segments
    of the 16 or more it released. The same ``xbgw send --wait`` reads the handed-over file
    again from there once frankfurt is back, and the file arrives byte for byte. (A stream
    in that place ends the send -- send again to resume: tests/unit/test_loopback_reread.py.)
    """
    pair, proxy = proxied
    path = tmp_path / "big.bin"
    content = os.urandom(BIG)
    path.write_bytes(content)
    token = pair.passport(byte_limit=BIG)
    proxy.hold_after(16 * MIB)
    process = subprocess.Popen(
        pair.lingang.cli_command(
            "send", str(path), "--to", "frankfurt", "--passport", token, "--wait", "60"
        ),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=pair.lingang.cli_env(),
    )
    try:
        proxy.wait_tripped(30)
        pair.frankfurt.kill()
        proxy.release()
        pair.frankfurt.start()
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err.decode() + pair.lingang.log_text()[-3000:]
    lines = [line for line in pair.lingang.log_text().splitlines() if REREAD in line]
    assert len(lines) == 1 and "resumes from segment 0," in lines[0], lines
    assert fetched(pair, delivered_id(out.decode()), tmp_path) == content
