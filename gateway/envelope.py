"""XBGW-STREAM-1: data keys, wrapped keys, and the authenticated segment stream.

Why it looks like this
----------------------
The format follows Tink's AES-GCM-HKDF streaming AEAD and age's STREAM construction (a fresh
data key per transfer; every segment authenticated on its own under a nonce that encodes its
index and whether it is the last), plus the key commitment of the AWS Encryption SDK v2:

* **Segments are verified as they arrive**, so a receiver never buffers a transfer and a broken
  stream resumes at a segment boundary. The index in the nonce stops reordering, dropping and
  duplication; the final flag in the nonce stops truncation and extension; the header-core
  digest as AAD ties every segment to one header.
* **The data key is committed**: HKDF yields the payload key *and* a 32-byte commitment stored
  in the header. AES-GCM is not key-committing, so without it a header could be crafted whose
  wrapped keys open to two different data keys that both "decrypt" the same ciphertext. The
  commitment is compared in constant time.
* **The core excludes the wrapped keys and the commitment** (and the header length, which
  changes with the wrapped keys): a receiver re-wraps the data key to its own storage key at
  rest without touching a byte of the payload.
* **The suite is an allow list** of exactly one entry: a ciphertext can never choose a weaker
  algorithm. Parsing is strict and bounded: the header length is checked against
  :data:`MAX_HEADER_LEN` before the rest of the header is read, every length before its bytes
  are used, and one plaintext has exactly one encoding (no empty non-initial final segment,
  no short non-final segment), so a stream cannot be re-encoded around the checks.
* **Every wrapped key names its key reference** (owner, purpose, version) in clear, and the
  reference and the header core are bound inside the KDF (partner wrap) or inside the wrapped
  blob (storage wrap): a wrapped key cannot be moved to another header or claimed for another
  key version.

Nonce reuse on resume: segment ``i`` of a header always uses the same nonce. A sender that
resumes must resend the very bytes it encrypted before (or the same plaintext); this module
encrypts whatever it is given, so the outbox or per-segment digest rule of DESIGN.md belongs
to the caller.

Byte layout (all integers big-endian)
-------------------------------------
Header (``header_len`` bytes, at most :data:`MAX_HEADER_LEN` = 4096)::

    off  size  field
      0     4  magic             b"XBGW"
      4     1  version           1
      5     1  suite             1 = P256-ECDH-ES+A256KW / HKDF-SHA256 / AES-256-GCM
      6     2  header_len        length of the whole header, commitment included (203..4096)
      8     4  segment_size      plaintext bytes per segment, 64 .. 16 MiB (default 1 MiB)
     12    32  salt              HKDF salt for the payload key
     44     7  nonce_prefix
     51   1+n  transfer_id       u8 n (1..64): A-Z a-z 0-9 . _ -, first alnum (the jti)
          1+n  sender_id         u8 n (1..63), then a gateway id (keys.check_gateway_id)
          1+n  receiver_id       the same
           32  passport_digest   SHA-256 of the passport token
            1  count             number of wrapped keys, 1..4; each wrapped key is:
            1    kind            1 = ECDH-ES+A256KW to a partner's transport key
                                 2 = A256KWP under an HSM storage key
          6+n    key_ref         KeyRef.encode(): u8 n || owner || purpose u8 || version u32
                                 (purpose must be transport for kind 1, storage for kind 2)
           65    ephemeral       kind 1 only: uncompressed P-256 point 0x04 || x || y, on curve
          1+n    wrapped         u8 n || n bytes; kind 1: n = 40, kind 2: n = 72
           32  commitment

The prefix (magic, version, suite, header_len) is checked in that order: a different magic
means another format, a different version may lay its header out differently, and only then
is ``header_len`` trusted, and checked against the limit before another byte is read. Two
wrapped keys may not name the same key reference; no byte may follow the commitment inside
``header_len``.

Derived values::

    core        = header[0:6] || header[8:end of passport_digest]
                  (magic, version, suite, segment_size, salt, nonce_prefix, context: the
                  header without header_len, the wrapped keys and the commitment)
    core_digest = SHA-256(core)
    payload_key || commitment
                = HKDF-SHA256(ikm = data key (32 random bytes), salt = salt,
                              info = b"XBGW-STREAM-1 payload" || core_digest, L = 64)

Segments follow the header back to back; segment ``i`` (``0 <= i < 2**32 - 1``) is::

    AES-256-GCM(payload_key, nonce = nonce_prefix || u32(i) || final (0x00 or 0x01),
                aad = core_digest, plaintext)       -> ciphertext || 16-byte tag

Every segment but the last holds exactly ``segment_size`` plaintext bytes; the last one is
marked final and holds 1..``segment_size`` bytes -- except an empty stream, which is exactly
one empty final segment 0. In a stream file the final segment is the one that ends at EOF.

Kind 1, ECDH-ES+A256KW (to a partner; the recipient's static key never leaves its HSM)::

    shared  = ECDH(ephemeral private, recipient transport public key)   # x coordinate
    kek     = HKDF-SHA256(ikm = shared, salt = ephemeral point || recipient point,
                          info = b"XBGW-STREAM-1 ECDH-ES+A256KW" || key_ref || core_digest,
                          L = 32)
    wrapped = AES-KW (RFC 3394)(kek, data key)                         # 40 bytes

Kind 2, A256KWP (at rest, inside the HSM)::

    blob    = data key || SHA-256(b"XBGW-STREAM-1 storage" || key_ref || core_digest)
    wrapped = AES-KWP (RFC 5649)(storage key, blob)                     # 72 bytes

and the unwrapper checks the second half of the blob in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from gateway.errors import (
    CommitmentError,
    HeaderFormatError,
    KeyNotFoundError,
    KeyUnwrapError,
    NoUsableWrappedKeyError,
    SegmentAuthenticationError,
    SegmentLengthError,
    SegmentOrderError,
    SegmentSizeError,
    TrailingDataError,
    TruncatedStreamError,
    UnsupportedSuiteError,
    UnsupportedVersionError,
    UnwrapError,
)
from gateway.keys import KeyRef, Purpose, check_gateway_id

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "MAX_HEADER_LEN",
    "MAX_SEGMENTS",
    "MAX_SEGMENT_SIZE",
    "MIN_SEGMENT_SIZE",
    "SUITES",
    "TAG_LEN",
    "VERSION",
    "ByteReader",
    "ByteWriter",
    "Header",
    "KeyHolder",
    "StorageKeyHolder",
    "StreamContext",
    "StreamDecryptor",
    "StreamEncryptor",
    "TransportKeyHolder",
    "WrapKind",
    "WrappedKey",
    "header_length",
    "open_header",
    "read_header",
    "read_stream",
    "rewrap_for_storage",
    "seal_header",
    "write_stream",
]

MAGIC: Final = b"XBGW"
VERSION: Final = 1
SUITE_P256_HKDF_A256GCM: Final = 1
#: The allow list of suites; anything else is refused before any key is touched.
SUITES: Final[dict[int, str]] = {
    SUITE_P256_HKDF_A256GCM: "P256-ECDH-ES+A256KW / HKDF-SHA256 / AES-256-GCM",
}

PREFIX_LEN: Final = 8  # magic, version, suite, header_len
MAX_HEADER_LEN: Final = 4096
MIN_SEGMENT_SIZE: Final = 64
MAX_SEGMENT_SIZE: Final = 16 * 1024 * 1024
DEFAULT_SEGMENT_SIZE: Final = 1024 * 1024
TAG_LEN: Final = 16
#: A stream has at most this many segments, so the u32 index never wraps.
MAX_SEGMENTS: Final = 2**32 - 1

DATA_KEY_LEN: Final = 32
SALT_LEN: Final = 32
NONCE_PREFIX_LEN: Final = 7
DIGEST_LEN: Final = 32
COMMITMENT_LEN: Final = 32
MAX_WRAPPED_KEYS: Final = 4
P256_POINT_LEN: Final = 65
MAX_TRANSFER_ID_LEN: Final = 64

PAYLOAD_LABEL: Final = b"XBGW-STREAM-1 payload"
ECDH_LABEL: Final = b"XBGW-STREAM-1 ECDH-ES+A256KW"
STORAGE_LABEL: Final = b"XBGW-STREAM-1 storage"

# Same alphabet as the passport ``jti``, which is the transfer id.
_TRANSFER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class WrapKind(IntEnum):
    """How a wrapped key was made; the code is its byte on the wire."""

    ECDH_ES_A256KW = 1  # to a partner's transport key (RFC 3394 under an ECDH-ES KEK)
    STORAGE_A256KWP = 2  # under our HSM storage key (RFC 5649 of key || binding)


_KIND_PURPOSE: Final = {
    WrapKind.ECDH_ES_A256KW: Purpose.TRANSPORT,
    WrapKind.STORAGE_A256KWP: Purpose.STORAGE,
}
_STORAGE_BLOB_LEN: Final = DATA_KEY_LEN + DIGEST_LEN
_WRAPPED_LEN: Final = {
    WrapKind.ECDH_ES_A256KW: DATA_KEY_LEN + 8,  # RFC 3394 adds one 64-bit block
    WrapKind.STORAGE_A256KWP: _STORAGE_BLOB_LEN + 8,  # RFC 5649 of 64 bytes: 72
}
_KEY_REF_MIN_LEN: Final = 1 + 1 + 1 + 4
#: The shortest possible header: one-character ids, one storage-wrapped key.
MIN_HEADER_LEN: Final = (
    PREFIX_LEN
    + 4
    + SALT_LEN
    + NONCE_PREFIX_LEN
    + 3 * 2
    + DIGEST_LEN
    + 1
    + (1 + _KEY_REF_MIN_LEN + 1 + _WRAPPED_LEN[WrapKind.STORAGE_A256KWP])
    + COMMITMENT_LEN
)


# --- what we need from the key holder (gateway.hsm.Hsm, tests.fakes.SoftwareHsm) -------------


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


class ByteReader(Protocol):
    """Anything with ``read(n)`` returning at most ``n`` bytes, ``b""`` at EOF (BinaryIO)."""

    def read(self, size: int = -1, /) -> bytes: ...


class ByteWriter(Protocol):
    """Anything with ``write(data)`` (BinaryIO)."""

    def write(self, data: bytes, /) -> object: ...


# --- header objects -------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamContext:
    """Who sends what to whom under which passport; part of the header core."""

    transfer_id: str
    sender_id: str
    receiver_id: str
    passport_digest: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.transfer_id, str) or not _TRANSFER_ID.fullmatch(self.transfer_id):
            raise ValueError(
                f"transfer id {self.transfer_id!r} must be 1-{MAX_TRANSFER_ID_LEN} characters "
                "of A-Z a-z 0-9 . _ -, starting with a letter or digit"
            )
        check_gateway_id(self.sender_id)
        check_gateway_id(self.receiver_id)
        if not isinstance(self.passport_digest, bytes) or len(self.passport_digest) != DIGEST_LEN:
            raise ValueError(
                f"passport digest must be {DIGEST_LEN} bytes, got {len(self.passport_digest)}"
            )

    def encode(self) -> bytes:
        """The context as it appears in the header core."""
        return (
            _short_text(self.transfer_id)
            + _short_text(self.sender_id)
            + _short_text(self.receiver_id)
            + self.passport_digest
        )


@dataclass(frozen=True)
class WrappedKey:
    """The data key wrapped to one key version, named in clear by ``key_ref``."""

    kind: WrapKind
    key_ref: KeyRef
    ephemeral_point: bytes | None  # kind 1 only
    wrapped: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.kind, WrapKind):
            raise ValueError(f"wrapped key kind must be a WrapKind, got {self.kind!r}")
        purpose = _KIND_PURPOSE[self.kind]
        if self.key_ref.purpose is not purpose:
            raise ValueError(
                f"a kind {int(self.kind)} wrapped key must name a {purpose.value} key, "
                f"not {self.key_ref}"
            )
        if self.kind is WrapKind.ECDH_ES_A256KW:
            point = self.ephemeral_point
            if point is None or len(point) != P256_POINT_LEN or point[0] != 4:
                raise ValueError(
                    "a kind 1 wrapped key needs a 65-byte uncompressed P-256 ephemeral point"
                )
            try:
                ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
            except ValueError:
                raise ValueError("the ephemeral point is not on the P-256 curve") from None
        elif self.ephemeral_point is not None:
            raise ValueError("a kind 2 wrapped key has no ephemeral point")
        expected = _WRAPPED_LEN[self.kind]
        if len(self.wrapped) != expected:
            raise ValueError(
                f"a kind {int(self.kind)} wrapped key must be {expected} bytes, "
                f"got {len(self.wrapped)}"
            )

    def encode(self) -> bytes:
        """The entry as it appears in the header's wrapped-key list."""
        return (
            bytes([self.kind])
            + self.key_ref.encode()
            + (self.ephemeral_point or b"")
            + bytes([len(self.wrapped)])
            + self.wrapped
        )


