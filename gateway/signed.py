"""Signed blobs: receipts, manifests and key sets.

A signed blob is ``(body, signature, kid)``: the body is the exact serialised bytes that were
signed, ECDSA P-256 over SHA-256(body) with raw ``r || s``, by the HSM signing key named in
``kid`` (``owner/signing/version``). A verifier checks the signature under a key it already
trusts (a partner's pinned key) before it parses a byte of the body.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

from gateway.errors import SignatureError
from gateway.keys import KeyRef, Purpose

SIGNATURE_LEN = 64


class DigestSigner(Protocol):
    def sign_digest(self, version: int, digest: bytes) -> bytes: ...


@dataclass(frozen=True)
class Signed:
    body: bytes
    signature: bytes
    kid: str

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.body).digest()


def sign(signer: DigestSigner, kid: KeyRef, body: bytes) -> Signed:
    if kid.purpose is not Purpose.SIGNING:
        raise ValueError(f"{kid} is not a signing key")
    signature = signer.sign_digest(kid.version, hashlib.sha256(body).digest())
    return Signed(body, signature, str(kid))


def verify(blob: Signed, public_key: ec.EllipticCurvePublicKey, owner: str, what: str) -> KeyRef:
    """Check ``blob`` was signed by ``owner`` with ``public_key``; return its key reference."""
    try:
        kid = KeyRef.parse(blob.kid)
    except ValueError as exc:
        raise SignatureError(f"{what}: bad key id: {exc}") from None
    if kid.owner != owner or kid.purpose is not Purpose.SIGNING:
        raise SignatureError(f"{what} is signed by {blob.kid}, expected a signing key of {owner}")
    if len(blob.signature) != SIGNATURE_LEN:
        raise SignatureError(f"{what}: signature must be {SIGNATURE_LEN} bytes")
    der = encode_dss_signature(
        int.from_bytes(blob.signature[:32], "big"), int.from_bytes(blob.signature[32:], "big")
    )
    try:
        public_key.verify(
            der, hashlib.sha256(blob.body).digest(), ec.ECDSA(Prehashed(hashes.SHA256()))
        )
    except InvalidSignature:
        raise SignatureError(
            f"{what} signature does not verify under the pinned key of {owner}"
        ) from None
    return kid
