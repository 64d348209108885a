"""Health on the partner port answers configured partners only (issue 13, item 6).

The partner port trusts each partner's CA, and such a CA may issue a certificate naming no
partner of ours: its holder passes TLS but must be told nothing, health included -- the same
PERMISSION_DENIED as every partner call gives it. Certificates here are real (made with
``cryptography``); only the gRPC context is a stand-in that presents one.
"""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path
from typing import Any, NoReturn, cast

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health, health_pb2

from gateway.config import GatewayConfig
from gateway.partner import PartnerHealth
from tests.loopback import make_loopback

SERVING = health_pb2.HealthCheckResponse.SERVING


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code, self.details = code, details


class Context:
    """What the health wrapper and gRPC's HealthServicer use of a ``ServicerContext``."""

    def __init__(self, pem: bytes) -> None:
        self._pem = pem

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self._pem]}

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise Aborted(code, details)

    def set_code(self, code: grpc.StatusCode) -> None:
        raise Aborted(code, "")


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificate(
    subject: str, issuer: str, key: ec.EllipticCurvePrivateKey, public: Any, san: str | None
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if san is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), False)
    return builder.sign(key, hashes.SHA256())


@pytest.fixture
def setup(tmp_path: Path) -> tuple[PartnerHealth, dict[str, bytes]]:
    """Frankfurt's partner-port health, lingang's CA configured; certificates by that CA."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("lingang CA", "lingang CA", ca_key, ca_key.public_key(), None)
    pems = {}
    for name in ("lingang.example", "stranger.example"):
        leaf = ec.generate_private_key(ec.SECP256R1()).public_key()
        cert = _certificate(name, "lingang CA", ca_key, leaf, name)
        pems[name] = cert.public_bytes(serialization.Encoding.PEM)
    lb = make_loopback(tmp_path)
    lb.close()
    base = lb.frankfurt.config
    lingang = dataclasses.replace(
        base.partner("lingang"), ca_pem=ca.public_bytes(serialization.Encoding.PEM)
    )
    config: GatewayConfig = dataclasses.replace(base, partners=(lingang,))
    servicer = health.HealthServicer()
    servicer.set("", SERVING)
    return PartnerHealth(lambda: config, servicer), pems


def check(wrapper: PartnerHealth, pem: bytes) -> int:
    context = cast(grpc.ServicerContext, Context(pem))
    response = wrapper.Check(health_pb2.HealthCheckRequest(), context)
    return int(response.status)


def test_a_configured_partner_is_told_serving(
    setup: tuple[PartnerHealth, dict[str, bytes]],
) -> None:
    wrapper, pems = setup
    assert check(wrapper, pems["lingang.example"]) == SERVING


def test_a_certificate_naming_no_partner_is_told_nothing(
    setup: tuple[PartnerHealth, dict[str, bytes]],
) -> None:
    wrapper, pems = setup
    with pytest.raises(Aborted) as refused:
        check(wrapper, pems["stranger.example"])
    assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert "stranger.example" in refused.value.details
    assert "belong to no configured partner" in refused.value.details