@dataclass(frozen=True)
class Header:
    """An XBGW-STREAM-1 header; construction validates every field (``ValueError``)."""

    version: int
    suite: int
    segment_size: int
    salt: bytes
    nonce_prefix: bytes
    context: StreamContext
    wrapped_keys: tuple[WrappedKey, ...]
    commitment: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "wrapped_keys", tuple(self.wrapped_keys))
        _check_core_fields(
            self.version, self.suite, self.segment_size, self.salt, self.nonce_prefix
        )
        if not 1 <= len(self.wrapped_keys) <= MAX_WRAPPED_KEYS:
            raise ValueError(
                f"a header carries 1-{MAX_WRAPPED_KEYS} wrapped keys, got {len(self.wrapped_keys)}"
            )
        refs = [key.key_ref for key in self.wrapped_keys]
        if len(set(refs)) != len(refs):
            raise ValueError("two wrapped keys name the same key reference")
        if len(self.commitment) != COMMITMENT_LEN:
            raise ValueError(
                f"commitment must be {COMMITMENT_LEN} bytes, got {len(self.commitment)}"
            )

    def core(self) -> bytes:
        """The bytes the payload is bound to: everything but header_len, keys, commitment."""
        return _core(
            self.segment_size,
            self.salt,
            self.nonce_prefix,
            self.context,
            version=self.version,
            suite=self.suite,
        )

    def core_digest(self) -> bytes:
        """SHA-256 of :meth:`core`: HKDF info, segment AAD and wrap binding."""
        return hashlib.sha256(self.core()).digest()

    def encode(self) -> bytes:
        """The header bytes, ``header_len`` filled in."""
        core = self.core()
        keys = bytes([len(self.wrapped_keys)]) + b"".join(k.encode() for k in self.wrapped_keys)
        length = len(core) + 2 + len(keys) + COMMITMENT_LEN
        if length > MAX_HEADER_LEN:
            raise ValueError(f"header would be {length} bytes, over the {MAX_HEADER_LEN} limit")
        return core[:6] + length.to_bytes(2, "big") + core[6:] + keys + self.commitment

    @classmethod
    def decode(cls, data: bytes) -> Header:
        """Parse exactly one header; ``data`` must hold nothing else.

        Raises ``HeaderFormatError`` (malformed, truncated, oversized, trailing bytes),
        ``UnsupportedVersionError``, ``UnsupportedSuiteError`` or ``SegmentSizeError``.
        """
        data = bytes(data)  # a bytearray or memoryview must not end up inside the fields
        length = header_length(data[:PREFIX_LEN])
        if len(data) < length:
            raise HeaderFormatError(f"header truncated: {len(data)} of {length} bytes")
        if len(data) > length:
            raise HeaderFormatError(f"{len(data) - length} bytes follow the {length}-byte header")
        cursor = _Cursor(data, PREFIX_LEN)
        segment_size = cursor.u32("segment size")
        if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
            raise SegmentSizeError(
                f"segment size {segment_size} is outside {MIN_SEGMENT_SIZE}..{MAX_SEGMENT_SIZE}"
            )
        salt = cursor.take(SALT_LEN, "salt")
        nonce_prefix = cursor.take(NONCE_PREFIX_LEN, "nonce prefix")
        transfer_id = cursor.text("transfer id")
        sender_id = cursor.text("sender id")
        receiver_id = cursor.text("receiver id")
        passport_digest = cursor.take(DIGEST_LEN, "passport digest")
        try:
            context = StreamContext(transfer_id, sender_id, receiver_id, passport_digest)
        except ValueError as exc:
            raise HeaderFormatError(f"header context: {exc}") from None
        count = cursor.u8("wrapped key count")
        if not 1 <= count <= MAX_WRAPPED_KEYS:
            raise HeaderFormatError(f"header carries {count} wrapped keys; 1-{MAX_WRAPPED_KEYS}")
        wrapped_keys = tuple(_decode_wrapped_key(cursor, i) for i in range(count))
        commitment = cursor.take(COMMITMENT_LEN, "commitment")
        if cursor.pos != length:
            raise HeaderFormatError(
                f"{length - cursor.pos} bytes follow the commitment inside the header"
            )
        try:
            return cls(
                version=data[4],
                suite=data[5],
                segment_size=segment_size,
                salt=salt,
                nonce_prefix=nonce_prefix,
                context=context,
                wrapped_keys=wrapped_keys,
                commitment=commitment,
            )
        except ValueError as exc:
            raise HeaderFormatError(str(exc)) from None

    def with_wrapped_keys(self, wrapped_keys: Sequence[WrappedKey]) -> Header:
        """The same header with another wrapped-key list: core, commitment, payload unchanged."""
        return replace(self, wrapped_keys=tuple(wrapped_keys))


