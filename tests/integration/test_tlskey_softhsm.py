"""The wrapped TLS key (:mod:`gateway.tlskey`) against a real SoftHSM token and key ring.

The token's storage key is AES-256, sensitive and never extractable: the only way to a
file's data key is the token's RFC 5649 unwrap. A key ring on a ledger of this module says
which storage version is active (what ``xbgw tls import`` wraps to) and which are in service
(what the daemon unwraps with).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID

from gateway import tlskey
from gateway.errors import TlsKeyAuthenticationError, TlsKeyMismatchError
from gateway.hsm import Hsm
from gateway.keyring import KeyRing
from gateway.keys import KeyRef, KeyState, Purpose
from gateway.ledger import Ledger
from tests.fakes import SoftwareHsm
from tests.softhsm import TokenSpec

ME = "frankfurt"


@dataclass
class Token:
    hsm: Hsm
    ring: KeyRing

    def ref(self, version: int) -> KeyRef:
        return KeyRef(ME, Purpose.STORAGE, version)

    def opens(self, version: int) -> bool:
        return self.ring.opens(Purpose.STORAGE, version)


@pytest.fixture(scope="module")
def token(fresh_token: TokenSpec, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Token]:
    """Version 1 of every purpose, then a storage rotation: v2 active, v1 decrypt-only."""
    hsm = Hsm.open(fresh_token.module, fresh_token.label, fresh_token.pin)
    for purpose in Purpose:
        hsm.generate(purpose)
    ledger = Ledger(tmp_path_factory.mktemp("tlskey-ledger") / "ledger.sqlite3")
    ring = KeyRing(ME, ledger, hsm)
    ring.rotate(Purpose.STORAGE)
    try:
        yield Token(hsm, ring)
    finally:
        ledger.close()
        hsm.close()


def _identity(tmp_path: Path) -> tuple[bytes, Path]:
    """A new key (PEM) and its self-signed certificate on disk."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ME)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_file = tmp_path / "tls.crt"
    cert_file.write_bytes(cert.public_bytes(Encoding.PEM))
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()), cert_file


def test_import_wraps_to_the_active_storage_version_and_the_daemon_path_unwraps(
    token: Token, tmp_path: Path
) -> None:
    assert token.ring.storage == 2
    previous = token.ring.find(Purpose.STORAGE, 1)
    assert previous is not None and previous.state is KeyState.DECRYPT_ONLY
    pem, cert_file = _identity(tmp_path)
    key_file = tmp_path / "gateway.xbgw-key"
    key_file.write_bytes(tlskey.seal_tls_key(pem, token.hsm, token.ref(token.ring.storage)))

    assert tlskey.storage_version_of_tls_key(key_file) == 2
    parsed = tlskey.parse_wrapped_tls_key(key_file.read_bytes())
    assert parsed.storage_ref == token.ref(2)
    assert len(parsed.wrapped) == tlskey.WRAPPED_LEN  # the token's RFC 5649 output
    assert pem not in key_file.read_bytes()
    loaded = tlskey.load_tls_private_key(key_file, cert_file, ME, token.hsm, opens=token.opens)
    assert loaded == pem


def test_a_decrypt_only_version_still_opens_and_rewrap_moves_to_the_active_one(
    token: Token, tmp_path: Path
) -> None:
    pem, cert_file = _identity(tmp_path)
    key_file = tmp_path / "gateway.xbgw-key"
    key_file.write_bytes(tlskey.seal_tls_key(pem, token.hsm, token.ref(1)))
    assert token.opens(1)
    assert tlskey.load_tls_private_key(key_file, cert_file, ME, token.hsm, opens=token.opens) == pem
    assert tlskey.retire_blocker(key_file, Purpose.STORAGE, 1) is not None

    assert tlskey.rewrap_tls_key(key_file, token.hsm, ME, token.ref(2)) is True
    assert tlskey.storage_version_of_tls_key(key_file) == 2
    assert tlskey.retire_blocker(key_file, Purpose.STORAGE, 1) is None
    assert tlskey.load_tls_private_key(key_file, cert_file, ME, token.hsm, opens=token.opens) == pem


def test_what_the_token_cannot_open(token: Token, tmp_path: Path) -> None:
    pem, _ = _identity(tmp_path)
    # Wrapped by another HSM under the same version number: the token's unwrap refuses it.
    other_hsm = SoftwareHsm()
    other_hsm.generate(Purpose.STORAGE, 2)
    elsewhere = tlskey.seal_tls_key(pem, other_hsm, token.ref(2))
    with pytest.raises(TlsKeyAuthenticationError, match="it was wrapped by another HSM"):
        tlskey.open_tls_key(elsewhere, token.hsm, ME, opens=token.opens)
    # A version the token never had.
    foreign = SoftwareHsm()
    foreign.generate(Purpose.STORAGE, 9)
    missing = tlskey.seal_tls_key(pem, foreign, token.ref(9))
    with pytest.raises(TlsKeyMismatchError, match="frankfurt/storage/9, which is not on the HSM"):
        tlskey.open_tls_key(missing, token.hsm, ME)
    with pytest.raises(TlsKeyMismatchError, match="which is not in service here"):
        tlskey.open_tls_key(missing, token.hsm, ME, opens=token.opens)
    # The token's own storage key, but a data key it wrapped for something else.
    good = tlskey.seal_tls_key(pem, token.hsm, token.ref(2))
    start = 16 + len(ME)  # the wrapped data key's offset (see the layout)
    assert good[start : start + tlskey.WRAPPED_LEN] == tlskey.parse_wrapped_tls_key(good).wrapped
    other = token.hsm.wrap(2, bytes(32) + bytes(32))
    spliced = good[:start] + other + good[start + tlskey.WRAPPED_LEN :]
    with pytest.raises(TlsKeyAuthenticationError, match="not bound to frankfurt/storage/2"):
        tlskey.open_tls_key(spliced, token.hsm, ME, opens=token.opens)
