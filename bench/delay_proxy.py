"""A long network path on loopback: a TCP relay with a one-way delay and a cap on bytes in flight.

These machines' kernels have no netem (no sch_netem module), so the long-link bench puts this
relay between a client and its server::

    python -m bench.delay_proxy --listen 127.0.0.1:0 --to 127.0.0.1:7443 \
        --one-way-ms 100 --inflight 4MiB

It prints the port it bound on the first line of stdout, relays until SIGTERM (or SIGINT),
and then prints one line on stderr with what it relayed and the CPU it spent doing so::

    delay_proxy: relayed=BYTES connections=N cpu_seconds=S cpu_s_per_gib=X

The model, per TCP connection and per direction, is TCP with a fixed window:

* a byte read from one side is written to the other side ``one-way`` later;
* it stays *in flight* until its acknowledgement comes back, one further ``one-way`` after
  it was delivered (one round trip after the read, if the far side is not slow);
* at most ``inflight`` bytes are in flight: while the cap is full the relay reads nothing
  more from that side, so the sender's socket fills and it blocks, as a sender does on a
  real path whose window is full. One connection therefore carries at most
  ``inflight / RTT``; separate connections each have their own cap.
* a connection is set up one round trip after it was accepted (SYN, SYN-ACK), so a client's
  first bytes arrive 1.5 round trips after its ``connect`` as on a real path.
* a slow receiver holds deliveries back (asyncio's ``pause_writing``), which delays their
  acknowledgements and so fills the cap: back-pressure runs end to end.

It is a plain TCP relay: mutual TLS runs end to end through it, unseen. CPU is kept low:
one asyncio loop, reads straight into fresh buffers of up to 256 KiB
(:class:`asyncio.BufferedProtocol`), one timer per direction, and no per-byte Python work.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import select
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

READ_SIZE = 256 << 10
#: Above this many bytes queued in a destination's transport, deliveries wait (asyncio's
#: high-water mark for ``pause_writing``); the kernel's socket buffer takes the rest.
WRITE_HIGH_WATER = 1 << 20
GIB = 1 << 30

_SIZE = re.compile(r"^(\d+)\s*([KMG]i?B?|B)?$", re.IGNORECASE)
_EOF = None  # a delivery-queue item: the sender shut down its side


def parse_size(text: str) -> int:
    """``4096``, ``64KiB``, ``4MiB`` -> bytes (binary multiples)."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 65536, 64KiB, 4MiB)")
    unit = (match.group(2) or "B").upper()
    return int(match.group(1)) * {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[unit[0]]


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); IPv6 hosts in brackets."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r} (example: 127.0.0.1:7443)")
    return host.strip("[]"), int(port)


@dataclass
class Stats:
    """Totals over the relay's life, for the exit line."""

    relayed: int = 0
    connections: int = 0
    cpu_started: float = 0.0  # CPU seconds when listening began (start-up not counted)


