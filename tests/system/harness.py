"""Real gateway daemons for system tests: provision, start, wait for READY=1, stop by PID.

Each daemon runs as its own process (``python -m gateway.cli serve``, see
``gateway.provision.DaemonProcess``) with its own SoftHSM token directory, on an ephemeral
loopback port, with a notify socket the test binds, so readiness is observed through the
sd_notify protocol rather than guessed with a sleep.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gateway.demo import FRANKFURT, LINGANG
from gateway.provision import (
    DaemonProcess,
    GatewaySpec,
    Issuer,
    Provisioned,
    free_port,
    issue_passport,
    provision,
)

__all__ = [
    "FRANKFURT",
    "LINGANG",
    "Gateway",
    "Pair",
    "free_port",
    "running_pair",
    "wait_until",
]

READY_TIMEOUT = 30.0
POLL_INTERVAL = 0.02


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition()`` until it holds; ``TimeoutError`` naming ``what`` after ``timeout``.

    Waiting on a condition with a deadline, never a sleep that hopes to win a race.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(POLL_INTERVAL)


STOP_TIMEOUT = 30.0


class Gateway(DaemonProcess):
    """A provisioned gateway as a daemon process, plus the CLI pointed at its socket."""

    def __init__(self, spec: GatewaySpec, paths: Provisioned) -> None:
        super().__init__(paths)
        self.spec = spec

    @property
    def id(self) -> str:
        return self.spec.id

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        super().start(timeout)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(
        self, *args: str, check: bool = False, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """``xbgw ARGS`` against this gateway's socket, run to completion."""
        return subprocess.run(
            self._cli_command(args),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            env=self._cli_env(),
        )

    def cli_background(self, *args: str) -> subprocess.Popen[str]:
        """``xbgw ARGS`` started and left running; the caller waits for it or kills it."""
        return subprocess.Popen(
            self._cli_command(args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self._cli_env(),
        )

    @staticmethod
    def _cli_command(args: tuple[str, ...]) -> list[str]:
        return [sys.executable, "-m", "gateway.cli", *args]

    def _cli_env(self) -> dict[str, str]:
        return {**os.environ, "XBGW_SOCKET": str(self.paths.socket), "GRPC_VERBOSITY": "ERROR"}


@dataclass
class Pair:
    root: Path
    lingang: Gateway
    frankfurt: Gateway
    issuer: Issuer

    def passport(self, byte_limit: int = 1 << 30, jti: str | None = None) -> str:
        return issue_passport(
            self.issuer, self.lingang.spec, self.frankfurt.spec, byte_limit, jti=jti
        )

    def stop(self) -> None:
        for gateway in (self.lingang, self.frankfurt):
            gateway.stop()


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
