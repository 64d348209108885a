"""Lifecycle of ``xbgw serve``: start in order, report readiness, reload, drain, stop.

Start order matters: configuration, HSM (PIN, token, key versions), ledger and spool, then
both listeners. Only when all of them work does the daemon say ``READY=1``; any failure
before that is one clear line on stderr and a non-zero exit, so ``systemctl status`` shows it.

* **Watchdog**: a thread pings ``WATCHDOG=1`` at half of ``WATCHDOG_USEC`` only after a real
  round trip -- a ``grpc.health.v1`` check through the local socket (the server's own thread
  pool). A wedged server stops the pings and systemd restarts us. The HSM is pinged on the
  same beat; an HSM that does not answer turns health NOT_SERVING, and is logged in to again
  when it returns; only after ``hsm.restart_after_seconds`` unusable is the watchdog starved.
* **SIGHUP**: ``RELOADING=1`` + ``MONOTONIC_USEC``; config, partners, issuers and TLS files are
  re-read; new handshakes get the new certificate, streams in flight keep theirs. A config
  with errors is refused and reported; the running one stays. Then ``READY=1``.
* **SIGTERM**: ``STOPPING=1``; health turns NOT_SERVING and offers are refused; transfers in
  flight get ``limits.drain_grace_seconds`` to finish, then are cut -- each stream first makes
  its resume point durable -- and the process exits 0.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import select
import signal
import socket
import threading
import time
import traceback
from concurrent import futures
from pathlib import Path
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway import logs
from gateway._proto.xbgw.v1 import local_pb2, local_pb2_grpc, partner_pb2
from gateway.audit.checkpointer import Checkpointer
from gateway.audit.records import AuditRecord
from gateway.audit.witness import HEALTH_SERVICE as WITNESS_HEALTH
from gateway.audit.witness import Witness
from gateway.compliance.border import Border
from gateway.config import Address, GatewayConfig, load_config
from gateway.errors import ConfigError, ListenError, XbgwError
from gateway.fdpass import FileTickets, HandoverListener, fd_socket_path
from gateway.hsm import Hsm
from gateway.keyadmin import gateway_key_administration
from gateway.keyring import KeyFollower, KeyRing
from gateway.keys import Purpose
from gateway.ledger import open_ledger
from gateway.local import (
    MAX_WAITING_SENDS,
    DaemonView,
    LocalServicer,
    local_workers,
    send_capacity,
)
from gateway.metrics import Metrics
from gateway.notify import monotonic_usec, notify, watchdog_interval
from gateway.partner import PartnerHealth, PartnerServicer, add_partner_servicer, upload_slots
from gateway.partner_keys import PartnerKeys
from gateway.partner_link import GrpcPartnerLink
from gateway.reachability import Reachability
from gateway.receiver import Receiver
from gateway.retention import Lifecycle, Sweeper
from gateway.send_queue import SendQueue
from gateway.sender import Sender
from gateway.spool import Spool
from gateway.statelock import StateLock
from gateway.tls import ReloadableServerCredentials
from gateway.tlskey import load_tls_private_key

log = logging.getLogger("xbgw.daemon")
PARTNER_RECEIVE_BACKSTOP = 2  # x max_message_bytes; see _start_partner_server
PARTNER_SHORT_CALL_THREADS = 4  # + max_concurrent_transfers: threads uploads cannot take
PARTNER_RPC_BACKSTOP = 4  # x the partner threads: RPCs in flight or queued before gRPC refuses
MIN_PARTNER_PING_MS = 500  # half the shortest keepalive_seconds a partner may configure

PARTNER_SERVICE = partner_pb2.DESCRIPTOR.services_by_name["PartnerGateway"].full_name
LOCAL_SERVICE = local_pb2.DESCRIPTOR.services_by_name["LocalGateway"].full_name
HSM_CHECK_SECONDS = 5.0
HEALTH_THREADS = 2  # listen.health: a balancer's Check calls, answered from memory
HEALTH_RPC_BACKSTOP = 32  # ... and at most this many in flight or queued
LEDGER_CHECK_SECONDS = 1.0  # a shared ledger's probe (bounded: store.postgres.PROBE_TIMEOUT)
# The local socket carries the CLI's 1 MiB data messages (gateway.cli.daemon.READ_CHUNK) and
# Fetch's 1 MiB chunks whatever the partner segment size: its limit must not follow limits.*.
LOCAL_MAX_MESSAGE_BYTES = 16 << 20
IDLE_WAIT_SECONDS = 10.0
M_ARENA_MAX = -8  # glibc mallopt parameter
RELOAD_READ_SECONDS = 30.0  # a reload that cannot read its files in this time is refused
RELOAD_POLL_SECONDS = 0.1  # how often a reload in progress looks for a stop request


class _ReloadAbandonedError(Exception):
    """A stop was requested while a reload was reading its files: the stop wins."""


class Daemon:
    """One running gateway."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.config = load_config(config_path)
        logs.setup(self.config.log.level, self.config.log.format)
        self.metrics = Metrics()
        self._accepting = False
        self._stop = threading.Event()  # tells the watchdog thread to end
        self._stop_requested = False  # set by signal handlers only
        self._reload_requested = False
        self._reload_reader: threading.Thread | None = None  # see _read_for_reload
        self._healthy = True  # serving: the HSM answers and the ledger does (_decide_health)
        self._hsm_ok = True
        self._ledger_problem: str | None = None  # why the shared ledger does not answer
        self._health_lock = threading.Lock()
        self.partner_address = ""
        self.metrics_port: int | None = None
        self.health_server: grpc.Server | None = None  # listen.health (_start_health_server)
        self.health_address = ""

    def _config(self) -> GatewayConfig:
        return self.config

    def accepting(self) -> bool:
        return self._accepting

    # -- start -----------------------------------------------------------------------------

    def start(self) -> None:
        config = self.config
        notify("STATUS=opening the HSM")
        if config.hsm.softhsm_conf is not None:
            os.environ["SOFTHSM2_CONF"] = str(config.hsm.softhsm_conf)
        self.hsm = Hsm.open(str(config.hsm.module), config.hsm.token, config.hsm.pin.read())
        self.hsm.observer = self.metrics.observe_hsm
        notify("STATUS=opening the ledger and spool")
        config.state_dir.mkdir(parents=True, exist_ok=True)
        # The daemon owns the state directory while it runs: an offline `xbgw keys` verb
        # refuses rather than change key states behind the daemon's back.
        self.state_lock = StateLock(config.state_dir, f"xbgw serve ({config.id})").acquire()
        # The SQLite file in the state directory, or the PostgreSQL database the nodes of
        # this gateway share (state.database): there this node announces itself and the
        # schema it runs, so that `xbgw db migrate` waits for older nodes to stop.
        self.ledger = open_ledger(config)
        self.ledger.announce_node(f"{socket.gethostname()}:{os.getpid()}")
        self.spool = Spool(config.state_dir / "spool")
        self.ring = KeyRing(
            config.id, self.ledger, self.hsm, config.keys, pinned=config.hsm.key_versions
        )
        self.hsm.check_versions(self.ring.current().as_dict())
        self.ring.check_attributes(self.hsm.list_keys())  # refuses widenable keys in service
        key_pem = self._tls_key(config)
        self.link = GrpcPartnerLink(config, key_pem)
        self.reachability = Reachability(config, key_pem, self.metrics)
        self.metrics.key_versions.source = lambda: {
            purpose.value: version for purpose, version in self.ring.current().as_dict().items()
        }
        self._certificates(config)
        # One view of the partners' keys for both sides: what the sender learns from a key
        # set verifies the manifests the receiver gets, and the reverse.
        self.partner_keys = PartnerKeys(config, self.ledger, self.link.key_set)
        # One border for both sides: the same rules, counters and reservations.
        self.border = Border(config.compliance, self.ledger, observe=self.metrics.decided)
        self.receiver = Receiver(
            config,
            self.hsm,
            self.ring,
            self.ledger,
            self.spool,
            partner_keys=self.partner_keys,
            border=self.border,
        )
        self.receiver.on_commit = self._committed_in
        # The audit log's checkpoints: about a second after it grows, at once for a Finish.
        self.checkpointer = Checkpointer(
            config.id, self.ledger, self.hsm, lambda: self.ring.signing
        )
        self.receiver.checkpointer = self.checkpointer
        self.checkpointer.start()
        # Witnessing of the partners' logs, and serving ours to them; its thread starts once
        # the listeners are up. It reads self.config at each round: a reload needs nothing.
        self.witness = Witness(
            self._config,
            self.ledger,
            self.hsm,
            lambda: self.ring.signing,
            self.partner_keys,
            self.link,
            self.checkpointer,
            on_alarm=self.metrics.witness_alarm,
            on_change=self._witness_health,
        )
        self.sender = Sender(
            config,
            self.hsm,
            self.ring,
            self.ledger,
            self.link,
            partner_keys=self.partner_keys,
            border=self.border,
        )
        self.key_admin = gateway_key_administration(
            config=lambda: self.config,
            ring=self.ring,
            keys=self.hsm,
            ledger=self.ledger,
            spool=self.spool,
            hold_inbound=self.receiver.hold,
            hold_outbound=self.sender.hold,
        )
        # The data lifecycle: cancel and inbox ack|delete for the local API, and the sweep
        # (expiry, retention) once now and every retention.sweep_every.
        self.lifecycle = Lifecycle(
            self._config, self.ledger, self.receiver.ends(), self.sender.hold, self.link
        )
        self.sweeper = Sweeper(self.lifecycle, lambda: self.config.retention.sweep_every)
        self.sweeper.start()
        self.health = health.HealthServicer()
        notify("STATUS=starting listeners")
        self._start_partner_server(config, key_pem)
        self._start_local_server(config)
        self._start_health_server(config)
        if config.listen.metrics is not None:
            self.metrics_port = self.metrics.serve(
                config.listen.metrics.host, config.listen.metrics.port
            )
        self._accepting = True
        self._set_serving(True)
        self.witness.start()
        self.reachability.start()
        # Key states other nodes change in the shared ledger (gateway.keyring, "Several nodes");
        # a SQLite ledger is this node's alone: nothing to follow.
        self.key_follower: KeyFollower | None = None
        if self.ledger.store.dialect.shared:
            self.key_follower = KeyFollower(self.ring)
            self.key_follower.start()
        log.info(
            "xbgw %s ready: partner listener on %s, local socket %s, metrics %s",
            config.id,
            self.partner_address,
            config.listen.local_socket,
            f"{config.listen.metrics.host}:{self.metrics_port}" if config.listen.metrics else "off",
        )
        notify("READY=1", f"STATUS=serving as {config.id} on {self.partner_address}")

    def _committed_in(self, partner: str, plaintext_bytes: int) -> None:
        self.metrics.committed_in(partner, plaintext_bytes)
        self.reachability.contact(partner, answered=False)

    def _certificates(self, config: GatewayConfig) -> None:
        """Expiry of our TLS certificate and the partners' CAs (start and every reload)."""
        self.metrics.certificates(config.tls.certificate, {p.id: p.ca_pem for p in config.partners})

    def _listeners(self) -> list[tuple[str, str]]:
        found = [
            ("partner", self.partner_address),
            ("local", str(self.config.listen.local_socket)),
        ]
        if self.config.listen.metrics is not None and self.metrics_port is not None:
            found.append(("metrics", f"{self.config.listen.metrics.host}:{self.metrics_port}"))
        if self.health_server is not None:
            found.append(("health", self.health_address))
        return found

    def _view(self) -> DaemonView:
        """What ``xbgw status`` shows beyond the ledger (gateway.local.DaemonView)."""
        return DaemonView(
            ready=lambda: self._accepting and self._healthy,
            listeners=self._listeners,
            partners=self.reachability.report,
            keys=self.ring.versions,
            delivered=lambda partner: self.reachability.contact(partner, answered=True),
        )

    def _tls_key(self, config: GatewayConfig) -> bytes:
        """The TLS private key as PEM in memory (grpcio cannot use an HSM key), read at start
        and on every reload: a wrapped file is unwrapped with a storage version the key ring
        has in service; a plaintext PEM still works, with a WARNING each time."""
        return load_tls_private_key(
            config.tls.private_key,
            config.tls.certificate,
            config.id,
            self.hsm,
            passphrase=config.tls.private_key_passphrase,
            opens=lambda version: self.ring.opens(Purpose.STORAGE, version),
        )

    @staticmethod
    def _options(config: GatewayConfig, receive_limit: int | None = None) -> list[tuple[str, int]]:
        limit = config.limits.max_message_bytes
        return [
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", receive_limit or limit),
            ("grpc.so_reuseport", 0),
        ]

    def _start_partner_server(self, config: GatewayConfig, key_pem: bytes) -> None:
        # Uploads are capped by PartnerServicer (upload_slots), below the thread count: the
        # short calls always have threads of their own, so a Finish -- which comes after the
        # data crossed -- never waits behind uploads or is refused for load. gRPC's own RPC
        # limit is only a backstop against a flood, far above what senders that queue their
        # sends (max_concurrent_transfers each) can have in flight.
        cap = config.limits.max_concurrent_transfers
        workers = upload_slots(cap) + cap + PARTNER_SHORT_CALL_THREADS
        keepalive_ms = config.limits.keepalive_seconds * 1000
        self.partner_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xbgw-partner"),
            # gRPC's own limit is only a backstop: a message it drops ends the request stream
            # as if the peer had half-closed, so the servicer could neither log the refusal
            # nor tell it from a clean end. PartnerServicer enforces max_message_bytes itself.
            options=[
                *self._options(
                    config,
                    receive_limit=PARTNER_RECEIVE_BACKSTOP * config.limits.max_message_bytes,
                ),
                # Find peers that vanished without closing -- a black hole that drops packets
                # and sends no RST -- in about 2 x keepalive_seconds: a ping after that much
                # silence, the connection dropped if it is not answered within as long again.
                # The stream is then cut and saves its resume point, and the sender's resume
                # does not find its transfer busy on a dead stream.
                ("grpc.keepalive_time_ms", keepalive_ms),
                ("grpc.keepalive_timeout_ms", keepalive_ms),
                # grpcio 1.85 waits for a ping's ack this long (default a minute), whatever
                # keepalive_timeout_ms says: measured, a black hole went unnoticed without it.
                ("grpc.http2.ping_timeout_ms", keepalive_ms),
                # An upload's server half sends no data until it ends: without this, gRPC
                # stops our keepalive pings after two and the black hole goes unnoticed.
                ("grpc.http2.max_pings_without_data", 0),
                # Partners ping us on their own keepalive_seconds (1 s at the least, and
                # between calls too): accept that, with room for timer jitter, rather than
                # drop them with GOAWAY "too_many_pings".
                # (The receiving side's name is this one; "min_recv_..." is not a gRPC
                # argument and was silently ignored.)
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", MIN_PARTNER_PING_MS),
            ],
            maximum_concurrent_rpcs=workers * PARTNER_RPC_BACKSTOP,
        )
        self.partner_servicer = PartnerServicer(
            self._config, self.receiver, self.metrics, self.accepting, witness=self.witness
        )
        add_partner_servicer(self.partner_servicer, self.partner_server)
        # Configured partners only: a certificate from a partner's CA naming no partner is not
        # told anything (``PartnerHealth``).
        health_pb2_grpc.add_HealthServicer_to_server(
            PartnerHealth(self._config, self.health), self.partner_server
        )
        self.server_credentials = ReloadableServerCredentials(config, key_pem)
        address = str(config.listen.partner)
        _check_bindable(config.listen.partner)
        try:
            port = self.partner_server.add_secure_port(address, self.server_credentials.credentials)
        except RuntimeError:
            port = 0
        if port == 0:
            raise ListenError(f"cannot listen on {address}: address in use or not local")
        self.partner_address = f"{config.listen.partner.host}:{port}"
        self.partner_server.start()
        (config.state_dir / "partner.addr").write_text(self.partner_address + "\n")

    def _start_local_server(self, config: GatewayConfig) -> None:
        socket_path = config.listen.local_socket
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        if socket_path.exists() or socket_path.is_symlink():
            socket_path.unlink()
        # A waiting send holds a server thread (grpcio's sync server has no other way to keep
        # a call open), so the pool has one for every send the queue may admit, on top of the
        # fetches' and the quick calls': waiting sends can never take health's threads. The
        # pool starts its threads only as calls come, and the queue's capacity is fixed here:
        # a reload that raises the limits is held to it (gateway.send_queue).
        limits = config.limits
        if limits.max_queued_sends > MAX_WAITING_SENDS:
            log.warning(
                "limits.max_queued_sends %d is more than the local server holds: at most %d "
                "local sends wait, more are refused",
                limits.max_queued_sends,
                MAX_WAITING_SENDS,
            )
        send_queue = SendQueue(
            limits.max_concurrent_transfers, limits.max_queued_sends, send_capacity(limits)
        )
        self.file_tickets = FileTickets()
        self.local_server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=local_workers(limits), thread_name_prefix="xbgw-local"
            ),
            options=[
                ("grpc.max_send_message_length", LOCAL_MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", LOCAL_MAX_MESSAGE_BYTES),
                # The data of a send that waits for its slot stays in its client: without
                # BDP probing the socket's HTTP/2 windows stay at their 64 KiB start instead
                # of growing to megabytes per stream that gRPC reads ahead and holds (62
                # waiting 8 MiB sends: 375 MiB RSS with probing, 130 MiB without; a single
                # local send is no slower, 1 MiB messages open the window they need).
                ("grpc.http2.bdp_probe", 0),
            ],
        )
        local_pb2_grpc.add_LocalGatewayServicer_to_server(
            LocalServicer(
                self._config,
                self.sender,
                self.ledger,
                self.spool,
                self.hsm,
                self.accepting,
                self.metrics,
                self.key_admin,
                witness=self.witness,
                send_queue=send_queue,
                lifecycle=self.lifecycle,
                file_tickets=self.file_tickets,
                view=self._view(),
            ),
            self.local_server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.local_server)
        reflection.enable_server_reflection(
            (LOCAL_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self.local_server
        )
        if self.local_server.add_insecure_port(f"unix:{socket_path}") == 0:
            raise ConfigError(f"cannot listen on the local socket {socket_path}")
        os.chmod(socket_path, 0o660)
        self.local_server.start()
        # `xbgw send FILE` hands the open file over here (gateway.fdpass): same owner, group
        # and mode as the local socket.
        self.handover = HandoverListener(
            fd_socket_path(socket_path), self.file_tickets, socket_path
        )
        self.handover.start()

    def _start_health_server(self, config: GatewayConfig) -> None:
        """``listen.health``: the daemon's one health status for a load balancer's checks.

        The partner port's health answers configured partners only, so a balancer cannot
        check it; this port serves ``grpc.health.v1.Health`` alone, over plaintext HTTP/2:
        it tells nothing but SERVING or NOT_SERVING. Check only (``BalancerHealth``): a
        Watch would hold one of its few threads for as long as its caller liked.
        """
        address = config.listen.health
        if address is None:
            return
        _check_bindable(address)
        self.health_server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=HEALTH_THREADS, thread_name_prefix="xbgw-health"
            ),
            options=[("grpc.so_reuseport", 0)],
            maximum_concurrent_rpcs=HEALTH_RPC_BACKSTOP,
        )
        health_pb2_grpc.add_HealthServicer_to_server(
            BalancerHealth(self.health), self.health_server
        )
        try:
            port = self.health_server.add_insecure_port(str(address))
        except RuntimeError:
            port = 0
        if port == 0:
            raise ListenError(
                f"cannot listen on {address} (listen.health): address in use or not local"
            )
        self.health_address = str(Address(address.host, port))
        self.health_server.start()

    def _stop_health_server(self) -> None:
        """Last of the listeners: a balancer sees NOT_SERVING for the whole drain."""
        if self.health_server is not None:
            self.health_server.stop(None).wait()

    def _set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", PARTNER_SERVICE, LOCAL_SERVICE):
            self.health.set(service, status)
        self.metrics.ready.set(1 if serving else 0)

    def _witness_health(self, alarmed: frozenset[str]) -> None:
        """The health detail of witnessing: NOT_SERVING while a partner is under alarm."""
        serving = health_pb2.HealthCheckResponse.SERVING
        self.health.set(
            WITNESS_HEALTH, health_pb2.HealthCheckResponse.NOT_SERVING if alarmed else serving
        )

    # -- running ---------------------------------------------------------------------------

    def run(self) -> int:
        # Signal handlers only set flags: taking a lock in a handler (Event.set) can deadlock
        # with the main thread that holds it. The wakeup fd makes the select below return.
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_reload_signal)
        self.start()
        threading.Thread(target=self._watch, name="xbgw-watchdog", daemon=True).start()
        while not self._stop_requested:
            select.select([wake_r], [], [], 1.0)
            with contextlib.suppress(BlockingIOError):
                while wake_r.recv(512):
                    pass
            if self._reload_requested and not self._stop_requested:
                self._reload_requested = False
                self.reload()
        self._stop.set()  # from the main loop, never from a handler
        self.shutdown()
        signal.set_wakeup_fd(-1)
        wake_r.close()
        wake_w.close()
        return 0

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop_requested = True

    def _on_reload_signal(self, signum: int, frame: FrameType | None) -> None:
        self._reload_requested = True

    def _watch(self) -> None:
        """HSM health and the systemd watchdog, proven by real round trips.

        An HSM that does not answer turns health NOT_SERVING at once (the ping also logs in
        again, so a token that comes back is SERVING again on the next beat). Only when it
        has been unusable longer than ``hsm.restart_after_seconds`` is the watchdog starved,
        so that systemd restarts the daemon: a fresh process is the last resort for a module
        wedged beyond re-initialising, and waiting first keeps restarts off the start limit.

        A shared ledger (PostgreSQL) is probed by a thread of its own (``_watch_ledger``:
        a probe of a dead route takes seconds, which must not delay ``WATCHDOG=1``); health
        is one decision over both (``_decide_health``). A ledger away never starves the
        watchdog: a restart cannot bring a remote database back -- the new process would
        fail to start until it answers, and systemd's start limit would then give up on the
        unit for good -- whereas this process finds it back by itself.
        """
        if self.ledger.store.dialect.shared:
            threading.Thread(
                target=self._watch_ledger, name="xbgw-ledger-probe", daemon=True
            ).start()
        interval = watchdog_interval()
        period = min(interval, HSM_CHECK_SECONDS) if interval else HSM_CHECK_SECONDS
        channel = grpc.insecure_channel(f"unix:{self.config.listen.local_socket}")
        check = health_pb2_grpc.HealthStub(channel).Check
        unusable_since: float | None = None  # monotonic time of the first failed ping
        starving = False
        while not self._stop.wait(period):
            hsm_ok = self.hsm.ping()
            if hsm_ok != self._hsm_ok:
                self._hsm_ok = hsm_ok
                if hsm_ok:
                    log.info("HSM answers again; serving")
                else:
                    log.error(
                        "HSM does not answer; health is NOT_SERVING: %s",
                        self.hsm.problem() or "the signing key is not on the token",
                    )
                self._decide_health()
            if hsm_ok:
                unusable_since = None
            elif unusable_since is None:
                unusable_since = time.monotonic()
            limit = self.config.hsm.restart_after_seconds
            overdue = unusable_since is not None and time.monotonic() - unusable_since > limit
            if overdue != starving and interval:
                starving = overdue
                if starving:
                    log.error(
                        "the HSM has been unusable for more than %ss "
                        "(hsm.restart_after_seconds): no longer sending WATCHDOG=1, so that "
                        "systemd restarts xbgw",
                        limit,
                    )
                else:
                    log.info("HSM answers again; sending WATCHDOG=1 again")
            if not interval or starving:
                continue
            try:
                check(health_pb2.HealthCheckRequest(), timeout=max(1.0, period))
            except grpc.RpcError:
                log.error("local server did not answer its health check; withholding WATCHDOG=1")
                continue
            notify("WATCHDOG=1")
        channel.close()

    def _watch_ledger(self) -> None:
        """The shared ledger, probed every ``LEDGER_CHECK_SECONDS`` (``Database.reachable``,
        bounded): while it does not answer, health is NOT_SERVING -- a balancer takes the
        node out -- and the database refuses every call at once with the reason (new offers
        and sends are refused UNAVAILABLE rather than wait out the pool's timeout). One ERROR
        when it goes, one INFO when it is back; nothing to restart."""
        store = self.ledger.store
        while not self._stop.wait(LEDGER_CHECK_SECONDS):
            problem = store.reachable()
            if (problem is None) != (self._ledger_problem is None):
                if problem is None:
                    log.info("the shared ledger at %s answers again; serving", store.where)
                else:
                    log.error(
                        "the shared ledger at %s is unreachable (%s); health is NOT_SERVING "
                        "and the node refuses new transfers until it answers again",
                        store.where,
                        problem,
                    )
            self._ledger_problem = problem
            self._decide_health()

    def _decide_health(self) -> None:
        """Serving = the HSM answers and the shared ledger does (each watcher calls this)."""
        with self._health_lock:
            healthy = self._hsm_ok and self._ledger_problem is None
            if healthy != self._healthy:
                self._healthy = healthy
                if self._accepting:
                    self._set_serving(healthy)

    def reload(self) -> None:
        """Re-read everything in a worker thread while this (main) thread keeps watching for
        SIGTERM: a stop abandons the reload. Any failure -- a ``ConfigError``, or anything
        unforeseen -- refuses it and the running configuration stays."""
        notify("RELOADING=1", monotonic_usec(), "STATUS=reloading the configuration")
        log.info("reloading %s", self.config_path)
        try:
            config, key_pem = self._read_for_reload()
            self.server_credentials.update(config, key_pem)
        except _ReloadAbandonedError:
            log.info("reload abandoned: stopping")
            return
        except XbgwError as exc:
            self._refuse_reload(str(exc))
            return
        except Exception as exc:  # a reload must never take the daemon down
            # The type and where, not the message: a foreign message may quote a secret.
            where = traceback.extract_tb(exc.__traceback__)[-1]
            self._refuse_reload(
                f"{self.config_path}: unexpected {type(exc).__name__} while reading it "
                f"({Path(where.filename).name}:{where.lineno}); please report this"
            )
            return
        self.config = config
        logging.getLogger().setLevel(config.log.level.upper())
        self.receiver.reconfigure(config)
        self.sender.reconfigure(config)
        self.ring.policy = config.keys
        self.link.reconfigure(config, key_pem)
        self.reachability.reconfigure(config, key_pem)
        try:
            self._certificates(config)
        except (OSError, ValueError) as exc:  # checked by the reload's read; never fatal here
            log.error("certificate expiry metrics not updated: %s", exc)
        # The digest of the bytes that were loaded, not of a file that may have changed since.
        record = AuditRecord("config.reloaded", int(time.time()), {"config_sha256": config.sha256})
        try:
            self.ledger.append_audit(record.encode(config.id))
        except XbgwError as exc:  # the reload took effect; a failed record must not undo it
            log.error("the audit record of this reload was not written: %s", exc)
        log.info("configuration reloaded")
        notify("READY=1", f"STATUS=serving as {config.id} on {self.partner_address}")

    def _read_for_reload(self) -> tuple[GatewayConfig, bytes]:
        """The new configuration and TLS key, read by a worker thread within
        ``RELOAD_READ_SECONDS``; ``_ReloadAbandonedError`` as soon as a stop is requested.

        Every file is read bounded and non-blocking (:mod:`gateway.files`), but a file on a
        hung network mount, or an HSM that does not answer, can still block a read: the
        signal path must not wait for it. A reader that never returns is left behind (a
        daemon thread) and the next reload is refused until it ends.
        """
        if self._reload_reader is not None and self._reload_reader.is_alive():
            raise ConfigError(
                f"{self.config_path}: the previous reload is still reading its files "
                "(a hung mount or HSM?); try again later"
            )
        outcome: futures.Future[tuple[GatewayConfig, bytes]] = futures.Future()

        def read() -> None:
            try:
                outcome.set_result(self._load_checked())
            except BaseException as exc:  # handed to the main thread, whatever it is
                outcome.set_exception(exc)

        self._reload_reader = threading.Thread(target=read, name="xbgw-reload", daemon=True)
        self._reload_reader.start()
        deadline = time.monotonic() + RELOAD_READ_SECONDS
        while not outcome.done():
            if self._stop_requested:
                raise _ReloadAbandonedError
            if time.monotonic() >= deadline:
                raise ConfigError(
                    f"{self.config_path}: reading the configuration and its files took longer "
                    f"than {RELOAD_READ_SECONDS:g}s (a hung mount or HSM?)"
                )
            futures.wait([outcome], timeout=RELOAD_POLL_SECONDS)
        return outcome.result()

    def _load_checked(self) -> tuple[GatewayConfig, bytes]:
        config = load_config(self.config_path)
        key_pem = self._tls_key(config)
        fixed = _fixed_until_restart(self.config, config)
        if fixed:
            raise ConfigError(
                f"{self.config_path}: {', '.join(fixed)} cannot change on reload; "
                "restart the service (systemctl restart xbgw)"
            )
        return config, key_pem

    def _refuse_reload(self, reason: str) -> None:
        first = reason.splitlines()[0]
        log.error("reload refused, keeping the running configuration: %s", reason)
        notify("READY=1", f"STATUS=reload refused: {first}")

    def shutdown(self) -> None:
        grace = self.config.limits.drain_grace_seconds
        notify("STOPPING=1", f"STATUS=draining transfers for up to {grace}s")
        log.info("stopping: draining transfers for up to %ss", grace)
        self._accepting = False
        self._set_serving(False)
        self.witness.stop()  # no new round; the one running ends when the link closes
        self.reachability.stop(IDLE_WAIT_SECONDS)
        started = time.monotonic()
        self.handover.stop()  # no new handovers; the files of unclaimed tickets are closed
        local_done = self.local_server.stop(grace)
        partner_done = self.partner_server.stop(grace)
        local_done.wait()
        partner_done.wait()
        self._stop_health_server()
        # Cut streams save their resume point in their handler threads; let them finish.
        if not self.partner_servicer.wait_idle(IDLE_WAIT_SECONDS):
            log.warning("some partner handlers did not finish; their last durable point stands")
        self.link.close()
        self.witness.join(IDLE_WAIT_SECONDS)
        self.sweeper.stop(IDLE_WAIT_SECONDS)
        if self.key_follower is not None:
            self.key_follower.stop(IDLE_WAIT_SECONDS)
        self.checkpointer.stop()  # the last leaves get their checkpoint
        self.ledger.close()
        self.hsm.close()
        self.state_lock.release()
        log.info("stopped after %.1fs", time.monotonic() - started)


class BalancerHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """Health on ``listen.health``: Check answers what the daemon's one HealthServicer says;
    Watch is refused (UNIMPLEMENTED), a balancer polls."""

    def __init__(self, servicer: health.HealthServicer) -> None:
        self._health = servicer

    def Check(  # noqa: N802 - gRPC method name
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        return self._health.Check(request, context)

    def Watch(  # noqa: N802
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "the health listener answers Check only; poll it (Watch is served on the "
            "partner and local ports)",
        )


def _fixed_until_restart(old: GatewayConfig, new: GatewayConfig) -> list[str]:
    """Settings a reload cannot apply: say so rather than pretend (sockets, HSM, limits)."""
    fields = {
        "gateway.id": (old.id, new.id),
        "state_dir": (old.state_dir, new.state_dir),
        "state": (old.state, new.state),  # the ledger's database is opened at start
        "listen": (old.listen, new.listen),
        "hsm": (old.hsm, new.hsm),
        "limits.max_message_bytes": (
            old.limits.max_message_bytes,
            new.limits.max_message_bytes,
        ),
        "limits.max_concurrent_transfers": (
            old.limits.max_concurrent_transfers,
            new.limits.max_concurrent_transfers,
        ),
        # The partner server's keepalive is set when it starts (the channels' follow reloads).
        "limits.keepalive_seconds": (old.limits.keepalive_seconds, new.limits.keepalive_seconds),
        "log.format": (old.log.format, new.log.format),
    }
    return [name for name, (before, after) in fields.items() if before != after]


def _check_bindable(address: Address) -> None:
    """Fail with one line before gRPC core logs its own multi-field error on stderr."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
        try:
            probe.bind((address.host, address.port))
        except OSError as exc:
            # Not EX_CONFIG: a port still in use or an address not up yet may clear on retry.
            raise ListenError(f"cannot listen on {address}: {exc.strerror or exc}") from None


def _flat_memory() -> None:
    """Keep RSS flat in transfer size by capping glibc's malloc arenas at two.

    glibc gives each thread that allocates its own arena (up to 8 per core); 1 MiB segment
    buffers passed between the gRPC, encrypt and intake threads then fragment many arenas,
    and peak RSS grew by a fifth from a 1 GiB to a 2 GiB transfer (bench). Two arenas keep
    it flat at no cost in throughput; forcing mmap for such buffers also kept it flat but
    cost half the throughput in page faults.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_ARENA_MAX, 2)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def serve(config_path: Path) -> int:
    """Entry point of ``xbgw serve``: exits non-zero with one line when start-up fails."""
    _flat_memory()
    daemon = Daemon(config_path)
    return daemon.run()
