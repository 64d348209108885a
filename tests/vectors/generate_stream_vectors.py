"""Generate the XBGW-STREAM-1 test vectors (``tests/vectors/stream.json``).

Usage: ``python tests/vectors/generate_stream_vectors.py [OUTPUT]``.

Every input is derived from fixed labels, so the output is the same on every run and
``tests/unit/test_envelope_vectors.py`` checks that the committed file is exactly what this
script writes. The recipient's private transport scalar and storage key are in the file, so
another implementation can check itself against the vectors without our code.

Valid vectors give every intermediate value (core digest, payload key, commitment, nonces).
Invalid vectors name the exact ``gateway.errors`` class a reader must raise, and a mode:

* ``stream``: the bytes of a stream file, read with ``read_stream`` as the recipient;
* ``segments``: a header plus ``(index, final, ciphertext)`` segments as they would arrive over
  gRPC, fed to ``open_header`` + ``StreamDecryptor.decrypt_segment`` in order + ``finish``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import (
    aes_key_unwrap_with_padding,
    aes_key_wrap_with_padding,
)

from gateway.envelope import (
    Header,
    StreamContext,
    StreamEncryptor,
    rewrap_for_storage,
)
from gateway.envelope.stream import _nonce
from gateway.envelope.wrapping import _derive, _seal_header
from gateway.keys import KeyRef, Purpose

OUTPUT = Path(__file__).resolve().parent / "stream.json"

SENDER = "gw-a.example"
RECIPIENT = "gw-b.example"
OTHER = "gw-c.example"
SEGMENT_SIZE = 64
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

Json = dict[str, Any]


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
    return ec.derive_private_key(scalar, ec.SECP256R1())


def point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


RECIPIENT_SCALAR = fixed_scalar("recipient transport v1")
STORAGE_KEY = fixed("recipient storage v1", 32)


class StorageOnly:
    """The recipient's storage key v1, wrapping as an HSM does (RFC 5649)."""

    def wrap(self, version: int, secret: bytes, /) -> bytes:
        assert version == 1
        return aes_key_wrap_with_padding(STORAGE_KEY, secret)

    def unwrap(self, version: int, wrapped: bytes, /) -> bytes:
        assert version == 1
        return aes_key_unwrap_with_padding(STORAGE_KEY, wrapped)


def context(name: str, receiver: str = RECIPIENT) -> StreamContext:
    return StreamContext(
        transfer_id=f"xfer-{name}",
        sender_id=SENDER,
        receiver_id=receiver,
        passport_digest=hashlib.sha256(f"passport {name}".encode()).digest(),
    )


class Sealed:
    """One deterministic stream: its inputs, header, data key and segments."""

    def __init__(
        self,
        name: str,
        plaintext: bytes,
        segment_size: int = SEGMENT_SIZE,
        *,
        recipient: KeyRef | None = None,
        recipient_scalar: int = RECIPIENT_SCALAR,
    ) -> None:
        self.name = name
        self.plaintext = plaintext
        self.recipient = recipient or KeyRef(RECIPIENT, Purpose.TRANSPORT, 1)
        self.context = context(name, self.recipient.owner)
        self.data_key = fixed(f"{name} data key", 32)
        self.salt = fixed(f"{name} salt", 32)
        self.nonce_prefix = fixed(f"{name} nonce prefix", 7)
        self.ephemeral_scalar = fixed_scalar(f"{name} ephemeral")
        self.header, _ = _seal_header(
            self.context,
            self.recipient,
            private_key(recipient_scalar).public_key(),
            segment_size,
            data_key=self.data_key,
            salt=self.salt,
            nonce_prefix=self.nonce_prefix,
            ephemeral=private_key(self.ephemeral_scalar),
        )
        self.encryptor = StreamEncryptor(self.header, self.data_key)
        self.segments = list(self.encryptor.iter_segments(_Reader(plaintext)))

    def stream(self, header: Header | None = None) -> bytes:
        head = (header or self.header).encode()
        return head + b"".join(ct for _, _, ct in self.segments)

    def ct(self, index: int) -> bytes:
        return self.segments[index][2]

    def aead(self) -> tuple[AESGCM, bytes]:
        """The payload AEAD and AAD, to build segments the encryptor refuses to make."""
        core_digest = self.header.core_digest()
        payload_key, _ = _derive(self.data_key, self.salt, core_digest)
        return AESGCM(payload_key), core_digest


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def read(self, size: int = -1, /) -> bytes:
        end = len(self._data) if size < 0 else self._pos + size
        out = self._data[self._pos : end]
        self._pos += len(out)
        return out


