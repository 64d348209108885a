"""XBGW-STREAM-1 headers: constants, the header objects, bounded parsing.

The byte layout and the reasons for it are in the package docstring (``gateway.envelope``).
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Final, Protocol

from cryptography.hazmat.primitives.asymmetric import ec

from gateway.errors import (
    HeaderFormatError,
    SegmentSizeError,
    UnsupportedSuiteError,
    UnsupportedVersionError,
)
from gateway.keys import KeyRef, Purpose, check_gateway_id

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
#: Headers kept parsed by :meth:`Header.decode` (~1 KiB each): the transfers in flight.
DECODED_HEADERS: Final = 256


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


class ByteReader(Protocol):
    """Anything with ``read(n)`` returning at most ``n`` bytes, ``b""`` at EOF (BinaryIO)."""

    def read(self, size: int = -1, /) -> bytes: ...


class ByteWriter(Protocol):
    """Anything with ``write(data)`` (BinaryIO)."""

    def write(self, data: bytes, /) -> object: ...


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
        # Bytes, not a buffer the caller may change later (bytes(b) of bytes is b itself).
        object.__setattr__(self, "wrapped", bytes(self.wrapped))
        if self.ephemeral_point is not None:
            object.__setattr__(self, "ephemeral_point", bytes(self.ephemeral_point))
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
        for name in ("salt", "nonce_prefix", "commitment"):  # bytes, as in WrappedKey
            object.__setattr__(self, name, bytes(getattr(self, name)))
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
        encoded = core[:6] + length.to_bytes(2, "big") + core[6:] + keys + self.commitment
        _remember(encoded, self)  # construction checked every field: it decodes to itself
        return encoded

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Header:
        """Parse exactly one header; ``data`` must hold nothing else.

        Raises ``HeaderFormatError`` (malformed, truncated, oversized, trailing bytes),
        ``UnsupportedVersionError``, ``UnsupportedSuiteError`` or ``SegmentSizeError``.

        Why the same bytes give back the same (immutable) header: a transfer's header is read
        from its ledger row by several steps of one send or one offer, and each full parse
        checks every ephemeral point on the curve. Only good headers are kept (an error is
        raised again each time), at most ``DECODED_HEADERS`` of them: those parsed, and those
        :meth:`encode` wrote -- a header that was constructed passed the same checks as a
        parse, so its bytes decode to an equal header (a new send reads back the header it
        just sealed).
        """
        data = bytes(data)  # a bytearray or memoryview must not end up inside
        with _decoded_lock:
            known = _decoded.get(data)
            if known is not None:
                _decoded.move_to_end(data)
                return known
        header = _parse(data)
        _remember(data, header)
        return header

    def with_wrapped_keys(self, wrapped_keys: Sequence[WrappedKey]) -> Header:
        """The same header with another wrapped-key list: core, commitment, payload unchanged."""
        return replace(self, wrapped_keys=tuple(wrapped_keys))


#: Good headers by their exact bytes, least recently used first (see :meth:`Header.decode`).
_decoded: OrderedDict[bytes, Header] = OrderedDict()
_decoded_lock = threading.Lock()


def _remember(data: bytes, header: Header) -> None:
    with _decoded_lock:
        _decoded[data] = header
        _decoded.move_to_end(data)
        while len(_decoded) > DECODED_HEADERS:
            _decoded.popitem(last=False)


def _parse(data: bytes) -> Header:
    """:meth:`Header.decode`'s parse."""
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
        return Header(
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
    purpose_code = cursor.u8(f"{what} purpose")
    try:
        purpose = Purpose.from_code(purpose_code)
    except ValueError as exc:
        raise HeaderFormatError(str(exc)) from None
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
