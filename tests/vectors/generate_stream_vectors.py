"""Generate the XBGW-STREAM-1 known-answer vectors (``tests/vectors/stream.json``).

Usage: ``python tests/vectors/generate_stream_vectors.py [OUTPUT]`` (from the repository root,
with the project's virtualenv; the default OUTPUT is ``tests/vectors/stream.json``).

Independence: this script imports nothing from ``gateway``. It is a second, deliberately small
implementation of XBGW-STREAM-1, written from the byte layout in the docstring of
``gateway/envelope/__init__.py`` and built only on ``cryptography`` primitives (AES-GCM, HKDF,
ECDH, AES-KW, AES-KWP) and ``hashlib``. The vectors are therefore known answers: if the
gateway and this script ever disagree, one of them has left the specification, and the
generator must not be changed to agree with the gateway without first reading the spec.
``tests/unit/test_envelope_vectors.py`` checks the gateway against the vectors, some values
against the ``openssl`` command line as well, and that the committed file is exactly what this
script writes.

Every input is derived from fixed labels, so the output is the same on every run. The
recipient's private transport scalar and storage key are in the file, so any implementation
can check itself against the vectors.

Valid vectors give every intermediate value (core, core digest, payload key, commitment, each
wrapped key's ECDH secret, KEK or storage blob, nonces, segment ciphertexts, the header and the
stream file). Invalid vectors name, as a string, the exact ``gateway.errors`` class a reader
must raise, and a mode:

* ``stream``: the bytes of a stream file, read as the recipient (the final segment is the one
  that ends at EOF);
* ``segments``: a header plus ``(index, final, ciphertext)`` segments as they would arrive over
  gRPC, fed in order to a reader that opens the header as the recipient and then finishes.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import aes_key_wrap, aes_key_wrap_with_padding

OUTPUT = Path(__file__).resolve().parent / "stream.json"

Json = dict[str, Any]

# --- XBGW-STREAM-1 constants, from the specification ------------------------------------------

MAGIC = b"XBGW"
VERSION = 1
SUITE = 1  # P256-ECDH-ES+A256KW / HKDF-SHA256 / AES-256-GCM
KIND_ECDH_ES = 1  # ECDH-ES+A256KW to a partner's transport key
KIND_STORAGE = 2  # A256KWP under a storage key
PURPOSE_CODES = {"transport": 1, "signing": 2, "storage": 3}
PAYLOAD_INFO = b"XBGW-STREAM-1 payload"
ECDH_INFO = b"XBGW-STREAM-1 ECDH-ES+A256KW"
STORAGE_INFO = b"XBGW-STREAM-1 storage"
MAX_HEADER_LEN = 4096
MAX_SEGMENT_SIZE = 16 * 1024 * 1024
TAG_LEN = 16

# --- Fixed inputs ---------------------------------------------------------------------------

SENDER = "gw-a.example"
RECIPIENT = "gw-b.example"
OTHER = "gw-c.example"
SEGMENT_SIZE = 64
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def fixed(label: str, length: int) -> bytes:
    """``length`` deterministic bytes named by ``label`` (SHA-256 in counter mode)."""
    out = b""
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(f"xbgw-vectors {label} {counter}".encode()).digest()
        counter += 1
    return out[:length]


def fixed_scalar(label: str) -> int:
    """A deterministic P-256 private scalar in 1..n-1."""
    return int.from_bytes(fixed(label, 32), "big") % (_P256_ORDER - 1) + 1


def private_key(scalar: int) -> ec.EllipticCurvePrivateKey:
    """The P-256 private key with this scalar."""
    return ec.derive_private_key(scalar, ec.SECP256R1())


def point_of(scalar: int) -> bytes:
    """The uncompressed point ``0x04 || x || y`` of a P-256 scalar."""
    return (
        private_key(scalar)
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )


RECIPIENT_SCALAR = fixed_scalar("recipient transport v1")
STORAGE_KEY = fixed("recipient storage v1", 32)

# --- Encoding -------------------------------------------------------------------------------


def u8(value: int) -> bytes:
    return value.to_bytes(1, "big")


def u16(value: int) -> bytes:
    return value.to_bytes(2, "big")


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def short(value: bytes) -> bytes:
    """A u8 length, then the bytes (the spec's ``1+n`` fields)."""
    return u8(len(value)) + value


@dataclass(frozen=True)
class KeyRef:
    """A key reference: owner, purpose and version, written ``owner/purpose/version``."""

    owner: str
    purpose: str
    version: int

    def __str__(self) -> str:
        return f"{self.owner}/{self.purpose}/{self.version}"

    def encode(self) -> bytes:
        """``u8 n || owner || purpose u8 || version u32be``."""
        return short(self.owner.encode()) + u8(PURPOSE_CODES[self.purpose]) + u32(self.version)


@dataclass(frozen=True)
class Context:
    """The transfer fields of the header core."""

    transfer_id: str
    sender_id: str
    receiver_id: str
    passport_digest: bytes


def encode_core(segment_size: int, salt: bytes, nonce_prefix: bytes, context: Context) -> bytes:
    """The header without ``header_len``, the wrapped keys and the commitment."""
    return (
        MAGIC
        + u8(VERSION)
        + u8(SUITE)
        + u32(segment_size)
        + salt
        + nonce_prefix
        + short(context.transfer_id.encode())
        + short(context.sender_id.encode())
        + short(context.receiver_id.encode())
        + context.passport_digest
    )


def encode_header(core: bytes, entries: list[bytes], commitment: bytes) -> bytes:
    """Insert ``header_len`` after the first 6 bytes of ``core``; append keys and commitment."""
    tail = u8(len(entries)) + b"".join(entries) + commitment
    header_len = len(core) + 2 + len(tail)
    return core[:6] + u16(header_len) + core[6:] + tail


def kind1_entry(ref: KeyRef, ephemeral_point: bytes, wrapped: bytes) -> bytes:
    return u8(KIND_ECDH_ES) + ref.encode() + ephemeral_point + short(wrapped)


def kind2_entry(ref: KeyRef, wrapped: bytes) -> bytes:
    return u8(KIND_STORAGE) + ref.encode() + short(wrapped)


# --- Cryptography ---------------------------------------------------------------------------


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def derive_payload(data_key: bytes, salt: bytes, core_digest: bytes) -> tuple[bytes, bytes]:
    """``payload_key || commitment = HKDF-SHA256(data key, salt, info, 64)``."""
    okm = hkdf(data_key, salt, PAYLOAD_INFO + core_digest, 64)
    return okm[:32], okm[32:]


def nonce(prefix: bytes, index: int, final: bool) -> bytes:
    """``nonce_prefix || u32(index) || final``: 12 bytes."""
    return prefix + u32(index) + u8(1 if final else 0)


def split(plaintext: bytes, segment_size: int) -> list[tuple[int, bool, bytes]]:
    """The canonical segmentation: full non-final segments, then a final one of 1..size bytes
    (or one empty final segment for an empty stream)."""
    chunks = [plaintext[i : i + segment_size] for i in range(0, len(plaintext), segment_size)]
    chunks = chunks or [b""]
    return [(i, i == len(chunks) - 1, chunk) for i, chunk in enumerate(chunks)]


@dataclass(frozen=True)
class ToTransport:
    """A kind-1 wrap to a partner's P-256 transport key, with a fixed ephemeral scalar."""

    ref: KeyRef
    recipient_point: bytes
    ephemeral_scalar: int


@dataclass(frozen=True)
class ToStorage:
    """A kind-2 wrap under an AES-256 storage key."""

    ref: KeyRef
    storage_key: bytes


@dataclass(frozen=True)
class Wrapped:
    """One encoded wrapped key and the intermediate values that made it."""

    entry: bytes
    record: Json


def wrap(spec: ToTransport | ToStorage, data_key: bytes, core_digest: bytes) -> Wrapped:
    """Wrap ``data_key`` as the spec's kind 1 or kind 2 describes."""
    ref_bytes = spec.ref.encode()
    if isinstance(spec, ToTransport):
        ephemeral = private_key(spec.ephemeral_scalar)
        ephemeral_point = point_of(spec.ephemeral_scalar)
        recipient = ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), spec.recipient_point
        )
        shared = ephemeral.exchange(ec.ECDH(), recipient)  # the x coordinate
        kek = hkdf(
            shared, ephemeral_point + spec.recipient_point, ECDH_INFO + ref_bytes + core_digest, 32
        )
        wrapped = aes_key_wrap(kek, data_key)
        return Wrapped(
            kind1_entry(spec.ref, ephemeral_point, wrapped),
            {
                "kind": KIND_ECDH_ES,
                "key_ref": str(spec.ref),
                "key_ref_encoded": ref_bytes.hex(),
                "recipient_public_point": spec.recipient_point.hex(),
                "ephemeral_private_scalar": f"{spec.ephemeral_scalar:064x}",
                "ephemeral_point": ephemeral_point.hex(),
                "shared_secret": shared.hex(),
                "kek": kek.hex(),
                "wrapped": wrapped.hex(),
            },
        )
    blob = data_key + hashlib.sha256(STORAGE_INFO + ref_bytes + core_digest).digest()
    wrapped = aes_key_wrap_with_padding(spec.storage_key, blob)
    return Wrapped(
        kind2_entry(spec.ref, wrapped),
        {
            "kind": KIND_STORAGE,
            "key_ref": str(spec.ref),
            "key_ref_encoded": ref_bytes.hex(),
            "blob": blob.hex(),
            "wrapped": wrapped.hex(),
        },
    )