def plaintext(name: str, length: int) -> bytes:
    return fixed(f"{name} plaintext", length)


def valid_vector(sealed: Sealed, description: str, storage: bool = False) -> Json:
    header = sealed.header
    if storage:
        header = rewrap_for_storage(
            header, sealed.data_key, KeyRef(RECIPIENT, Purpose.STORAGE, 1), StorageOnly()
        )
    core_digest = header.core_digest()
    payload_key, commitment = _derive(sealed.data_key, sealed.salt, core_digest)
    vector: Json = {
        "name": sealed.name,
        "description": description,
        "segment_size": header.segment_size,
        "transfer_id": sealed.context.transfer_id,
        "sender_id": sealed.context.sender_id,
        "receiver_id": sealed.context.receiver_id,
        "passport_digest": sealed.context.passport_digest.hex(),
        "recipient_key_ref": str(sealed.recipient),
        "storage_key_ref": f"{RECIPIENT}/storage/1" if storage else None,
        "data_key": sealed.data_key.hex(),
        "salt": sealed.salt.hex(),
        "nonce_prefix": sealed.nonce_prefix.hex(),
        "ephemeral_private_scalar": f"{sealed.ephemeral_scalar:064x}",
        "plaintext": sealed.plaintext.hex(),
        "core": header.core().hex(),
        "core_digest": core_digest.hex(),
        "payload_key": payload_key.hex(),
        "commitment": commitment.hex(),
        "header": header.encode().hex(),
        "segments": [
            {
                "index": index,
                "final": final,
                "nonce": _nonce(sealed.nonce_prefix, index, final).hex(),
                "ciphertext": ct.hex(),
            }
            for index, final, ct in sealed.segments
        ],
        "stream": sealed.stream(header).hex(),
    }
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
    ]
    vectors = [
        valid_vector(Sealed(name, plaintext(name, length), seg), description)
        for name, length, seg, description in cases
    ]
    vectors.append(
        valid_vector(
            Sealed("rewrapped-to-storage", plaintext("rewrapped-to-storage", 2 * size + 5)),
            "re-wrapped at rest: one kind-2 wrapped key under the storage key; "
            "core, commitment and segments unchanged",
            storage=True,
        )
    )
    return vectors


def flip(data: bytes, offset: int, bit: int = 0) -> bytes:
    """``data`` with one bit flipped (negative offsets count from the end)."""
    out = bytearray(data)
    out[offset] ^= 1 << bit
    return bytes(out)


