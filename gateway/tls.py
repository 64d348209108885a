"""Mutual TLS: credentials for both listeners and partner channels, and peer identity.

The partner listener trusts the union of the partner CAs (gRPC takes one root bundle), so
after the handshake the peer's identity is mapped to exactly one partner *and* its
certificate must have been issued by that partner's own CA -- otherwise partner A's CA could
mint a certificate naming partner B.
"""

from __future__ import annotations

import functools
import threading

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from gateway import files
from gateway.config import GatewayConfig, PartnerConfig
from gateway.errors import ConfigError, PeerNotAuthorizedError


class ReloadableServerCredentials:
    """Server credentials whose certificate, key and partner CAs can change on reload.

    gRPC asks the fetcher at each new handshake; it hands out a new configuration once after
    :meth:`update`, so new connections use the new certificate while established streams go
    on with the old one.
    """

    def __init__(self, config: GatewayConfig, key_pem: bytes) -> None:
        self._lock = threading.Lock()
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self._initial = _certificate_configuration(config, key_pem)
        # grpc-stubs types the fetcher as never returning None; gRPC documents None as
        # "no change", which is what we return between reloads.
        self.credentials = grpc.dynamic_ssl_server_credentials(
            self._initial,
            self._fetch,  # type: ignore[arg-type]
            require_client_authentication=True,
        )

    def update(self, config: GatewayConfig, key_pem: bytes) -> None:
        with self._lock:
            self._pending = _certificate_configuration(config, key_pem)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            pending, self._pending = self._pending, None
        return pending


def _certificate_configuration(
    config: GatewayConfig, key_pem: bytes
) -> grpc.ServerCertificateConfiguration:
    roots = b"".join(partner.ca_pem for partner in config.partners)
    if not roots:
        raise ConfigError(f"{config.path}: partners: at least one partner CA is needed for mTLS")
    return grpc.ssl_server_certificate_configuration(
        [(key_pem, _certificate_chain(config))], root_certificates=roots
    )


def channel_credentials(
    config: GatewayConfig, partner: PartnerConfig, key_pem: bytes
) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=partner.ca_pem,
        private_key=key_pem,
        certificate_chain=_certificate_chain(config),
    )


def _certificate_chain(config: GatewayConfig) -> bytes:
    """``tls.certificate``, read bounded (a FIFO or device there must not hang a reload)."""
    try:
        return files.read_bounded(config.tls.certificate, files.PEM_MAX)
    except files.FileError as exc:
        raise ConfigError(f"{config.path}: tls.certificate: {exc}") from None


def peer_partner(config: GatewayConfig, context: grpc.ServicerContext) -> PartnerConfig:
    """The configured partner behind an authenticated mutual-TLS connection, or refuse."""
    auth = context.auth_context()
    pems = [bytes(pem) for pem in auth.get("x509_pem_cert", [])]
    if not pems:
        raise PeerNotAuthorizedError("no client certificate was presented")
    names = _identities(pems[0])
    for name in names:
        partner = config.partner_by_identity(name)
        if partner is None:
            continue
        if not _issued_by(pems[0], partner.ca_pem):
            raise PeerNotAuthorizedError(
                f"certificate naming {name!r} was not issued by partner {partner.id}'s CA"
            )
        return partner
    shown = ", ".join(names) or "none"
    raise PeerNotAuthorizedError(
        f"certificate identities ({shown}) belong to no configured partner"
    )


# Every RPC of a connection presents the same certificate: parse and check it once.
@functools.lru_cache(maxsize=256)
def _identities(pem: bytes) -> tuple[str, ...]:
    try:
        certificate = x509.load_pem_x509_certificate(pem)
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    except ValueError:
        # The TLS stack accepted it, but it is malformed (duplicate extensions...): no identity.
        return ()
    uris = [str(v) for v in san.get_values_for_type(x509.UniformResourceIdentifier)]
    return (*uris, *(str(v) for v in san.get_values_for_type(x509.DNSName)))


@functools.lru_cache(maxsize=256)
def _issued_by(pem: bytes, ca_pem: bytes) -> bool:
    certificate = x509.load_pem_x509_certificate(pem)
    for ca in x509.load_pem_x509_certificates(ca_pem):
        try:
            certificate.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue  # not issued by this CA; try the next one in the bundle
        return True
    return False
