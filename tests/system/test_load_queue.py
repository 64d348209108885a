"""Local sends over the limit wait in line, against real daemons (SoftHSM, mutual TLS).

Lingang runs ``max_concurrent_transfers: 2`` and ``max_queued_sends: 10``. Two sends hold
the slots for as long as a test wants: their source is a FIFO the test writes only when it
lets them finish, so who runs and who waits is decided, not raced. Ten more ``xbgw send``
then wait in line: each is told its place (``queued: position N``), the gateway's Status
counts them, a thirteenth is refused with RESOURCE_EXHAUSTED saying how many wait, and a
client killed while waiting leaves the line. Every send that was not killed ends with a
receipt, and what Frankfurt hands out is byte-identical to what was sent.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devtools.pair import provision_pair
from gateway._proto.xbgw.v1 import local_pb2, local_pb2_grpc
from tests.system.harness import Gateway, Pair, wait_until

RUNNING, WAITING = 2, 10
SIZE = 640 << 10  # ten 64 KiB segments
DEADLINE = 60.0
QUEUED = re.compile(r"queued: position (\d+), (\d+) sends running")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    made = provision_pair(
        tmp_path_factory.mktemp("load-queue"),
        segment_size=64 << 10,
        extra_limits={"max_concurrent_transfers": RUNNING, "max_queued_sends": WAITING},
    )
    with made.running():
        yield made


@dataclass
class Send:
    """One ``xbgw send`` in the background, its data and its passport's transfer id."""

    transfer_id: str
    data: bytes
    process: subprocess.Popen[str]
    fifo_fd: int | None = None  # the write end of its source, while the test holds it back

    def release(self) -> threading.Thread:
        """Write the data into the FIFO and close it, in a thread (a pipe holds 64 KiB)."""
        fd = self.fifo_fd
        assert fd is not None
        self.fifo_fd = None

        def feed() -> None:
            with os.fdopen(fd, "wb") as pipe:
                pipe.write(self.data)

        thread = threading.Thread(target=feed, daemon=True)
        thread.start()
        return thread

    def finish(self) -> tuple[int, str, str]:
        out, err = self.process.communicate(timeout=DEADLINE)
        return self.process.returncode, out, err


class Sends:
    """The test's background sends; every one still running is killed by its PID at the end."""

    def __init__(self, pair: Pair, tmp_path: Path) -> None:
        self.pair = pair
        self.dir = tmp_path
        self.all: list[Send] = []

    def start(self, held: bool = False) -> Send:
        transfer_id = f"dpo_queue-{uuid.uuid4().hex[:16]}"
        token = self.pair.passport(byte_limit=SIZE, jti=transfer_id)
        data = os.urandom(SIZE)
        source = self.dir / transfer_id
        fifo_fd = None
        if held:
            os.mkfifo(source)
            fifo_fd = os.open(source, os.O_RDWR)  # a writer: the send's open does not block
        else:
            source.write_bytes(data)
        process = self.pair.lingang.cli_background(
            "send", str(source), "--to", "frankfurt", "--passport", token, "--wait", "30"
        )
        send = Send(transfer_id, data, process, fifo_fd)
        self.all.append(send)
        return send

    def close(self) -> None:
        for send in self.all:
            if send.process.poll() is None:
                send.process.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                send.process.communicate(timeout=10)
            if send.fifo_fd is not None:
                os.close(send.fifo_fd)


@pytest.fixture
def sends(pair: Pair, tmp_path: Path) -> Iterator[Sends]:
    made = Sends(pair, tmp_path)
    try:
        yield made
    finally:
        made.close()


def status(gateway: Gateway) -> local_pb2.StatusResponse:
    with grpc.insecure_channel(f"unix:{gateway.paths.socket}") as channel:
        stub = local_pb2_grpc.LocalGatewayStub(channel)
        response: local_pb2.StatusResponse = stub.Status(local_pb2.StatusRequest(), timeout=10)
        return response


