"""Partner reachability: is each partner answering us now, and when did it last?

What "up" means: the partner answered this gateway's last look at it. Two kinds of look:

* an active probe -- a ``grpc.health.v1`` Check of the partner's ``PartnerGateway`` service
  over a mutual-TLS channel built exactly as the sender's (same CA, client certificate and
  options, so gRPC shares the sender's connection rather than open another) -- once every
  ``PROBE_SECONDS`` per partner, and at once when the channel's connection drops. That is one
  small unary call per partner per period (about 0.3 ms of CPU on each side): cheap and
  bounded, and it also says whether the partner still accepts our certificate (a partner's
  health answers configured partners only). A partner that answers NOT_SERVING (draining,
  or its HSM is away) is down, but it was in contact.
* a delivered send: the partner just answered every call of a transfer (up, contact now).

A committed inbound transfer is contact (the partner reached us) but says nothing of our
path to it: it moves the last contact only. Before its first probe a partner is "unknown"
(no ``xbgw_partner_up`` series yet).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway._proto.xbgw.v1 import partner_pb2
from gateway.config import GatewayConfig, PartnerConfig
from gateway.metrics import Metrics
from gateway.partner_link import channel_options
from gateway.tls import channel_credentials

log = logging.getLogger("xbgw.reachability")
PROBE_SECONDS = 15.0
PROBE_TIMEOUT_SECONDS = 5.0
PARTNER_SERVICE = partner_pb2.DESCRIPTOR.services_by_name["PartnerGateway"].full_name


@dataclass(frozen=True)
class Reach:
    """What this gateway knows of one partner's reachability."""

    partner: str
    endpoint: str
    up: bool | None  # None: not looked at yet
    last_contact: float | None  # seconds since the epoch; None: never
    checked_at: float | None  # the last probe
    detail: str  # why it is down ("" when up)


@dataclass
class _State:
    up: bool | None = None
    last_contact: float | None = None
    checked_at: float | None = None
    detail: str = ""


class _Probe:
    """One partner's probe channel, and whether its connection was up (to see it drop)."""

    def __init__(
        self, config: GatewayConfig, partner: PartnerConfig, key_pem: bytes, wake: threading.Event
    ) -> None:
        self.channel = grpc.secure_channel(
            str(partner.endpoint),
            channel_credentials(config, partner, key_pem),
            options=channel_options(config, partner),
        )
        self.check = health_pb2_grpc.HealthStub(self.channel).Check
        self._ready = False
        self._wake = wake
        self.channel.subscribe(self._changed, try_to_connect=False)

    def _changed(self, state: grpc.ChannelConnectivity) -> None:
        """On gRPC's thread: only note it, and wake the prober when the connection dropped."""
        ready = state is grpc.ChannelConnectivity.READY
        if self._ready and not ready:
            self._wake.set()
        self._ready = ready

    def close(self) -> None:
        self.channel.unsubscribe(self._changed)
        self.channel.close()


class Reachability:
    """Probes every configured partner in one thread; :meth:`report` for ``xbgw status``."""

    def __init__(
        self,
        config: GatewayConfig,
        key_pem: bytes,
        metrics: Metrics,
        period: float = PROBE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._metrics = metrics
        self._period = period
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._states: dict[str, _State] = {}
        self._probes: dict[str, _Probe] = {}
        self._thread: threading.Thread | None = None
        self._config = config
        self._key_pem = key_pem
        self.reconfigure(config, key_pem)

    def reconfigure(self, config: GatewayConfig, key_pem: bytes) -> None:
        """New channels for the new configuration, probed at once; partners gone are
        forgotten (and lose their series)."""
        with self._lock:
            old = list(self._probes.values())
            self._probes = {}
            self._config, self._key_pem = config, key_pem
            known = {p.id for p in config.partners}
            for gone in [p for p in self._states if p not in known]:
                del self._states[gone]
                self._metrics.forget_partner(gone)
            for partner in known:
                self._states.setdefault(partner, _State())
        for probe in old:
            probe.close()
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="xbgw-reach", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            probes, self._probes = list(self._probes.values()), {}
        for probe in probes:
            probe.close()

    def contact(self, partner: str, *, answered: bool) -> None:
        """A partner call that succeeded outside the probe: ``answered`` -- the partner
        answered our calls (up); otherwise it called us (last contact only)."""
        with self._lock:
            state = self._states.get(partner)
            if state is None:
                return  # not configured (any more): no series for it
            state.last_contact = self._clock()
            if answered:
                state.up, state.detail = True, ""
            self._publish(partner, state)

    def report(self) -> list[Reach]:
        with self._lock:
            return [
                Reach(
                    p.id,
                    str(p.endpoint),
                    self._states[p.id].up,
                    self._states[p.id].last_contact,
                    self._states[p.id].checked_at,
                    self._states[p.id].detail,
                )
                for p in self._config.partners
                if p.id in self._states
            ]

    def probe_all(self) -> None:
        """Probe each configured partner once, one after the other."""
        with self._lock:
            partners = list(self._config.partners)
        for partner in partners:
            if self._stop.is_set():
                return
            self._probe(partner)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.probe_all()
            except Exception:  # a probe must never end the thread that watches partners
                log.exception("partner probe failed unexpectedly")
            self._wake.wait(self._period)

    def _channel(self, partner: PartnerConfig) -> _Probe | None:
        with self._lock:
            probe = self._probes.get(partner.id)
            if probe is None and partner.id in self._states:
                probe = _Probe(self._config, partner, self._key_pem, self._wake)
                self._probes[partner.id] = probe
            return probe

    def _probe(self, partner: PartnerConfig) -> None:
        probe = self._channel(partner)
        if probe is None:
            return
        answered, up, detail = False, False, ""
        try:
            reply = probe.check(
                health_pb2.HealthCheckRequest(service=PARTNER_SERVICE),
                timeout=PROBE_TIMEOUT_SECONDS,
            )
            answered = True
            up = reply.status == health_pb2.HealthCheckResponse.SERVING
            if not up:
                detail = "answers, but is not serving (draining, or its HSM is away)"
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            text = exc.details() if hasattr(exc, "details") else str(exc)
            answered = code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            detail = f"{code.name.lower()}: {text}" if text else code.name.lower()
        now = self._clock()
        with self._lock:
            state = self._states.get(partner.id)
            if state is None:
                return  # removed by a reload meanwhile
            was = state.up
            state.up, state.detail, state.checked_at = up, detail, now
            if answered:
                state.last_contact = now
            self._publish(partner.id, state)
        if was is not None and was != up:
            if up:
                log.info("partner %s is reachable again", partner.id)
            else:
                log.warning("partner %s is not reachable: %s", partner.id, detail)

    def _publish(self, partner: str, state: _State) -> None:
        self._metrics.partner_seen(partner, state.up, state.last_contact)
