"""The two demo gateways, lingang (CN-SH) and frankfurt (EU-DE), provisioned and run.

The one way the demo, the system tests and the benchmark stand the pair up:

* :func:`provision_pair` makes both gateways partners of each other, trusting one passport
  issuer (:func:`devtools.provision.provision`: SoftHSM tokens, certificates from a
  throw-away CA, one YAML config each), with options for the segment size and other limits,
  a Prometheus endpoint per gateway, a CA the caller keeps (to issue new certificates later),
  the daemons' environment and any other config edit;
* :meth:`Pair.start` starts the receiver (frankfurt), then the sender (lingang), each ready
  when it says ``READY=1`` on the notify socket we bind; :meth:`Pair.stop` stops both by PID
  (SIGTERM, then SIGKILL after a deadline); :meth:`Pair.running` does both around a block.

A :class:`Gateway` is one daemon (:class:`devtools.provision.DaemonProcess`) plus the CLI
pointed at its local socket; it can be started again after a stop (a fresh process).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from devtools.provision import (
    DaemonProcess,
    DemoCa,
    GatewaySpec,
    Issuer,
    Provisioned,
    free_port,
    issue_passport,
    issue_tls,
    provision,
)

__all__ = [
    "FRANKFURT",
    "LINGANG",
    "Gateway",
    "Pair",
    "edit_config",
    "provision_pair",
]

LINGANG = ("lingang", "CN-SH", "Lingang Special Area, Shanghai")
FRANKFURT = ("frankfurt", "EU-DE", "Frankfurt am Main")
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0

#: Changes one gateway's parsed YAML config in place: ``configure(gateway_id, data)``.
Configure = Callable[[str, dict[str, Any]], object]


def edit_config(path: Path, change: Callable[[dict[str, Any]], object]) -> None:
    """Load a gateway's YAML config, let ``change`` edit it in place, write it back."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


