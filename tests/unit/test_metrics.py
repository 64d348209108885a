"""Prometheus metrics: names and labels an operator alerts on, and the /metrics endpoint."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import metrics as metrics_module
from gateway.metrics import Metrics


@pytest.fixture
def m() -> Metrics:
    return Metrics()


def test_registry_is_private() -> None:
    first, second = Metrics(), Metrics()  # a second instance does not clash on names
    first.committed_in("gw-a", 10)
    assert (
        second.registry.get_sample_value(
            "xbgw_transfers_total", {"direction": "in", "partner": "gw-a", "outcome": "committed"}
        )
        is None
    )
    assert (
        prometheus_client.REGISTRY.get_sample_value(
            "xbgw_transfers_total", {"direction": "in", "partner": "gw-a", "outcome": "committed"}
        )
        is None
    )


def test_committed_in_counts_a_transfer_and_its_bytes(m: Metrics) -> None:
    m.committed_in("gw-a", 1000)
    m.committed_in("gw-a", 24)
    m.committed_in("gw-c", 5)
    labels = {"direction": "in", "partner": "gw-a", "outcome": "committed"}
    assert m.registry.get_sample_value("xbgw_transfers_total", labels) == 2.0
    assert (
        m.registry.get_sample_value("xbgw_bytes_total", {"direction": "in", "partner": "gw-a"})
        == 1024.0
    )
    assert (
        m.registry.get_sample_value("xbgw_bytes_total", {"direction": "in", "partner": "gw-c"})
        == 5.0
    )
    assert (
        m.registry.get_sample_value(
            "xbgw_transfers_total", {"direction": "out", "partner": "gw-a", "outcome": "committed"}
        )
        is None
    )


def test_transfers_and_refusals_by_label(m: Metrics) -> None:
    m.transfers.labels("out", "gw-b", "delivered").inc()
    m.refusals.labels("PassportExpiredError", "gw-b").inc()
    m.refusals.labels("PassportExpiredError", "gw-b").inc()
    m.refusals.labels(reason="ByteLimitError", partner="gw-c").inc()
    assert (
        m.registry.get_sample_value(
            "xbgw_transfers_total", {"direction": "out", "partner": "gw-b", "outcome": "delivered"}
        )
        == 1.0
    )
    assert (
        m.registry.get_sample_value(
            "xbgw_refusals_total", {"reason": "PassportExpiredError", "partner": "gw-b"}
        )
        == 2.0
    )
    assert (
        m.registry.get_sample_value(
            "xbgw_refusals_total", {"reason": "ByteLimitError", "partner": "gw-c"}
        )
        == 1.0
    )


def test_hsm_latency_histogram(m: Metrics) -> None:
    m.observe_hsm("sign", 0.0003)
    m.observe_hsm("sign", 0.002)
    m.observe_hsm("ecdh", 0.3)
    sign = {"operation": "sign"}
    assert m.registry.get_sample_value("xbgw_hsm_operation_seconds_count", sign) == 2.0
    assert m.registry.get_sample_value("xbgw_hsm_operation_seconds_sum", sign) == pytest.approx(
        0.0023
    )

    def bucket(operation: str, le: str) -> float | None:
        return m.registry.get_sample_value(
            "xbgw_hsm_operation_seconds_bucket", {"operation": operation, "le": le}
        )

    assert bucket("sign", "0.00025") == 0.0
    assert bucket("sign", "0.0005") == 1.0
    assert bucket("sign", "0.0025") == 2.0
    assert bucket("ecdh", "0.25") == 0.0
    assert bucket("ecdh", "1.0") == 1.0
    assert bucket("ecdh", "+Inf") == 1.0


def test_stream_gauge_goes_up_and_back_down(m: Metrics) -> None:
    def active(direction: str) -> float | None:
        return m.registry.get_sample_value("xbgw_active_streams", {"direction": direction})

    with m.stream("in"):
        with m.stream("in"):
            assert active("in") == 2.0
        assert active("in") == 1.0
    assert active("in") == 0.0
    with pytest.raises(RuntimeError), m.stream("out"):
        assert active("out") == 1.0
        raise RuntimeError("stream broke")
    assert active("out") == 0.0  # released even when the stream fails


def test_ready_gauge(m: Metrics) -> None:
    assert m.registry.get_sample_value("xbgw_ready") == 0.0
    m.ready.set(1)
    assert m.registry.get_sample_value("xbgw_ready") == 1.0


# --- the HTTP endpoint ------------------------------------------------------------------------


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[Any, threading.Thread]]]:
    """Let Metrics.serve start the real server, but keep hold of it to shut it down."""
    servers: list[tuple[Any, threading.Thread]] = []
    real = prometheus_client.start_http_server

    def capture(*args: Any, **kwargs: Any) -> tuple[Any, threading.Thread]:
        server, thread = real(*args, **kwargs)
        servers.append((server, thread))
        return server, thread

    monkeypatch.setattr(metrics_module, "start_http_server", capture)
    yield servers
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        assert not thread.is_alive()


def test_serve_answers_metrics_over_http(
    m: Metrics, started: list[tuple[Any, threading.Thread]]
) -> None:
    m.committed_in("gw-a", 4096)
    m.ready.set(1)
    port = m.serve("127.0.0.1", 0)
    assert port > 0
    assert len(started) == 1
    server, _ = started[0]
    assert server.server_address[:2] == ("127.0.0.1", port)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        body = response.read().decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }
    transfer = (("direction", "in"), ("outcome", "committed"), ("partner", "gw-a"))
    assert samples[("xbgw_transfers_total", transfer)] == 1.0
    assert samples[("xbgw_bytes_total", (("direction", "in"), ("partner", "gw-a")))] == 4096.0
    assert samples[("xbgw_ready", ())] == 1.0
    assert "# TYPE xbgw_hsm_operation_seconds histogram" in body
    # Only this gateway's registry: no process or platform collectors of the default one.
    assert "python_info" not in body
    assert "process_cpu_seconds_total" not in body
