"""XBGW-TLSKEY-1 (:mod:`gateway.tlskey`): the TLS private key wrapped by an HSM storage key.

A fake storage key holder (RFC 5649 in software, one fixed key per version, every call
counted) stands in for the HSM; the real token is in
``tests/integration/test_tlskey_softhsm.py``. The vector is built here field by field from
the module's documented layout, independently of the code under test; every way to break a
file is refused with the documented ``TlsKeyError`` kind and a message naming the reason,
and no message carries key material.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap_with_padding,
)
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from cryptography.x509.oid import NameOID

from gateway import tlskey
from gateway.errors import (
    KeyNotFoundError,
    StorageError,
    TlsKeyAuthenticationError,
    TlsKeyError,
    TlsKeyFormatError,
    TlsKeyMismatchError,
    UnwrapError,
)
from gateway.keys import KeyRef, Purpose
from gateway.secrets import PinSource

ME = "frankfurt"
N = len(ME)
REF = KeyRef(ME, Purpose.STORAGE, 1)
DATA_KEY = bytes(range(32))
NONCE = bytes(range(100, 112))

#: Offsets of the documented layout for an owner of N bytes.
REF_AT, WRAPPED_LEN_AT, WRAPPED_AT = 9, 15 + N, 16 + N
NONCE_AT, SEALED_LEN_AT, SEALED_AT = 88 + N, 100 + N, 104 + N


class FakeStorage:
    """The HSM's storage keys as ``tlskey.StorageKeys``: RFC 5649 under a fixed key per
    version; raises what :class:`gateway.hsm.Hsm` raises; records every call."""

    def __init__(self, versions: dict[int, bytes] | None = None) -> None:
        self.keys = versions if versions is not None else {1: b"\x11" * 32}
        self.calls: list[tuple[str, int]] = []

    def wrap(self, version: int, secret: bytes, /) -> bytes:
        self.calls.append(("wrap", version))
        if version not in self.keys:
            raise KeyNotFoundError(f"storage version {version} is not here")
        return aes_key_wrap_with_padding(self.keys[version], secret)

    def unwrap(self, version: int, wrapped: bytes, /) -> bytes:
        self.calls.append(("unwrap", version))
        if version not in self.keys:
            raise KeyNotFoundError(f"storage version {version} is not here")
        try:
            return aes_key_unwrap_with_padding(self.keys[version], wrapped)
        except InvalidUnwrap:
            raise UnwrapError(f"does not unwrap under storage version {version}") from None


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def _certificate(key: ec.EllipticCurvePrivateKey, name: str = ME) -> bytes:
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.PEM)


#: A fixed key, so that the whole file of the vector is fixed too.
FIXED_KEY = ec.derive_private_key(0x5EED0F7E57CAFE, ec.SECP256R1())
PEM = _pem(FIXED_KEY)
PEM_BODY = [line for line in PEM.decode().splitlines() if "-----" not in line]


def _good(storage: FakeStorage | None = None, ref: KeyRef = REF, pem: bytes = PEM) -> bytes:
    return tlskey._seal(pem, storage or FakeStorage(), ref, data_key=DATA_KEY, nonce=NONCE)


def _no_secrets(message: str) -> None:
    for secret in (DATA_KEY.hex(), b"\x11".hex() * 32, *PEM_BODY):
        assert secret not in message, message


# --- the format: a vector and a round trip ----------------------------------------------------


def test_vector_matches_the_documented_layout() -> None:
    kek = b"\x07" * 32
    ref = KeyRef(ME, Purpose.STORAGE, 7)
    got = tlskey._seal(PEM, FakeStorage({7: kek}), ref, data_key=DATA_KEY, nonce=NONCE)

    encoded_ref = bytes([N]) + ME.encode() + bytes([3]) + (7).to_bytes(4, "big")
    binding = hashlib.sha256(b"XBGW-TLSKEY-1 storage" + encoded_ref).digest()
    wrapped = aes_key_wrap_with_padding(kek, DATA_KEY + binding)
    aad = (
        b"XBGWTLSK"
        + b"\x01"
        + encoded_ref
        + bytes([72])
        + wrapped
        + NONCE
        + (len(PEM) + 16).to_bytes(4, "big")
    )
    assert len(wrapped) == 72 and len(aad) == SEALED_AT
    assert got == aad + AESGCM(DATA_KEY).encrypt(NONCE, PEM, aad)
    # Frozen: a change of the format (or of the PEM the key serialises to) shows here.
    assert hashlib.sha256(PEM).hexdigest() == (
        "1c09e208b76aefbfcb7c463a0c87916f6e25cb885b9223925256c7f3e8f7a0f1"
    )
    assert hashlib.sha256(got).hexdigest() == (
        "a1d2b178da584e68ad59b455c877056a59a18b058588093894c199f4fdcaf38e"
    )

    parsed = tlskey.parse_wrapped_tls_key(got)
    assert parsed.storage_ref == ref
    assert (parsed.wrapped, parsed.nonce, parsed.aad) == (wrapped, NONCE, aad)
    assert parsed.sealed == got[SEALED_AT:]


def test_round_trip_with_fresh_randomness() -> None:
    storage = FakeStorage()
    key = ec.generate_private_key(ec.SECP256R1())
    first = tlskey.seal_tls_key(_pem(key), storage, REF)
    second = tlskey.seal_tls_key(_pem(key), storage, REF)
    assert first != second  # a fresh data key and nonce each time
    assert first[SEALED_AT - 4 : SEALED_AT] == second[SEALED_AT - 4 : SEALED_AT]
    assert tlskey.looks_wrapped(first) and not tlskey.looks_wrapped(_pem(key))
    for data in (first, second):
        assert tlskey.open_tls_key(data, storage, ME) == _pem(key)
    assert storage.calls == [("wrap", 1), ("wrap", 1), ("unwrap", 1), ("unwrap", 1)]


def test_sealing_normalises_to_unencrypted_pkcs8_and_refuses_encrypted_or_other_keys() -> None:
    traditional = FIXED_KEY.private_bytes(
        Encoding.PEM, PrivateFormat.TraditionalOpenSSL, NoEncryption()
    )
    storage = FakeStorage()
    assert tlskey.open_tls_key(tlskey.seal_tls_key(traditional, storage, REF), storage, ME) == PEM
    encrypted = FIXED_KEY.private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"passphrase")
    )
    with pytest.raises(TlsKeyFormatError, match="the key is encrypted; its passphrase is needed"):
        tlskey.seal_tls_key(encrypted, FakeStorage(), REF)
    with pytest.raises(TlsKeyFormatError, match="not a PEM private key"):
        tlskey.seal_tls_key(_certificate(FIXED_KEY), FakeStorage(), REF)
    with pytest.raises(ValueError, match="is not a storage key"):
        tlskey.seal_tls_key(PEM, FakeStorage(), KeyRef(ME, Purpose.TRANSPORT, 1))


def test_a_pem_over_the_limit_is_not_wrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tlskey, "MAX_PEM_LEN", len(PEM) - 1)
    storage = FakeStorage()
    with pytest.raises(TlsKeyFormatError, match=f"is {len(PEM)} bytes as PEM; at most"):
        tlskey.seal_tls_key(PEM, storage, REF)
    assert storage.calls == []


# --- every way to break a file -----------------------------------------------------------------


BOUNDARIES = {
    0: "the file is empty",
    1: "truncated in the magic at offset 0 (8 bytes needed, 1 left)",
    7: "truncated in the magic at offset 0 (8 bytes needed, 7 left)",
    8: "truncated in the format version at offset 8",
    REF_AT: "truncated in the storage key reference at offset 9",
    REF_AT + 1: "truncated in the storage key reference at offset 10",
    REF_AT + 1 + N: f"truncated in the storage key reference at offset {REF_AT + 1 + N}",
    REF_AT + 2 + N: f"truncated in the storage key reference at offset {REF_AT + 2 + N}",
    WRAPPED_LEN_AT: f"truncated in the wrapped data key length at offset {WRAPPED_LEN_AT}",
    WRAPPED_AT: f"truncated in the wrapped data key at offset {WRAPPED_AT} (72 bytes needed, 0",
    NONCE_AT: f"truncated in the nonce at offset {NONCE_AT} (12 bytes needed, 0 left)",
    SEALED_LEN_AT: f"truncated in the sealed key length at offset {SEALED_LEN_AT}",
    SEALED_AT: f"truncated in the sealed private key at offset {SEALED_AT}",
}


def test_truncation_at_every_length_is_a_format_error_before_the_hsm() -> None:
    good = _good()
    boundaries = {**BOUNDARIES, len(good) - 1: "truncated in the sealed private key"}
    for length in range(len(good)):
        storage = FakeStorage()
        with pytest.raises(TlsKeyFormatError) as info:
            tlskey.open_tls_key(good[:length], storage, ME)
        message = str(info.value)
        if length in boundaries:
            assert boundaries[length] in message, (length, message)
        else:
            assert "truncated in" in message, (length, message)
        assert storage.calls == [], length
        _no_secrets(message)


def test_a_trailing_byte_is_refused() -> None:
    with pytest.raises(TlsKeyFormatError, match="1 bytes follow the sealed private key"):
        tlskey.parse_wrapped_tls_key(_good() + b"\0")


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


REGIONS: dict[str, tuple[int, int | None, type[TlsKeyError], str]] = {
    # region: (start, end, the error, words of its message)
    "wrapped": (
        WRAPPED_AT,
        NONCE_AT,
        TlsKeyAuthenticationError,
        "the data key does not unwrap under frankfurt/storage/1: the file was altered",
    ),
    "nonce": (
        NONCE_AT,
        SEALED_LEN_AT,
        TlsKeyAuthenticationError,
        "the sealed private key does not authenticate: the file was altered",
    ),
    "sealed": (
        SEALED_AT,
        None,
        TlsKeyAuthenticationError,
        "the sealed private key does not authenticate: the file was altered",
    ),
}


@pytest.mark.parametrize("region", sorted(REGIONS))
def test_every_bit_flip_in_the_sealed_parts_fails_authentication(region: str) -> None:
    good = _good()
    start, end, error, words = REGIONS[region]
    for bit in range(start * 8, (end or len(good)) * 8):
        with pytest.raises(error) as info:
            tlskey.open_tls_key(_flip(good, bit), FakeStorage(), ME)
        assert words in str(info.value), (region, bit, str(info.value))
        _no_secrets(str(info.value))


def test_every_bit_flip_in_the_key_reference_is_refused_before_the_hsm() -> None:
    """Owner, purpose and version are checked from the clear reference (with the key ring's
    view of the versions in service) before anything is unwrapped."""
    good = _good()
    kinds: set[str] = set()
    for bit in range(REF_AT * 8, WRAPPED_LEN_AT * 8):
        storage = FakeStorage()
        with pytest.raises((TlsKeyFormatError, TlsKeyMismatchError)) as info:
            tlskey.open_tls_key(_flip(good, bit), storage, ME, opens=lambda v: v == 1)
        assert storage.calls == [], bit
        kinds.add(type(info.value).__name__)
        _no_secrets(str(info.value))
    assert kinds == {"TlsKeyFormatError", "TlsKeyMismatchError"}


def test_every_bit_flip_anywhere_is_refused() -> None:
    good = _good()
    for bit in range(len(good) * 8):
        with pytest.raises(TlsKeyError):
            tlskey.open_tls_key(_flip(good, bit), FakeStorage(), ME)


def _replace(data: bytes, at: int, new: bytes) -> bytes:
    return data[:at] + new + data[at + len(new) :]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda d: _replace(d, 0, b"XBGWTLSX"), "not a wrapped TLS key (no XBGWTLSK magic)"),
        (lambda d: _replace(d, 8, b"\x02"), "wrapped-key format version 2 is not supported"),
        (lambda d: _replace(d, 8, b"\x00"), "wrapped-key format version 0 is not supported"),
        (lambda d: _replace(d, REF_AT, b"\x00"), "the owner in the storage key reference is 0"),
        (lambda d: _replace(d, REF_AT, b"\x40"), "reference is 64 bytes; 1..63 are allowed"),
        (lambda d: _replace(d, REF_AT + 1, b"F"), "reference is not a gateway id"),
        (lambda d: _replace(d, REF_AT + 1, b"\xff"), "reference is not a gateway id"),
        (
            lambda d: _replace(d, REF_AT + 1 + N, b"\x01"),
            "the key reference names a transport key; a TLS key is wrapped to a storage key",
        ),
        (
            lambda d: _replace(d, REF_AT + 1 + N, b"\x02"),
            "the key reference names a signing key",
        ),
        (
            lambda d: _replace(d, REF_AT + 1 + N, b"\x09"),
            "unknown key purpose code 9 in the storage key reference",
        ),
        (lambda d: _replace(d, REF_AT + 2 + N, bytes(4)), "storage key version 0 is not valid"),
        (lambda d: _replace(d, WRAPPED_LEN_AT, b"\x49"), "the wrapped data key is 73 bytes"),
        (lambda d: _replace(d, WRAPPED_LEN_AT, b"\x00"), "the wrapped data key is 0 bytes"),
        (
            lambda d: _replace(d, SEALED_LEN_AT, (16 + 16 * 1024 + 1).to_bytes(4, "big")),
            "the sealed key length 16401 is outside 17..16400",
        ),
        (
            lambda d: _replace(d, SEALED_LEN_AT, (0xFFFFFFFF).to_bytes(4, "big")),
            "the sealed key length 4294967295 is outside",
        ),
        (
            lambda d: _replace(d, SEALED_LEN_AT, (16).to_bytes(4, "big")),
            "the sealed key length 16 is outside",
        ),
        (
            lambda d: d + bytes(tlskey.MAX_WRAPPED_FILE_LEN),
            "more than a wrapped TLS key can be (16567)",
        ),
        (lambda d: PEM, "not a wrapped TLS key (no XBGWTLSK magic) (it is a PEM file)"),
    ],
    ids=[
        "magic",
        "version 2",
        "version 0",
        "owner length 0",
        "owner length 64",
        "owner upper case",
        "owner not ascii",
        "purpose transport",
        "purpose signing",
        "purpose unknown",
        "key version 0",
        "wrapped length 73",
        "wrapped length 0",
        "sealed length over the limit",
        "sealed length 2**32-1",
        "sealed length only a tag",
        "file over the limit",
        "a PEM file",
    ],
)
def test_malformed_files_are_format_errors(change: Callable[[bytes], bytes], words: str) -> None:
    storage = FakeStorage()
    with pytest.raises(TlsKeyFormatError) as info:
        tlskey.open_tls_key(change(_good()), storage, ME, source="tls.private_key k")
    assert str(info.value).startswith("tls.private_key k: "), str(info.value)
    assert words in str(info.value)
    assert storage.calls == []


def test_another_gateways_file_is_refused_before_the_hsm() -> None:
    storage = FakeStorage()
    data = _good(storage, KeyRef("lingang", Purpose.STORAGE, 1))
    storage.calls.clear()
    with pytest.raises(TlsKeyMismatchError) as info:
        tlskey.open_tls_key(data, storage, ME)
    assert "wrapped for gateway 'lingang' (lingang/storage/1); this gateway is 'frankfurt'" in str(
        info.value
    )
    assert storage.calls == []


def test_a_storage_version_not_in_service_is_refused_before_the_hsm() -> None:
    storage = FakeStorage()
    data = _good(storage)
    storage.calls.clear()
    with pytest.raises(TlsKeyMismatchError, match="frankfurt/storage/1, which is not in service"):
        tlskey.open_tls_key(data, storage, ME, opens=lambda version: False)
    assert storage.calls == []


def test_a_storage_version_not_on_the_token() -> None:
    data = _good(FakeStorage({1: b"\x11" * 32}))
    with pytest.raises(TlsKeyMismatchError, match="which is not on the HSM token"):
        tlskey.open_tls_key(data, FakeStorage({2: b"\x22" * 32}), ME)


def test_another_hsm_with_the_same_version_fails_authentication() -> None:
    data = _good(FakeStorage({1: b"\x11" * 32}))
    with pytest.raises(TlsKeyAuthenticationError, match="wrapped by another HSM"):
        tlskey.open_tls_key(data, FakeStorage({1: b"\x33" * 32}), ME)


def test_a_data_key_wrapped_for_something_else_is_not_taken() -> None:
    """A blob the same storage key wrapped for a transfer (another binding label) cannot be
    spliced into a TLS key file: the binding is checked after the unwrap."""
    storage = FakeStorage()
    good = _good(storage)
    other = hashlib.sha256(b"XBGW-STREAM-1 storage" + REF.encode()).digest()
    spliced = _replace(good, WRAPPED_AT, storage.wrap(1, DATA_KEY + other))
    with pytest.raises(TlsKeyAuthenticationError, match="not bound to frankfurt/storage/1"):
        tlskey.open_tls_key(spliced, storage, ME)
    short = _replace(good, WRAPPED_AT, storage.wrap(1, DATA_KEY + other[:24] + bytes(8)))
    with pytest.raises(TlsKeyAuthenticationError, match="not bound"):
        tlskey.open_tls_key(short, storage, ME)


# --- files -------------------------------------------------------------------------------------


def test_reading_a_key_file_is_bounded_and_regular_files_only(tmp_path: Path) -> None:
    big = tmp_path / "big.key"
    big.write_bytes(b"x" * (tlskey.MAX_KEY_FILE_LEN + 1))
    with pytest.raises(TlsKeyFormatError, match="larger than 65536 bytes"):
        tlskey.read_tls_key_file(big)
    edge = tmp_path / "edge.key"
    edge.write_bytes(b"x" * tlskey.MAX_KEY_FILE_LEN)
    assert len(tlskey.read_tls_key_file(edge)) == tlskey.MAX_KEY_FILE_LEN
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(TlsKeyError, match="fifo: not a regular file"):
        tlskey.read_tls_key_file(fifo)
    with pytest.raises(TlsKeyError, match=r"missing\.key: the file does not exist"):
        tlskey.read_tls_key_file(tmp_path / "missing.key")
    with pytest.raises(TlsKeyError, match="not a regular file"):
        tlskey.read_tls_key_file(tmp_path)


STORAGE = FakeStorage()


def _files(tmp_path: Path, key: ec.EllipticCurvePrivateKey, wrapped: bool) -> tuple[Path, Path]:
    key_file, cert_file = tmp_path / "tls.key", tmp_path / "tls.crt"
    data = tlskey.seal_tls_key(_pem(key), STORAGE, REF) if wrapped else _pem(key)
    key_file.write_bytes(data)
    cert_file.write_bytes(_certificate(key))
    return key_file, cert_file


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "xbgw.tls" and r.levelno == logging.WARNING]


def test_loading_a_wrapped_key_checks_it_against_the_certificate_and_warns_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    key_file, cert_file = _files(tmp_path, key, wrapped=True)
    with caplog.at_level(logging.INFO, logger="xbgw.tls"):
        pem = tlskey.load_tls_private_key(key_file, cert_file, ME, STORAGE, opens=lambda v: True)
    assert pem == _pem(key)
    assert _warnings(caplog) == []

    cert_file.write_bytes(_certificate(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(TlsKeyMismatchError) as info:
        tlskey.load_tls_private_key(key_file, cert_file, ME, STORAGE)
    assert str(info.value).startswith(f"tls.private_key {key_file} and tls.certificate: ")
    assert "the private key does not belong to the certificate (serial " in str(info.value)


def test_a_plaintext_key_is_loaded_with_one_warning_per_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    key_file, cert_file = _files(tmp_path, key, wrapped=False)
    with caplog.at_level(logging.INFO, logger="xbgw.tls"):
        for loads in (1, 2):
            assert tlskey.load_tls_private_key(key_file, cert_file, ME, STORAGE) == _pem(key)
            assert len(_warnings(caplog)) == loads
    for record in _warnings(caplog):
        message = record.getMessage()
        assert message == f"{tlskey.PLAINTEXT_WARNING} ({key_file})"
        body = [line for line in _pem(key).decode().splitlines() if "-----" not in line]
        assert not any(line in message for line in body)

    cert_file.write_bytes(_certificate(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(TlsKeyMismatchError, match="does not belong to the certificate"):
        tlskey.load_tls_private_key(key_file, cert_file, ME, STORAGE)


def test_passphrases_of_plaintext_keys_and_their_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    key_file, cert_file = tmp_path / "tls.key", tmp_path / "tls.crt"
    key_file.write_bytes(
        key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"s3cret"))
    )
    cert_file.write_bytes(_certificate(key))
    source = PinSource("env", "XBGW_TEST_TLS_PASSPHRASE")
    monkeypatch.setenv("XBGW_TEST_TLS_PASSPHRASE", "s3cret")
    pem = tlskey.load_tls_private_key(key_file, cert_file, ME, STORAGE, passphrase=source)
    assert pem == _pem(key)

    monkeypatch.setenv("XBGW_TEST_TLS_PASSPHRASE", "wrong")
    with pytest.raises(TlsKeyFormatError, match="not a PEM private key or the passphrase is wrong"):
        tlskey.load_tls_private_key(key_file, cert_file, ME, STORAGE, passphrase=source)
    monkeypatch.delenv("XBGW_TEST_TLS_PASSPHRASE")
    with pytest.raises(TlsKeyError) as info:
        tlskey.load_tls_private_key(key_file, cert_file, ME, STORAGE, passphrase=source)
    assert str(info.value) == (
        "tls.private_key_passphrase: environment variable XBGW_TEST_TLS_PASSPHRASE is not set"
    )

    # A wrapped key needs none: the passphrase is not even read, and the operator is told.
    wrapped_file, _ = _files(tmp_path, key, wrapped=True)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="xbgw.tls"):
        pem = tlskey.load_tls_private_key(wrapped_file, cert_file, ME, STORAGE, passphrase=source)
    assert pem == _pem(key)
    assert [r.getMessage() for r in _warnings(caplog)] == [
        f"tls.private_key_passphrase is not used: {wrapped_file} is wrapped by the HSM; remove it"
    ]


# --- re-wrapping for a storage rotation, and the retire check (not wired yet) ------------------


def test_rewrap_moves_the_file_to_a_new_version_atomically_keeping_its_mode(
    tmp_path: Path,
) -> None:
    storage = FakeStorage({1: b"\x11" * 32, 2: b"\x22" * 32})
    path = tmp_path / "gateway.xbgw-key"
    path.write_bytes(tlskey.seal_tls_key(PEM, storage, REF))
    path.chmod(0o644)  # too open: the replacement keeps group read only
    v2 = KeyRef(ME, Purpose.STORAGE, 2)
    assert tlskey.retire_blocker(path, Purpose.STORAGE, 1) == (
        f"the TLS private key {path} is wrapped to it (run 'xbgw keys rewrap')"
    )
    assert tlskey.rewrap_tls_key(path, storage, ME, v2) is True
    assert tlskey.storage_version_of_tls_key(path) == 2
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert tlskey.open_tls_key(path.read_bytes(), storage, ME) == PEM
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left
    assert tlskey.rewrap_tls_key(path, storage, ME, v2) is False
    assert tlskey.retire_blocker(path, Purpose.STORAGE, 1) is None
    assert tlskey.retire_blocker(path, Purpose.STORAGE, 2) is not None
    assert tlskey.retire_blocker(path, Purpose.TRANSPORT, 2) is None

    path.write_bytes(PEM)
    assert tlskey.storage_version_of_tls_key(path) is None
    with pytest.raises(TlsKeyFormatError, match="a plaintext PEM, not a wrapped key"):
        tlskey.rewrap_tls_key(path, storage, ME, v2)
    path.write_bytes(b"XBGWTLSK\x01")
    blocker = tlskey.retire_blocker(path, Purpose.STORAGE, 1)
    assert blocker is not None and blocker.startswith("cannot tell whether the TLS private key")


def test_a_failed_write_leaves_every_file_as_it_was(tmp_path: Path) -> None:
    first = tmp_path / "key"
    first.write_bytes(b"old")
    files = [
        tlskey.NewFile(first, b"new"),
        tlskey.NewFile(tmp_path / "missing-dir" / "cert", b"new", tlskey.CERTIFICATE_MODE),
    ]
    with pytest.raises(StorageError, match="cannot write"):
        tlskey.write_files_atomically(files)
    assert first.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]

    tlskey.write_files_atomically(
        [tlskey.NewFile(first, b"new"), tlskey.NewFile(tmp_path / "c", b"c")]
    )
    assert first.read_bytes() == b"new"
    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o600
