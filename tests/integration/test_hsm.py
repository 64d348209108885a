"""gateway.hsm against a real SoftHSM token."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.errors import HsmConfigError, KeyNotFoundError, PinSourceError, UnwrapError
from gateway.hsm import Hsm
from gateway.keys import Purpose
from gateway.secrets import PinSource
from tests.softhsm import SOFTHSM_MODULE, TokenSpec

EXPECTED_CAPABILITIES = {
    Purpose.TRANSPORT: ("derive",),
    Purpose.SIGNING: ("sign",),
    Purpose.STORAGE: ("wrap", "unwrap"),
}


@pytest.fixture(scope="module")
def token_hsm(fresh_token: TokenSpec) -> Iterator[Hsm]:
    opened = Hsm.open(fresh_token.module, fresh_token.label, fresh_token.pin)
    for purpose in Purpose:
        opened.generate(purpose)
    yield opened
    opened.close()


def _verify(public: ec.EllipticCurvePublicKey, digest: bytes, raw: bytes) -> None:
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public.verify(der, digest, ec.ECDSA(Prehashed(hashes.SHA256())))


def _point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def test_keys_are_sensitive_never_extractable_with_only_their_capability(token_hsm: Hsm) -> None:
    infos = token_hsm.list_keys()
    assert {(info.purpose, info.version) for info in infos} == {(p, 1) for p in Purpose}
    for info in infos:
        assert info.safe, info
        assert info.sensitive and info.always_sensitive
        assert not info.extractable and info.never_extractable
        assert info.capabilities == EXPECTED_CAPABILITIES[info.purpose]
        assert (info.public_point is None) == (info.purpose is Purpose.STORAGE)


def test_pkcs11_tool_sees_every_key_as_never_extractable(
    token_hsm: Hsm, fresh_token: TokenSpec
) -> None:
    out = subprocess.run(
        [
            "pkcs11-tool",
            "--module",
            SOFTHSM_MODULE,
            "--token-label",
            fresh_token.label,
            "--login",
            "--pin",
            fresh_token.pin,
            "--list-objects",
        ],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "SOFTHSM2_CONF": str(fresh_token.conf)},
    ).stdout
    blocks = [b for b in out.split("\n") if b.strip().startswith("Access:")]
    private_or_secret = out.count("Private Key Object") + out.count("Secret Key Object")
    protected = [b for b in blocks if "sensitive, always sensitive, never extractable" in b]
    assert private_or_secret >= 3
    assert len(protected) == private_or_secret


def test_generate_makes_the_next_version_and_refuses_an_existing_one(token_hsm: Hsm) -> None:
    assert token_hsm.generate(Purpose.SIGNING) == 2
    assert token_hsm.versions(Purpose.SIGNING) == [1, 2]
    with pytest.raises(ValueError, match="xbgw-signing version 2 already exists"):
        token_hsm.generate(Purpose.SIGNING, 2)


def test_ecdh_matches_software_exchange(token_hsm: Hsm) -> None:
    ours = token_hsm.public_key(Purpose.TRANSPORT, 1)
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    expected = ephemeral.exchange(ec.ECDH(), ours)
    assert token_hsm.ecdh(1, _point(ephemeral.public_key())) == expected


def test_ecdh_rejects_points_that_are_not_p256(token_hsm: Hsm) -> None:
    with pytest.raises(ValueError, match="65-byte uncompressed"):
        token_hsm.ecdh(1, b"\x04" + b"\x01" * 10)
    with pytest.raises(ValueError, match="not on the P-256 curve"):
        token_hsm.ecdh(1, b"\x04" + b"\x01" * 64)


def test_sign_digest_is_raw_r_s_that_verifies(token_hsm: Hsm) -> None:
    import hashlib

    digest = hashlib.sha256(b"what crossed the border").digest()
    raw = token_hsm.sign_digest(1, digest)
    assert len(raw) == 64
    public = token_hsm.public_key(Purpose.SIGNING, 1)
    _verify(public, digest, raw)
    with pytest.raises(InvalidSignature):
        _verify(public, hashlib.sha256(b"something else").digest(), raw)
    with pytest.raises(ValueError, match="digest must be 32 bytes"):
        token_hsm.sign_digest(1, b"short")


def test_wrap_unwrap_round_trip_and_tamper(token_hsm: Hsm) -> None:
    secret = os.urandom(64)
    wrapped = token_hsm.wrap(1, secret)
    assert len(wrapped) == 72 and secret not in wrapped
    assert token_hsm.unwrap(1, wrapped) == secret
    flipped = bytearray(wrapped)
    flipped[10] ^= 0x01
    with pytest.raises(UnwrapError):
        token_hsm.unwrap(1, bytes(flipped))
    with pytest.raises(UnwrapError, match="impossible length"):
        token_hsm.unwrap(1, wrapped[:-3])


def test_missing_key_version_is_named(token_hsm: Hsm) -> None:
    with pytest.raises(KeyNotFoundError, match="xbgw-storage version 9"):
        token_hsm.wrap(9, os.urandom(32))
    with pytest.raises(KeyNotFoundError, match="lacks xbgw-transport v7"):
        token_hsm.check_versions({Purpose.TRANSPORT: 7, Purpose.SIGNING: 1})


def test_open_errors_are_actionable(token_hsm: Hsm, fresh_token: TokenSpec) -> None:
    with pytest.raises(
        HsmConfigError, match=r"token 'no-such' not found .* tokens present: .*'pool-"
    ):
        Hsm.open(SOFTHSM_MODULE, "no-such", "1234")
    with pytest.raises(HsmConfigError, match="does not exist"):
        Hsm.open("/nonexistent/libpkcs11.so", "x", "1234")


def test_wrong_pin_is_reported(softhsm_pool: list[TokenSpec]) -> None:
    spare = softhsm_pool[-1]
    with pytest.raises(HsmConfigError, match=f"wrong PIN for HSM token '{spare.label}'"):
        Hsm.open(spare.module, spare.label, "not-the-pin")


def test_softhsm_conf_missing_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOFTHSM2_CONF", "/nonexistent/softhsm2.conf")
    with pytest.raises(HsmConfigError, match="SOFTHSM2_CONF names /nonexistent"):
        Hsm.open(SOFTHSM_MODULE, "x", "1234")


def test_unreadable_token_dir_is_reported_in_a_fresh_process(tmp_path: Path) -> None:
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp_path / 'missing'}\n", encoding="utf-8")
    code = (
        "from gateway.hsm import Hsm\n"
        "from gateway.errors import HsmConfigError\n"
        "try:\n"
        f"    Hsm.open({SOFTHSM_MODULE!r}, 'x', '1234')\n"
        "except HsmConfigError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
    ).stdout
    assert "failed to initialise" in out and "SOFTHSM2_CONF" in out


def test_pin_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text("s3cret\n", encoding="utf-8")
    assert PinSource("file", str(pin_file)).read() == "s3cret"
    monkeypatch.setenv("XBGW_TEST_PIN", "from-env")
    assert PinSource("env", "XBGW_TEST_PIN").read() == "from-env"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "hsm-pin").write_text("from-credential", encoding="utf-8")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert PinSource("credential", "hsm-pin").read() == "from-credential"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (PinSource("file", "/nonexistent/pin"), "file /nonexistent/pin does not exist"),
        (PinSource("env", "XBGW_UNSET_PIN_VAR"), "XBGW_UNSET_PIN_VAR is not set"),
        (PinSource("credential", "hsm-pin"), "CREDENTIALS_DIRECTORY is not set"),
    ],
)
def test_pin_source_failures(
    source: PinSource, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XBGW_UNSET_PIN_VAR", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(PinSourceError, match=message):
        source.read()


def test_pin_file_with_two_lines_is_refused_without_echoing_it(tmp_path: Path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text("first-secret\nsecond\n", encoding="utf-8")
    with pytest.raises(PinSourceError) as info:
        PinSource("file", str(pin_file)).read()
    assert "first-secret" not in str(info.value)
    assert "exactly one non-empty line" in str(info.value)


def test_eight_threads_of_mixed_operations_get_correct_results(token_hsm: Hsm) -> None:
    """Unserialised, SoftHSM 2.6 through python-pkcs11 crashed or gave a wrong key from several
    threads (measured here); every result is checked."""
    import hashlib

    transport = token_hsm.public_key(Purpose.TRANSPORT, 1)
    signing = token_hsm.public_key(Purpose.SIGNING, 1)
    rounds = 100  # 8 threads x 100 rounds x 4 operations = 3,200 HSM operations
    failures: list[str] = []

    def worker(seed: int) -> None:
        try:
            for i in range(rounds):
                ephemeral = ec.generate_private_key(ec.SECP256R1())
                if token_hsm.ecdh(1, _point(ephemeral.public_key())) != ephemeral.exchange(
                    ec.ECDH(), transport
                ):
                    failures.append(f"thread {seed}: wrong ECDH result in round {i}")
                digest = hashlib.sha256(f"{seed}-{i}".encode()).digest()
                try:
                    _verify(signing, digest, token_hsm.sign_digest(1, digest))
                except InvalidSignature:
                    failures.append(f"thread {seed}: bad signature in round {i}")
                secret = os.urandom(32 + (i % 4) * 8)
                if token_hsm.unwrap(1, token_hsm.wrap(1, secret)) != secret:
                    failures.append(f"thread {seed}: wrong unwrapped key in round {i}")
        except Exception as exc:
            failures.append(f"thread {seed}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []


def test_ping_finds_the_signing_key(token_hsm: Hsm) -> None:
    assert token_hsm.ping() is True
