"""Prometheus metrics: what an operator graphs and alerts on.

Names (all prefixed ``xbgw_``):

* ``transfers_total{direction,partner,outcome}`` -- finished transfers (delivered, committed,
  refused, failed);
* ``bytes_total{direction,partner}`` -- plaintext bytes moved;
* ``refusals_total{reason,partner}`` -- refusals by error type (``PassportExpiredError``...);
* ``hsm_operation_seconds{operation}`` -- latency of each PKCS#11 operation;
* ``active_streams{direction}`` -- uploads in flight;
* ``ready`` -- 1 while serving, 0 while starting, draining or when the HSM does not answer;
* ``witness_alarms_total{partner}`` -- forks and rollbacks seen in partners' audit logs
  (``gateway.audit.witness``): alert on any increase;
* ``build_info{version,python,grpc,cryptography}`` -- always 1: what is running, to join on;
* ``key_version_in_use{purpose}`` -- the active key version of each purpose, read at each
  scrape (a rotation through the daemon shows at once);
* ``certificate_expiry_timestamp_seconds{subject,kind}`` -- notAfter of this gateway's TLS
  certificate (``subject="self", kind="tls"``) and of each partner's CA (``subject=<partner>,
  kind="ca"``; the earliest in a bundle), set at start and on every reload;
* ``partner_up{partner}`` and ``partner_last_contact_timestamp_seconds{partner}`` -- see
  :mod:`gateway.reachability` for what "up" means;
* ``transfer_duration_seconds{direction,outcome}`` -- out: one local send from its start to
  its receipt (or its failure); in: from the partner's first offer to the commit (or the
  refused Finish), as seen by this process (a transfer offered before a restart is not
  observed).

The registry is private to the daemon (no process-global default), and the HTTP endpoint is
only started when ``listen.metrics`` is configured (a local address, by default).
"""

from __future__ import annotations

import contextlib
import platform
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import gateway
from gateway.compliance.engine import Decision, Outcome

_M = TypeVar("_M", Counter, Gauge, Histogram)

#: From 10 ms (a small transfer on a LAN) to 1 h (gigabytes on a long link).
DURATION_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip
#: Inbound transfers whose offer time is remembered (the oldest is forgotten beyond this:
#: an offer never finished must not grow memory).
MAX_TRACKED_OFFERS = 4096


def _installed(name: str) -> str:
    try:
        return package_version(name)
    except PackageNotFoundError:
        return "unknown"


def certificate_expiry(pem: bytes) -> float:
    """The earliest notAfter (seconds since the epoch) of the PEM certificates in ``pem``:
    in a bundle, the first to expire is the one that breaks the handshake."""
    certificates = x509.load_pem_x509_certificates(pem)
    return min(c.not_valid_after_utc.timestamp() for c in certificates)


