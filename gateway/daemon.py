"""Lifecycle of ``xbgw serve``: start in order, report readiness, reload, drain, stop.

Start order matters: configuration, HSM (PIN, token, key versions), ledger and spool, then
both listeners. Only when all of them work does the daemon say ``READY=1``; any failure
before that is one clear line on stderr and a non-zero exit, so ``systemctl status`` shows it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from concurrent import futures
from pathlib import Path
from types import FrameType

import grpc

from gateway import logs
from gateway._proto.xbgw.v1 import local_pb2_grpc, partner_pb2_grpc
from gateway.client import PartnerChannels, Sender
from gateway.config import GatewayConfig, load_config
from gateway.errors import ConfigError, XbgwError
from gateway.hsm import Hsm
from gateway.keys import CurrentKeys
from gateway.ledger import Ledger
from gateway.local import LocalServicer
from gateway.notify import monotonic_usec, notify, watchdog_interval
from gateway.partner import PartnerServicer
from gateway.receiver import Receiver
from gateway.spool import Spool
from gateway.tls import load_private_key_pem, server_credentials

log = logging.getLogger("xbgw.daemon")


class Daemon:
    """One running gateway."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.config = load_config(config_path)
        logs.setup(self.config.log.level, self.config.log.format)
        self._accepting = True
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wake = threading.Event()
        self.partner_port = 0

    def _config(self) -> GatewayConfig:
        return self.config

    def start(self) -> None:
        config = self.config
        notify("STATUS=opening the HSM")
        if config.hsm.softhsm_conf is not None:
            os.environ["SOFTHSM2_CONF"] = str(config.hsm.softhsm_conf)
        self.hsm = Hsm.open(str(config.hsm.module), config.hsm.token, config.hsm.pin.read())
        self.keys = CurrentKeys.resolve(self.hsm, config.hsm.key_versions)
        self.hsm.check_versions(self.keys.as_dict())
        notify("STATUS=opening the ledger and spool")
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(config.state_dir / "ledger.sqlite3")
        self.spool = Spool(config.state_dir / "spool")
        key_pem = self._tls_key(config)
        self.channels = PartnerChannels(config, key_pem)
        self.receiver = Receiver(config, self.hsm, self.keys, self.ledger, self.spool)
        self.sender = Sender(config, self.hsm, self.keys, self.ledger, self.channels)
        notify("STATUS=starting listeners")
        self._start_partner_server(config, key_pem)
        self._start_local_server(config)
        log.info(
            "xbgw %s ready: partner listener on %s, local socket %s",
            config.id,
            self.partner_address,
            config.listen.local_socket,
        )
        notify("READY=1", f"STATUS=serving as {config.id} on {self.partner_address}")

    @staticmethod
    def _tls_key(config: GatewayConfig) -> bytes:
        passphrase = None
        if config.tls.private_key_passphrase is not None:
            passphrase = config.tls.private_key_passphrase.read()
        return load_private_key_pem(config.tls.private_key, passphrase)

    def _options(self, config: GatewayConfig) -> list[tuple[str, int]]:
        limit = config.limits.max_message_bytes
        return [
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
            ("grpc.so_reuseport", 0),
        ]

    def _start_partner_server(self, config: GatewayConfig, key_pem: bytes) -> None:
        workers = config.limits.max_concurrent_transfers * 2 + 4
        self.partner_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xbgw-partner"),
            options=self._options(config),
            maximum_concurrent_rpcs=config.limits.max_concurrent_transfers * 2,
        )
        partner_pb2_grpc.add_PartnerGatewayServicer_to_server(
            PartnerServicer(self._config, self.receiver), self.partner_server
        )
        address = str(config.listen.partner)
        try:
            port = self.partner_server.add_secure_port(address, server_credentials(config, key_pem))
        except RuntimeError:
            port = 0
        if port == 0:
            raise ConfigError(f"cannot listen on {address}: address in use or not local")
        self.partner_port = port
        self.partner_address = f"{config.listen.partner.host}:{port}"
        self.partner_server.start()
        (config.state_dir / "partner.addr").write_text(self.partner_address + "\n")

    def _start_local_server(self, config: GatewayConfig) -> None:
        socket_path = config.listen.local_socket
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        if socket_path.exists() or socket_path.is_symlink():
            socket_path.unlink()
        self.local_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="xbgw-local"),
            options=self._options(config),
        )
        local_pb2_grpc.add_LocalGatewayServicer_to_server(
            LocalServicer(
                self._config, self.sender, self.ledger, self.spool, self.hsm, self.accepting
            ),
            self.local_server,
        )
        if self.local_server.add_insecure_port(f"unix:{socket_path}") == 0:
            raise ConfigError(f"cannot listen on the local socket {socket_path}")
        os.chmod(socket_path, 0o660)
        self.local_server.start()

    def accepting(self) -> bool:
        return self._accepting

    # -- running ---------------------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_reload_signal)
        self.start()
        interval = watchdog_interval()
        while not self._stop.is_set():
            self._wake.wait(interval if interval else 1.0)
            self._wake.clear()
            if self._reload.is_set() and not self._stop.is_set():
                self._reload.clear()
                self.reload()
            if interval:
                notify("WATCHDOG=1")
        self.shutdown()
        return 0

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop.set()
        self._wake.set()

    def _on_reload_signal(self, signum: int, frame: FrameType | None) -> None:
        self._reload.set()
        self._wake.set()

    def reload(self) -> None:
        notify("RELOADING=1", monotonic_usec(), "STATUS=reloading the configuration")
        try:
            config = load_config(self.config_path)
            key_pem = self._tls_key(config)
        except XbgwError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            notify("READY=1", f"STATUS=reload refused: {str(exc).splitlines()[0]}")
            return
        self.config = config
        self.receiver.reconfigure(config)
        self.sender.reconfigure(config)
        self.channels.reconfigure(config, key_pem)
        log.info("configuration reloaded")
        notify("READY=1", f"STATUS=serving as {config.id} on {self.partner_address}")

    def shutdown(self) -> None:
        grace = self.config.limits.drain_grace_seconds
        notify("STOPPING=1", f"STATUS=draining for up to {grace}s")
        log.info("stopping: draining transfers for up to %ss", grace)
        self._accepting = False
        started = time.monotonic()
        local_done = self.local_server.stop(grace)
        partner_done = self.partner_server.stop(max(0.0, grace - (time.monotonic() - started)))
        local_done.wait()
        partner_done.wait()
        self.channels.close()
        self.ledger.close()
        self.hsm.close()
        log.info("stopped")


def serve(config_path: Path) -> int:
    """Entry point of ``xbgw serve``: exits non-zero with one line when start-up fails."""
    daemon = Daemon(config_path)
    return daemon.run()
