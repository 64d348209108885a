"""XBGW-STREAM-1 data keys: sealing a header to a recipient, opening it, re-wrapping at rest.

See the package docstring (``gateway.envelope``) for the derivations.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Collection
from typing import Protocol

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from gateway.envelope.header import (
    _STORAGE_BLOB_LEN,
    COMMITMENT_LEN,
    DATA_KEY_LEN,
    DEFAULT_SEGMENT_SIZE,
    ECDH_LABEL,
    NONCE_PREFIX_LEN,
    PAYLOAD_LABEL,
    SALT_LEN,
    STORAGE_LABEL,
    SUITE_P256_HKDF_A256GCM,
    VERSION,
    Header,
    StreamContext,
    WrapKind,
    WrappedKey,
    _check_core_fields,
    _check_data_key,
    _core,
)
from gateway.errors import (
    CommitmentError,
    KeyNotFoundError,
    KeyUnwrapError,
    NoUsableWrappedKeyError,
    UnwrapError,
)
from gateway.keys import KeyRef, Purpose, check_gateway_id


class TransportKeyHolder(Protocol):
    """Holds our transport key versions; the private halves never leave it."""

    def public_key(self, purpose: Purpose, version: int, /) -> ec.EllipticCurvePublicKey: ...

    def ecdh(self, version: int, peer_point: bytes, /) -> bytes: ...


class StorageKeyHolder(Protocol):
    """Holds our storage key versions (RFC 5649 wrap and unwrap inside the holder)."""

    def wrap(self, version: int, secret: bytes, /) -> bytes: ...

    def unwrap(self, version: int, wrapped: bytes, /) -> bytes: ...


class KeyHolder(TransportKeyHolder, StorageKeyHolder, Protocol):
    """Everything :func:`open_header` may need: a header may carry either kind of wrap."""


def seal_header(
    context: StreamContext,
    recipient: KeyRef,
    recipient_public: ec.EllipticCurvePublicKey,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> tuple[Header, bytes]:
    """Make a data key and a header wrapping it to ``recipient``; return both.

    ``recipient`` is the receiver's transport key reference (from its verified key set) and
    ``recipient_public`` that key. The data key must be kept only as long as the stream is
    being encrypted.
    """
    return _seal_header(
        context,
        recipient,
        recipient_public,
        segment_size,
        data_key=os.urandom(DATA_KEY_LEN),
        salt=os.urandom(SALT_LEN),
        nonce_prefix=os.urandom(NONCE_PREFIX_LEN),
        ephemeral=ec.generate_private_key(ec.SECP256R1()),
    )


def _seal_header(
    context: StreamContext,
    recipient: KeyRef,
    recipient_public: ec.EllipticCurvePublicKey,
    segment_size: int,
    *,
    data_key: bytes,
    salt: bytes,
    nonce_prefix: bytes,
    ephemeral: ec.EllipticCurvePrivateKey,
) -> tuple[Header, bytes]:
    """:func:`seal_header` with every random input explicit (test vectors only)."""
    if recipient.purpose is not Purpose.TRANSPORT:
        raise ValueError(f"recipient key {recipient} is not a transport key")
    if recipient.owner != context.receiver_id:
        raise ValueError(
            f"recipient key {recipient} does not belong to the receiver {context.receiver_id!r}"
        )
    _check_data_key(data_key)
    _check_core_fields(VERSION, SUITE_P256_HKDF_A256GCM, segment_size, salt, nonce_prefix)
    core_digest = hashlib.sha256(_core(segment_size, salt, nonce_prefix, context)).digest()
    _, commitment = _derive(data_key, salt, core_digest)
    wrapped = _wrap_ecdh_es(data_key, recipient, recipient_public, core_digest, ephemeral)
    header = Header(
        version=VERSION,
        suite=SUITE_P256_HKDF_A256GCM,
        segment_size=segment_size,
        salt=salt,
        nonce_prefix=nonce_prefix,
        context=context,
        wrapped_keys=(wrapped,),
        commitment=commitment,
    )
    return header, data_key


def open_header(
    header: Header,
    me: str,
    holder: KeyHolder,
    *,
    transport_versions: Collection[int] | None = None,
    storage_versions: Collection[int] | None = None,
) -> bytes:
    """Unwrap the data key from the first usable wrapped key addressed to ``me``.

    A wrapped key is usable when its version is in ``transport_versions`` /
    ``storage_versions`` (``None``: any) and the holder has that version. Raises
    ``NoUsableWrappedKeyError`` when none is, ``KeyUnwrapError`` when the one tried does not
    unwrap (wrong key, tampered header), ``CommitmentError`` when the key it yields is not
    the one the header commits to. The receiver id in the context is not checked here: that
    is the offer check's business.
    """
    check_gateway_id(me)
    addressed = [key for key in header.wrapped_keys if key.key_ref.owner == me]
    if not addressed:
        names = ", ".join(str(key.key_ref) for key in header.wrapped_keys)
        raise NoUsableWrappedKeyError(f"no wrapped key is addressed to {me!r} (only {names})")
    core_digest = header.core_digest()
    unusable: list[str] = []
    for entry in addressed:
        ref = entry.key_ref
        allowed = transport_versions if entry.kind is WrapKind.ECDH_ES_A256KW else storage_versions
        if allowed is not None and ref.version not in allowed:
            unusable.append(str(ref))
            continue
        try:
            if entry.kind is WrapKind.ECDH_ES_A256KW:
                data_key = _unwrap_ecdh_es(entry, holder, core_digest)
            else:
                data_key = _unwrap_storage(entry, holder, core_digest)
        except KeyNotFoundError:
            unusable.append(str(ref))
            continue
        _payload_key(header, data_key)
        return data_key
    raise NoUsableWrappedKeyError(
        f"the data key is wrapped to {', '.join(unusable)}, which this gateway does not hold "
        "(or no longer accepts)"
    )


def rewrap_for_storage(
    header: Header, data_key: bytes, storage_ref: KeyRef, holder: StorageKeyHolder
) -> Header:
    """The header with one wrapped key: ``data_key`` under our storage key ``storage_ref``.

    The core and the commitment are unchanged, so the segments stay valid byte for byte.
    The new wrap is unwrapped once and compared before it is returned: the data key is
    about to be dropped, and a wrap that does not open would lose the transfer (SoftHSM has
    been seen to return a wrong key when called from several threads). A storage version
    the holder lacks raises its ``KeyNotFoundError``.
    """
    if storage_ref.purpose is not Purpose.STORAGE:
        raise ValueError(f"key {storage_ref} is not a storage key")
    _payload_key(header, data_key)
    core_digest = header.core_digest()
    blob = data_key + _storage_binding(storage_ref, core_digest)
    entry = WrappedKey(
        WrapKind.STORAGE_A256KWP, storage_ref, None, holder.wrap(storage_ref.version, blob)
    )
    if not hmac.compare_digest(_unwrap_storage(entry, holder, core_digest), data_key):
        raise KeyUnwrapError(f"the wrap under {storage_ref} does not give back the data key")
    return header.with_wrapped_keys((entry,))


def _wrap_ecdh_es(
    data_key: bytes,
    recipient: KeyRef,
    recipient_public: ec.EllipticCurvePublicKey,
    core_digest: bytes,
    ephemeral: ec.EllipticCurvePrivateKey,
) -> WrappedKey:
    if not isinstance(recipient_public.curve, ec.SECP256R1):
        raise ValueError("recipient public key must be on P-256")
    if not isinstance(ephemeral.curve, ec.SECP256R1):
        raise ValueError("ephemeral private key must be on P-256")
    ephemeral_point = _point(ephemeral.public_key())
    shared = ephemeral.exchange(ec.ECDH(), recipient_public)
    kek = _kek(shared, ephemeral_point, _point(recipient_public), recipient, core_digest)
    return WrappedKey(
        WrapKind.ECDH_ES_A256KW, recipient, ephemeral_point, aes_key_wrap(kek, data_key)
    )


def _unwrap_ecdh_es(entry: WrappedKey, holder: TransportKeyHolder, core_digest: bytes) -> bytes:
    ref = entry.key_ref
    ephemeral_point = entry.ephemeral_point
    if ephemeral_point is None:  # WrappedKey refuses this; keeps the type checker informed
        raise KeyUnwrapError(f"the data key wrapped to {ref} has no ephemeral point")
    recipient_point = _point(holder.public_key(Purpose.TRANSPORT, ref.version))
    shared = holder.ecdh(ref.version, ephemeral_point)
    kek = _kek(shared, ephemeral_point, recipient_point, ref, core_digest)
    try:
        return aes_key_unwrap(kek, entry.wrapped)
    except InvalidUnwrap:
        raise KeyUnwrapError(
            f"the data key wrapped to {ref} does not unwrap (wrong key or tampered header)"
        ) from None


def _unwrap_storage(entry: WrappedKey, holder: StorageKeyHolder, core_digest: bytes) -> bytes:
    ref = entry.key_ref
    try:
        blob = holder.unwrap(ref.version, entry.wrapped)
    except UnwrapError:
        raise KeyUnwrapError(
            f"the data key wrapped under {ref} does not unwrap (wrong key or tampered)"
        ) from None
    if len(blob) != _STORAGE_BLOB_LEN or not hmac.compare_digest(
        blob[DATA_KEY_LEN:], _storage_binding(ref, core_digest)
    ):
        raise KeyUnwrapError(
            f"the data key wrapped under {ref} is bound to another header or key reference"
        )
    return blob[:DATA_KEY_LEN]


def _kek(
    shared: bytes,
    ephemeral_point: bytes,
    recipient_point: bytes,
    recipient: KeyRef,
    core_digest: bytes,
) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=ephemeral_point + recipient_point,
        info=ECDH_LABEL + recipient.encode() + core_digest,
    ).derive(shared)


def _storage_binding(ref: KeyRef, core_digest: bytes) -> bytes:
    return hashlib.sha256(STORAGE_LABEL + ref.encode() + core_digest).digest()


def _derive(data_key: bytes, salt: bytes, core_digest: bytes) -> tuple[bytes, bytes]:
    """``(payload_key, commitment)`` for a data key and a header core."""
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=DATA_KEY_LEN + COMMITMENT_LEN,
        salt=salt,
        info=PAYLOAD_LABEL + core_digest,
    ).derive(data_key)
    return okm[:DATA_KEY_LEN], okm[DATA_KEY_LEN:]


def _payload_key(header: Header, data_key: bytes) -> bytes:
    """The payload key, once the data key is proven to be the one the header commits to."""
    _check_data_key(data_key)
    payload_key, commitment = _derive(data_key, header.salt, header.core_digest())
    if not hmac.compare_digest(commitment, header.commitment):
        raise CommitmentError("the data key does not match the header's key commitment")
    return payload_key


def _point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
