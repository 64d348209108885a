"""Compliance through the real daemons: ``xbgw send`` refused with its article, the JSON log
line and the Prometheus counter of each decision, a compliant transfer delivered, and a rule
disabled by a SIGHUP reload deciding the next transfer.

One running pair (lingang -> frankfurt, with metrics) serves the module; the reload test puts
both configurations back as it found them. Every passport comes from the real ``xbgw passport
issue`` (``Pair.passport``), its compliance facts given as the flags a user would type.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devtools.pair import edit_config, provision_pair
from tests.system.harness import Gateway, Pair, wait_until

RELOAD_TIMEOUT = 30.0

#: The passport of issue 10, as flags: core data, sensitive PI of 5,000,000 subjects.
ISSUE_EXAMPLE = [
    "--classification",
    "core",
    "--pi",
    "sensitive",
    "--subjects",
    "5000000",
    "--legal-basis",
    "none",
]
CORE_REFUSED = "cn-core-data: DSL Art. 21 (state core data): core data is not exported"
ISSUE_EXAMPLE_REFUSED = (
    f"{CORE_REFUSED}; cn-spi-10k: CAC 2024 Provisions Art. 7(2); PIPL Art. 40: exporter "
    "lingang has sent sensitive personal information of 0 subjects this year; with 5000000 "
    "more it reaches 5000000, at or above the threshold of 10000: needs cac-assessment"
)
#: Core data and nothing else: refused by cn-core-data alone (a rule a deployment may disable).
CORE_ONLY = ["--classification", "core"]
#: Personal information of 1,200 subjects of exporter acme: below 100,000, no procedure.
PERSONAL = ["--pi", "personal", "--subjects", "1200", "--exporter", "acme"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("compliance")
    with provision_pair(root, segment_size=1 << 16, metrics=True).running() as running:
        yield running


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(4096))
    return path


def send(pair: Pair, source: Path, token: str) -> subprocess.CompletedProcess[str]:
    return pair.lingang.cli("send", str(source), "--to", "frankfurt", "--passport", token, "-q")


def one_line_failure(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    line: str = lines[0]
    return line


def log_lines(gateway: Gateway, since: int = 0) -> list[dict[str, Any]]:
    return [
        json.loads(line) for line in gateway.log_text()[since:].splitlines() if line.startswith("{")
    ]


def decisions(gateway: Gateway, since: int) -> list[dict[str, Any]]:
    return [e for e in log_lines(gateway, since) if e["logger"] == "xbgw.compliance"]


def metric(gateway: Gateway, name: str, **labels: str) -> float:
    with urllib.request.urlopen(gateway.metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def reload(gateway: Gateway, change: Callable[[dict[str, Any]], object]) -> None:
    """Edit the gateway's config, SIGHUP it, wait for its "configuration reloaded" line."""
    before = gateway.log_text().count("configuration reloaded")
    edit_config(gateway.paths.config, change)
    gateway.signal(signal.SIGHUP)
    wait_until(
        lambda: gateway.log_text().count("configuration reloaded") > before,
        RELOAD_TIMEOUT,
        f"{gateway.id} to reload its configuration",
    )