def serving(gateway: Gateway) -> bool:
    """The daemon's own health check on the local socket (what the watchdog rides on)."""
    with grpc.insecure_channel(f"unix:{gateway.paths.socket}") as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def queued_sends(pair: Pair) -> int:
    return status(pair.lingang).queued_sends


def hold_both_slots(pair: Pair, sends: Sends) -> list[Send]:
    """Two sends that run (offered, recorded as sending) and read nothing until released."""
    held = [sends.start(held=True) for _ in range(RUNNING)]
    ids = {send.transfer_id for send in held}

    def both_sending() -> bool:
        return ids <= {t.transfer_id for t in status(pair.lingang).transfers}

    wait_until(both_sending, DEADLINE, "the two held sends to be offered")
    return held


def fill_the_line(pair: Pair, sends: Sends) -> list[Send]:
    waiting = [sends.start() for _ in range(WAITING)]
    wait_until(lambda: queued_sends(pair) == WAITING, DEADLINE, f"{WAITING} sends in line")
    return waiting


def assert_delivered(pair: Pair, tmp_path: Path, send: Send) -> str:
    """The send's receipt and Frankfurt's copy, byte-identical; the send's stderr."""
    code, out, err = send.finish()
    assert code == 0, f"send {send.transfer_id} failed ({code}): {err}"
    assert f"delivered  {send.transfer_id} to frankfurt" in out
    target = tmp_path / f"{send.transfer_id}.fetched"
    fetched = pair.frankfurt.cli("fetch", send.transfer_id, "-o", str(target))
    assert fetched.returncode == 0, fetched.stderr
    assert target.read_bytes() == send.data
    return err


def first_position(stderr: str) -> int | None:
    match = QUEUED.search(stderr)
    return int(match.group(1)) if match else None


def test_twelve_sends_with_two_slots_all_deliver_the_rest_wait_their_turn(
    pair: Pair, sends: Sends, tmp_path: Path
) -> None:
    held = hold_both_slots(pair, sends)
    waiting = fill_the_line(pair, sends)
    feeders = [send.release() for send in held]
    stderrs = [assert_delivered(pair, tmp_path, send) for send in [*held, *waiting]]
    for feeder in feeders:
        feeder.join(timeout=DEADLINE)

    assert all(first_position(err) is None for err in stderrs[:RUNNING])  # ran at once
    positions = [first_position(err) for err in stderrs[RUNNING:]]
    # Each waiting send was told its place on arrival: ten arrivals, places 1 to 10.
    assert sorted(p for p in positions if p is not None) == list(range(1, WAITING + 1)), stderrs
    assert all(f"{RUNNING} sends running" in err for err in stderrs[RUNNING:])
    assert queued_sends(pair) == 0


def test_a_full_line_refuses_the_next_send_and_a_client_that_goes_leaves_it(
    pair: Pair, sends: Sends, tmp_path: Path
) -> None:
    held = hold_both_slots(pair, sends)
    waiting = fill_the_line(pair, sends)

    refused = sends.start()
    code, _out, err = refused.finish()
    assert code != 0
    assert "RESOURCE_EXHAUSTED" not in err  # the status only with --verbose
    assert f"{RUNNING} local sends are running and {WAITING} are waiting" in err
    assert "limits.max_queued_sends" in err
    assert queued_sends(pair) == WAITING  # the refused one never took a place
    assert serving(pair.lingang)  # a full line leaves threads for health and status

    gone = waiting[3]
    gone.process.send_signal(signal.SIGKILL)
    gone.process.communicate(timeout=DEADLINE)
    wait_until(lambda: queued_sends(pair) == WAITING - 1, DEADLINE, "the killed send to leave")

    feeders = [send.release() for send in held]
    for send in [*held, *(s for s in waiting if s is not gone)]:
        assert_delivered(pair, tmp_path, send)
    for feeder in feeders:
        feeder.join(timeout=DEADLINE)
    assert queued_sends(pair) == 0
    inbox = {t.transfer_id for t in status(pair.frankfurt).transfers}
    assert gone.transfer_id not in inbox  # it never started: nothing of it went out
