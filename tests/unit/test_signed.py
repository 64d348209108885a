"""Signed blobs: ECDSA P-256 raw r||s over SHA-256(body), checked under a pinned key."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from gateway.errors import SignatureError
from gateway.keys import KeyRef, Purpose
from gateway.signed import SIGNATURE_LEN, Signed, sign, verify
from tests.fakes import SoftwareHsm

OWNER = "gw-b"
HOLDER = SoftwareHsm()  # signing v1
HOLDER.generate(Purpose.SIGNING)  # signing v2
SIGNING_V1 = KeyRef(OWNER, Purpose.SIGNING, 1)
PUBLIC_V1 = HOLDER.public_key(Purpose.SIGNING, 1)
BODY = b'{"transfer_id":"t-1","leaf":42}'
NOT_VERIFY = f"receipt signature does not verify under the pinned key of {OWNER}"


def _signed(body: bytes = BODY) -> Signed:
    return sign(HOLDER, SIGNING_V1, body)


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_round_trip() -> None:
    blob = _signed()
    assert blob.body == BODY
    assert blob.kid == "gw-b/signing/1"
    assert len(blob.signature) == SIGNATURE_LEN
    assert blob.digest == hashlib.sha256(BODY).digest()
    assert verify(blob, PUBLIC_V1, OWNER, "receipt") == SIGNING_V1


def test_signature_is_standard_ecdsa_over_the_body() -> None:
    """Raw r||s: an independent verifier over the body (not a pre-hash) accepts it."""
    blob = _signed()
    r = int.from_bytes(blob.signature[:32], "big")
    s = int.from_bytes(blob.signature[32:], "big")
    PUBLIC_V1.verify(encode_dss_signature(r, s), BODY, ec.ECDSA(hashes.SHA256()))


def test_each_version_verifies_under_its_own_key() -> None:
    v2 = KeyRef(OWNER, Purpose.SIGNING, 2)
    blob = sign(HOLDER, v2, BODY)
    assert blob.kid == "gw-b/signing/2"
    assert verify(blob, HOLDER.public_key(Purpose.SIGNING, 2), OWNER, "receipt") == v2
    with pytest.raises(SignatureError, match=re.escape(NOT_VERIFY)):
        verify(blob, PUBLIC_V1, OWNER, "receipt")


def test_empty_body_round_trips() -> None:
    assert verify(_signed(b""), PUBLIC_V1, OWNER, "manifest") == SIGNING_V1


@pytest.mark.parametrize("purpose", [Purpose.TRANSPORT, Purpose.STORAGE])
def test_sign_refuses_a_non_signing_key(purpose: Purpose) -> None:
    with pytest.raises(ValueError, match=f"gw-b/{purpose.value}/1 is not a signing key"):
        sign(HOLDER, KeyRef(OWNER, purpose, 1), BODY)


# --- rejections -------------------------------------------------------------------------------


def test_wrong_owner_is_refused() -> None:
    with pytest.raises(
        SignatureError,
        match=re.escape("receipt is signed by gw-b/signing/1, expected a signing key of gw-c"),
    ):
        verify(_signed(), PUBLIC_V1, "gw-c", "receipt")


@pytest.mark.parametrize("kid", ["gw-b/transport/1", "gw-b/storage/1"])
def test_non_signing_kid_is_refused(kid: str) -> None:
    blob = replace(_signed(), kid=kid)
    with pytest.raises(
        SignatureError,
        match=re.escape(f"key set is signed by {kid}, expected a signing key of {OWNER}"),
    ):
        verify(blob, PUBLIC_V1, OWNER, "key set")


@pytest.mark.parametrize(
    ("kid", "why"),
    [
        ("gw-b/signing", "is not of the form owner/purpose/version"),
        ("gw-b/signing/1/2", "is not of the form owner/purpose/version"),
        ("gw-b/sign/1", "purpose must be one of"),
        ("gw-b/signing/0", "version"),
        ("gw-b/signing/01", "version must be a positive integer"),
        ("gw-b/signing/x", "version must be a positive integer"),
        ("GW_B/signing/1", "gateway id"),
        ("", "is not of the form"),
    ],
)
def test_malformed_kid_is_refused(kid: str, why: str) -> None:
    blob = replace(_signed(), kid=kid)
    with pytest.raises(SignatureError, match=r"^receipt: bad key id: .*" + re.escape(why)):
        verify(blob, PUBLIC_V1, OWNER, "receipt")


@pytest.mark.parametrize("length", [0, 63, 65, 72])
def test_wrong_signature_length_is_refused(length: int) -> None:
    signature = (_signed().signature * 2)[:length]
    blob = replace(_signed(), signature=signature)
    with pytest.raises(SignatureError, match=r"^receipt: signature must be 64 bytes$"):
        verify(blob, PUBLIC_V1, OWNER, "receipt")


def test_der_signature_is_refused_by_length() -> None:
    """A DER signature (what PKCS#11 does not return) is not accepted as raw r||s."""
    der = HOLDER._ec[(Purpose.SIGNING, 1)].sign(BODY, ec.ECDSA(hashes.SHA256()))
    assert len(der) != SIGNATURE_LEN
    with pytest.raises(SignatureError, match="signature must be 64 bytes"):
        verify(Signed(BODY, der, str(SIGNING_V1)), PUBLIC_V1, OWNER, "receipt")


@pytest.mark.parametrize("bit", [0, 7, 100, len(BODY) * 8 - 1])
def test_flipped_body_bit_is_refused(bit: int) -> None:
    blob = _signed()
    tampered = replace(blob, body=_flip(blob.body, bit))
    with pytest.raises(SignatureError, match=f"^{re.escape(NOT_VERIFY)}$"):
        verify(tampered, PUBLIC_V1, OWNER, "receipt")


@pytest.mark.parametrize("bit", [0, 255, 256, 511])
def test_flipped_signature_bit_is_refused(bit: int) -> None:
    blob = _signed()
    tampered = replace(blob, signature=_flip(blob.signature, bit))
    with pytest.raises(SignatureError, match=f"^{re.escape(NOT_VERIFY)}$"):
        verify(tampered, PUBLIC_V1, OWNER, "receipt")


def test_appended_body_byte_is_refused() -> None:
    blob = _signed()
    with pytest.raises(SignatureError, match=re.escape(NOT_VERIFY)):
        verify(replace(blob, body=blob.body + b" "), PUBLIC_V1, OWNER, "receipt")


def test_signature_by_another_key_is_refused() -> None:
    other = SoftwareHsm()  # a different gateway's signing key, claiming to be gw-b's
    forged = sign(other, SIGNING_V1, BODY)
    assert forged.kid == "gw-b/signing/1"
    with pytest.raises(SignatureError, match=f"^{re.escape(NOT_VERIFY)}$"):
        verify(forged, PUBLIC_V1, OWNER, "receipt")


def test_all_zero_signature_is_refused() -> None:
    blob = replace(_signed(), signature=bytes(SIGNATURE_LEN))
    with pytest.raises(SignatureError, match=re.escape(NOT_VERIFY)):
        verify(blob, PUBLIC_V1, OWNER, "receipt")


def test_signature_error_maps_to_unauthenticated() -> None:
    with pytest.raises(SignatureError) as caught:
        verify(replace(_signed(), kid="bad"), PUBLIC_V1, OWNER, "receipt")
    assert caught.value.grpc_status == "UNAUTHENTICATED"