class Gateway(DaemonProcess):
    """A provisioned gateway as a daemon process, plus the CLI pointed at its socket."""

    def __init__(
        self, spec: GatewaySpec, paths: Provisioned, env: dict[str, str] | None = None
    ) -> None:
        super().__init__(paths, env=env)
        self.spec = spec
        self.metrics_port: int | None = None

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def metrics_url(self) -> str:
        """The daemon's Prometheus endpoint (``listen.metrics``), if it has one."""
        assert self.metrics_port is not None, f"{self.id} has no metrics endpoint"
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        assert not self.is_running(), f"{self.id} is already running"
        super().start(timeout)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(
        self, *args: str, check: bool = False, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """``xbgw ARGS`` against this gateway's socket, run to completion."""
        return subprocess.run(
            self.cli_command(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            env=self.cli_env(),
        )

    def cli_background(self, *args: str) -> subprocess.Popen[str]:
        """``xbgw ARGS`` started and left running; the caller waits for it or kills it."""
        return subprocess.Popen(
            self.cli_command(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.cli_env(),
        )

    @staticmethod
    def cli_command(*args: str) -> list[str]:
        return [sys.executable, "-m", "gateway.cli", *args]

    def cli_env(self) -> dict[str, str]:
        return {**os.environ, "XBGW_SOCKET": str(self.paths.socket), "GRPC_VERBOSITY": "ERROR"}


@dataclass
class Pair:
    """lingang (the sender) and frankfurt (the receiver), one passport issuer, one CA."""

    root: Path
    lingang: Gateway
    frankfurt: Gateway
    issuer: Issuer
    #: A CA whose key we hold (``own_ca=True``): it issued both gateways' TLS certificates.
    ca: DemoCa | None = None

    @property
    def gateways(self) -> tuple[Gateway, Gateway]:
        return self.lingang, self.frankfurt

    @property
    def specs(self) -> dict[str, GatewaySpec]:
        return {gateway.id: gateway.spec for gateway in self.gateways}

    @property
    def made(self) -> dict[str, Provisioned]:
        return {gateway.id: gateway.paths for gateway in self.gateways}

    @property
    def metrics_ports(self) -> dict[str, int]:
        return {g.id: g.metrics_port for g in self.gateways if g.metrics_port is not None}

    def gateway(self, gateway_id: str) -> Gateway:
        return next(gateway for gateway in self.gateways if gateway.id == gateway_id)

    def port(self, gateway_id: str) -> int:
        """The gateway's partner (mutual-TLS) port on 127.0.0.1."""
        return self.gateway(gateway_id).spec.port

    def ca_path(self) -> Path:
        """The CA both gateways' partner ``ca`` points at."""
        return self.ca.path if self.ca is not None else self.root / "ca" / "ca.crt"

    def passport(
        self, byte_limit: int = 1 << 30, jti: str | None = None, extra: list[str] | None = None
    ) -> str:
        """A passport lingang -> frankfurt from the issuer, through ``xbgw passport issue``."""
        return issue_passport(
            self.issuer, self.lingang.spec, self.frankfurt.spec, byte_limit, jti=jti, extra=extra
        )

    def enable_metrics(self) -> dict[str, int]:
        """Give each gateway a Prometheus endpoint on a free port, from its next start on."""
        for gateway in self.gateways:
            port = free_port()

            def listen(data: dict[str, Any], port: int = port) -> None:
                data["listen"]["metrics"] = f"127.0.0.1:{port}"

            edit_config(gateway.paths.config, listen)
            gateway.metrics_port = port
        return self.metrics_ports

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        """Start frankfurt, then lingang, each until READY=1; on a failure stop both again."""
        try:
            for gateway in (self.frankfurt, self.lingang):
                gateway.start(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = STOP_TIMEOUT) -> dict[str, int]:
        """Stop both by PID (the sender first); the exit code of each.

        A gateway that never started counts as 0. An error stopping one does not keep the
        other running: it is raised after both were dealt with.
        """
        codes: dict[str, int] = {}
        errors: list[BaseException] = []
        for gateway in self.gateways:
            try:
                codes[gateway.id] = gateway.stop(timeout)
            except BaseException as exc:  # stop the other one whatever happens
                errors.append(exc)
        if errors:
            raise errors[0]
        return codes

    @contextmanager
    def running(self, timeout: float = READY_TIMEOUT) -> Iterator[Pair]:
        """Both started for the block, both stopped by PID afterwards, whatever happened."""
        self.start(timeout)
        try:
            yield self
        finally:
            self.stop()

    def pids(self) -> dict[str, int]:
        return {gateway.id: gateway.pid for gateway in self.gateways}


def provision_pair(
    root: Path,
    *,
    segment_size: int = 1 << 20,
    extra_limits: dict[str, int] | None = None,
    own_ca: bool = False,
    metrics: bool = False,
    configure: Configure | None = None,
    env: dict[str, str] | None = None,
) -> Pair:
    """Provision lingang and frankfurt under ``root`` on free loopback ports; start nothing.

    ``segment_size`` and ``extra_limits`` go to each config's ``limits``. ``own_ca``
    re-issues both TLS certificates (keys wrapped again) and both stand-in identities from a
    second CA whose key the pair keeps (``pair.ca``; :func:`~devtools.provision.provision`
    keeps its CA key only in memory) and points both configs' partner ``ca`` at it.
    ``metrics`` gives each gateway a Prometheus endpoint on a free port.
    ``configure(gateway_id, data)`` edits each config last. ``env`` is added to both daemons'
    environment.
    """
    specs = [GatewaySpec(*LINGANG, free_port()), GatewaySpec(*FRANKFURT, free_port())]
    made, issuer = provision(root, specs, segment_size=segment_size, extra_limits=extra_limits)
    lingang, frankfurt = (Gateway(spec, made[spec.id], env=env) for spec in specs)
    pair = Pair(root, lingang, frankfurt, issuer)
    if own_ca:
        ca = DemoCa(root / "ca-held", name="xbgw held CA")

        def use_ca(data: dict[str, Any]) -> None:
            for partner in data["partners"]:
                partner["ca"] = str(ca.path)

        for gateway in pair.gateways:
            issue_tls(gateway.paths, ca)  # wrapped again, and the stand-in from this CA too
            edit_config(gateway.paths.config, use_ca)
        pair.ca = ca
    if metrics:
        pair.enable_metrics()
    if configure is not None:
        for gateway in pair.gateways:

            def edit(data: dict[str, Any], gateway_id: str = gateway.id) -> None:
                assert configure is not None
                configure(gateway_id, data)

            edit_config(gateway.paths.config, edit)
    return pair