@dataclass(frozen=True)
class Segment:
    index: int
    final: bool
    nonce: bytes
    ciphertext: bytes


class Stream:
    """One deterministic XBGW-STREAM-1 stream: inputs, derived values, header, segments."""

    def __init__(
        self,
        name: str,
        plaintext: bytes,
        segment_size: int = SEGMENT_SIZE,
        *,
        wraps: list[ToTransport | ToStorage] | None = None,
        context: Context | None = None,
    ) -> None:
        self.name = name
        self.plaintext = plaintext
        self.segment_size = segment_size
        self.context = context or make_context(name)
        self.data_key = fixed(f"{name} data key", 32)
        self.salt = fixed(f"{name} salt", 32)
        self.nonce_prefix = fixed(f"{name} nonce prefix", 7)
        self.ephemeral_scalar = fixed_scalar(f"{name} ephemeral")
        self.wraps = wraps or [to_recipient(self.ephemeral_scalar)]
        self.core = encode_core(segment_size, self.salt, self.nonce_prefix, self.context)
        self.core_digest = hashlib.sha256(self.core).digest()
        self.payload_key, self.commitment = derive_payload(
            self.data_key, self.salt, self.core_digest
        )
        self.wrapped = [wrap(spec, self.data_key, self.core_digest) for spec in self.wraps]
        self.header = self.header_with([w.entry for w in self.wrapped])
        self.segments = [
            self.seal(index, final, chunk) for index, final, chunk in split(plaintext, segment_size)
        ]

    def header_with(self, entries: list[bytes], commitment: bytes | None = None) -> bytes:
        """This stream's header with other wrapped keys (or another commitment)."""
        return encode_header(
            self.core, entries, self.commitment if commitment is None else commitment
        )

    def seal(self, index: int, final: bool, chunk: bytes) -> Segment:
        """Segment ``index`` of this stream, with any content and final flag."""
        n = nonce(self.nonce_prefix, index, final)
        return Segment(
            index, final, n, AESGCM(self.payload_key).encrypt(n, chunk, self.core_digest)
        )

    def ct(self, index: int) -> bytes:
        return self.segments[index].ciphertext

    def body(self) -> bytes:
        """The segments back to back, as they follow the header in a stream file."""
        return b"".join(s.ciphertext for s in self.segments)

    def stream(self) -> bytes:
        return self.header + self.body()


