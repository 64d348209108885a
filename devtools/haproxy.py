"""A real HAProxy in front of xbgw nodes, as a child process: for tests and the bench.

The balance and health-check lines are taken as they are from the configuration that ships
(``deploy/haproxy/xbgw.cfg``, between its ``begin``/``end`` markers), so what the tests
prove is what operators install; only the timers (a check every 300 ms in tests), the
addresses and the stats socket are the rig's own. HAProxy runs in the foreground (``-db``:
one process, no master) and is stopped by its PID. Its view of the nodes is read through
the stats socket (``show stat``) in the rig's directory: no sleeps, a deadline on every wait.
"""

from __future__ import annotations

import contextlib
import csv
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from devtools.provision import free_port

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "deploy" / "haproxy" / "xbgw.cfg"
BEGIN = "# --- xbgw balance and health check: begin"
END = "# --- xbgw balance and health check: end"
BACKEND = "xbgw_nodes"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
POLL_SECONDS = 0.05

# -- the check's bytes: HTTP/2 (h2c) written out, as deploy/haproxy/xbgw.cfg sends them ------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_SETTINGS, _HEADERS, _DATA = 4, 1, 0
_END_STREAM, _END_HEADERS = 0x1, 0x4
HEALTH_PATH = "/grpc.health.v1.Health/Check"
AUTHORITY = "xbgw-health"  # gRPC refuses a request without :authority; any name will do


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload
    )


def _literal(name: int | str, value: str) -> bytes:
    """An HPACK literal header field without indexing, no Huffman coding (RFC 7541 6.2.2):
    by its static-table index, or with its name written out (index 0)."""
    data = value.encode()
    if isinstance(name, str):
        head = b"\x00" + bytes((len(name),)) + name.encode()
    else:
        head = bytes((name,)) if name < 15 else bytes((15, name - 15))
    return head + bytes((len(data),)) + data


def check_request() -> bytes:
    """What the check sends: preface, an empty SETTINGS, the HEADERS of a gRPC unary call to
    Health/Check on stream 1, and a DATA frame ending the stream with an empty
    HealthCheckRequest (gRPC's 5-byte prefix: not compressed, length 0)."""
    headers = (
        b"\x83"  # :method POST (static index 3)
        + b"\x86"  # :scheme http (6)
        + _literal(4, HEALTH_PATH)  # :path
        + _literal(1, AUTHORITY)  # :authority
        + _literal(31, "application/grpc")  # content-type
        + _literal("te", "trailers")
    )
    return (
        PREFACE
        + _frame(_SETTINGS, 0, 0, b"")
        + _frame(_HEADERS, _END_HEADERS, 1, headers)
        + _frame(_DATA, _END_STREAM, 1, b"\x00" * 5)
    )


def answer_frame(status: int) -> bytes:
    """The DATA frame of the answer on stream 1: gRPC's prefix, then HealthCheckResponse
    with ``status`` (field 1, varint): 1 SERVING, 2 NOT_SERVING."""
    return _frame(_DATA, 0, 1, b"\x00\x00\x00\x00\x02\x08" + bytes((status,)))


def shipped_check_block(path: Path = SHIPPED) -> str:
    """The shipped configuration's balance and health-check lines, markers included."""
    text = path.read_text(encoding="utf-8")
    start, end = text.index(BEGIN), text.index(END)
    line_start = text.rindex("\n", 0, start) + 1
    return text[line_start : text.index("\n", end) + 1]


# -- the rig ----------------------------------------------------------------------------------


def haproxy_program() -> str:
    """The haproxy binary (Debian puts it in /usr/sbin, not always on a user's PATH)."""
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise HaproxyError(
            "haproxy is not installed: apt-get install haproxy (scripts/setup-env does)"
        )
    return found


@dataclass(frozen=True)
class Node:
    """One node behind the balancer: its partner address and its listen.health address."""

    name: str
    partner: tuple[str, int]
    health: tuple[str, int]


class HaproxyError(Exception):
    """HAProxy is missing, refused its configuration, or did not get where it was asked."""


