"""A software stand-in for ``gateway.hsm.Hsm`` for fast unit tests.

It implements the same operations with ``cryptography`` so that the envelope and passport
logic can be tested without a token; every feature is also tested against real SoftHSM.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap_with_padding,
)

from gateway.errors import KeyNotFoundError, UnwrapError
from gateway.keys import Purpose


class SoftwareHsm:
    """Same interface as ``Hsm`` for ecdh / sign / wrap / unwrap / public_key / versions."""

    def __init__(self) -> None:
        self._ec: dict[tuple[Purpose, int], ec.EllipticCurvePrivateKey] = {}
        self._aes: dict[int, bytes] = {}
        for purpose in Purpose:
            self.generate(purpose)

    def generate(self, purpose: Purpose, version: int | None = None) -> int:
        existing = self.versions(purpose)
        version = version if version is not None else (existing[-1] + 1 if existing else 1)
        if purpose is Purpose.STORAGE:
            self._aes[version] = os.urandom(32)
        else:
            self._ec[(purpose, version)] = ec.generate_private_key(ec.SECP256R1())
        return version

    def destroy(self, purpose: Purpose, version: int) -> None:
        if version not in self.versions(purpose):
            raise KeyNotFoundError(f"key {purpose.label} version {version} is not here")
        if purpose is Purpose.STORAGE:
            del self._aes[version]
        else:
            del self._ec[(purpose, version)]

    def versions(self, purpose: Purpose) -> list[int]:
        if purpose is Purpose.STORAGE:
            return sorted(self._aes)
        return sorted(v for (p, v) in self._ec if p is purpose)

    def _ec_key(self, purpose: Purpose, version: int) -> ec.EllipticCurvePrivateKey:
        try:
            return self._ec[(purpose, version)]
        except KeyError:
            raise KeyNotFoundError(f"key {purpose.label} version {version} is not here") from None

    def public_key(self, purpose: Purpose, version: int) -> ec.EllipticCurvePublicKey:
        return self._ec_key(purpose, version).public_key()

    def ecdh(self, version: int, peer_point: bytes) -> bytes:
        peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), peer_point)
        return self._ec_key(Purpose.TRANSPORT, version).exchange(ec.ECDH(), peer)

    def sign_digest(self, version: int, digest: bytes) -> bytes:
        der = self._ec_key(Purpose.SIGNING, version).sign(
            digest, ec.ECDSA(Prehashed(hashes.SHA256()))
        )
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def sign(self, version: int, message: bytes) -> bytes:
        return self.sign_digest(version, hashlib.sha256(message).digest())

    def wrap(self, version: int, secret: bytes) -> bytes:
        if version not in self._aes:
            raise KeyNotFoundError(f"storage version {version} is not here")
        return aes_key_wrap_with_padding(self._aes[version], secret)

    def unwrap(self, version: int, wrapped: bytes) -> bytes:
        if version not in self._aes:
            raise KeyNotFoundError(f"storage version {version} is not here")
        try:
            return aes_key_unwrap_with_padding(self._aes[version], wrapped)
        except InvalidUnwrap:
            raise UnwrapError(
                f"wrapped key does not unwrap under storage version {version}"
            ) from None
