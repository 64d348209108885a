"""Provision gateways for the demo, the tests and the benchmark: tokens, keys, certs, configs.

Everything a real deployment gets from its PKI and HSM administrators is made here locally:
a demo CA, one SoftHSM token per gateway (keys created by ``xbgw keys init`` in a child
process, because SoftHSM binds one token directory per process), a passport issuer with its
own token, PIN files readable only by the owner, and one YAML config per gateway.

Each gateway's TLS private key is wrapped by its own HSM (``xbgw tls import``, the operator's
path) and the plaintext deleted: ``tls.private_key`` names ``tls/gateway.xbgw-key``. Test
tools that must *act as* a gateway towards its partner (a rogue client, a handshake probe,
the benchmark's plain-gRPC control) get a **stand-in**: a second certificate for the same
name from the same CA, with its own plaintext key under ``stand-in/`` -- never the gateway's
key, which exists in clear only in the daemon's memory.
Not for production: the demo CA key sits on disk. Development tooling: the daemon never
imports this module (see :mod:`devtools.pair` for the two demo gateways as one fixture).
"""

from __future__ import annotations

import datetime
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


@dataclass(frozen=True)
class GatewaySpec:
    id: str
    jurisdiction: str
    description: str
    port: int


@dataclass(frozen=True)
class Provisioned:
    """Paths of one provisioned gateway."""

    id: str
    root: Path
    config: Path
    socket: Path
    state_dir: Path
    softhsm_conf: Path
    token: str
    pin_file: Path
    signing_public_key: Path
    tls_certificate: Path
    tls_key: Path  # what tls.private_key names: the wrapped key
    #: A certificate + plaintext key for the same name from the same CA, for test tools that
    #: act as this gateway (None when provisioned with ``stand_ins=False``).
    stand_in_certificate: Path | None = None
    stand_in_key: Path | None = None

    def stand_in(self) -> tuple[Path, Path]:
        """(certificate, key) of the stand-in identity."""
        assert self.stand_in_certificate is not None and self.stand_in_key is not None, (
            f"{self.id} was provisioned without a stand-in identity"
        )
        return self.stand_in_certificate, self.stand_in_key


@dataclass(frozen=True)
class Issuer:
    id: str
    kid: str
    softhsm_conf: Path
    token: str
    pin_file: Path
    public_key: Path

    def hsm_args(self) -> list[str]:
        return ["--module", SOFTHSM_MODULE, "--token", self.token, "--pin-file", str(self.pin_file)]

    def env(self) -> dict[str, str]:
        return {**os.environ, "SOFTHSM2_CONF": str(self.softhsm_conf)}


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def write_softhsm_conf(directory: Path) -> Path:
    """A SoftHSM token directory and config under ``directory``; return the config."""
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n",
        encoding="utf-8",
    )
    return conf


def init_softhsm_token(conf: Path, label: str, pin: str, so_pin: str) -> None:
    """Initialise a token in the free slot with ``softhsm2-util`` (about 12 ms)."""
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", label,
         "--so-pin", so_pin, "--pin", pin],
        check=True,
        capture_output=True,
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
    )  # fmt: skip


def _softhsm(root: Path, label: str) -> tuple[Path, Path]:
    """A token directory, config and PIN file under ``root``; the token initialised."""
    conf = write_softhsm_conf(root)
    pin = secrets.token_hex(8)
    pin_file = root / "pin"
    _write_private(pin_file, (pin + "\n").encode())
    init_softhsm_token(conf, label, pin, secrets.token_hex(8))
    return conf, pin_file


def _xbgw(args: list[str], conf: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
    )
    if done.returncode != 0:  # say why: a bare CalledProcessError hides xbgw's one line
        raise RuntimeError(f"xbgw {' '.join(args[:2])} failed ({done.returncode}): {done.stderr}")


def _keys(
    conf: Path, token: str, pin_file: Path, public_out: Path, purposes: str | None = None
) -> None:
    """Keys on ``token`` (every purpose, or ``purposes``) and its signing key's public half."""
    hsm = ["--module", SOFTHSM_MODULE, "--token", token, "--pin-file", str(pin_file)]
    _xbgw(["keys", "init", *hsm, *(["--purposes", purposes] if purposes else [])], conf)
    _xbgw(["keys", "public", *hsm, "--purpose", "signing", "-o", str(public_out)], conf)


def wrap_tls_key(paths: Provisioned, key: Path) -> None:
    """Wrap the plaintext ``key`` into ``paths.tls_key`` with ``xbgw tls import`` (the
    gateway's storage key, in a child process like every HSM step here), then delete it."""
    hsm = ["--module", SOFTHSM_MODULE, "--token", paths.token, "--pin-file", str(paths.pin_file)]
    wrap = ["--gateway", paths.id, "--key", str(key), "-o", str(paths.tls_key), "--force"]
    _xbgw(["tls", "import", *hsm, *wrap], paths.softhsm_conf)
    key.unlink()