def make_context(name: str, receiver: str = RECIPIENT) -> Context:
    return Context(
        transfer_id=f"xfer-{name}",
        sender_id=SENDER,
        receiver_id=receiver,
        passport_digest=hashlib.sha256(f"passport {name}".encode()).digest(),
    )


def longest_context(name: str) -> Context:
    """A context with a 64-character transfer id and a 63-character sender id."""
    transfer_id = "L" + fixed(f"{name} transfer id", 32).hex()[:63]
    sender = "s" + "-" * 8 + "." + fixed(f"{name} sender", 32).hex()[:53]
    return Context(transfer_id, sender, RECIPIENT, hashlib.sha256(b"passport longest").digest())


def to_recipient(ephemeral_scalar: int, scalar: int = RECIPIENT_SCALAR) -> ToTransport:
    """A kind-1 wrap to the recipient's transport key v1 (or to another P-256 key)."""
    return ToTransport(KeyRef(RECIPIENT, "transport", 1), point_of(scalar), ephemeral_scalar)


def to_storage(storage_key: bytes = STORAGE_KEY, version: int = 1) -> ToStorage:
    return ToStorage(KeyRef(RECIPIENT, "storage", version), storage_key)


def plaintext(name: str, length: int) -> bytes:
    return fixed(f"{name} plaintext", length)


# --- Valid vectors --------------------------------------------------------------------------