def patch(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


def segment(index: int, final: bool, ciphertext: bytes) -> Json:
    return {"index": index, "final": final, "ciphertext": ciphertext.hex()}


def invalid_vectors() -> list[Json]:
    base = Sealed("base", plaintext("base", 3 * SEGMENT_SIZE))
    head = base.header.encode()
    stream = base.stream()
    ct0, ct1, ct2 = base.ct(0), base.ct(1), base.ct(2)
    salt_offset = 12
    vectors: list[Json] = []

    def as_stream(name: str, expected: str, description: str, data: bytes) -> None:
        vectors.append(
            {
                "name": name,
                "description": description,
                "mode": "stream",
                "expected_error": expected,
                "stream": data.hex(),
            }
        )

    def as_segments(
        name: str, expected: str, description: str, segments: list[Json], header: bytes = head
    ) -> None:
        vectors.append(
            {
                "name": name,
                "description": description,
                "mode": "segments",
                "expected_error": expected,
                "header": header.hex(),
                "segments": segments,
            }
        )

    # Order, loss, duplication: as indexed messages (the gRPC path) and as a stream file.
    as_segments(
        "reordered-segments",
        "SegmentOrderError",
        "segments 1, 0, 2 arrive with their true indexes",
        [segment(1, False, ct1), segment(0, False, ct0), segment(2, True, ct2)],
    )
    as_segments(
        "reordered-segments-relabelled",
        "SegmentAuthenticationError",
        "segment 1's ciphertext sent as index 0: the nonce binds the index",
        [segment(0, False, ct1), segment(1, False, ct0), segment(2, True, ct2)],
    )
    as_stream(
        "reordered-segments-stream",
        "SegmentAuthenticationError",
        "stream file with segments 0 and 1 swapped",
        head + ct1 + ct0 + ct2,
    )
    as_segments(
        "dropped-segment",
        "SegmentOrderError",
        "segment 1 never arrives",
        [segment(0, False, ct0), segment(2, True, ct2)],
    )
    as_stream(
        "dropped-segment-stream",
        "SegmentAuthenticationError",
        "stream file without segment 1",
        head + ct0 + ct2,
    )
    as_segments(
        "duplicated-segment",
        "SegmentOrderError",
        "segment 0 arrives twice",
        [segment(0, False, ct0), segment(0, False, ct0), segment(1, False, ct1)],
    )
    as_stream(
        "duplicated-segment-stream",
        "SegmentAuthenticationError",
        "stream file with segment 0 twice",
        head + ct0 + ct0 + ct1 + ct2,
    )
    as_segments(
        "missing-final-segment",
        "TruncatedStreamError",
        "the messages stop before the final segment",
        [segment(0, False, ct0), segment(1, False, ct1)],
    )
    as_stream(
        "missing-final-segment-stream",
        "TruncatedStreamError",
        "stream file cut at a segment boundary before the final segment",
        head + ct0 + ct1,
    )
    as_stream(
        "header-only-stream",
        "TruncatedStreamError",
        "a header and no segments at all",
        head,
    )
    as_stream(
        "truncated-final-segment-stream",
        "SegmentAuthenticationError",
        "stream file missing the last byte of the final segment's tag",
        stream[:-1],
    )

    # Finals: a second final, or anything after the final.
    aead, aad = base.aead()
    first_final = base.encryptor.encrypt_segment(0, base.plaintext[:SEGMENT_SIZE], True)
    second_final = base.encryptor.encrypt_segment(1, base.plaintext[SEGMENT_SIZE:][:10], True)
    as_segments(
        "two-final-segments",
        "TrailingDataError",
        "segment 0 is a full final segment and segment 1 is final too",
        [segment(0, True, first_final), segment(1, True, second_final)],
    )
    as_stream(
        "two-final-segments-stream",
        "TrailingDataError",
        "stream file: a full final segment 0, then a final segment 1",
        head + first_final + second_final,
    )
    extra = base.encryptor.encrypt_segment(3, b"extra", True)
    as_segments(
        "data-after-final",
        "TrailingDataError",
        "a well-formed segment 3 after the final segment 2",
        [
            segment(0, False, ct0),
            segment(1, False, ct1),
            segment(2, True, ct2),
            segment(3, True, extra),
        ],
    )
    as_stream(
        "data-after-final-stream",
        "TrailingDataError",
        "stream file: five zero bytes after the (full) final segment",
        stream + bytes(5),
    )
    short = Sealed("short-final", plaintext("short-final", SEGMENT_SIZE + 6))
    as_stream(
        "data-after-short-final-stream",
        "SegmentAuthenticationError",
        "bytes after a short final segment cannot be told from corruption",
        short.stream() + bytes(5),
    )
    as_segments(
        "short-non-final-segment",
        "SegmentLengthError",
        "a non-final segment one byte short",
        [segment(0, False, ct0[:-1])],
    )
    empty_final = aead.encrypt(_nonce(base.nonce_prefix, 1, True), b"", aad)
    as_segments(
        "empty-final-after-full-segment",
        "SegmentLengthError",
        "non-canonical: a full non-final segment then an empty final one",
        [segment(0, False, ct0), segment(1, True, empty_final)],
    )

    # Tampering.
    as_stream(
        "bit-flip-header-core",
        "KeyUnwrapError",
        "one bit of the salt flipped: the core digest, so the key wrap context, changes",
        flip(stream, salt_offset),
    )
    as_stream(
        "bit-flip-ciphertext",
        "SegmentAuthenticationError",
        "one bit flipped inside segment 1's ciphertext",
        flip(stream, len(head) + len(ct0) + 5),
    )
    as_stream(
        "bit-flip-tag",
        "SegmentAuthenticationError",
        "one bit flipped in segment 0's tag",
        flip(stream, len(head) + len(ct0) - 1, 7),
    )
    as_stream(
        "bad-commitment",
        "CommitmentError",
        "one bit of the key commitment flipped",
        flip(stream, len(head) - 1),
    )

    # Keys.
    wrong_key = Sealed(
        "wrong-recipient-key",
        plaintext("wrong-recipient-key", 10),
        recipient_scalar=fixed_scalar("someone else's transport v1"),
    )
    as_stream(
        "wrong-recipient-key",
        "KeyUnwrapError",
        "wrapped to another P-256 key under the recipient's key reference",
        wrong_key.stream(),
    )
    wrong_version = Sealed(
        "wrong-key-version",
        plaintext("wrong-key-version", 10),
        recipient=KeyRef(RECIPIENT, Purpose.TRANSPORT, 2),
        recipient_scalar=fixed_scalar("recipient transport v2"),
    )
    as_stream(
        "wrong-key-version",
        "NoUsableWrappedKeyError",
        "wrapped to transport key version 2, which the recipient does not hold",
        wrong_version.stream(),
    )
    other = Sealed(
        "not-addressed-to-us",
        plaintext("not-addressed-to-us", 10),
        recipient=KeyRef(OTHER, Purpose.TRANSPORT, 1),
    )
    as_stream(
        "not-addressed-to-us",
        "NoUsableWrappedKeyError",
        f"a stream for {OTHER}, read by {RECIPIENT}",
        other.stream(),
    )
    stored = Sealed("stored", plaintext("stored", 10))
    storage_ref = KeyRef(RECIPIENT, Purpose.STORAGE, 1)
    stored_header = rewrap_for_storage(stored.header, stored.data_key, storage_ref, StorageOnly())
    moved = base.header.with_wrapped_keys(stored_header.wrapped_keys)
    as_stream(
        "storage-wrap-moved-to-other-header",
        "KeyUnwrapError",
        "a valid storage-wrapped key of another transfer put into this header",
        moved.encode() + b"".join(ct for _, _, ct in base.segments),
    )

    # Header format.
    as_stream("bad-magic", "HeaderFormatError", "magic is XBGX", patch(stream, 0, b"XBGX"))
    as_stream(
        "unknown-version",
        "UnsupportedVersionError",
        "version byte 2",
        patch(stream, 4, b"\x02"),
    )
    as_stream("unknown-suite", "UnsupportedSuiteError", "suite byte 2", patch(stream, 5, b"\x02"))
    as_stream(
        "oversize-header",
        "HeaderFormatError",
        "header_len 4097, over the 4096 limit",
        patch(stream, 6, (4097).to_bytes(2, "big")),
    )
    as_stream(
        "header-length-mismatch",
        "HeaderFormatError",
        "header_len one byte short of the header's fields",
        patch(stream, 6, (len(head) - 1).to_bytes(2, "big")),
    )
    as_stream(
        "segment-size-too-small",
        "SegmentSizeError",
        "segment size 63",
        patch(stream, 8, (63).to_bytes(4, "big")),
    )
    as_stream(
        "segment-size-too-large",
        "SegmentSizeError",
        "segment size 16 MiB + 1",
        patch(stream, 8, (16 * 1024 * 1024 + 1).to_bytes(4, "big")),
    )
    as_stream(
        "truncated-header",
        "HeaderFormatError",
        "the stream ends 100 bytes into the header",
        stream[:100],
    )
    as_stream(
        "unknown-wrap-kind",
        "HeaderFormatError",
        "wrapped key kind 3",
        patch(stream, len(base.header.core()) + 2 + 1, b"\x03"),
    )
    return vectors


def build() -> Json:
    recipient_key = private_key(RECIPIENT_SCALAR)
    return {
        "format": "XBGW-STREAM-1",
        "comment": (
            "Generated by tests/vectors/generate_stream_vectors.py; do not edit. "
            "Hex strings; see gateway/envelope/__init__.py for the layout."
        ),
        "recipient": {
            "owner": RECIPIENT,
            "transport_version": 1,
            "transport_private_scalar": f"{RECIPIENT_SCALAR:064x}",
            "transport_public_point": point(recipient_key.public_key()).hex(),
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
