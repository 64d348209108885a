"""The signed documents of a transfer: manifest, receipt, key set -- build, sign, verify, compare.

Why one module: each document is made on one side and checked on the other, and the two
halves must agree on every field. Kept together, a field added to the manifest is signed,
parsed and compared in one place, and the rest of the code handles frozen dataclasses, never
``partner_pb2`` messages (this is the only domain module that touches them).

Every document is a :class:`~gateway.signed.Signed` blob whose body is the deterministic
protobuf serialisation of its message (``proto/xbgw/v1/partner.proto``). Verification order
is strict: the signature under the key the verifier already trusts (a partner's pinned key),
then the parse, then the fields -- a byte of an unverified body is never interpreted.

* **Manifest** (sender -> receiver, with Finish): what the sender sent -- header core digest,
  passport digest, plaintext SHA-256, size and segment count.
* **Receipt** (receiver -> sender, the answer to Finish): what the receiver committed and
  when, bound to the manifest by its digest.
* **Key set** (any gateway, on request): its transport public keys and which one is current,
  signed by its signing key, so a partner learns new transport keys from the pinned key.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from google.protobuf.message import DecodeError

from gateway._proto.xbgw.v1 import partner_pb2
from gateway.errors import ManifestError, SignatureError
from gateway.keys import MAX_VERSION, KeyRef
from gateway.signed import DigestSigner, Signed, sign, verify

MAX_KEY_SET_KEYS = 64


@dataclass(frozen=True)
class Manifest:
    """The sender's account of one transfer, checked by the receiver against what arrived."""

    transfer_id: str
    sender: str
    receiver: str
    header_core_digest: bytes
    passport_digest: bytes
    plaintext_sha256: bytes
    plaintext_size: int
    segment_count: int

    def differences(self, arrived: Manifest) -> list[str]:
        """Each field in which this manifest disagrees with what ``arrived``, for a refusal."""
        problems = []
        for field in fields(self):
            mine, theirs = getattr(self, field.name), getattr(arrived, field.name)
            if mine == theirs:
                continue
            label = _MANIFEST_LABELS[field.name]
            if isinstance(mine, bytes):
                problems.append(label)
            elif isinstance(mine, int):
                problems.append(f"{label} {mine} (received {theirs})")
            else:
                problems.append(f"{label} {mine!r} (expected {theirs!r})")
        return problems


_MANIFEST_LABELS = {
    "transfer_id": "transfer id",
    "sender": "sender",
    "receiver": "receiver",
    "header_core_digest": "header digest",
    "passport_digest": "passport digest",
    "plaintext_sha256": "plaintext SHA-256",
    "plaintext_size": "size",
    "segment_count": "segment count",
}


@dataclass(frozen=True)
class Receipt:
    """The receiver's signed statement that it committed a transfer."""

    transfer_id: str
    sender: str
    receiver: str
    manifest_digest: bytes
    plaintext_sha256: bytes
    plaintext_size: int
    passport_digest: bytes
    committed_at: int

    def confirms(self, manifest: Manifest, manifest_digest: bytes) -> bool:
        """True if this receipt is for exactly ``manifest`` (signed as ``manifest_digest``)."""
        return (
            self.transfer_id == manifest.transfer_id
            and self.sender == manifest.sender
            and self.receiver == manifest.receiver
            and self.manifest_digest == manifest_digest
            and self.plaintext_sha256 == manifest.plaintext_sha256
            and self.plaintext_size == manifest.plaintext_size
            and self.passport_digest == manifest.passport_digest
        )


@dataclass(frozen=True)
class KeySet:
    """A gateway's transport public keys by version, and the version partners should use."""

    gateway_id: str
    keys: dict[int, ec.EllipticCurvePublicKey]
    current_version: int
    issued_at: int

    @property
    def current(self) -> ec.EllipticCurvePublicKey:
        return self.keys[self.current_version]


# --- manifest -------------------------------------------------------------------------------


def sign_manifest(signer: DigestSigner, kid: KeyRef, manifest: Manifest) -> Signed:
    body = partner_pb2.Manifest(
        transfer_id=manifest.transfer_id,
        sender=manifest.sender,
        receiver=manifest.receiver,
        header_core_digest=manifest.header_core_digest,
        passport_digest=manifest.passport_digest,
        plaintext_sha256=manifest.plaintext_sha256,
        plaintext_size=manifest.plaintext_size,
        segment_count=manifest.segment_count,
    )
    return sign(signer, kid, body.SerializeToString(deterministic=True))