def header_length(prefix: bytes) -> int:
    """Check the 8-byte prefix (magic, version, suite, header_len); return header_len.

    Lets a reader learn how many bytes to read before it reads them, within the limit.
    """
    if len(prefix) < PREFIX_LEN:
        raise HeaderFormatError(f"header truncated: {len(prefix)} of {PREFIX_LEN} prefix bytes")
    if prefix[:4] != MAGIC:
        raise HeaderFormatError("not an XBGW-STREAM header (bad magic)")
    if prefix[4] != VERSION:
        raise UnsupportedVersionError(
            f"stream format version {prefix[4]} is not supported (this gateway speaks {VERSION})"
        )
    if prefix[5] not in SUITES:
        allowed = ", ".join(f"{code} = {name}" for code, name in SUITES.items())
        raise UnsupportedSuiteError(f"suite {prefix[5]} is not allowed (allowed: {allowed})")
    length = int.from_bytes(prefix[6:8], "big")
    if length > MAX_HEADER_LEN:
        raise HeaderFormatError(f"header length {length} exceeds the limit of {MAX_HEADER_LEN}")
    if length < MIN_HEADER_LEN:
        raise HeaderFormatError(f"header length {length} is below the minimum of {MIN_HEADER_LEN}")
    return length


def read_header(src: ByteReader) -> Header:
    """Read one header from ``src``: 8 bytes, then at most ``MAX_HEADER_LEN - 8`` more."""
    prefix = _read_exact(src, PREFIX_LEN)
    length = header_length(prefix)
    rest = _read_exact(src, length - PREFIX_LEN)
    if len(rest) != length - PREFIX_LEN:
        raise HeaderFormatError(f"header truncated: {PREFIX_LEN + len(rest)} of {length} bytes")
    return Header.decode(prefix + rest)


