"""The long-link bench's delay proxy keeps its model: delay, cap per round trip, back-pressure.

Each test runs the real ``python -m bench.delay_proxy`` process (stopped by PID) in front of a
plain TCP server in a thread of this process. Delays are small (5-30 ms) and caps tiny
(64-256 KiB), so that each bound shows within a fraction of a second.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from bench.delay_proxy import DelayProxy, parse_address, parse_size
from tests.system.harness import wait_until

KIB = 1 << 10


class Sink:
    """A TCP server taking one connection: records when bytes arrive; echoes if asked."""

    def __init__(self, echo: bool = False, read: bool = True) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.echo = echo
        self.may_read = threading.Event()
        if read:
            self.may_read.set()
        self.received = bytearray()
        self.arrivals: list[float] = []
        self.closed = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.getsockname()[1]}"

    def _run(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KIB)
            self.may_read.wait()
            while block := conn.recv(256 * KIB):
                self.arrivals.append(time.monotonic())
                self.received += block
                if self.echo:
                    conn.sendall(block)
        self.closed.set()

    def close(self) -> None:
        self.may_read.set()
        self.server.close()
        self._thread.join(5)


@contextmanager
def path(one_way_ms: float, inflight: int, **sink: bool) -> Iterator[tuple[DelayProxy, Sink]]:
    server = Sink(**sink)
    proxy = DelayProxy(server.address, one_way_ms, inflight).start()
    try:
        yield proxy, server
    finally:
        proxy.stop()
        server.close()


def _connect(proxy: DelayProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=5)


def test_a_tiny_message_takes_one_way_there_and_a_round_trip_back() -> None:
    one_way = 0.030
    with path(one_way * 1000, 64 * KIB, echo=True) as (proxy, server):
        with _connect(proxy) as client:
            client.sendall(b"warm-up")  # the connection's own set-up round trip is not timed
            assert client.recv(64) == b"warm-up"
            sent = time.monotonic()
            client.sendall(b"ping")
            assert client.recv(64) == b"ping"
            back = time.monotonic()
        arrived = server.arrivals[-1]
    assert one_way * 0.95 <= arrived - sent <= one_way + 0.025
    assert 2 * one_way * 0.95 <= back - sent <= 2 * one_way + 0.035


def test_one_connection_carries_at_most_the_cap_per_round_trip() -> None:
    one_way, cap, size = 0.020, 64 * KIB, 768 * KIB  # 12 windows of 64 KiB, RTT 40 ms
    rtt = 2 * one_way
    with path(one_way * 1000, cap) as (proxy, server), _connect(proxy) as client:
        client.sendall(b"x")
        wait_until(lambda: len(server.received) == 1, 5, "the first byte")
        started = time.monotonic()
        client.sendall(os.urandom(size))
        wait_until(lambda: len(server.received) == 1 + size, 10, "every byte")
        seconds = server.arrivals[-1] - started
    windows = size / cap
    # The last window can be read only (windows - 1) round trips after the first, and
    # arrives one one-way delay later: never faster than cap / RTT ...
    assert seconds >= ((windows - 1) * rtt + one_way) * 0.95
    # ... and not much slower either: the proxy keeps its window full.
    assert seconds <= (windows + 1) * rtt + 0.15
    assert size / seconds <= cap / rtt * 1.05


def test_a_receiver_that_does_not_read_stops_the_sender() -> None:
    cap = 256 * KIB  # 25 MB/s at a 10 ms round trip: what was held drains in a blink
    attempt = 64 << 20
    with path(5, cap, read=False) as (proxy, server), _connect(proxy) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * KIB)
        client.setblocking(False)
        block = b"\xa5" * (256 * KIB)
        sent = 0
        while sent < attempt:
            try:
                sent += client.send(block)
                continue
            except BlockingIOError:
                pass
            # Blocked: the path is full once it stays unwritable for 50 round trips.
            _, writable, _ = select.select([], [client], [], 0.5)
            if not writable:
                break
        # Every buffer on the way is bounded: sockets, the proxy's write buffer, the cap.
        assert cap < sent < 32 << 20, sent
        server.may_read.set()
        wait_until(lambda: len(server.received) == sent, 10, "the held bytes")
        assert bytes(server.received) == block[:1] * sent


def test_sigterm_stops_it_and_it_reports_what_it_relayed() -> None:
    with path(20, 64 * KIB) as (proxy, server), _connect(proxy) as client:
        client.sendall(b"y" * 1000)
        wait_until(lambda: len(server.received) == 1000, 5, "the bytes")
        pid = proxy.pid
        os.kill(pid, signal.SIGTERM)
        assert proxy.process is not None
        assert proxy.process.wait(5) == 0
        report = proxy.stop()
        assert client.recv(16) == b""  # its connections were closed
    assert report is not None, proxy.stderr
    assert (report.relayed, report.connections) == (1000, 1)
    assert report.cpu_seconds >= 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=5).close()


def test_arguments_are_checked() -> None:
    assert parse_size("4MiB") == 4 << 20
    assert parse_size("65536") == 65536
    assert parse_address("127.0.0.1:7443") == ("127.0.0.1", 7443)
    assert parse_address("[::1]:80") == ("::1", 80)
    for bad in ("4 furlongs", "-1"):
        with pytest.raises(argparse.ArgumentTypeError, match="not a size"):
            parse_size(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="not HOST:PORT"):
        parse_address("localhost")