def test_the_issue_example_is_refused_by_xbgw_send_with_its_article(
    pair: Pair, source: Path
) -> None:
    lingang_mark, frankfurt_mark = len(pair.lingang.log_text()), len(pair.frankfurt.log_text())
    token = pair.passport(byte_limit=1 << 20, extra=ISSUE_EXAMPLE)

    line = one_line_failure(send(pair, source, token))

    assert line == f"xbgw: {ISSUE_EXAMPLE_REFUSED}"  # the status only with --verbose
    (logged,) = decisions(pair.lingang, lingang_mark)
    assert (logged["level"], logged["outcome"], logged["rule"]) == (
        "warning",
        "refused",
        "cn-core-data,cn-spi-10k",
    )
    assert logged["msg"] == f"compliance egress refused: {ISSUE_EXAMPLE_REFUSED}"
    assert logged["partner"] == "frankfurt"
    trail = {entry["rule"]: entry for entry in logged["trail"]}
    assert trail["cn-core-data"] == {
        "rule": "cn-core-data",
        "article": "DSL Art. 21 (state core data)",
        "outcome": "refused",
        "facts": {
            "sender_jurisdiction": "CN-SH",
            "receiver_jurisdiction": "EU-DE",
            "cn_class": "core",
        },
        "detail": "core data is not exported",
        "needs": [],
        "table": "prc-export v1",
    }
    assert (trail["cn-spi-10k"]["outcome"], trail["cn-spi-10k"]["needs"]) == (
        "required-missing",
        ["cac-assessment"],
    )
    assert decisions(pair.frankfurt, frankfurt_mark) == []  # refused before the offer


def test_a_compliant_personal_data_transfer_is_delivered(pair: Pair, source: Path) -> None:
    lingang_mark, frankfurt_mark = len(pair.lingang.log_text()), len(pair.frankfurt.log_text())
    token = pair.passport(byte_limit=1 << 20, extra=PERSONAL)

    done = send(pair, source, token)

    assert done.returncode == 0, done.stderr
    transfer_id = done.stdout.split()[1]
    inbox = pair.frankfurt.cli("inbox")
    assert inbox.returncode == 0, inbox.stderr
    assert transfer_id in inbox.stdout
    for gateway, mark, direction in (
        (pair.lingang, lingang_mark, "egress"),
        (pair.frankfurt, frankfurt_mark, "ingress"),
    ):
        (logged,) = decisions(gateway, mark)
        assert logged["msg"] == f"compliance {direction} allowed: no rule refuses"
        assert (logged["outcome"], logged["transfer_id"]) == ("allowed", transfer_id)
        assert [(e["rule"], e["outcome"]) for e in logged["trail"]] == [
            ("cn-pi-below-100k", "allowed")
        ]


def test_decisions_are_counted_by_rule_and_outcome(pair: Pair, source: Path) -> None:
    name = "xbgw_policy_decisions_total"
    refused = {"rule": "cn-core-data", "outcome": "refused"}
    before = metric(pair.lingang, name, **refused)

    one_line_failure(send(pair, source, pair.passport(byte_limit=1 << 20, extra=CORE_ONLY)))

    assert metric(pair.lingang, name, **refused) == before + 1
    assert metric(pair.lingang, name, **refused) >= 1
    assert metric(pair.frankfurt, name, **refused) == 0  # refused before the offer


def test_a_reload_that_disables_a_rule_decides_the_next_transfer(pair: Pair, source: Path) -> None:
    """cn-core-data refuses a core-data passport; both gateways reload with it disabled and
    the very same passport (unspent: refused before the offer) is delivered. Put back, the
    rule refuses again."""
    token = pair.passport(byte_limit=1 << 20, extra=CORE_ONLY)
    assert CORE_REFUSED in one_line_failure(send(pair, source, token))

    def disable(data: dict[str, Any]) -> None:
        data["compliance"] = {"overrides": {"cn-core-data": {"disable": True}}}

    def restore(data: dict[str, Any]) -> None:
        data.pop("compliance", None)

    try:
        for gateway in pair.gateways:
            reload(gateway, disable)
        mark = len(pair.lingang.log_text())
        done = send(pair, source, token)
        assert done.returncode == 0, done.stderr
        (logged,) = decisions(pair.lingang, mark)
        assert logged["outcome"] == "allowed"
        assert "cn-core-data" not in [entry["rule"] for entry in logged["trail"]]
    finally:
        for gateway in pair.gateways:
            reload(gateway, restore)
    again = pair.passport(byte_limit=1 << 20, extra=CORE_ONLY)
    assert CORE_REFUSED in one_line_failure(send(pair, source, again))
