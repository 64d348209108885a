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
  (``gateway.audit.witness``): alert on any increase.

The registry is private to the daemon (no process-global default), and the HTTP endpoint is
only started when ``listen.metrics`` is configured (a local address, by default).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from gateway.compliance.engine import Decision, Outcome


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

    def witness_alarm(self, partner: str) -> None:
        self.witness_alarms.labels(partner).inc()

    def decided(self, decision: Decision) -> None:
        """Count every rule that applied to one compliance decision, by its outcome."""
        for entry in decision.trail:
            if entry.outcome is not Outcome.NOT_APPLICABLE:
                self.decisions.labels(entry.rule, entry.outcome.value).inc()

    def committed_in(self, partner: str, plaintext_bytes: int) -> None:
        self.transfers.labels("in", partner, "committed").inc()
        self.bytes.labels("in", partner).inc(plaintext_bytes)

    def observe_hsm(self, operation: str, seconds: float) -> None:
        self.hsm_seconds.labels(operation).observe(seconds)

    @contextmanager
    def stream(self, direction: str) -> Iterator[None]:
        gauge = self.active_streams.labels(direction)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint; return the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)
