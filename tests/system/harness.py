"""Real gateway daemons for system tests: provision, start, wait for READY=1, stop by PID.

Each daemon runs as its own process (``python -m gateway.cli serve``) with its own SoftHSM
token directory, on an ephemeral loopback port, with a notify socket this harness binds, so
readiness is observed through the sd_notify protocol rather than guessed with a sleep.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from gateway.provision import GatewaySpec, Issuer, Provisioned, issue_passport, provision

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class NotifySocket:
    """A datagram socket standing in for systemd's ``$NOTIFY_SOCKET``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def wait_for(self, field_line: str, timeout: float, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(field_line in m.split("\n") for m in self.messages):
                return
            if process.poll() is not None:
                raise RuntimeError(f"daemon exited with {process.returncode} before {field_line}")
            self.sock.settimeout(max(0.05, min(0.5, deadline - time.monotonic())))
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
        raise TimeoutError(f"no {field_line} within {timeout}s; got {self.messages}")

    def drain(self) -> list[str]:
        self.sock.settimeout(0.0)
        try:
            while True:
                self.messages.append(self.sock.recv(4096).decode())
        except (BlockingIOError, TimeoutError):
            pass
        return self.messages

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


@dataclass
class Gateway:
    spec: GatewaySpec
    paths: Provisioned
    process: subprocess.Popen[bytes] | None = None
    notify: NotifySocket | None = None
    log_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.spec.id

    def start(self, extra_env: dict[str, str] | None = None) -> None:
        assert self.process is None or self.process.poll() is not None
        notify_path = self.paths.root / "notify.sock"
        notify_path.unlink(missing_ok=True)
        self.notify = NotifySocket(notify_path)
        self.log_path = self.paths.root / "daemon.log"
        env = {
            **os.environ,
            "NOTIFY_SOCKET": str(notify_path),
            "GRPC_VERBOSITY": "ERROR",
            **self.env,
            **(extra_env or {}),
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "-c", str(self.paths.config)],
                stdout=log,
                stderr=log,
                env=env,
            )
        self.notify.wait_for("READY=1", READY_TIMEOUT, self.process)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM and wait; SIGKILL if it does not stop in time. Returns the exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        code = self.process.returncode
        if self.notify is not None:
            self.notify.close()
        return code

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)
        if self.notify is not None:
            self.notify.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def cli(
        self, *args: str, check: bool = False, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            env={**os.environ, "XBGW_SOCKET": str(self.paths.socket), "GRPC_VERBOSITY": "ERROR"},
        )


@dataclass
class Pair:
    root: Path
    lingang: Gateway
    frankfurt: Gateway
    issuer: Issuer

    def passport(self, byte_limit: int = 1 << 30, jti: str | None = None, **kwargs: object) -> str:
        return issue_passport(
            self.issuer, self.lingang.spec, self.frankfurt.spec, byte_limit, jti=jti
        )

    def stop(self) -> None:
        for gateway in (self.lingang, self.frankfurt):
            gateway.stop()


LINGANG = ("lingang", "CN-SH", "Lingang Special Area, Shanghai")
FRANKFURT = ("frankfurt", "EU-DE", "Frankfurt am Main")


@contextmanager
def running_pair(root: Path, segment_size: int = 1 << 16) -> Iterator[Pair]:
    """Two provisioned gateways, both started; both stopped by PID afterwards."""
    specs = [GatewaySpec(*LINGANG, free_port()), GatewaySpec(*FRANKFURT, free_port())]
    made, issuer = provision(root, specs, segment_size=segment_size)
    pair = Pair(
        root,
        Gateway(specs[0], made["lingang"]),
        Gateway(specs[1], made["frankfurt"]),
        issuer,
    )
    try:
        pair.frankfurt.start()
        pair.lingang.start()
        yield pair
    finally:
        pair.stop()
