"""Partner reachability without a partner: a probe of a port nobody listens on is "down", a
delivered send is "up", inbound contact moves only the last contact, a reload forgets
partners gone. (A real partner answering the probe, and seen down once it stops:
tests/system/test_status_metrics.py.)"""

from __future__ import annotations

import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devtools.provision import free_port
from gateway.config import Address, GatewayConfig
from gateway.metrics import Metrics
from gateway.reachability import Reachability


def _identity(tmp_path: Path) -> tuple[Path, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lingang")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "tls.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return path, key_pem


def _config(certificate: Path, *partners: str) -> GatewayConfig:
    ca = certificate.read_bytes()
    return cast(
        GatewayConfig,
        SimpleNamespace(
            path=certificate.parent / "gateway.yaml",
            tls=SimpleNamespace(certificate=certificate),
            limits=SimpleNamespace(max_message_bytes=4 << 20, keepalive_seconds=10),
            partners=[
                SimpleNamespace(
                    id=p, endpoint=Address("127.0.0.1", free_port()), ca_pem=ca, identity=p
                )
                for p in partners
            ],
        ),
    )


def _up(m: Metrics, partner: str) -> Any:
    return m.registry.get_sample_value("xbgw_partner_up", {"partner": partner})


def test_probe_contact_and_reload(tmp_path: Path) -> None:
    certificate, key_pem = _identity(tmp_path)
    config = _config(certificate, "frankfurt", "paris")
    clock = [1000.0]
    m = Metrics()
    reach = Reachability(config, key_pem, m, clock=lambda: clock[0])
    try:
        assert [(r.partner, r.up) for r in reach.report()] == [
            ("frankfurt", None),
            ("paris", None),
        ]
        assert _up(m, "frankfurt") is None  # not probed yet: no series

        reach.probe_all()  # nobody listens on either port
        frankfurt = reach.report()[0]
        assert frankfurt.up is False and frankfurt.last_contact is None
        assert frankfurt.checked_at == 1000.0
        assert frankfurt.detail.startswith("unavailable")
        assert _up(m, "frankfurt") == 0.0

        clock[0] = 1010.0
        reach.contact("frankfurt", answered=True)  # a delivered send
        assert reach.report()[0].up is True and reach.report()[0].last_contact == 1010.0
        assert _up(m, "frankfurt") == 1.0
        clock[0] = 1020.0
        reach.contact("paris", answered=False)  # paris sent us a transfer
        paris = reach.report()[1]
        assert paris.up is False and paris.last_contact == 1020.0
        contact = m.registry.get_sample_value(
            "xbgw_partner_last_contact_timestamp_seconds", {"partner": "paris"}
        )
        assert contact == 1020.0
        reach.contact("nobody", answered=True)  # not configured: no series minted
        assert _up(m, "nobody") is None

        reach.reconfigure(_config(certificate, "frankfurt"), key_pem)
        assert [r.partner for r in reach.report()] == ["frankfurt"]
        assert _up(m, "paris") is None
        assert _up(m, "frankfurt") == 1.0  # kept across the reload until the next probe
    finally:
        reach.stop(5.0)