def valid_vector(stream: Stream, description: str, sealed_header: bytes | None = None) -> Json:
    """Every input and intermediate value of ``stream``.

    ``recipient_key_ref`` and ``ephemeral_private_scalar`` name the recipient's own kind-1
    wrap; ``storage_key_ref`` is set when the header was re-wrapped to storage, and then
    ``sealed_header`` is the header as first sealed to ``recipient_key_ref``."""
    storage = [w for w in stream.wraps if isinstance(w, ToStorage)]
    mine = [w for w in stream.wraps if isinstance(w, ToTransport) and w.ref.owner == RECIPIENT]
    ephemeral = mine[0].ephemeral_scalar if mine else stream.ephemeral_scalar
    vector: Json = {
        "name": stream.name,
        "description": description,
        "segment_size": stream.segment_size,
        "transfer_id": stream.context.transfer_id,
        "sender_id": stream.context.sender_id,
        "receiver_id": stream.context.receiver_id,
        "passport_digest": stream.context.passport_digest.hex(),
        "recipient_key_ref": f"{RECIPIENT}/transport/1",
        "storage_key_ref": str(storage[0].ref) if storage else None,
        "data_key": stream.data_key.hex(),
        "salt": stream.salt.hex(),
        "nonce_prefix": stream.nonce_prefix.hex(),
        "ephemeral_private_scalar": f"{ephemeral:064x}",
        "plaintext": stream.plaintext.hex(),
        "core": stream.core.hex(),
        "core_digest": stream.core_digest.hex(),
        "payload_key": stream.payload_key.hex(),
        "commitment": stream.commitment.hex(),
        "wrapped_keys": [w.record for w in stream.wrapped],
        "header": stream.header.hex(),
        "segments": [
            {
                "index": s.index,
                "final": s.final,
                "nonce": s.nonce.hex(),
                "ciphertext": s.ciphertext.hex(),
            }
            for s in stream.segments
        ],
        "stream": stream.stream().hex(),
    }
    if sealed_header is not None:
        vector["sealed_header"] = sealed_header.hex()
    return vector


def valid_vectors() -> list[Json]:
    size = SEGMENT_SIZE
    cases = [
        ("empty", 0, size, "empty stream: exactly one empty final segment"),
        ("one-byte", 1, size, "one byte: one final segment"),
        ("one-segment", size, size, "exactly one full segment, which is final"),
        ("one-segment-plus-one", size + 1, size, "a full segment, then a 1-byte final"),
        ("several-segments", 3 * size + 17, size, "three full segments and a short final"),
        ("several-segments-256", 2 * 256 + 100, 256, "segment size 256: two full and a final"),
        ("exact-multiple", 3 * size, size, "three full segments, the last one final"),
        ("max-segment-size", 100, MAX_SEGMENT_SIZE, "segment size 16 MiB: one short final"),
    ]
    vectors = [
        valid_vector(Stream(name, plaintext(name, length), seg), description)
        for name, length, seg, description in cases
    ]

    name = "rewrapped-to-storage"
    sealed = Stream(name, plaintext(name, 2 * size + 5))
    stored = Stream(name, sealed.plaintext, wraps=[to_storage()])
    vectors.append(
        valid_vector(
            stored,
            "re-wrapped at rest: the header sealed to the recipient (sealed_header) with its one "
            "wrapped key replaced by a kind-2 key under the storage key; core, commitment and "
            "segments unchanged",
            sealed_header=sealed.header,
        )
    )

    name = "two-recipients"
    other_scalar = fixed_scalar("other transport v1")
    vectors.append(
        valid_vector(
            Stream(
                name,
                plaintext(name, size + 3),
                wraps=[
                    ToTransport(
                        KeyRef(OTHER, "transport", 1),
                        point_of(other_scalar),
                        fixed_scalar(f"{name} ephemeral for other"),
                    ),
                    to_recipient(fixed_scalar(f"{name} ephemeral"), RECIPIENT_SCALAR),
                ],
            ),
            f"two kind-1 wrapped keys: the first to {OTHER}, which the recipient skips, then "
            "the recipient's own",
        )
    )

    name = "longest-fields"
    vectors.append(
        valid_vector(
            Stream(name, plaintext(name, 7), context=longest_context(name)),
            "a 64-character transfer id and a 63-character sender id (the longest allowed)",
        )
    )
    return vectors


# --- Invalid vectors ------------------------------------------------------------------------


def flip(data: bytes, offset: int, bit: int = 0) -> bytes:
    """``data`` with one bit flipped (negative offsets count from the end)."""
    out = bytearray(data)
    out[offset] ^= 1 << bit
    return bytes(out)


