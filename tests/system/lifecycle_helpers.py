"""Helpers for the lifecycle system tests: worlds, notify reading, TLS, metrics, ledger.

A world is the demo pair of :mod:`devtools.pair`, provisioned but not started: the tests
start their own :class:`devtools.provision.DaemonProcess` on it, with their own environment
(a watchdog, say). ``DaemonProcess.wait_for`` answers "has *any* notification carried this
line?", which is not enough to follow a reload or a stop (``READY=1`` was seen long ago), so
:func:`wait_after` reads further datagrams from the same notify socket and only looks at those
after a mark. Reading the datagrams also matters for a second reason: the kernel queues at
most ``net.unix.max_dgram_qlen`` (10) unread datagrams, after which the daemon's ``notify()``
blocks -- with watchdog pings every 0.5 s that happens within seconds, so every helper that
waits also drains.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import yaml
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from devtools.pair import Pair, provision_pair
from devtools.provision import (
    DaemonProcess,
    DemoCa,
    GatewaySpec,
    Issuer,
    Provisioned,
    free_port,
)

CLI_ENV = {"GRPC_VERBOSITY": "ERROR"}


# -- a provisioned pair ----------------------------------------------------------------------


@dataclass
class World:
    """The demo pair (lingang -> frankfurt) seen as paths: ``world.lingang`` is Provisioned."""

    pair: Pair
    payload_prefixes: list[bytes] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.pair.root

    @property
    def specs(self) -> dict[str, GatewaySpec]:
        return self.pair.specs

    @property
    def made(self) -> dict[str, Provisioned]:
        return self.pair.made

    @property
    def issuer(self) -> Issuer:
        return self.pair.issuer

    @property
    def ca(self) -> DemoCa | None:
        """The CA we hold (``own_ca``), which can issue new gateway certificates."""
        return self.pair.ca

    @property
    def metrics_ports(self) -> dict[str, int]:
        return self.pair.metrics_ports

    @property
    def lingang(self) -> Provisioned:
        return self.pair.lingang.paths

    @property
    def frankfurt(self) -> Provisioned:
        return self.pair.frankfurt.paths

    def port(self, gateway_id: str) -> int:
        return self.pair.port(gateway_id)

    def passport(self, byte_limit: int = 1 << 30, jti: str | None = None) -> str:
        return self.pair.passport(byte_limit, jti=jti)

    def ca_path(self) -> Path:
        return self.pair.ca_path()


def make_world(
    root: Path,
    segment_size: int,
    extra_limits: dict[str, int] | None = None,
    own_ca: bool = False,
    metrics: bool = False,
) -> World:
    """Provision lingang and frankfurt; optionally all TLS from a CA we keep, and metrics."""
    return World(
        provision_pair(
            root,
            segment_size=segment_size,
            extra_limits=extra_limits,
            own_ca=own_ca,
            metrics=metrics,
        )
    )


def stop_quietly(process: DaemonProcess, timeout: float = 20.0) -> int | None:
    """Drain pending notifications (so ``STOPPING=1`` cannot block), then stop by PID."""
    if process.process is None:
        return None
    drain(process)
    return process.stop(timeout)


# -- the notify socket -----------------------------------------------------------------------


def _notify_socket(process: DaemonProcess) -> socket.socket:
    sock = process._sock  # the harness's own notify socket; see the module docstring
    assert sock is not None, f"{process.paths.id}: notify socket is closed"
    return sock


def drain(process: DaemonProcess) -> list[str]:
    """Record every datagram already queued, without waiting."""
    return process.drain()


def _read_one(process: DaemonProcess, deadline: float, what: str) -> None:
    assert process.process is not None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"{process.paths.id}: no {what}; notifications: {process.messages}")
    sock = _notify_socket(process)
    sock.settimeout(min(0.25, left))
    try:
        process.messages.append(sock.recv(4096).decode())
    except TimeoutError:
        if process.process.poll() is not None:
            drain(process)
            raise RuntimeError(
                f"{process.paths.id} exited with {process.process.returncode} before {what}; "
                f"notifications: {process.messages}"
            ) from None


def wait_after(process: DaemonProcess, mark: int, line: str, timeout: float = 20.0) -> int:
    """Index of the first notification at or after ``mark`` carrying ``line``."""
    deadline = time.monotonic() + timeout
    while True:
        for index in range(mark, len(process.messages)):
            if line in process.messages[index].split("\n"):
                return index
        _read_one(process, deadline, f"{line} after notification #{mark}")


def wait_count(process: DaemonProcess, line: str, count: int, timeout: float) -> list[float]:
    """Wait until ``count`` notifications carry ``line``; return when each was read."""
    deadline = time.monotonic() + timeout
    seen: list[float] = []
    checked = 0
    while True:
        for message in process.messages[checked:]:
            if line in message.split("\n"):
                seen.append(time.monotonic())
        checked = len(process.messages)
        if len(seen) >= count:
            return seen
        _read_one(process, deadline, f"{count} x {line}")


# -- CLI -------------------------------------------------------------------------------------


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", *args]


def cli_env(paths: Provisioned) -> dict[str, str]:
    return {**os.environ, **CLI_ENV, "XBGW_SOCKET": str(paths.socket)}


def cli(paths: Provisioned, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=cli_env(paths),
    )


def dataset(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def send_and_fetch(world: World, tmp: Path, size: int, name: str) -> tuple[str, str]:
    """One transfer lingang -> frankfurt, fetched and compared; returns (passport, id)."""
    source = tmp / f"{name}.bin"
    digest = dataset(source, size)
    world.payload_prefixes.append(source.read_bytes()[:32])
    token = world.passport(byte_limit=size * 2)
    sent = cli(world.lingang, "send", str(source), "--to", "frankfurt", "--passport", token)
    assert sent.returncode == 0, f"send failed: {sent.stderr}"
    assert digest in sent.stdout
    transfer_id = sent.stdout.split()[1]
    target = tmp / f"{name}.fetched"
    fetched = cli(world.frankfurt, "fetch", transfer_id, "-o", str(target))
    assert fetched.returncode == 0, f"fetch failed: {fetched.stderr}"
    assert hashlib.sha256(target.read_bytes()).hexdigest() == digest
    return token, transfer_id


# -- TLS, health, metrics, ledger ------------------------------------------------------------


def server_certificate(
    port: int, ca: Path, client: Provisioned, server_name: str = "frankfurt"
) -> x509.Certificate:
    """The certificate a brand-new mutual-TLS handshake to ``port`` is shown.

    The client presents ``client``'s stand-in identity (same name, same CA): the gateway's own
    key is wrapped by its HSM and in clear only in its daemon's memory.
    """
    certificate, key = client.stand_in()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(ca))
    context.load_cert_chain(str(certificate), str(key))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


_UNWRAP = """
import sys
from pathlib import Path
from gateway.config import load_config
from gateway.hsm import Hsm
from gateway.tlskey import load_tls_private_key
config = load_config(Path(sys.argv[1]))
key = Path(sys.argv[2]) if len(sys.argv) > 2 else config.tls.private_key
certificate = Path(sys.argv[3]) if len(sys.argv) > 3 else config.tls.certificate
hsm = Hsm.open(str(config.hsm.module), config.hsm.token, config.hsm.pin.read())
try:
    sys.stdout.buffer.write(load_tls_private_key(key, certificate, config.id, hsm))