class Direction:
    """One direction of one connection: delivery after ``delay``, acks a ``delay`` later.

    ``source`` is the side read from, ``sink`` the side written to; both are set once the
    connection is up. Items wait in FIFO queues with their due times (a single timer each,
    so equal due times cannot reorder them).
    """

    def __init__(self, relay: Relay, name: str) -> None:
        self.relay = relay
        self.name = name
        self.in_flight = 0
        self.sink_paused = False
        self.reading_paused = False
        self.eof_delivered = False
        self._deliveries: collections.deque[tuple[float, memoryview | None]] = collections.deque()
        self._acks: collections.deque[tuple[float, int]] = collections.deque()
        self._delivery_timer: asyncio.TimerHandle | None = None
        self._ack_timer: asyncio.TimerHandle | None = None
        self.source: asyncio.Transport | None = None
        self.sink: asyncio.Transport | None = None

    @property
    def room(self) -> int:
        return self.relay.cap - self.in_flight

    def read(self, data: memoryview) -> None:
        """Bytes just read from the source: in flight now, due at the sink after the delay."""
        self.in_flight += len(data)
        self._deliveries.append((self.relay.loop.time() + self.relay.delay, data))
        self._arm_delivery()
        self.throttle()

    def read_eof(self) -> None:
        self._deliveries.append((self.relay.loop.time() + self.relay.delay, _EOF))
        self._arm_delivery()

    def throttle(self) -> None:
        """Stop reading the source while the cap is full; read again once there is room."""
        if self.source is None:
            return
        full = self.room <= 0
        if full and not self.reading_paused:
            self.source.pause_reading()
            self.reading_paused = True
        elif not full and self.reading_paused and self.relay.up:
            self.source.resume_reading()
            self.reading_paused = False

    def _arm_delivery(self) -> None:
        if self._delivery_timer is None and self._deliveries and not self.sink_paused:
            due = self._deliveries[0][0]
            self._delivery_timer = self.relay.loop.call_at(due, self._deliver)

    def _deliver(self) -> None:
        self._delivery_timer = None
        if self.sink is None or self.sink.is_closing():
            return
        loop = self.relay.loop
        now = loop.time()
        while self._deliveries and self._deliveries[0][0] <= now and not self.sink_paused:
            _, data = self._deliveries.popleft()
            if data is _EOF:
                self.eof_delivered = True
                if self.sink.can_write_eof():
                    self.sink.write_eof()
                self.relay.maybe_finished()
                return
            self.sink.write(data)
            self.relay.stats.relayed += len(data)
            self._acks.append((now + self.relay.delay, len(data)))
        if self._ack_timer is None and self._acks:
            self._ack_timer = loop.call_at(self._acks[0][0], self._ack)
        self._arm_delivery()

    def _ack(self) -> None:
        self._ack_timer = None
        now = self.relay.loop.time()
        while self._acks and self._acks[0][0] <= now:
            self.in_flight -= self._acks.popleft()[1]
        if self._acks:
            self._ack_timer = self.relay.loop.call_at(self._acks[0][0], self._ack)
        self.throttle()

    def pause_sink(self) -> None:
        self.sink_paused = True

    def resume_sink(self) -> None:
        self.sink_paused = False
        if self._delivery_timer is None and self._deliveries:
            self._deliver()

    def cancel(self) -> None:
        for timer in (self._delivery_timer, self._ack_timer):
            if timer is not None:
                timer.cancel()
        self._delivery_timer = self._ack_timer = None
        self._deliveries.clear()
        self._acks.clear()


class Side(asyncio.BufferedProtocol):
    """One socket of a relayed connection: reads feed ``outgoing``, writes drain ``incoming``."""

    def __init__(
        self, relay: Relay, outgoing: Direction, incoming: Direction, *, accepted: bool
    ) -> None:
        self.relay = relay
        self.outgoing = outgoing  # read from this socket
        self.incoming = incoming  # written to this socket
        self.accepted = accepted  # the client's socket: read nothing until upstream is up
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.outgoing.source = transport
        self.incoming.sink = transport
        if self.accepted:
            transport.pause_reading()
            self.outgoing.reading_paused = True
            self.relay.start()

    def get_buffer(self, sizehint: int) -> bytearray:
        # A fresh buffer per read (it is held until delivered), never more than the room left,
        # so the bytes in flight never pass the cap.
        self._buffer = bytearray(max(1, min(READ_SIZE, self.outgoing.room)))
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.outgoing.read(memoryview(self._buffer)[:nbytes])

    def eof_received(self) -> bool:
        self.outgoing.read_eof()
        return True  # keep the other half open until the EOF has crossed the path

    def pause_writing(self) -> None:
        self.incoming.pause_sink()

    def resume_writing(self) -> None:
        self.incoming.resume_sink()

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.close()


class Relay:
    """One accepted connection and its upstream connection, with both directions."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.loop = proxy.loop
        self.delay = proxy.delay
        self.cap = proxy.cap
        self.stats = proxy.stats
        self.up = False
        self.closed = False
        self.forward = Direction(self, "forward")  # client -> server
        self.backward = Direction(self, "backward")  # server -> client
        self.client = Side(self, self.forward, self.backward, accepted=True)
        self.server = Side(self, self.backward, self.forward, accepted=False)
        self._connect: asyncio.Task[None] | None = None

    def start(self) -> None:
        """The client is accepted: open the upstream leg one round trip later."""
        self.stats.connections += 1
        self.proxy.relays.add(self)
        self._connect = self.loop.create_task(self._open_upstream())

    async def _open_upstream(self) -> None:
        await asyncio.sleep(2 * self.delay)  # SYN, SYN-ACK: one round trip before data
        host, port = self.proxy.target
        try:
            await self.loop.create_connection(lambda: self.server, host, port)
        except OSError as exc:
            print(f"delay_proxy: cannot reach {host}:{port}: {exc}", file=sys.stderr, flush=True)
            self.close()
            return
        self.up = True
        self.forward.throttle()
        self.backward.throttle()

    def maybe_finished(self) -> None:
        if self.forward.eof_delivered and self.backward.eof_delivered:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.proxy.relays.discard(self)
        if self._connect is not None and not self._connect.done():
            self._connect.cancel()
        for direction in (self.forward, self.backward):
            direction.cancel()
        for side in (self.client, self.server):
            if side.transport is not None:
                side.transport.close()


class Proxy:
    """The listening socket and every live relay."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, target: tuple[str, int], delay: float, cap: int
    ) -> None:
        self.loop = loop
        self.target = target
        self.delay = delay
        self.cap = cap
        self.stats = Stats()
        self.relays: set[Relay] = set()

    def protocol(self) -> Side:
        return Relay(self).client

    def close_all(self) -> None:
        for relay in list(self.relays):
            relay.close()


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