def open_manifest(signed: Signed, public_key: ec.EllipticCurvePublicKey, sender: str) -> Manifest:
    """Verify ``signed`` as ``sender``'s manifest, then parse it."""
    verify(signed, public_key, sender, "manifest")
    try:
        body = partner_pb2.Manifest.FromString(signed.body)
    except DecodeError:
        raise ManifestError("the signed manifest is not a Manifest message") from None
    return Manifest(
        transfer_id=body.transfer_id,
        sender=body.sender,
        receiver=body.receiver,
        header_core_digest=body.header_core_digest,
        passport_digest=body.passport_digest,
        plaintext_sha256=body.plaintext_sha256,
        plaintext_size=body.plaintext_size,
        segment_count=body.segment_count,
    )


# --- receipt --------------------------------------------------------------------------------


def sign_receipt(signer: DigestSigner, kid: KeyRef, receipt: Receipt) -> Signed:
    body = partner_pb2.ReceiptBody(
        transfer_id=receipt.transfer_id,
        sender=receipt.sender,
        receiver=receipt.receiver,
        manifest_digest=receipt.manifest_digest,
        plaintext_sha256=receipt.plaintext_sha256,
        plaintext_size=receipt.plaintext_size,
        passport_digest=receipt.passport_digest,
        committed_at=receipt.committed_at,
    )
    return sign(signer, kid, body.SerializeToString(deterministic=True))


def open_receipt(
    signed: Signed, public_key: ec.EllipticCurvePublicKey, receiver: str
) -> tuple[Receipt, KeyRef]:
    """Verify ``signed`` as ``receiver``'s receipt; return it and the key that signed it."""
    kid = verify(signed, public_key, receiver, "receipt")
    return read_own_receipt(signed, receiver), kid


def read_own_receipt(signed: Signed, receiver: str) -> Receipt:
    """Parse a receipt already verified (or signed by us and read back from our ledger)."""
    try:
        body = partner_pb2.ReceiptBody.FromString(signed.body)
    except DecodeError:
        raise ManifestError(f"the receipt from {receiver} is not a ReceiptBody") from None
    return Receipt(
        transfer_id=body.transfer_id,
        sender=body.sender,
        receiver=body.receiver,
        manifest_digest=body.manifest_digest,
        plaintext_sha256=body.plaintext_sha256,
        plaintext_size=body.plaintext_size,
        passport_digest=body.passport_digest,
        committed_at=body.committed_at,
    )


# --- key set --------------------------------------------------------------------------------


def sign_key_set(signer: DigestSigner, kid: KeyRef, key_set: KeySet) -> Signed:
    if key_set.current_version not in key_set.keys:
        raise ValueError(f"current version {key_set.current_version} is not in the key set")
    body = partner_pb2.KeySet(
        gateway_id=key_set.gateway_id,
        keys=[
            partner_pb2.TransportKey(
                version=version,
                public_point=public.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint),
            )
            for version, public in sorted(key_set.keys.items())
        ],
        current_version=key_set.current_version,
        issued_at=key_set.issued_at,
    )
    return sign(signer, kid, body.SerializeToString(deterministic=True))


def open_key_set(signed: Signed, public_key: ec.EllipticCurvePublicKey, owner: str) -> KeySet:
    """Verify ``signed`` as ``owner``'s key set, then parse and check it.

    Every point must be on P-256 and the current version must be among the keys: a key set
    that would make the sender fail later is refused now, naming the partner.
    """
    what = f"key set of {owner}"
    verify(signed, public_key, owner, what)
    try:
        body = partner_pb2.KeySet.FromString(signed.body)
    except DecodeError:
        raise SignatureError(f"the {what} is not a KeySet message") from None
    if body.gateway_id != owner:
        raise SignatureError(f"key set names {body.gateway_id!r}, expected {owner!r}")
    if len(body.keys) > MAX_KEY_SET_KEYS:
        raise SignatureError(
            f"the {what} lists {len(body.keys)} keys, more than {MAX_KEY_SET_KEYS}"
        )
    keys: dict[int, ec.EllipticCurvePublicKey] = {}
    for key in body.keys:
        if key.version in keys:
            raise SignatureError(f"the {what} lists version {key.version} twice")
        if not 1 <= key.version <= MAX_VERSION:
            raise SignatureError(f"the {what} has a transport key of version {key.version}")
        try:
            keys[key.version] = ec.EllipticCurvePublicKey.from_encoded_point(
                ec.SECP256R1(), key.public_point
            )
        except ValueError:
            raise SignatureError(
                f"the {what} has a transport key v{key.version} that is not a P-256 point"
            ) from None
    if body.current_version not in keys:
        raise SignatureError(f"key set of {owner} lacks its current version")
    return KeySet(owner, keys, body.current_version, body.issued_at)