# --- sealing, opening, re-wrapping ----------------------------------------------------------


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
    been seen to return a wrong key under threads; see FIELD-NOTES.md). A storage version
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


# --- segments -------------------------------------------------------------------------------


class StreamEncryptor:
    """Encrypts the segments of one header's stream.

    Stateless per segment: segment ``i`` always gets the same nonce, so calling
    :meth:`encrypt_segment` twice for one index with different plaintext reuses a GCM nonce.
    Only resend what was sent before (see the module docstring).
    """

    def __init__(self, header: Header, data_key: bytes) -> None:
        self.header = header
        self._aead = AESGCM(_payload_key(header, data_key))
        self._aad = header.core_digest()

    def encrypt_segment(self, index: int, plaintext: bytes, final: bool) -> bytes:
        """Segment ``index``; ``ValueError`` if its length is impossible at that position."""
        size = self.header.segment_size
        if not 0 <= index < MAX_SEGMENTS:
            raise ValueError(f"segment index must be between 0 and {MAX_SEGMENTS - 1}, got {index}")
        if final:
            if len(plaintext) > size:
                raise ValueError(
                    f"a final segment holds at most {size} bytes, got {len(plaintext)}"
                )
            if not plaintext and index != 0:
                raise ValueError("only segment 0 (an empty stream) may be empty")
        else:
            if index == MAX_SEGMENTS - 1:
                raise ValueError(
                    f"segment {index} must be final: a stream has at most {MAX_SEGMENTS} segments"
                )
            if len(plaintext) != size:
                raise ValueError(
                    f"a non-final segment holds exactly {size} bytes, got {len(plaintext)}"
                )
        return self._aead.encrypt(
            _nonce(self.header.nonce_prefix, index, final), plaintext, self._aad
        )

    def iter_segments(
        self, reader: ByteReader, *, start_index: int = 0
    ) -> Iterator[tuple[int, bool, bytes]]:
        """Yield ``(index, final, ciphertext)`` for the plaintext in ``reader``.

        One segment is read at a time, plus one byte of lookahead to learn whether it is the
        last, so memory stays at about two segments (plus the ciphertext the caller still
        holds) whatever the size. To resume at segment ``n``, position ``reader`` at
        ``n * segment_size`` and pass ``start_index=n``.
        """
        size = self.header.segment_size
        index = start_index
        current = _read_exact(reader, size)
        while True:
            lookahead = _read_exact(reader, 1) if len(current) == size else b""
            final = not lookahead
            ciphertext = self.encrypt_segment(index, current, final)
            current = b""
            yield index, final, ciphertext
            if final:
                return
            ciphertext = b""
            index += 1
            current = lookahead + _read_exact(reader, size - 1)