finally:
    hsm.close()
"""


def unwrapped_tls_key(
    paths: Provisioned, key: Path | None = None, certificate: Path | None = None
) -> bytes:
    """The PEM the daemon of ``paths`` would hand to gRPC for ``key`` (default: its
    ``tls.private_key``), unwrapped with its HSM in a child process (SoftHSM binds one token
    directory per process). For tests that must know the key, e.g. to look for it in logs."""
    extra = [str(key)] if key is not None else []
    extra += [str(certificate)] if certificate is not None else []
    done = subprocess.run(
        [sys.executable, "-c", _UNWRAP, str(paths.config), *extra],
        capture_output=True,
        timeout=60,
        check=False,
        env={**os.environ, **CLI_ENV, "SOFTHSM2_CONF": str(paths.softhsm_conf)},
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


def file_serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


@contextmanager
def partner_channel(world: World, client: Provisioned, port: int) -> Iterator[grpc.Channel]:
    """A mutual-TLS channel to ``port`` as ``client`` (its stand-in identity)."""
    certificate, key = client.stand_in()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=world.ca_path().read_bytes(),
        private_key=key.read_bytes(),
        certificate_chain=certificate.read_bytes(),
    )
    channel = grpc.secure_channel(
        f"127.0.0.1:{port}",
        credentials,
        options=[("grpc.ssl_target_name_override", "frankfurt")],
    )
    try:
        yield channel
    finally:
        channel.close()


@contextmanager
def local_channel(paths: Provisioned) -> Iterator[grpc.Channel]:
    channel = grpc.insecure_channel(f"unix:{paths.socket}")
    try:
        yield channel
    finally:
        channel.close()


def health_status(channel: grpc.Channel, service: str = "") -> str:
    response = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=10
    )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> tuple[str, Samples]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
    return text, samples


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def ledger_row(state_dir: Path, transfer_id: str) -> tuple[str, int, int] | None:
    """(state, received_bytes, final_received) of an inbound transfer, read-only."""
    path = state_dir / "ledger.sqlite3"
    if not path.exists():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        row = db.execute(
            "SELECT state, received_bytes, final_received FROM inbound WHERE transfer_id = ?",
            (transfer_id,),
        ).fetchone()
    except sqlite3.OperationalError:
        return None  # the table is created at the daemon's first start
    finally:
        db.close()
    return None if row is None else (str(row[0]), int(row[1]), int(row[2]))


def committed_inbound(state_dir: Path) -> int:
    db = sqlite3.connect(f"file:{state_dir / 'ledger.sqlite3'}?mode=ro", uri=True, timeout=5)
    try:
        (count,) = db.execute("SELECT COUNT(*) FROM inbound WHERE state = 'committed'").fetchone()
    finally:
        db.close()
    return int(count)


def list_services(channel: grpc.Channel) -> list[str]:
    """Service names via gRPC server reflection (``list_services``)."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = stub.ServerReflectionInfo(iter([request]), timeout=10)
    return [
        service.name
        for response in responses
        for service in response.list_services_response.service
    ]