def issue_tls(paths: Provisioned, ca: DemoCa) -> None:
    """A certificate from ``ca`` for the gateway, its key wrapped (the plaintext deleted), and
    the stand-in identity from the same CA if ``paths`` has one. The daemon must be stopped
    or reloaded afterwards: this replaces the files without asking it."""
    plain = paths.tls_key.with_name("gateway.key")
    ca.issue(paths.id, paths.tls_certificate, plain)
    wrap_tls_key(paths, plain)
    if paths.stand_in_certificate is not None and paths.stand_in_key is not None:
        ca.issue(paths.id, paths.stand_in_certificate, paths.stand_in_key)


def renew_tls(paths: Provisioned, ca: DemoCa, days: int = 30) -> None:
    """Renew a (possibly running) gateway's certificate and key from ``ca`` the way an
    operator does: ``xbgw tls rotate -c CONFIG`` checks the pair, wraps the key and replaces
    both files; the plaintext key lives only in a temporary directory. The daemon keeps its
    old certificate until it is reloaded (SIGHUP)."""
    with tempfile.TemporaryDirectory(prefix="xbgw-renew-") as scratch:
        cert, key = Path(scratch) / "new.crt", Path(scratch) / "new.key"
        ca.issue(paths.id, cert, key, days=days)
        _xbgw(
            ["tls", "rotate", "-c", str(paths.config), "--key", str(key), "--cert", str(cert)],
            paths.softhsm_conf,
        )


