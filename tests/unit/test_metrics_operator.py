"""The operator's metrics (issue 15): build info, key versions, certificate expiry, partner
reachability and transfer durations -- their values after the events that set them."""

from __future__ import annotations

import datetime
import platform
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import gateway
from gateway import metrics as metrics_module
from gateway.metrics import Metrics, certificate_expiry


def _certificate(days: int) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"valid {days} days")])
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _expiry(days: int) -> float:
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    return (start + datetime.timedelta(days=days)).timestamp()


def test_build_info_names_what_runs() -> None:
    m = Metrics()
    labels = {
        "version": gateway.__version__,
        "python": platform.python_version(),
        "grpc": metrics_module._installed("grpcio"),
        "cryptography": metrics_module._installed("cryptography"),
    }
    assert m.registry.get_sample_value("xbgw_build_info", labels) == 1.0
    assert labels["grpc"] != "unknown" and labels["cryptography"] != "unknown"


def test_key_versions_are_read_at_each_scrape() -> None:
    m = Metrics()
    assert m.registry.get_sample_value("xbgw_key_version_in_use", {"purpose": "signing"}) is None
    current = {"transport": 1, "signing": 1, "storage": 1}
    m.key_versions.source = lambda: current
    assert m.registry.get_sample_value("xbgw_key_version_in_use", {"purpose": "signing"}) == 1.0
    current["signing"] = 2  # a rotation: the next scrape shows it
    assert m.registry.get_sample_value("xbgw_key_version_in_use", {"purpose": "signing"}) == 2.0
    assert m.registry.get_sample_value("xbgw_key_version_in_use", {"purpose": "storage"}) == 1.0


def test_certificate_expiry_own_and_partners(tmp_path: Path) -> None:
    m = Metrics()
    own = tmp_path / "tls.crt"
    own.write_bytes(_certificate(90))
    bundle = _certificate(400) + _certificate(30)  # the first to expire counts
    m.certificates(own, {"frankfurt": bundle, "paris": _certificate(365)})
    value = m.registry.get_sample_value
    name = "xbgw_certificate_expiry_timestamp_seconds"
    assert value(name, {"subject": "self", "kind": "tls"}) == _expiry(90)
    assert value(name, {"subject": "frankfurt", "kind": "ca"}) == _expiry(30)
    assert value(name, {"subject": "paris", "kind": "ca"}) == _expiry(365)
    m.certificates(own, {"frankfurt": bundle})  # a reload dropped paris
    assert value(name, {"subject": "paris", "kind": "ca"}) is None
    assert value(name, {"subject": "frankfurt", "kind": "ca"}) == _expiry(30)


def test_certificate_expiry_refuses_what_is_not_a_certificate() -> None:
    with pytest.raises(ValueError):
        certificate_expiry(b"not a certificate")


def test_partner_up_and_last_contact() -> None:
    m = Metrics()
    value = m.registry.get_sample_value
    m.partner_seen("frankfurt", None, 1000.0)  # contact, reachability not known yet
    assert value("xbgw_partner_up", {"partner": "frankfurt"}) is None
    assert value("xbgw_partner_last_contact_timestamp_seconds", {"partner": "frankfurt"}) == 1000.0
    m.partner_seen("frankfurt", True, 1010.0)
    assert value("xbgw_partner_up", {"partner": "frankfurt"}) == 1.0
    m.partner_seen("frankfurt", False, 1010.0)
    assert value("xbgw_partner_up", {"partner": "frankfurt"}) == 0.0
    m.forget_partner("frankfurt")
    m.forget_partner("never-seen")
    assert value("xbgw_partner_up", {"partner": "frankfurt"}) is None
    assert value("xbgw_partner_last_contact_timestamp_seconds", {"partner": "frankfurt"}) is None


def test_transfer_duration_buckets_span_10ms_to_an_hour() -> None:
    m = Metrics()
    m.transfer_took("out", "delivered", 0.004)
    m.transfer_took("out", "delivered", 42.0)
    m.transfer_took("out", "failed", 7200.0)
    value = m.registry.get_sample_value
    name = "xbgw_transfer_duration_seconds_bucket"
    delivered = {"direction": "out", "outcome": "delivered"}
    assert value(name, {**delivered, "le": "0.01"}) == 1.0
    assert value(name, {**delivered, "le": "60.0"}) == 2.0
    assert value(name, {"direction": "out", "outcome": "failed", "le": "3600.0"}) == 0.0
    assert value(name, {"direction": "out", "outcome": "failed", "le": "+Inf"}) == 1.0
    assert value("xbgw_transfer_duration_seconds_sum", delivered) == pytest.approx(42.004)
    assert metrics_module.DURATION_BUCKETS[0] == 0.01
    assert metrics_module.DURATION_BUCKETS[-1] == 3600.0


def test_inbound_duration_from_first_offer_to_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    m = Metrics()
    now = [100.0]
    monkeypatch.setattr("gateway.metrics.time.monotonic", lambda: now[0])
    m.offered_in("t-1")
    now[0] = 103.0
    m.offered_in("t-1")  # a resumed offer keeps the first time
    now[0] = 110.5
    m.ended_in("t-1", "committed")
    m.ended_in("t-1", "committed")  # a repeated Finish is not a second transfer
    m.ended_in("t-unknown", "committed")  # offered before a restart: not observed
    labels = {"direction": "in", "outcome": "committed"}
    assert m.registry.get_sample_value("xbgw_transfer_duration_seconds_count", labels) == 1.0
    assert m.registry.get_sample_value("xbgw_transfer_duration_seconds_sum", labels) == 10.5


def test_offers_never_finished_are_forgotten_beyond_the_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics_module, "MAX_TRACKED_OFFERS", 3)
    m = Metrics()
    for n in range(5):
        m.offered_in(f"t-{n}")
    m.ended_in("t-0", "committed")  # the oldest was dropped
    m.ended_in("t-4", "committed")
    labels = {"direction": "in", "outcome": "committed"}
    assert m.registry.get_sample_value("xbgw_transfer_duration_seconds_count", labels) == 1.0