class Haproxy:
    """HAProxy forwarding ``endpoint`` to ``nodes``, checking each one's health listener."""

    def __init__(
        self,
        directory: Path,
        nodes: Sequence[Node],
        *,
        inter_ms: int = 300,
        fall: int = 2,
        rise: int = 1,
        port: int | None = None,
    ) -> None:
        self.program = haproxy_program()
        self.directory = directory
        self.nodes = {node.name: node for node in nodes}
        self.port = port or free_port()
        self.stats_socket = directory / "haproxy-admin.sock"
        self.config = directory / "haproxy.cfg"
        self.log = directory / "haproxy.log"
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        self.config.write_text(self.render(inter_ms, fall, rise), encoding="utf-8")

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def render(self, inter_ms: int, fall: int, rise: int) -> str:
        """The rig's configuration: the shipped check block, the rig's timers and addresses."""
        servers = "".join(
            f"    server {node.name} {node.partner[0]}:{node.partner[1]}"
            f" addr {node.health[0]} port {node.health[1]}\n"
            for node in self.nodes.values()
        )
        return (
            "# Written by devtools/haproxy.py for a test; see deploy/haproxy/xbgw.cfg.\n"
            "global\n"
            f"    stats socket {self.stats_socket} mode 600 level admin\n"
            "    nbthread 1\n"
            "defaults\n"
            "    mode tcp\n"
            "    timeout connect 2s\n"
            "    retries 2\n"
            "    option redispatch 1\n"
            "    timeout client 1h\n"
            "    timeout server 1h\n"
            "    timeout check 2s\n"
            "frontend xbgw_partners\n"
            f"    bind 127.0.0.1:{self.port}\n"
            f"    default_backend {BACKEND}\n"
            f"backend {BACKEND}\n"
            + shipped_check_block()
            + f"    default-server check inter {inter_ms}ms fall {fall} rise {rise}\n"
            + servers
        )

    # -- lifecycle ------------------------------------------------------------------------

    def check_config(self) -> None:
        done = subprocess.run(
            [self.program, "-c", "-q", "-f", str(self.config)],
            check=False,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise HaproxyError(f"haproxy refused {self.config}:\n{done.stdout}{done.stderr}")

    def start(self, timeout: float = START_TIMEOUT, up: Sequence[str] = ()) -> None:
        """Start HAProxy; return once it accepts on ``endpoint`` and sees ``up`` nodes UP."""
        self.check_config()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [self.program, "-db", "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not self._listening():
            if self.process.poll() is not None:
                raise HaproxyError(f"haproxy exited {self.process.returncode}:\n{self.log_text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise HaproxyError(f"haproxy did not listen on {self.endpoint} in {timeout}s")
            time.sleep(POLL_SECONDS)
        for name in up:
            self.wait_state(name, "UP", max(0.0, deadline - time.monotonic()))

    def _listening(self) -> bool:
        if not self.stats_socket.exists():
            return False
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                return True
        except OSError:
            return False

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM by PID (SIGKILL after ``timeout``); the exit status, None if not started."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                return process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
        return process.wait()

    def __enter__(self) -> Haproxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    # -- what HAProxy sees ----------------------------------------------------------------

    def command(self, line: str) -> str:
        """One command on the stats socket (``show stat``, ``show servers state``...)."""
        with contextlib.closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)) as sock:
            sock.settimeout(5.0)
            sock.connect(str(self.stats_socket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stats(self) -> dict[str, dict[str, str]]:
        """``show stat`` of the backend's servers, by server name."""
        text = self.command("show stat").lstrip("# ")
        rows = csv.DictReader(line for line in text.splitlines() if line)
        return {
            row["svname"]: row
            for row in rows
            if row["pxname"] == BACKEND and row["svname"] in self.nodes
        }

    def state(self, node: str) -> str:
        """``UP`` or ``DOWN`` as HAProxy routes (``UP 1/2``, going down, is still UP);
        ``MAINT`` and the like as they are."""
        return self.stats()[node]["status"].split(" ")[0]

    def check(self, node: str) -> str:
        """The last check's outcome: ``L7OK``, ``L7RSP`` (an answer, not SERVING),
        ``L4CON`` (refused)... with HAProxy's description.

        While a check is running HAProxy reports the last finished one prefixed with
        ``* `` (management guide, CSV field ``check_status``); the prefix is dropped, as
        that is still the last outcome."""
        row = self.stats()[node]
        status = row["check_status"].removeprefix("* ")
        return f"{status} {row['check_desc']}: {row.get('last_chk', '')}".strip()

    def wait_state(self, node: str, state: str, timeout: float) -> None:
        """Until HAProxy has ``node`` in ``state``; ``HaproxyError`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        seen = ""
        while True:
            if self.process is None or self.process.poll() is not None:
                raise HaproxyError(f"haproxy is not running:\n{self.log_text()[-2000:]}")
            with contextlib.suppress(OSError):
                seen = self.state(node)
                if seen == state:
                    return
            if time.monotonic() > deadline:
                raise HaproxyError(
                    f"HAProxy did not see {node} {state} within {timeout}s "
                    f"(it is {seen or 'unknown'}; last check: {self.check(node)})"
                )
            time.sleep(POLL_SECONDS)

    def connections(self) -> dict[str, int]:
        """Connections each node was given since start (``stot``)."""
        return {name: int(row["stot"] or 0) for name, row in self.stats().items()}


@contextlib.contextmanager
def running_haproxy(directory: Path, nodes: Sequence[Node], **timers: int) -> Iterator[Haproxy]:
    """HAProxy started (listening; nodes not waited for), stopped by PID afterwards."""
    balancer = Haproxy(directory, nodes, **timers)
    try:
        balancer.start()
        yield balancer
    finally:
        balancer.stop()