class DemoCa:
    """A throw-away CA that issues gateway certificates with the gateway id as DNS SAN."""

    def __init__(self, root: Path, name: str = "xbgw demo CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.path = root / "ca.crt"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, cert_path: Path, key_path: Path, days: int = 30) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_private(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )


def provision_issuer(root: Path, issuer_id: str) -> Issuer:
    conf, pin_file = _softhsm(root, issuer_id)
    public = root / "signing.pem"
    _keys(conf, issuer_id, pin_file, public, purposes="signing")  # an issuer only signs
    return Issuer(issuer_id, f"{issuer_id}/signing/1", conf, issuer_id, pin_file, public)


def provision(
    root: Path,
    gateways: list[GatewaySpec],
    issuer_id: str = "dpo",
    segment_size: int = 1 << 20,
    extra_limits: dict[str, int] | None = None,
    stand_ins: bool = True,
) -> tuple[dict[str, Provisioned], Issuer]:
    """Make every gateway in ``gateways`` a partner of every other, all trusting one issuer.

    Each TLS key is wrapped by the gateway's HSM; ``stand_ins`` adds the stand-in identity
    (see the module docstring) that test tools use to act as a gateway.
    """
    root.mkdir(parents=True, exist_ok=True)
    ca = DemoCa(root / "ca")
    issuer = provision_issuer(root / "issuer", issuer_id)
    made: dict[str, Provisioned] = {}
    for spec in gateways:
        home = root / spec.id
        conf, pin_file = _softhsm(home / "hsm", spec.id)
        public = home / "signing.pem"
        _keys(conf, spec.id, pin_file, public)
        stand_in = home / "stand-in"
        made[spec.id] = Provisioned(
            id=spec.id,
            root=home,
            config=home / "gateway.yaml",
            socket=home / "run" / "local.sock",
            state_dir=home / "state",
            softhsm_conf=conf,
            token=spec.id,
            pin_file=pin_file,
            signing_public_key=public,
            tls_certificate=home / "tls" / "gateway.crt",
            tls_key=home / "tls" / "gateway.xbgw-key",
            stand_in_certificate=stand_in / "tls.crt" if stand_ins else None,
            stand_in_key=stand_in / "tls.key" if stand_ins else None,
        )
        issue_tls(made[spec.id], ca)
    for spec in gateways:
        mine = made[spec.id]
        config = {
            "gateway": {
                "id": spec.id,
                "jurisdiction": spec.jurisdiction,
                "description": spec.description,
            },
            "listen": {
                "partner": f"127.0.0.1:{spec.port}",
                "local_socket": str(mine.socket),
            },
            "tls": {"certificate": "tls/gateway.crt", "private_key": "tls/gateway.xbgw-key"},
            "hsm": {
                "module": SOFTHSM_MODULE,
                "token": spec.id,
                "pin": {"file": str(mine.pin_file)},
                "softhsm_conf": str(mine.softhsm_conf),
            },
            "partners": [
                {
                    "id": other.id,
                    "endpoint": f"127.0.0.1:{other.port}",
                    "jurisdiction": other.jurisdiction,
                    "ca": str(ca.path),
                    "signing_key": str(made[other.id].signing_public_key),
                }
                for other in gateways
                if other.id != spec.id
            ],
            "issuers": [{"kid": issuer.kid, "public_key": str(issuer.public_key)}],
            "state_dir": str(mine.state_dir),
            "limits": {
                "segment_size": segment_size,
                "max_message_bytes": max(segment_size + (64 << 10), 1 << 20),
                **(extra_limits or {}),
            },
        }
        mine.config.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return made, issuer


def issue_passport(
    issuer: Issuer,
    sender: GatewaySpec,
    receiver: GatewaySpec,
    byte_limit: int,
    jti: str | None = None,
    ttl: str = "1h",
    extra: list[str] | None = None,
    claims_file: Path | None = None,
) -> str:
    """A passport from ``issuer`` for one transfer, made through ``xbgw passport issue``.

    ``extra`` flags come last, so they override the demo terms (a flag given twice: the last
    wins). With ``claims_file`` (``--claims``), the demo classification, purpose and legal
    basis are left out so the file's apply (flags override a claims file).
    """
    demo_terms = [
        "--classification",
        "general",
        "--purpose",
        "demo transfer",
        "--legal-basis",
        "CAC-SC-2026-0042",
    ]
    args = [
        sys.executable,
        "-m",
        "gateway.cli",
        "passport",
        "issue",
        *issuer.hsm_args(),
        "--kid",
        issuer.kid,
        "--to",
        receiver.id,
        "--sender",
        sender.id,
        "--src",
        sender.jurisdiction,
        "--dst",
        receiver.jurisdiction,
        *(["--claims", str(claims_file)] if claims_file is not None else demo_terms),
        "--byte-limit",
        str(byte_limit),
        "--ttl",
        ttl,
        *(["--jti", jti] if jti else []),
        *(extra or []),
    ]
    done = subprocess.run(args, check=True, capture_output=True, text=True, env=issuer.env())
    return done.stdout.strip()


#: Where listening ports are picked: below the kernel's ephemeral range, which every outgoing
#: connection draws its local port from (``net.ipv4.ip_local_port_range``, 32768-60999 by
#: default). A port picked there could become some connection's local port before the daemon
#: picked for it binds it -- or binds it again after a restart -- and the daemon would fail
#: "address already in use"; below it, only another picker can take it.
LISTEN_PORTS = range(20000, 32768)
_picked = random.SystemRandom()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _own_ports() -> range:
    """``LISTEN_PORTS`` below the ephemeral range; a slice of its own for each worker of a
    parallel test run (pytest-xdist's ``PYTEST_XDIST_WORKER`` gwN of N), so that two workers
    never pick the same port."""
    ports = range(LISTEN_PORTS.start, min(LISTEN_PORTS.stop, _ephemeral_low()))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if worker.startswith("gw") and worker[2:].isdigit() and count.isdigit() and int(count) > 0:
        share = len(ports) // int(count)
        start = ports.start + int(worker[2:]) % int(count) * share
        ports = range(start, start + share)
    return ports


def free_port() -> int:
    """A loopback port that was free a moment ago, for a listener bound later (see
    ``LISTEN_PORTS``); one the kernel picks if none of ours is free after a few tries."""
    ports = _own_ports()
    for _ in range(64 if len(ports) >= 64 else 0):
        port = _picked.choice(ports)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        chosen: int = sock.getsockname()[1]
        return chosen


class DaemonProcess:
    """``xbgw serve`` as a child process, ready when it says ``READY=1`` on our notify socket.

    Stands in for systemd: it binds the ``$NOTIFY_SOCKET`` datagram socket, records every
    notification, and stops the daemon by its PID (SIGTERM, then SIGKILL after a deadline).
    """

    def __init__(self, paths: Provisioned, env: dict[str, str] | None = None) -> None:
        self.paths = paths
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.messages: list[str] = []
        self.log_path = paths.root / "daemon.log"
        self.notify_path = paths.root / "notify.sock"
        self._sock: socket.socket | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 30.0) -> None:
        self.notify_path.unlink(missing_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.notify_path))
        self.messages = []
        env = {
            **os.environ,
            "NOTIFY_SOCKET": str(self.notify_path),
            "GRPC_VERBOSITY": "ERROR",
            **self.env,
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "-c", str(self.paths.config)],
                stdout=log,
                stderr=log,
                env=env,
            )
        self.wait_for("READY=1", timeout)

    def wait_for(self, line: str, timeout: float, since: int = 0) -> None:
        """Block until a notification from ``messages[since:]`` carries ``line``, or fail.

        ``since`` lets a caller wait for the ``READY=1`` that follows its own SIGHUP:
        remember ``len(messages)`` before the signal.
        """
        assert self._sock is not None and self.process is not None
        deadline = time.monotonic() + timeout
        while not any(line in message.split("\n") for message in self.messages[since:]):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.paths.id}: no {line} within {timeout}s")
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(
                    f"{self.paths.id} exited with {self.process.returncode}: " + " | ".join(tail)
                )
            self._sock.settimeout(min(0.5, left))
            try:
                self.messages.append(self._sock.recv(4096).decode())
            except TimeoutError:
                continue

    def drain(self) -> list[str]:
        """Record every notification already queued, without waiting; return them all.

        The kernel queues at most ``net.unix.max_dgram_qlen`` (10) unread datagrams, after
        which the daemon's ``notify()`` blocks: with watchdog pings that happens within
        seconds, so :meth:`stop` drains before it signals.
        """
        if self._sock is None:
            return self.messages
        self._sock.settimeout(0.0)
        try:
            while True:
                self.messages.append(self._sock.recv(4096).decode())
        except (BlockingIOError, TimeoutError):
            pass
        return self.messages

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; return the exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.drain()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.close_notify()
        return self.process.returncode

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)
        self.close_notify()

    def close_notify(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self.notify_path.unlink(missing_ok=True)