def patch(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


def segment(index: int, final: bool, ciphertext: bytes) -> Json:
    return {"index": index, "final": final, "ciphertext": ciphertext.hex()}


class Invalid:
    """Collects invalid vectors in order."""

    def __init__(self) -> None:
        self.vectors: list[Json] = []

    def stream(self, name: str, expected: str, description: str, data: bytes) -> None:
        self.vectors.append(
            {
                "name": name,
                "description": description,
                "mode": "stream",
                "expected_error": expected,
                "stream": data.hex(),
            }
        )

    def segments(
        self, name: str, expected: str, description: str, header: bytes, segments: list[Json]
    ) -> None:
        self.vectors.append(
            {
                "name": name,
                "description": description,
                "mode": "segments",
                "expected_error": expected,
                "header": header.hex(),
                "segments": segments,
            }
        )


def invalid_vectors() -> list[Json]:
    base = Stream("base", plaintext("base", 3 * SEGMENT_SIZE))
    head = base.header
    stream = base.stream()
    ct0, ct1, ct2 = base.ct(0), base.ct(1), base.ct(2)
    core_len = len(base.core)
    header_core_end = core_len + 2  # header_len sits inside the core's first bytes
    salt_offset = 12
    passport_offset = header_core_end - 32
    first_key = header_core_end + 1  # after the count byte
    ref_len = len(KeyRef(RECIPIENT, "transport", 1).encode())
    ephemeral_offset = first_key + 1 + ref_len
    wrapped_offset = ephemeral_offset + 65 + 1
    out = Invalid()

    # Order, loss, duplication: as indexed messages (the gRPC path) and as a stream file.
    out.segments(
        "reordered-segments",
        "SegmentOrderError",
        "segments 1, 0, 2 arrive with their true indexes",
        head,
        [segment(1, False, ct1), segment(0, False, ct0), segment(2, True, ct2)],
    )
    out.segments(
        "reordered-segments-relabelled",
        "SegmentAuthenticationError",
        "segment 1's ciphertext sent as index 0: the nonce binds the index",
        head,
        [segment(0, False, ct1), segment(1, False, ct0), segment(2, True, ct2)],
    )
    out.stream(
        "reordered-segments-stream",
        "SegmentAuthenticationError",
        "stream file with segments 0 and 1 swapped",
        head + ct1 + ct0 + ct2,
    )
    out.segments(
        "dropped-segment",
        "SegmentOrderError",
        "segment 1 never arrives",
        head,
        [segment(0, False, ct0), segment(2, True, ct2)],
    )
    out.stream(
        "dropped-segment-stream",
        "SegmentAuthenticationError",
        "stream file without segment 1",
        head + ct0 + ct2,
    )
    out.segments(
        "duplicated-segment",
        "SegmentOrderError",
        "segment 0 arrives twice",
        head,
        [segment(0, False, ct0), segment(0, False, ct0), segment(1, False, ct1)],
    )
    out.stream(
        "duplicated-segment-stream",
        "SegmentAuthenticationError",
        "stream file with segment 0 twice",
        head + ct0 + ct0 + ct1 + ct2,
    )
    other = Stream("spliced-from", plaintext("spliced-from", 3 * SEGMENT_SIZE))
    out.segments(
        "segment-from-other-stream",
        "SegmentAuthenticationError",
        "segment 1 of another transfer in its place: the payload key and AAD differ",
        head,
        [segment(0, False, ct0), segment(1, False, other.ct(1)), segment(2, True, ct2)],
    )

    # Truncation.
    out.segments(
        "missing-final-segment",
        "TruncatedStreamError",
        "the messages stop before the final segment",
        head,
        [segment(0, False, ct0), segment(1, False, ct1)],
    )
    out.stream(
        "missing-final-segment-stream",
        "TruncatedStreamError",
        "stream file cut at a segment boundary before the final segment",
        head + ct0 + ct1,
    )
    out.stream(
        "header-only-stream", "TruncatedStreamError", "a header and no segments at all", head
    )
    out.stream(
        "truncated-final-segment-stream",
        "SegmentAuthenticationError",
        "stream file missing the last byte of the final segment's tag",
        stream[:-1],
    )
    out.stream(
        "truncated-mid-segment-stream",
        "SegmentAuthenticationError",
        "stream file cut 20 bytes into segment 1: the piece at EOF is not a final segment",
        head + ct0 + ct1[:20],
    )
    out.segments(
        "truncated-final-segment",
        "SegmentAuthenticationError",
        "the final segment's message is missing its last byte",
        head,
        [segment(0, False, ct0), segment(1, False, ct1), segment(2, True, ct2[:-1])],
    )
    out.segments(
        "segment-shorter-than-tag",
        "SegmentLengthError",
        "a final segment of 15 bytes, shorter than the 16-byte tag",
        head,
        [segment(0, True, ct0[:15])],
    )
    out.stream("empty-file", "HeaderFormatError", "a stream file of zero bytes", b"")
    out.stream(
        "truncated-header-prefix",
        "HeaderFormatError",
        "the stream ends 5 bytes in, inside the fixed prefix",
        stream[:5],
    )
    out.stream(
        "truncated-header",
        "HeaderFormatError",
        "the stream ends 100 bytes into the header",
        stream[:100],
    )
    out.stream(
        "truncated-header-commitment",
        "HeaderFormatError",
        "the stream ends one byte before the end of the header's commitment",
        head[:-1],
    )

    # Finals: the last segment not final, a second final, anything after the final.
    not_final = base.seal(2, False, base.plaintext[2 * SEGMENT_SIZE :]).ciphertext
    out.segments(
        "last-segment-not-final",
        "SegmentAuthenticationError",
        "the last message claims final, but its segment was sealed with final = 0",
        head,
        [segment(0, False, ct0), segment(1, False, ct1), segment(2, True, not_final)],
    )
    out.stream(
        "last-segment-not-final-stream",
        "TruncatedStreamError",
        "stream file whose last segment was sealed with final = 0: no final segment",
        head + ct0 + ct1 + not_final,
    )
    out.segments(
        "final-flag-dropped",
        "SegmentAuthenticationError",
        "the final segment's message claims final = false",
        head,
        [segment(0, False, ct0), segment(1, False, ct1), segment(2, False, ct2)],
    )
    first_final = base.seal(0, True, base.plaintext[:SEGMENT_SIZE]).ciphertext
    second_final = base.seal(1, True, base.plaintext[SEGMENT_SIZE:][:10]).ciphertext
    out.segments(
        "two-final-segments",
        "TrailingDataError",
        "segment 0 is a full final segment and segment 1 is final too",
        head,
        [segment(0, True, first_final), segment(1, True, second_final)],
    )
    out.stream(
        "two-final-segments-stream",
        "TrailingDataError",
        "stream file: a full final segment 0, then a final segment 1",
        head + first_final + second_final,
    )
    extra = base.seal(3, True, b"extra").ciphertext
    out.segments(
        "data-after-final",
        "TrailingDataError",
        "a well-formed segment 3 after the final segment 2",
        head,
        [
            segment(0, False, ct0),
            segment(1, False, ct1),
            segment(2, True, ct2),
            segment(3, True, extra),
        ],
    )
    out.stream(
        "data-after-final-stream",
        "TrailingDataError",
        "stream file: five zero bytes after the (full) final segment",
        stream + bytes(5),
    )
    short_final = Stream("short-final", plaintext("short-final", SEGMENT_SIZE + 6))
    out.stream(
        "data-after-short-final-stream",
        "SegmentAuthenticationError",
        "bytes after a short final segment cannot be told from corruption",
        short_final.stream() + bytes(5),
    )

    # Segment lengths: one plaintext has exactly one encoding.
    out.segments(
        "short-non-final-segment",
        "SegmentLengthError",
        "a non-final segment one byte short",
        head,
        [segment(0, False, ct0[:-1])],
    )
    out.segments(
        "oversize-segment",
        "SegmentLengthError",
        "a non-final segment one byte longer than segment_size + tag",
        head,
        [segment(0, False, ct0 + b"\x00")],
    )
    empty_final = base.seal(1, True, b"").ciphertext
    out.segments(
        "empty-final-after-full-segment",
        "SegmentLengthError",
        "non-canonical: a full non-final segment then an empty final one",
        head,
        [segment(0, False, ct0), segment(1, True, empty_final)],
    )
    out.stream(
        "empty-final-after-full-segment-stream",
        "SegmentLengthError",
        "stream file, non-canonical: a full non-final segment then an empty final one",
        head + ct0 + empty_final,
    )

    # Tampering.
    out.stream(
        "bit-flip-header-core",
        "KeyUnwrapError",
        "one bit of the salt flipped: the core digest, so the key wrap context, changes",
        flip(stream, salt_offset),
    )
    out.stream(
        "bit-flip-passport-digest",
        "KeyUnwrapError",
        "one bit of the passport digest flipped: the core digest changes",
        flip(stream, passport_offset + 3),
    )
    out.stream(
        "bit-flip-wrapped-key",
        "KeyUnwrapError",
        "one bit of the kind-1 wrapped key flipped",
        flip(stream, wrapped_offset + 7),
    )
    out.stream(
        "ephemeral-not-on-curve",
        "HeaderFormatError",
        "the last bit of the ephemeral point's y flipped: the point is not on P-256",
        flip(stream, ephemeral_offset + 64),
    )
    out.stream(
        "bad-commitment",
        "CommitmentError",
        "one bit of the key commitment flipped",
        flip(stream, len(head) - 1),
    )
    swapped = fixed("another data key", 32)
    out.stream(
        "commitment-of-other-data-key",
        "CommitmentError",
        "the wrapped key opens, but the commitment was derived from another data key",
        base.header_with(
            [w.entry for w in base.wrapped],
            derive_payload(swapped, base.salt, base.core_digest)[1],
        )
        + base.body(),
    )
    out.stream(
        "bit-flip-ciphertext",
        "SegmentAuthenticationError",
        "one bit flipped inside segment 1's ciphertext",
        flip(stream, len(head) + len(ct0) + 5),
    )
    out.stream(
        "bit-flip-tag",
        "SegmentAuthenticationError",
        "one bit flipped in segment 0's tag",
        flip(stream, len(head) + len(ct0) - 1, 7),
    )

    # Keys.
    name = "wrong-recipient-key"
    wrong_key = Stream(
        name,
        plaintext(name, 10),
        wraps=[
            to_recipient(
                fixed_scalar(f"{name} ephemeral"), fixed_scalar("someone else's transport v1")
            )
        ],
    )
    out.stream(
        name,
        "KeyUnwrapError",
        "wrapped to another P-256 key under the recipient's key reference",
        wrong_key.stream(),
    )
    name = "wrong-key-version"
    wrong_version = Stream(
        name,
        plaintext(name, 10),
        wraps=[
            ToTransport(
                KeyRef(RECIPIENT, "transport", 2),
                point_of(fixed_scalar("recipient transport v2")),
                fixed_scalar(f"{name} ephemeral"),
            )
        ],
    )
    out.stream(
        name,
        "NoUsableWrappedKeyError",
        "wrapped to transport key version 2, which the recipient does not hold",
        wrong_version.stream(),
    )
    name = "not-addressed-to-us"
    not_ours = Stream(
        name,
        plaintext(name, 10),
        wraps=[
            ToTransport(
                KeyRef(OTHER, "transport", 1),
                point_of(RECIPIENT_SCALAR),
                fixed_scalar(f"{name} ephemeral"),
            )
        ],
        context=make_context(name, OTHER),
    )
    out.stream(
        name,
        "NoUsableWrappedKeyError",
        f"a stream for {OTHER}, read by {RECIPIENT}",
        not_ours.stream(),
    )
    stored = Stream("stored", plaintext("stored", 10), wraps=[to_storage()])
    out.stream(
        "storage-wrap-moved-to-other-header",
        "KeyUnwrapError",
        "a valid storage-wrapped key of another transfer put into this header",
        base.header_with([w.entry for w in stored.wrapped]) + base.body(),
    )
    at_rest = Stream("base", base.plaintext, wraps=[to_storage()])
    out.stream(
        "bit-flip-storage-wrapped-key",
        "KeyUnwrapError",
        "one bit of a kind-2 wrapped key flipped",
        flip(at_rest.stream(), first_key + 1 + len(at_rest.wraps[0].ref.encode()) + 1 + 30),
    )
    out.stream(
        "wrong-storage-key",
        "KeyUnwrapError",
        "kind-2 wrapped under another AES key named as the recipient's storage key v1",
        Stream(
            "base", base.plaintext, wraps=[to_storage(fixed("another storage key", 32))]
        ).stream(),
    )
    out.stream(
        "unknown-storage-key-version",
        "NoUsableWrappedKeyError",
        "kind-2 wrapped to storage key version 2, which the recipient does not hold",
        Stream("base", base.plaintext, wraps=[to_storage(version=2)]).stream(),
    )

    # Header format.
    out.stream("bad-magic", "HeaderFormatError", "magic is XBGX", patch(stream, 0, b"XBGX"))
    out.stream(
        "unknown-version", "UnsupportedVersionError", "version byte 2", patch(stream, 4, b"\x02")
    )
    out.stream("unknown-suite", "UnsupportedSuiteError", "suite byte 2", patch(stream, 5, b"\x02"))
    out.stream(
        "oversize-header",
        "HeaderFormatError",
        "header_len 4097, over the 4096 limit",
        patch(stream, 6, u16(MAX_HEADER_LEN + 1)),
    )
    out.stream(
        "header-length-mismatch",
        "HeaderFormatError",
        "header_len one byte short of the header's fields",
        patch(stream, 6, u16(len(head) - 1)),
    )
    out.stream(
        "header-length-below-minimum",
        "HeaderFormatError",
        "header_len 202, one below the smallest possible header",
        patch(stream, 6, u16(202)),
    )
    out.stream(
        "byte-after-commitment",
        "HeaderFormatError",
        "header_len counts one zero byte after the commitment",
        patch(head, 6, u16(len(head) + 1)) + b"\x00" + base.body(),
    )
    out.stream(
        "segment-size-too-small",
        "SegmentSizeError",
        "segment size 63",
        patch(stream, 8, u32(63)),
    )
    out.stream(
        "segment-size-too-large",
        "SegmentSizeError",
        "segment size 16 MiB + 1",
        patch(stream, 8, u32(MAX_SEGMENT_SIZE + 1)),
    )
    out.stream(
        "unknown-wrap-kind",
        "HeaderFormatError",
        "wrapped key kind 3",
        patch(stream, first_key, b"\x03"),
    )
    entry = base.wrapped[0].entry
    out.stream(
        "no-wrapped-keys",
        "HeaderFormatError",
        "wrapped key count 0, in a header long enough (longest context fields) that only the "
        "count is wrong",
        Stream(
            "no-keys", plaintext("no-keys", 7), context=longest_context("longest-fields")
        ).header_with([])
        + bytes(16),
    )
    five = [
        wrap(
            ToTransport(
                KeyRef(RECIPIENT, "transport", version),
                point_of(RECIPIENT_SCALAR),
                fixed_scalar(f"five keys {version}"),
            ),
            base.data_key,
            base.core_digest,
        ).entry
        for version in range(1, 6)
    ]
    out.stream(
        "five-wrapped-keys",
        "HeaderFormatError",
        "wrapped key count 5, over the limit of 4",
        base.header_with(five) + base.body(),
    )
    out.stream(
        "duplicate-key-ref",
        "HeaderFormatError",
        "two wrapped keys name the same key reference",
        base.header_with([entry, entry]) + base.body(),
    )
    out.stream(
        "kind-purpose-mismatch",
        "HeaderFormatError",
        "a kind-1 wrapped key naming a storage key reference",
        patch(stream, first_key + 1 + 1 + len(RECIPIENT), u8(PURPOSE_CODES["storage"])),
    )
    out.stream(
        "unknown-key-purpose",
        "HeaderFormatError",
        "a wrapped key's key reference with purpose code 7 (only 1, 2, 3 exist)",
        patch(stream, first_key + 1 + 1 + len(RECIPIENT), u8(7)),
    )
    out.stream(
        "wrapped-key-length",
        "HeaderFormatError",
        "a kind-1 wrapped key of 41 bytes (with header_len to match)",
        base.header_with(
            [
                kind1_entry(
                    base.wraps[0].ref,
                    bytes.fromhex(base.wrapped[0].record["ephemeral_point"]),
                    bytes.fromhex(base.wrapped[0].record["wrapped"]) + b"\x00",
                )
            ]
        )
        + base.body(),
    )
    bad_transfer = Context("-xfer", SENDER, RECIPIENT, base.context.passport_digest)
    out.stream(
        "bad-transfer-id",
        "HeaderFormatError",
        "transfer id '-xfer' does not start with a letter or digit; the rest is consistent",
        Stream("base", base.plaintext, context=bad_transfer).stream(),
    )
    bad_sender = Context(
        base.context.transfer_id, "GW-A.example", RECIPIENT, bad_transfer.passport_digest
    )
    out.stream(
        "bad-sender-id",
        "HeaderFormatError",
        "sender id 'GW-A.example' is not a gateway id (upper case); the rest is consistent",
        Stream("base", base.plaintext, context=bad_sender).stream(),
    )
    out.stream(
        "key-version-zero",
        "HeaderFormatError",
        "a kind-1 wrapped key naming transport key version 0 (versions start at 1)",
        patch(stream, first_key + ref_len - 4 + 1, u32(0)),
    )
    return out.vectors


def build() -> Json:
    return {
        "format": "XBGW-STREAM-1",
        "comment": (
            "Generated by tests/vectors/generate_stream_vectors.py, an implementation that "
            "shares no code with gateway/; do not edit. Hex strings; see "
            "gateway/envelope/__init__.py for the layout."
        ),
        "recipient": {
            "owner": RECIPIENT,
            "transport_version": 1,
            "transport_private_scalar": f"{RECIPIENT_SCALAR:064x}",
            "transport_public_point": point_of(RECIPIENT_SCALAR).hex(),
            "storage_version": 1,
            "storage_key": STORAGE_KEY.hex(),
        },
        "valid": valid_vectors(),
        "invalid": invalid_vectors(),
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    output = Path(argv[1]) if len(argv) > 1 else OUTPUT
    output.write_text(render(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