def json_log(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Parsed log entries, and the lines that are not JSON objects."""
    entries: list[dict[str, Any]] = []
    bad: list[str] = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            bad.append(line)
            continue
        if isinstance(entry, dict):
            entries.append(entry)
        else:
            bad.append(line)
    return entries, bad


def standalone_config(base: Provisioned, tmp: Path) -> dict[str, Any]:
    """``base``'s config made independent of the running daemon: own socket, state, port."""
    data: dict[str, Any] = yaml.safe_load(base.config.read_text(encoding="utf-8"))
    data["listen"] = {
        "partner": f"127.0.0.1:{free_port()}",
        "local_socket": str(tmp / "run" / "local.sock"),
    }
    data["state_dir"] = str(tmp / "state")
    data["tls"] = {"certificate": str(base.tls_certificate), "private_key": str(base.tls_key)}
    return data


def write_standalone(base: Provisioned, tmp: Path, data: dict[str, Any]) -> Provisioned:
    config = tmp / "gateway.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return replace(
        base,
        root=tmp,
        config=config,
        socket=Path(data["listen"]["local_socket"]),
        state_dir=Path(data["state_dir"]),
    )


def read_datagrams_until(
    sock: socket.socket, messages: list[str], line: str, timeout: float
) -> None:
    """Receive on a notify socket we bound ourselves until a datagram carries ``line``."""
    deadline = time.monotonic() + timeout
    while not any(line in message.split("\n") for message in messages):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no {line} within {timeout}s; got {messages}")
        sock.settimeout(min(0.25, left))
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            continue


def answers_health(paths: Provisioned) -> bool:
    if not paths.socket.exists():
        return False
    with local_channel(paths) as channel:
        try:
            return health_status(channel) == "SERVING"
        except grpc.RpcError:
            return False