class StreamDecryptor:
    """Decrypts and verifies one header's segments strictly in order.

    A segment that fails any check leaves the state as it was, so the same index may be
    retried (a resumed upload). Plaintext returned before :meth:`finish` succeeded is not
    yet known to be complete.
    """

    def __init__(self, header: Header, data_key: bytes, start_index: int = 0) -> None:
        if not 0 <= start_index < MAX_SEGMENTS:
            raise ValueError(
                f"start index must be between 0 and {MAX_SEGMENTS - 1}, got {start_index}"
            )
        self.header = header
        self._aead = AESGCM(_payload_key(header, data_key))
        self._aad = header.core_digest()
        self._next = start_index
        self._done = False

    @property
    def next_index(self) -> int:
        """The index the next segment must have (the resume point)."""
        return self._next

    @property
    def done(self) -> bool:
        """True once the final segment has been verified."""
        return self._done

    def decrypt_segment(self, index: int, ciphertext: bytes, final: bool) -> bytes:
        """Verify and decrypt segment ``index``; see the class docstring for the rules."""
        if self._done:
            raise TrailingDataError(
                f"segment {index} arrived after the final segment {self._next - 1}"
            )
        if index != self._next:
            what = (
                "a repeat or a replay"
                if index < self._next
                else "an earlier segment is missing or out of order"
            )
            raise SegmentOrderError(f"expected segment {self._next}, got {index} ({what})")
        if not final and index == MAX_SEGMENTS - 1:
            raise SegmentOrderError(
                f"segment {index} is not final, but a stream has at most {MAX_SEGMENTS} segments"
            )
        self._check_length(index, len(ciphertext), final)
        try:
            plaintext = self._open(index, ciphertext, final)
        except InvalidTag:
            raise SegmentAuthenticationError(
                f"segment {index}{' (final)' if final else ''} failed authentication"
            ) from None
        self._next = index + 1
        self._done = final
        return plaintext

    def finish(self) -> None:
        """Raise ``TruncatedStreamError`` unless the final segment has been verified."""
        if not self._done:
            raise TruncatedStreamError(
                f"the stream ended before its final segment (next expected: {self._next})"
            )

    def _check_length(self, index: int, length: int, final: bool) -> None:
        size = self.header.segment_size
        if final:
            low = TAG_LEN if index == 0 else TAG_LEN + 1
            if not low <= length <= size + TAG_LEN:
                raise SegmentLengthError(
                    f"final segment {index} has {length} bytes; it must have {low}-{size + TAG_LEN}"
                )
        elif length != size + TAG_LEN:
            raise SegmentLengthError(
                f"segment {index} has {length} bytes; a non-final segment has {size + TAG_LEN}"
            )

    def _open(self, index: int, ciphertext: bytes, final: bool) -> bytes:
        return self._aead.decrypt(
            _nonce(self.header.nonce_prefix, index, final), ciphertext, self._aad
        )

    def _authenticates_as(self, index: int, ciphertext: bytes, final: bool) -> bool:
        """Would this segment verify with this final flag? (diagnosis only; no state change)"""
        try:
            self._check_length(index, len(ciphertext), final)
            self._open(index, ciphertext, final)
        except (SegmentLengthError, InvalidTag):
            return False
        return True


