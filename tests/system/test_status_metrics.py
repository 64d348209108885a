"""``xbgw status`` and the metrics an operator graphs, through two real daemons.

After one real transfer lingang -> frankfurt: the sender's /metrics has its build info, one
observed transfer duration, frankfurt up, and its own certificate's expiry equal to the
certificate's notAfter; ``xbgw status --json`` lists listeners, partners and keys; and once
frankfurt is stopped lingang shows it down (the probe wakes when the connection drops).
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from devtools.pair import Pair, provision_pair
from tests.system.harness import wait_until

DEADLINE = 30.0


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    made = provision_pair(tmp_path_factory.mktemp("pair"))
    made.enable_metrics()
    with made.running() as running:
        yield running


def _samples(pair: Pair, gateway: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    url = pair.gateway(gateway).metrics_url
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def _status(pair: Pair, gateway: str) -> dict[str, Any]:
    done = pair.gateway(gateway).cli("status", "--json")
    assert done.returncode == 0, done.stderr
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


@pytest.fixture(scope="module")
def sent(pair: Pair, tmp_path_factory: pytest.TempPathFactory) -> str:
    source = tmp_path_factory.mktemp("data") / "data.bin"
    source.write_bytes(os.urandom(300_000))
    token = pair.passport(byte_limit=1_000_000)
    done = pair.lingang.cli("send", str(source), "--to", "frankfurt", "--passport", token)
    assert done.returncode == 0, done.stderr + pair.lingang.log_text()
    return done.stdout


def test_metrics_after_a_transfer(pair: Pair, sent: str) -> None:
    out = _samples(pair, "lingang")
    build = [k for k in out if k[0] == "xbgw_build_info"]
    assert len(build) == 1 and out[build[0]] == 1.0
    assert {name for name, _ in build[0][1]} == {"version", "python", "grpc", "cryptography"}
    assert (
        _value(out, "xbgw_transfer_duration_seconds_count", direction="out", outcome="delivered")
        == 1.0
    )
    assert _value(out, "xbgw_partner_up", partner="frankfurt") == 1.0
    contact = _value(out, "xbgw_partner_last_contact_timestamp_seconds", partner="frankfurt")
    assert contact is not None and contact > 0
    for purpose in ("transport", "signing", "storage"):
        assert _value(out, "xbgw_key_version_in_use", purpose=purpose) == 1.0
    certificate = x509.load_pem_x509_certificate(pair.lingang.paths.tls_certificate.read_bytes())
    expiry = _value(out, "xbgw_certificate_expiry_timestamp_seconds", subject="self", kind="tls")
    assert expiry == certificate.not_valid_after_utc.timestamp()
    ca = x509.load_pem_x509_certificate(pair.ca_path().read_bytes())
    partner_ca = _value(
        out, "xbgw_certificate_expiry_timestamp_seconds", subject="frankfurt", kind="ca"
    )
    assert partner_ca == ca.not_valid_after_utc.timestamp()
    # The receiving side times the transfer from its first offer to the commit.
    into = _samples(pair, "frankfurt")
    assert (
        _value(into, "xbgw_transfer_duration_seconds_count", direction="in", outcome="committed")
        == 1.0
    )


def test_status_json(pair: Pair, sent: str) -> None:
    status = _status(pair, "lingang")
    assert status["gateway"]["id"] == "lingang"
    assert status["gateway"]["ready"] is True
    listeners = status["listeners"]
    assert listeners["partner"] == f"127.0.0.1:{pair.port('lingang')}"
    assert listeners["local"] == str(pair.lingang.paths.socket)
    assert listeners["metrics"] == f"127.0.0.1:{pair.lingang.metrics_port}"
    (frankfurt,) = status["partners"]
    assert frankfurt["id"] == "frankfurt" and frankfurt["state"] == "up"
    assert frankfurt["endpoint"] == f"127.0.0.1:{pair.port('frankfurt')}"
    assert frankfurt["last_contact_seconds_ago"] is not None
    assert frankfurt["last_contact_seconds_ago"] < DEADLINE * 4
    assert status["keys"] == {
        p: {"active": 1, "in_service": [1]} for p in ("transport", "signing", "storage")
    }
    assert status["in_flight"] == []  # the send is done
    assert [t["state"] for t in status["transfers"]] == ["delivered"]
    human = pair.lingang.cli("status")
    assert human.returncode == 0, human.stderr
    assert "frankfurt" in human.stdout and " up " in human.stdout
    assert "keys      transport v1, signing v1, storage v1" in human.stdout


def test_partner_down_after_it_stops(pair: Pair, sent: str) -> None:
    """Last in this module: it stops frankfurt."""
    assert _status(pair, "lingang")["partners"][0]["state"] == "up"
    assert pair.frankfurt.stop() == 0
    wait_until(
        lambda: _status(pair, "lingang")["partners"][0]["state"] == "down",
        DEADLINE,
        "lingang to see frankfurt down",
    )
    out = _samples(pair, "lingang")
    assert _value(out, "xbgw_partner_up", partner="frankfurt") == 0.0
    human = pair.lingang.cli("status")
    assert " down " in human.stdout, human.stdout