async def serve(listen: tuple[str, int], target: tuple[str, int], delay: float, cap: int) -> Stats:
    """Relay until SIGTERM or SIGINT; print the bound port first."""
    loop = asyncio.get_running_loop()
    proxy = Proxy(loop, target, delay, cap)
    server = await loop.create_server(proxy.protocol, listen[0], listen[1])
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    proxy.stats.cpu_started = _cpu_seconds()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        server.close()
        proxy.close_all()
        await server.wait_closed()
    return proxy.stats


# --- the process, for the bench and the tests ------------------------------------------------


START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
_REPORT = re.compile(
    r"^delay_proxy: relayed=(\d+) connections=(\d+) cpu_seconds=([0-9.]+) "
    r"cpu_s_per_gib=([0-9.]+)$",
    re.MULTILINE,
)


@dataclass(frozen=True)
class Report:
    """The proxy's exit line: bytes relayed (both directions), connections, CPU spent."""

    relayed: int
    connections: int
    cpu_seconds: float
    cpu_s_per_gib: float


class DelayProxy:
    """``python -m bench.delay_proxy`` as a child process, stopped by its PID.

    ``start()`` returns once the proxy has printed its port; ``stop()`` sends SIGTERM (SIGKILL
    after a deadline) and returns the exit line, or ``None`` if it printed none.
    """

    def __init__(self, target: str, one_way_ms: float, inflight: int) -> None:
        self.target = target
        self.one_way_ms = one_way_ms
        self.inflight = inflight
        self.port = 0
        self.stderr = ""
        self.process: subprocess.Popen[str] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> DelayProxy:
        repo = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if "PYTHONPATH" in env else "")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.delay_proxy",
                "--to",
                self.target,
                "--one-way-ms",
                str(self.one_way_ms),
                "--inflight",
                str(self.inflight),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], START_TIMEOUT)
        line = self.process.stdout.readline() if ready else ""
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(
                f"delay proxy did not report its port within {START_TIMEOUT}s: "
                f"{line.strip()!r}; stderr: {self.stderr.strip()!r}"
            )
        self.port = int(line)
        return self

    def stop(self) -> Report | None:
        """SIGTERM by PID, then SIGKILL if it lingers; its exit line, if it wrote one."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            _, self.stderr = process.communicate(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            _, self.stderr = process.communicate(timeout=STOP_TIMEOUT)
        match = _REPORT.search(self.stderr)
        if match is None:
            return None
        return Report(int(match[1]), int(match[2]), float(match[3]), float(match[4]))

    def __enter__(self) -> DelayProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- command line ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.delay_proxy",
        description="TCP relay modelling a long path: one-way delay, cap on bytes in flight.",
    )
    parser.add_argument("--listen", type=parse_address, default=("127.0.0.1", 0))
    parser.add_argument("--to", type=parse_address, required=True, help="HOST:PORT to relay to")
    parser.add_argument("--one-way-ms", type=float, required=True, help="delay per direction")
    parser.add_argument(
        "--inflight", type=parse_size, default=4 << 20, help="cap per connection and direction"
    )
    args = parser.parse_args(argv)
    if args.one_way_ms < 0:
        parser.error(f"--one-way-ms must be 0 or more, got {args.one_way_ms}")
    if args.inflight <= 0:
        parser.error(f"--inflight must be positive, got {args.inflight}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stats = asyncio.run(serve(args.listen, args.to, args.one_way_ms / 1000, args.inflight))
    cpu = _cpu_seconds() - stats.cpu_started
    per_gib = cpu / (stats.relayed / GIB) if stats.relayed else 0.0
    print(
        f"delay_proxy: relayed={stats.relayed} connections={stats.connections} "
        f"cpu_seconds={cpu:.3f} cpu_s_per_gib={per_gib:.3f}",
        file=sys.stderr,
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