# --- whole stream files ---------------------------------------------------------------------


def write_stream(header: Header, data_key: bytes, src: ByteReader, dst: ByteWriter) -> int:
    """Write ``header || segments`` of the plaintext in ``src``; return the bytes written."""
    encryptor = StreamEncryptor(header, data_key)
    encoded = header.encode()
    dst.write(encoded)
    written = len(encoded)
    for _, _, ciphertext in encryptor.iter_segments(src):
        dst.write(ciphertext)
        written += len(ciphertext)
    return written


def read_stream(
    src: ByteReader,
    dst: ByteWriter,
    me: str,
    holder: KeyHolder,
    *,
    transport_versions: Collection[int] | None = None,
    storage_versions: Collection[int] | None = None,
) -> int:
    """Verify and decrypt a stream file to ``dst``; return the plaintext bytes written.

    Plaintext is written segment by segment as it verifies: ``dst`` holds a complete
    transfer only if this returns. The final segment is the one that ends at EOF; a full
    segment that only verifies as final with bytes after it raises ``TrailingDataError``, a
    last segment that only verifies as non-final raises ``TruncatedStreamError``. (Bytes after
    a *short* final segment cannot be told from corruption: ``SegmentAuthenticationError``.)
    """
    header = read_header(src)
    data_key = open_header(
        header,
        me,
        holder,
        transport_versions=transport_versions,
        storage_versions=storage_versions,
    )
    decryptor = StreamDecryptor(header, data_key)
    chunk_len = header.segment_size + TAG_LEN
    written = 0
    chunk = _read_exact(src, chunk_len)
    if not chunk:
        raise TruncatedStreamError("the stream has a header but no segments")
    while True:
        index = decryptor.next_index
        lookahead = _read_exact(src, 1) if len(chunk) == chunk_len else b""
        final = not lookahead
        try:
            plaintext = decryptor.decrypt_segment(index, chunk, final)
        except SegmentAuthenticationError:
            if decryptor._authenticates_as(index, chunk, not final):
                if final:
                    raise TruncatedStreamError(
                        f"the stream ends with segment {index}, which is not its final segment"
                    ) from None
                raise TrailingDataError(f"data follows the final segment {index}") from None
            raise
        chunk = b""
        dst.write(plaintext)
        written += len(plaintext)
        plaintext = b""
        if final:
            decryptor.finish()
            return written
        chunk = lookahead + _read_exact(src, chunk_len - 1)