class _KeyVersions(Collector):
    """``xbgw_key_version_in_use{purpose}``, read from ``source`` at each scrape."""

    def __init__(self) -> None:
        self.source: Callable[[], Mapping[str, int]] | None = None

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        if self.source is not None:
            for purpose, version in sorted(self.source().items()):
                family.add_metric([purpose], float(version))
        return [family]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "xbgw_key_version_in_use",
            "The active key version of each purpose: what new work uses.",
            labels=["purpose"],
        )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.transfers = Counter(
            "xbgw_transfers_total",
            "Finished transfers by direction, partner and outcome.",
            ["direction", "partner", "outcome"],
            registry=self.registry,
        )
        self.bytes = Counter(
            "xbgw_bytes_total",
            "Plaintext bytes moved by direction and partner.",
            ["direction", "partner"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "xbgw_refusals_total",
            "Refused requests by reason (error type) and partner.",
            ["reason", "partner"],
            registry=self.registry,
        )
        self.hsm_seconds = Histogram(
            "xbgw_hsm_operation_seconds",
            "Latency of PKCS#11 operations.",
            ["operation"],
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0),
            registry=self.registry,
        )
        self.active_streams = Gauge(
            "xbgw_active_streams",
            "Uploads in flight.",
            ["direction"],
            registry=self.registry,
        )
        self.ready = Gauge("xbgw_ready", "1 while serving.", registry=self.registry)
        self.decisions = Counter(
            "xbgw_policy_decisions_total",
            "Compliance rule outcomes by rule and outcome (rules that applied to a decision).",
            ["rule", "outcome"],
            registry=self.registry,
        )
        self.witness_alarms = Counter(
            "xbgw_witness_alarms_total",
            "Witness alarms raised (a fork or rollback in a partner's audit log), by partner.",
            ["partner"],
            registry=self.registry,
        )
        self.build_info = Gauge(
            "xbgw_build_info",
            "Always 1; the labels say what runs.",
            ["version", "python", "grpc", "cryptography"],
            registry=self.registry,
        )
        self.build_info.labels(
            gateway.__version__,
            platform.python_version(),
            _installed("grpcio"),
            _installed("cryptography"),
        ).set(1)
        self.key_versions = _KeyVersions()
        self.registry.register(self.key_versions)
        self.certificate_expiry = Gauge(
            "xbgw_certificate_expiry_timestamp_seconds",
            "notAfter of this gateway's TLS certificate and of each partner's CA.",
            ["subject", "kind"],
            registry=self.registry,
        )
        self.partner_up = Gauge(
            "xbgw_partner_up",
            "1 when the partner answered its last probe or call, 0 when it did not.",
            ["partner"],
            registry=self.registry,
        )
        self.partner_last_contact = Gauge(
            "xbgw_partner_last_contact_timestamp_seconds",
            "When the partner last answered this gateway or called it successfully.",
            ["partner"],
            registry=self.registry,
        )
        self.transfer_duration = Histogram(
            "xbgw_transfer_duration_seconds",
            "Transfer durations by direction and outcome.",
            ["direction", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self._offers: OrderedDict[str, float] = OrderedDict()
        self._offers_lock = threading.Lock()
        self._children: dict[tuple[object, tuple[str, ...]], object] = {}

    def child(self, metric: _M, *labels: str) -> _M:
        """``metric.labels(*labels)``, looked up once: prometheus_client takes a lock and
        builds the key on every ``labels`` call (a few microseconds, several times per
        transfer). Only for metrics whose series are never removed (not the certificate and
        partner gauges, which ``certificates`` and ``forget_partner`` clear)."""
        key = (metric, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children.setdefault(key, metric.labels(*labels))
        return found  # type: ignore[return-value]  # stored by this method for this metric

    # -- certificates, partners, durations --------------------------------------------------

    def certificates(self, own_certificate: Path, partner_cas: Mapping[str, bytes]) -> None:
        """Set the expiry of this gateway's TLS certificate and each partner's CA (start and
        reload); partners no longer configured lose their series."""
        self.certificate_expiry.clear()
        self.certificate_expiry.labels("self", "tls").set(
            certificate_expiry(own_certificate.read_bytes())
        )
        for partner, pem in sorted(partner_cas.items()):
            self.certificate_expiry.labels(partner, "ca").set(certificate_expiry(pem))

    def partner_seen(self, partner: str, up: bool | None, contact_at: float | None) -> None:
        """What is known of a partner: ``up`` (None: not looked at yet), and when it was last
        in contact (None: never)."""
        if up is not None:
            self.partner_up.labels(partner).set(1 if up else 0)
        if contact_at is not None:
            self.partner_last_contact.labels(partner).set(contact_at)

    def forget_partner(self, partner: str) -> None:
        for gauge in (self.partner_up, self.partner_last_contact):
            with contextlib.suppress(KeyError):  # never observed
                gauge.remove(partner)

    def transfer_took(self, direction: str, outcome: str, seconds: float) -> None:
        self.child(self.transfer_duration, direction, outcome).observe(seconds)

    def offered_in(self, transfer_id: str) -> None:
        """Remember when an inbound transfer was first offered (a resumed offer keeps it)."""
        with self._offers_lock:
            if transfer_id in self._offers:
                return
            self._offers[transfer_id] = time.monotonic()
            while len(self._offers) > MAX_TRACKED_OFFERS:
                self._offers.popitem(last=False)

    def ended_in(self, transfer_id: str, outcome: str) -> None:
        """Observe an inbound transfer's duration, once, if its offer was seen."""
        with self._offers_lock:
            started = self._offers.pop(transfer_id, None)
        if started is not None:
            self.transfer_took("in", outcome, time.monotonic() - started)

    def witness_alarm(self, partner: str) -> None:
        self.witness_alarms.labels(partner).inc()

    def decided(self, decision: Decision) -> None:
        """Count every rule that applied to one compliance decision, by its outcome."""
        for entry in decision.trail:
            if entry.outcome is not Outcome.NOT_APPLICABLE:
                self.child(self.decisions, entry.rule, entry.outcome.value).inc()

    def committed_in(self, partner: str, plaintext_bytes: int) -> None:
        self.child(self.transfers, "in", partner, "committed").inc()
        self.child(self.bytes, "in", partner).inc(plaintext_bytes)

    def observe_hsm(self, operation: str, seconds: float) -> None:
        self.child(self.hsm_seconds, operation).observe(seconds)

    @contextmanager
    def stream(self, direction: str) -> Iterator[None]:
        gauge = self.child(self.active_streams, direction)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint; return the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)
