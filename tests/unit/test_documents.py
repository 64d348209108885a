"""Manifest, receipt and key set: each signed, verified and compared -- and every way to
break one (bit flips in body and signature, wrong key, wrong owner, wrong purpose, truncated or
foreign body, bad points, duplicated or missing versions) refused before a field is used."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway._proto.xbgw.v1 import partner_pb2
from gateway.documents import (
    MAX_KEY_SET_KEYS,
    KeySet,
    Manifest,
    Receipt,
    open_key_set,
    open_manifest,
    open_receipt,
    read_own_receipt,
    sign_key_set,
    sign_manifest,
    sign_receipt,
)
from gateway.errors import ManifestError, SignatureError
from gateway.keys import KeyRef, Purpose
from gateway.signed import Signed, sign
from tests.fakes import SoftwareHsm

GW = SoftwareHsm()
OTHER = SoftwareHsm()
KID = KeyRef("lingang", Purpose.SIGNING, 1)
PUBLIC = GW.public_key(Purpose.SIGNING, 1)

MANIFEST = Manifest(
    transfer_id="t-1",
    sender="lingang",
    receiver="frankfurt",
    header_core_digest=hashlib.sha256(b"core").digest(),
    passport_digest=hashlib.sha256(b"passport").digest(),
    plaintext_sha256=hashlib.sha256(b"data").digest(),
    plaintext_size=4,
    segment_count=1,
)


def _flip(blob: Signed, where: str, index: int = 0) -> Signed:
    data = bytearray(getattr(blob, where))
    data[index] ^= 0x01
    changes: dict[str, Any] = {where: bytes(data)}
    return dataclasses.replace(blob, **changes)


# --- manifest -------------------------------------------------------------------------------


def test_a_manifest_round_trips_and_is_deterministic() -> None:
    signed = sign_manifest(GW, KID, MANIFEST)
    assert open_manifest(signed, PUBLIC, "lingang") == MANIFEST
    assert sign_manifest(GW, KID, MANIFEST).body == signed.body
    assert signed.kid == "lingang/signing/1"


@pytest.mark.parametrize("where", ["body", "signature"])
@pytest.mark.parametrize("index", [0, 7, -1])
def test_a_flipped_manifest_is_refused(where: str, index: int) -> None:
    signed = _flip(sign_manifest(GW, KID, MANIFEST), where, index)
    with pytest.raises(SignatureError, match="manifest signature does not verify"):
        open_manifest(signed, PUBLIC, "lingang")


def test_a_manifest_under_another_key_or_owner_is_refused() -> None:
    signed = sign_manifest(GW, KID, MANIFEST)
    with pytest.raises(SignatureError, match="does not verify under the pinned key of lingang"):
        open_manifest(signed, OTHER.public_key(Purpose.SIGNING, 1), "lingang")
    with pytest.raises(SignatureError, match="expected a signing key of frankfurt"):
        open_manifest(signed, PUBLIC, "frankfurt")


def test_a_truncated_signature_or_a_bad_kid_is_refused() -> None:
    signed = sign_manifest(GW, KID, MANIFEST)
    with pytest.raises(SignatureError, match="signature must be 64 bytes"):
        open_manifest(
            dataclasses.replace(signed, signature=signed.signature[:63]), PUBLIC, "lingang"
        )
    with pytest.raises(SignatureError, match="bad key id"):
        open_manifest(dataclasses.replace(signed, kid="lingang/signing"), PUBLIC, "lingang")
    with pytest.raises(SignatureError, match="expected a signing key"):
        open_manifest(dataclasses.replace(signed, kid="lingang/transport/1"), PUBLIC, "lingang")


def test_a_signed_body_that_is_not_a_manifest_is_refused_after_the_signature() -> None:
    signed = sign(GW, KID, b"\xff\xff\xff")  # a valid signature over garbage
    with pytest.raises(ManifestError, match="not a Manifest message"):
        open_manifest(signed, PUBLIC, "lingang")


def test_differences_name_each_field_that_disagrees() -> None:
    arrived = dataclasses.replace(
        MANIFEST, plaintext_size=5, segment_count=2, plaintext_sha256=b"\0" * 32
    )
    assert MANIFEST.differences(MANIFEST) == []
    assert MANIFEST.differences(arrived) == [
        "plaintext SHA-256",
        "size 4 (received 5)",
        "segment count 1 (received 2)",
    ]
    assert MANIFEST.differences(dataclasses.replace(MANIFEST, sender="x")) == [
        "sender 'lingang' (expected 'x')"
    ]
    every = Manifest("u", "a", "b", b"1", b"2", b"3", 9, 9)
    assert len(MANIFEST.differences(every)) == len(dataclasses.fields(Manifest))


# --- receipt --------------------------------------------------------------------------------

RKID = KeyRef("frankfurt", Purpose.SIGNING, 1)
RPUBLIC = OTHER.public_key(Purpose.SIGNING, 1)


def _receipt(manifest_digest: bytes) -> Receipt:
    return Receipt(
        transfer_id=MANIFEST.transfer_id,
        sender=MANIFEST.sender,
        receiver=MANIFEST.receiver,
        manifest_digest=manifest_digest,
        plaintext_sha256=MANIFEST.plaintext_sha256,
        plaintext_size=MANIFEST.plaintext_size,
        passport_digest=MANIFEST.passport_digest,
        committed_at=1_800_000_000,
    )


def test_a_receipt_round_trips_and_confirms_its_manifest() -> None:
    digest = sign_manifest(GW, KID, MANIFEST).digest
    signed = sign_receipt(OTHER, RKID, _receipt(digest))
    receipt, kid = open_receipt(signed, RPUBLIC, "frankfurt")
    assert kid == RKID
    assert receipt == _receipt(digest) == read_own_receipt(signed, "frankfurt")
    assert receipt.confirms(MANIFEST, digest)


@pytest.mark.parametrize(
    "field",
    [
        "transfer_id",
        "sender",
        "receiver",
        "manifest_digest",
        "plaintext_sha256",
        "plaintext_size",
        "passport_digest",
    ],
)
def test_a_receipt_for_anything_else_does_not_confirm(field: str) -> None:
    digest = sign_manifest(GW, KID, MANIFEST).digest
    good = _receipt(digest)
    value = getattr(good, field)
    other = (
        value + 1 if isinstance(value, int) else (b"\0" * 32 if isinstance(value, bytes) else "x")
    )
    changes: dict[str, Any] = {field: other}
    assert not dataclasses.replace(good, **changes).confirms(MANIFEST, digest)


def test_a_tampered_or_misattributed_receipt_is_refused() -> None:
    signed = sign_receipt(OTHER, RKID, _receipt(b"\0" * 32))
    with pytest.raises(SignatureError, match="receipt signature does not verify"):
        open_receipt(_flip(signed, "body", 3), RPUBLIC, "frankfurt")
    with pytest.raises(SignatureError, match="expected a signing key of lingang"):
        open_receipt(signed, RPUBLIC, "lingang")
    with pytest.raises(ManifestError, match="not a ReceiptBody"):
        open_receipt(sign(OTHER, RKID, b"\x0a\xff"), RPUBLIC, "frankfurt")


# --- key set --------------------------------------------------------------------------------


def _key_set(**changes: object) -> KeySet:
    keys = {1: GW.public_key(Purpose.TRANSPORT, 1), 2: OTHER.public_key(Purpose.TRANSPORT, 1)}
    base = KeySet(gateway_id="lingang", keys=keys, current_version=2, issued_at=1_800_000_000)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _point(key: ec.EllipticCurvePublicKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def _raw_key_set(body: partner_pb2.KeySet) -> Signed:
    return sign(GW, KID, body.SerializeToString(deterministic=True))


def test_a_key_set_round_trips() -> None:
    opened = open_key_set(sign_key_set(GW, KID, _key_set()), PUBLIC, "lingang")
    assert opened.current_version == 2 and opened.issued_at == 1_800_000_000
    assert _point(opened.current) == _point(OTHER.public_key(Purpose.TRANSPORT, 1))
    assert sorted(opened.keys) == [1, 2]


def test_a_key_set_without_its_current_version_cannot_be_signed_or_opened() -> None:
    with pytest.raises(ValueError, match="current version 3 is not in the key set"):
        sign_key_set(GW, KID, _key_set(current_version=3))
    body = partner_pb2.KeySet(
        gateway_id="lingang",
        keys=[partner_pb2.TransportKey(version=1, public_point=_point(PUBLIC))],
        current_version=3,
    )
    with pytest.raises(SignatureError, match="lacks its current version"):
        open_key_set(_raw_key_set(body), PUBLIC, "lingang")


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ([(1, b"\x04" + b"\x01" * 64)], "not a P-256 point"),
        ([(1, b"")], "not a P-256 point"),
        ([(1, None), (1, None)], "lists version 1 twice"),
        ([(0, None)], "transport key of version 0"),
        ([(v, None) for v in range(1, MAX_KEY_SET_KEYS + 2)], "more than"),
    ],
)
def test_a_malformed_key_set_is_refused(keys: list[tuple[int, bytes | None]], message: str) -> None:
    body = partner_pb2.KeySet(
        gateway_id="lingang",
        keys=[
            partner_pb2.TransportKey(version=v, public_point=p if p is not None else _point(PUBLIC))
            for v, p in keys
        ],
        current_version=1,
    )
    with pytest.raises(SignatureError, match=message):
        open_key_set(_raw_key_set(body), PUBLIC, "lingang")


def test_a_key_set_naming_another_gateway_or_signed_by_another_is_refused() -> None:
    with pytest.raises(SignatureError, match="key set names 'frankfurt', expected 'lingang'"):
        open_key_set(sign_key_set(GW, KID, _key_set(gateway_id="frankfurt")), PUBLIC, "lingang")
    with pytest.raises(SignatureError, match="key set of lingang signature does not verify"):
        open_key_set(
            sign_key_set(GW, KID, _key_set()), OTHER.public_key(Purpose.SIGNING, 1), "lingang"
        )
    with pytest.raises(SignatureError, match="not a KeySet message"):
        open_key_set(sign(GW, KID, b"\xff"), PUBLIC, "lingang")