# --- helpers --------------------------------------------------------------------------------


class _Cursor:
    """Bounded reads from a header: every length is checked before it is used."""

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise HeaderFormatError(
                f"the header's fields run past its {len(self.data)} bytes in the {what}"
            )
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "big")

    def text(self, what: str) -> str:
        raw = self.take(self.u8(what), what)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise HeaderFormatError(f"the {what} is not ASCII") from None


def _decode_wrapped_key(cursor: _Cursor, number: int) -> WrappedKey:
    what = f"wrapped key {number}"
    code = cursor.u8(what)
    try:
        kind = WrapKind(code)
    except ValueError:
        raise HeaderFormatError(f"{what} has unknown kind {code}") from None
    owner = cursor.text(f"{what} owner")
    purpose = Purpose.from_code(cursor.u8(f"{what} purpose"))
    version = cursor.u32(f"{what} version")
    point = cursor.take(P256_POINT_LEN, what) if kind is WrapKind.ECDH_ES_A256KW else None
    wrapped = cursor.take(cursor.u8(what), what)
    try:
        return WrappedKey(kind, KeyRef(owner, purpose, version), point, wrapped)
    except ValueError as exc:
        raise HeaderFormatError(f"{what}: {exc}") from None


def _check_core_fields(
    version: int, suite: int, segment_size: int, salt: bytes, nonce_prefix: bytes
) -> None:
    if version != VERSION:
        raise ValueError(f"version must be {VERSION}, got {version}")
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {sorted(SUITES)}, got {suite}")
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise ValueError(
            f"segment size must be between {MIN_SEGMENT_SIZE} and {MAX_SEGMENT_SIZE}, "
            f"got {segment_size}"
        )
    if len(salt) != SALT_LEN:
        raise ValueError(f"salt must be {SALT_LEN} bytes, got {len(salt)}")
    if len(nonce_prefix) != NONCE_PREFIX_LEN:
        raise ValueError(f"nonce prefix must be {NONCE_PREFIX_LEN} bytes, got {len(nonce_prefix)}")


def _check_data_key(data_key: bytes) -> None:
    if len(data_key) != DATA_KEY_LEN:
        raise ValueError(f"data key must be {DATA_KEY_LEN} bytes, got {len(data_key)}")


def _core(
    segment_size: int,
    salt: bytes,
    nonce_prefix: bytes,
    context: StreamContext,
    *,
    version: int = VERSION,
    suite: int = SUITE_P256_HKDF_A256GCM,
) -> bytes:
    return (
        MAGIC
        + bytes([version, suite])
        + segment_size.to_bytes(4, "big")
        + salt
        + nonce_prefix
        + context.encode()
    )


def _short_text(value: str) -> bytes:
    raw = value.encode("ascii")
    return bytes([len(raw)]) + raw


def _point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def _nonce(prefix: bytes, index: int, final: bool) -> bytes:
    return prefix + index.to_bytes(4, "big") + (b"\x01" if final else b"\x00")


def _read_exact(reader: ByteReader, n: int) -> bytes:
    """Up to ``n`` bytes: fewer only at EOF (pipes and sockets may return short reads)."""
    if n <= 0:
        return b""
    data = reader.read(n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = reader.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)
