"""grafana/xbgw-dashboard.json loads, and every series its queries name is one the daemon's
registry really exposes (a renamed metric breaks this test, not an operator's dashboard)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from gateway.compliance.engine import Decision
from gateway.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "grafana" / "xbgw-dashboard.json"
#: A PromQL metric name: identifiers that are not followed by "(" (functions) and not inside
#: braces or quotes (labels, values); we only need ours, which all start with xbgw_.
METRIC = re.compile(r"\bxbgw_[a-zA-Z0-9_:]*")
PANELS_EXPECTED = {
    "Ready",
    "Partner up",
    "Certificate days left",
    "Transfers/s by outcome",
    "Bytes/s",
    "Refusals by reason",
    "Transfer duration p50 / p95",
    "HSM latency p95",
    "Active streams",
    "Key versions in use",
}


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def _queries(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            exprs.append(query["query"])
    return exprs


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads, with label matchers and strings taken out."""
    bare = re.sub(r'"[^"]*"', '""', expr)
    bare = re.sub(r"\{[^}]*\}", "{}", bare)
    return set(METRIC.findall(bare))


def exposed_series() -> set[str]:
    """Every sample name a running daemon's registry exposes, with each labelled metric
    touched once so that its series exist."""
    m = Metrics()
    m.committed_in("p", 1)
    m.transfers.labels("out", "p", "delivered").inc()
    m.refusals.labels("PassportExpiredError", "p").inc()
    m.observe_hsm("sign", 0.001)
    with m.stream("out"):
        pass
    m.ready.set(1)
    m.decided(Decision(allow=True))
    m.decisions.labels("rule", "allow").inc()
    m.witness_alarm("p")
    m.key_versions.source = lambda: {"signing": 1}
    m.certificate_expiry.labels("self", "tls").set(1)
    m.partner_seen("p", True, 1.0)
    m.transfer_took("out", "delivered", 0.5)
    return {s.name for family in m.registry.collect() for s in family.samples}


def test_the_dashboard_loads_and_has_the_panels_an_operator_needs() -> None:
    dashboard = _dashboard()
    titles = {p["title"] for p in dashboard["panels"]}
    assert titles >= PANELS_EXPECTED
    assert all(p.get("targets") for p in dashboard["panels"])
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_every_query_names_a_real_series() -> None:
    exposed = exposed_series()
    named: set[str] = set()
    for expr in _queries(_dashboard()):
        found = metric_names(expr)
        assert found, f"a query names no xbgw series: {expr}"
        assert found <= exposed, f"{expr}: not exposed: {sorted(found - exposed)}"
        named |= found
    # What issue 15 asked the dashboard to use.
    assert {
        "xbgw_build_info",
        "xbgw_key_version_in_use",
        "xbgw_certificate_expiry_timestamp_seconds",
        "xbgw_partner_up",
        "xbgw_transfer_duration_seconds_bucket",
    } <= named


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('rate(xbgw_transfers_total{instance=~"xbgw_fake"}[5m])', {"xbgw_transfers_total"}),
        ("histogram_quantile(0.5, sum by (le) (rate(xbgw_x_bucket[1m])))", {"xbgw_x_bucket"}),
        ("xbgw_transfers_total_typo", {"xbgw_transfers_total_typo"}),
    ],
)
def test_the_name_extractor(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names
    assert ("xbgw_transfers_total_typo" in exposed_series()) is False
