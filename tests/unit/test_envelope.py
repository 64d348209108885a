"""XBGW-STREAM-1 behaviour: sealing, opening, re-wrapping, segments, stream files, memory."""

from __future__ import annotations

import hashlib
import io
import os
import tracemalloc
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway import envelope
from gateway.envelope import (
    DEFAULT_SEGMENT_SIZE,
    MAX_HEADER_LEN,
    MAX_SEGMENTS,
    TAG_LEN,
    Header,
    StreamContext,
    StreamDecryptor,
    StreamEncryptor,
    WrapKind,
    WrappedKey,
    header_length,
    open_header,
    read_header,
    read_stream,
    rewrap_for_storage,
    seal_header,
    wrapping,
    write_stream,
)
from gateway.envelope.header import DECODED_HEADERS
from gateway.errors import (
    CommitmentError,
    EnvelopeError,
    HeaderFormatError,
    HsmError,
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
)
from gateway.keys import KeyRef, Purpose
from tests.fakes import SoftwareHsm

SENDER = "gw-a"
ME = "gw-b"
SEG = 64
TRANSPORT_V1 = KeyRef(ME, Purpose.TRANSPORT, 1)
STORAGE_V1 = KeyRef(ME, Purpose.STORAGE, 1)

HOLDER = SoftwareHsm()  # gw-b: transport, signing, storage v1


def _context(transfer_id: str = "t-1", receiver: str = ME) -> StreamContext:
    return StreamContext(transfer_id, SENDER, receiver, hashlib.sha256(b"passport").digest())


def _seal(segment_size: int = SEG, transfer_id: str = "t-1") -> tuple[Header, bytes]:
    return seal_header(
        _context(transfer_id),
        TRANSPORT_V1,
        HOLDER.public_key(Purpose.TRANSPORT, 1),
        segment_size,
    )


def _stream(header: Header, key: bytes, plaintext: bytes) -> bytes:
    out = io.BytesIO()
    write_stream(header, key, io.BytesIO(plaintext), out)
    return out.getvalue()


def _segments(header: Header, key: bytes, plaintext: bytes) -> list[tuple[int, bool, bytes]]:
    return list(StreamEncryptor(header, key).iter_segments(io.BytesIO(plaintext)))


def _feed(decryptor: StreamDecryptor, segment: tuple[int, bool, bytes]) -> bytes:
    """Pass one ``iter_segments`` item to ``decrypt_segment`` (whose order is index, ct, final)."""
    index, final, ciphertext = segment
    return decryptor.decrypt_segment(index, ciphertext, final)


def _open(data: bytes, holder: envelope.KeyHolder = HOLDER) -> bytes:
    out = io.BytesIO()
    read_stream(io.BytesIO(data), out, ME, holder)
    return out.getvalue()


# --- sealing and header objects -------------------------------------------------------------


def test_seal_then_open_gives_the_data_key_and_the_header_round_trips() -> None:
    header, key = _seal()
    assert len(key) == 32
    assert header.segment_size == SEG
    assert [k.kind for k in header.wrapped_keys] == [WrapKind.ECDH_ES_A256KW]
    assert header.wrapped_keys[0].key_ref == TRANSPORT_V1
    encoded = header.encode()
    assert header_length(encoded[:8]) == len(encoded)
    assert Header.decode(encoded) == header
    assert open_header(Header.decode(encoded), ME, HOLDER) == key


def test_every_seal_is_fresh() -> None:
    (h1, k1), (h2, k2) = _seal(), _seal()
    assert k1 != k2
    assert h1.salt != h2.salt
    assert h1.nonce_prefix != h2.nonce_prefix
    assert h1.wrapped_keys[0].ephemeral_point != h2.wrapped_keys[0].ephemeral_point


def test_default_segment_size_is_one_mebibyte() -> None:
    header, _ = seal_header(_context(), TRANSPORT_V1, HOLDER.public_key(Purpose.TRANSPORT, 1))
    assert header.segment_size == DEFAULT_SEGMENT_SIZE == 1024 * 1024


def test_the_core_leaves_out_header_len_wrapped_keys_and_commitment() -> None:
    header, _ = _seal()
    encoded = header.encode()
    core = header.core()
    assert core == encoded[:6] + encoded[8 : 8 + len(core) - 6]
    assert header.core_digest() == hashlib.sha256(core).digest()
    assert encoded.endswith(header.commitment)


def test_header_stays_well_under_the_limit_at_its_largest() -> None:
    longest = "a" * 63
    context = StreamContext("t" * 64, longest, longest, bytes(32))
    other = SoftwareHsm()
    keys = [
        KeyRef(longest, Purpose.TRANSPORT, v) for v in (1, 2, 3, 4)
    ]  # four kind-1 entries, the biggest kind
    header, key = seal_header(context, keys[0], other.public_key(Purpose.TRANSPORT, 1))
    entries = [
        wrapping._wrap_ecdh_es(
            key,
            ref,
            other.public_key(Purpose.TRANSPORT, 1),
            header.core_digest(),
            ec.generate_private_key(ec.SECP256R1()),
        )
        for ref in keys
    ]
    big = header.with_wrapped_keys(entries)
    assert len(big.encode()) < MAX_HEADER_LEN // 2
    assert Header.decode(big.encode()) == big


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"recipient": KeyRef(ME, Purpose.STORAGE, 1)},
            "recipient key gw-b/storage/1 is not a transport key",
        ),
        (
            {"recipient": KeyRef("gw-c", Purpose.TRANSPORT, 1)},
            "recipient key gw-c/transport/1 does not belong to the receiver 'gw-b'",
        ),
        ({"segment_size": 63}, "segment size must be between 64 and 16777216, got 63"),
        ({"segment_size": 2**24 + 1}, "segment size must be between 64 and 16777216, got 16777217"),
        (
            {"recipient_public": ec.generate_private_key(ec.SECP384R1()).public_key()},
            "recipient public key must be on P-256",
        ),
    ],
)
def test_seal_header_refuses_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {
        "context": _context(),
        "recipient": TRANSPORT_V1,
        "recipient_public": HOLDER.public_key(Purpose.TRANSPORT, 1),
        "segment_size": SEG,
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError) as caught:
        seal_header(**arguments)  # type: ignore[arg-type]
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            ("", SENDER, ME, bytes(32)),
            "transfer id '' must be 1-64 characters of A-Z a-z 0-9 . _ -",
        ),
        (
            ("a b", SENDER, ME, bytes(32)),
            "transfer id 'a b' must be 1-64 characters of A-Z a-z 0-9 . _ -",
        ),
        (("x" * 65, SENDER, ME, bytes(32)), "must be 1-64 characters"),
        (("t", "GW-A", ME, bytes(32)), "gateway id 'GW-A' must be"),
        (("t", SENDER, "", bytes(32)), "gateway id '' must be"),
        (("t", SENDER, ME, bytes(31)), "passport digest must be 32 bytes, got 31"),
    ],
)
def test_stream_context_validates(fields: tuple[str, str, str, bytes], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        StreamContext(*fields)


def test_header_and_wrapped_key_construction_validate() -> None:
    header, _ = _seal()
    entry = header.wrapped_keys[0]
    with pytest.raises(ValueError, match="a header carries 1-4 wrapped keys, got 0"):
        header.with_wrapped_keys([])
    with pytest.raises(ValueError, match="two wrapped keys name the same key reference"):
        header.with_wrapped_keys([entry, entry])
    with pytest.raises(ValueError, match="commitment must be 32 bytes, got 31"):
        Header(1, 1, SEG, header.salt, header.nonce_prefix, header.context, (entry,), bytes(31))
    with pytest.raises(ValueError, match="version must be 1, got 2"):
        Header(2, 1, SEG, header.salt, header.nonce_prefix, header.context, (entry,), bytes(32))
    with pytest.raises(ValueError, match=r"suite must be one of \[1\], got 7"):
        Header(1, 7, SEG, header.salt, header.nonce_prefix, header.context, (entry,), bytes(32))
    with pytest.raises(ValueError, match="must name a transport key, not gw-b/storage/1"):
        WrappedKey(WrapKind.ECDH_ES_A256KW, STORAGE_V1, entry.ephemeral_point, entry.wrapped)
    with pytest.raises(ValueError, match="needs a 65-byte uncompressed P-256 ephemeral point"):
        WrappedKey(WrapKind.ECDH_ES_A256KW, TRANSPORT_V1, None, entry.wrapped)
    assert entry.ephemeral_point is not None
    off_curve = entry.ephemeral_point[:-1] + bytes([entry.ephemeral_point[-1] ^ 1])
    with pytest.raises(ValueError, match="the ephemeral point is not on the P-256 curve"):
        WrappedKey(WrapKind.ECDH_ES_A256KW, TRANSPORT_V1, off_curve, entry.wrapped)
    with pytest.raises(ValueError, match="a kind 2 wrapped key has no ephemeral point"):
        WrappedKey(WrapKind.STORAGE_A256KWP, STORAGE_V1, entry.ephemeral_point, bytes(72))
    with pytest.raises(ValueError, match="a kind 1 wrapped key must be 40 bytes, got 39"):
        WrappedKey(WrapKind.ECDH_ES_A256KW, TRANSPORT_V1, entry.ephemeral_point, bytes(39))


# --- header decoding: the rejection table ---------------------------------------------------

_HEADER, _KEY = _seal()
_RAW = _HEADER.encode()
_CORE_LEN = len(_HEADER.core())
_KEYS_AT = _CORE_LEN + 2  # offset of the wrapped-key count
_ENTRY_AT = _KEYS_AT + 1
_REF_LEN = len(TRANSPORT_V1.encode())
_POINT_AT = _ENTRY_AT + 1 + _REF_LEN
_WLEN_AT = _POINT_AT + 65


def _patch(offset: int, value: bytes, data: bytes = _RAW) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


def _splice(offset: int, remove: int, insert: bytes) -> bytes:
    """Replace bytes and fix header_len, so that the change itself is what is judged."""
    data = _RAW[:offset] + insert + _RAW[offset + remove :]
    return _patch(6, len(data).to_bytes(2, "big"), data)


_TID_AT = 8 + 4 + 32 + 7  # transfer id length byte


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"", HeaderFormatError, "header truncated: 0 of 8 prefix bytes"),
        (_RAW[:7], HeaderFormatError, "header truncated: 7 of 8 prefix bytes"),
        (_patch(0, b"XBGV"), HeaderFormatError, "bad magic"),
        (_patch(4, b"\x00"), UnsupportedVersionError, "version 0 is not supported"),
        (_patch(4, b"\x02"), UnsupportedVersionError, "version 2 is not supported"),
        (_patch(4, b"\xff"), UnsupportedVersionError, "version 255 is not supported"),
        (_patch(5, b"\x00"), UnsupportedSuiteError, "suite 0 is not allowed"),
        (_patch(5, b"\x02"), UnsupportedSuiteError, "suite 2 is not allowed"),
        (_patch(6, b"\x10\x01"), HeaderFormatError, "header length 4097 exceeds the limit"),
        (_patch(6, b"\xff\xff"), HeaderFormatError, "header length 65535 exceeds the limit"),
        (_patch(6, b"\x00\x08"), HeaderFormatError, "header length 8 is below the minimum"),
        (_RAW + b"\x00", HeaderFormatError, "1 bytes follow the"),
        (_RAW[:-1], HeaderFormatError, "header truncated"),
        (_patch(8, (0).to_bytes(4, "big")), SegmentSizeError, "segment size 0 is outside"),
        (_patch(8, (63).to_bytes(4, "big")), SegmentSizeError, "segment size 63 is outside"),
        (_patch(8, (2**24 + 1).to_bytes(4, "big")), SegmentSizeError, "16777217 is outside"),
        (_patch(8, b"\xff\xff\xff\xff"), SegmentSizeError, "4294967295 is outside"),
        (_splice(_TID_AT, 4, b"\x00"), HeaderFormatError, "transfer id '' must be"),
        (_splice(_TID_AT, 4, b"\x03t\xc3\xa9"), HeaderFormatError, "transfer id is not ASCII"),
        (_splice(_TID_AT, 4, b"\x03t 1"), HeaderFormatError, "transfer id 't 1' must be"),
        (_splice(_TID_AT + 4, 5, b"\x04GW-A"), HeaderFormatError, "gateway id 'GW-A'"),
        (_patch(_KEYS_AT, b"\x00"), HeaderFormatError, "header carries 0 wrapped keys"),
        (_patch(_KEYS_AT, b"\x05"), HeaderFormatError, "header carries 5 wrapped keys"),
        (_patch(_KEYS_AT, b"\x02"), HeaderFormatError, "wrapped key 1|fields run past its"),
        (_patch(_ENTRY_AT, b"\x00"), HeaderFormatError, "wrapped key 0 has unknown kind 0"),
        (_patch(_ENTRY_AT, b"\x03"), HeaderFormatError, "wrapped key 0 has unknown kind 3"),
        (_patch(_ENTRY_AT + 1 + 1 + 4, b"\x09"), HeaderFormatError, "unknown key purpose code 9"),
        (_patch(_ENTRY_AT + 1 + 1 + 4, b"\x02"), HeaderFormatError, "must name a transport key"),
        (_patch(_ENTRY_AT + 2 + 4 + 1, bytes(4)), HeaderFormatError, "key version must be between"),
        (_patch(_ENTRY_AT + 2, b"G"), HeaderFormatError, "gateway id 'Gw-b'"),
        (_patch(_POINT_AT, b"\x02"), HeaderFormatError, "uncompressed P-256 ephemeral point"),
        (
            _patch(_POINT_AT + 64, bytes([_RAW[_POINT_AT + 64] ^ 1])),
            HeaderFormatError,
            "not on the P-256",
        ),
        (_splice(_WLEN_AT, 2, b"\x27"), HeaderFormatError, "must be 40 bytes, got 39"),
        (_splice(len(_RAW), 0, b"\x00"), HeaderFormatError, "1 bytes follow the commitment"),
        (
            _patch(_KEYS_AT, b"\x02", _splice(_ENTRY_AT, 0, _HEADER.wrapped_keys[0].encode())),
            HeaderFormatError,
            "two wrapped keys name the same key reference",
        ),
    ],
)
def test_header_decode_rejects(data: bytes, error: type[EnvelopeError], message: str) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(")) as caught:
        Header.decode(data)
    assert type(caught.value) is error


def test_header_decode_gives_the_same_header_again_and_refuses_a_bad_one_every_time() -> None:
    # Good parses are kept (one per distinct bytes); a bytearray is parsed into bytes fields.
    again = Header.decode(bytearray(_RAW))
    assert again == _HEADER and again is Header.decode(_RAW)
    assert type(again.salt) is bytes and type(again.commitment) is bytes
    bad = _patch(_POINT_AT + 64, bytes([_RAW[_POINT_AT + 64] ^ 1]))
    for _ in range(2):
        with pytest.raises(HeaderFormatError, match="not on the P-256"):
            Header.decode(bad)
    other = _seal()[0]
    assert Header.decode(other.encode()) == other != _HEADER


def test_a_header_encoded_here_decodes_to_itself_until_enough_others_push_it_out() -> None:
    # A new send reads back the header it just sealed: that read is not a second parse.
    sealed = _seal(transfer_id="t-own")[0]
    raw = sealed.encode()
    assert Header.decode(raw) is sealed
    for i in range(DECODED_HEADERS):
        _seal(transfer_id=f"t-other-{i}")[0].encode()
    parsed = Header.decode(raw)
    assert parsed == sealed and parsed is not sealed


def test_a_header_holds_bytes_whatever_buffers_it_was_made_from() -> None:
    # What encode() keeps for decode must be as immutable as what a parse gives, even from a
    # caller that passes buffers where the types say bytes.
    wrapped = bytearray(_HEADER.wrapped_keys[0].wrapped)
    key = WrappedKey(
        _HEADER.wrapped_keys[0].kind,
        _HEADER.wrapped_keys[0].key_ref,
        bytearray(_HEADER.wrapped_keys[0].ephemeral_point or b""),  # type: ignore[arg-type]
        wrapped,  # type: ignore[arg-type]
    )
    made = Header(
        version=_HEADER.version,
        suite=_HEADER.suite,
        segment_size=_HEADER.segment_size,
        salt=bytearray(_HEADER.salt),  # type: ignore[arg-type]
        nonce_prefix=bytearray(_HEADER.nonce_prefix),  # type: ignore[arg-type]
        context=_HEADER.context,
        wrapped_keys=(key,),
        commitment=bytearray(_HEADER.commitment),  # type: ignore[arg-type]
    )
    wrapped[0] ^= 1  # the caller's buffer changes; the header does not
    for value in (made.salt, made.nonce_prefix, made.commitment, key.wrapped, key.ephemeral_point):
        assert type(value) is bytes
    assert made == _HEADER and Header.decode(made.encode()) == _HEADER


def test_read_header_reads_exactly_the_header() -> None:
    rest = b"segments follow"
    src = io.BytesIO(_RAW + rest)
    assert read_header(src) == _HEADER
    assert src.read() == rest


def test_read_header_never_reads_past_the_prefix_of_an_oversized_header() -> None:
    src = io.BytesIO(_patch(6, b"\xff\xff") + bytes(70000))
    with pytest.raises(HeaderFormatError, match="exceeds the limit"):
        read_header(src)
    assert src.tell() == 8


def test_read_header_reports_truncation() -> None:
    with pytest.raises(HeaderFormatError, match=f"header truncated: 100 of {len(_RAW)} bytes"):
        read_header(io.BytesIO(_RAW[:100]))


# --- opening ------------------------------------------------------------------------------


def test_open_refuses_a_header_not_addressed_to_us() -> None:
    with pytest.raises(NoUsableWrappedKeyError, match="no wrapped key is addressed to 'gw-c'"):
        open_header(_HEADER, "gw-c", HOLDER)


def test_open_refuses_a_version_we_do_not_hold_or_accept() -> None:
    with pytest.raises(NoUsableWrappedKeyError, match="wrapped to gw-b/transport/1"):
        open_header(_HEADER, ME, HOLDER, transport_versions=[2])
    assert open_header(_HEADER, ME, HOLDER, transport_versions={1}) == _KEY
    other = SoftwareHsm()
    header, _ = seal_header(
        _context(), KeyRef(ME, Purpose.TRANSPORT, 7), other.public_key(Purpose.TRANSPORT, 1), SEG
    )
    with pytest.raises(NoUsableWrappedKeyError, match="gw-b/transport/7, which this gateway"):
        open_header(header, ME, HOLDER)


def test_open_skips_a_missing_version_and_uses_the_next_key_for_us() -> None:
    stranger = SoftwareHsm()
    missing = wrapping._wrap_ecdh_es(
        _KEY,
        KeyRef(ME, Purpose.TRANSPORT, 2),
        stranger.public_key(Purpose.TRANSPORT, 1),
        _HEADER.core_digest(),
        ec.generate_private_key(ec.SECP256R1()),
    )
    header = _HEADER.with_wrapped_keys([missing, *_HEADER.wrapped_keys])
    assert open_header(Header.decode(header.encode()), ME, HOLDER) == _KEY


def test_open_refuses_a_tampered_wrap_and_a_wrong_commitment() -> None:
    entry = _HEADER.wrapped_keys[0]
    tampered = WrappedKey(
        entry.kind,
        entry.key_ref,
        entry.ephemeral_point,
        bytes([entry.wrapped[0] ^ 1]) + entry.wrapped[1:],
    )
    with pytest.raises(KeyUnwrapError, match="does not unwrap"):
        open_header(_HEADER.with_wrapped_keys([tampered]), ME, HOLDER)
    bad = Header(
        _HEADER.version,
        _HEADER.suite,
        _HEADER.segment_size,
        _HEADER.salt,
        _HEADER.nonce_prefix,
        _HEADER.context,
        _HEADER.wrapped_keys,
        bytes(32),
    )
    with pytest.raises(CommitmentError):
        open_header(bad, ME, HOLDER)


def test_open_lets_hsm_failures_through() -> None:
    class Broken(SoftwareHsm):
        def ecdh(self, version: int, peer_point: bytes) -> bytes:
            raise HsmError("HSM ecdh failed: DeviceError")

    with pytest.raises(HsmError, match="DeviceError"):
        open_header(_HEADER, ME, Broken())


def test_open_refuses_a_bad_gateway_id() -> None:
    with pytest.raises(ValueError, match="gateway id 'GW-B' must be"):
        open_header(_HEADER, "GW-B", HOLDER)


# --- re-wrapping to storage -----------------------------------------------------------------


def test_rewrap_keeps_the_payload_and_opens_with_the_storage_key() -> None:
    plaintext = os.urandom(3 * SEG + 5)
    stream = _stream(_HEADER, _KEY, plaintext)
    stored = rewrap_for_storage(_HEADER, _KEY, STORAGE_V1, HOLDER)
    assert stored.core() == _HEADER.core()
    assert stored.commitment == _HEADER.commitment
    assert [k.kind for k in stored.wrapped_keys] == [WrapKind.STORAGE_A256KWP]
    assert stored.wrapped_keys[0].key_ref == STORAGE_V1
    assert stored.wrapped_keys[0].ephemeral_point is None
    assert len(stored.wrapped_keys[0].wrapped) == 72
    decoded = Header.decode(stored.encode())
    assert open_header(decoded, ME, HOLDER) == _KEY
    at_rest = stored.encode() + stream[len(_RAW) :]
    assert _open(at_rest) == plaintext


def test_rewrap_refuses_a_wrong_data_key_and_a_non_storage_key() -> None:
    with pytest.raises(CommitmentError):
        rewrap_for_storage(_HEADER, os.urandom(32), STORAGE_V1, HOLDER)
    with pytest.raises(ValueError, match=r"^key gw-b/transport/1 is not a storage key$"):
        rewrap_for_storage(_HEADER, _KEY, TRANSPORT_V1, HOLDER)
    with pytest.raises(ValueError, match=r"^data key must be 32 bytes, got 16$"):
        rewrap_for_storage(_HEADER, bytes(16), STORAGE_V1, HOLDER)


def test_rewrap_to_a_storage_version_we_lack_is_a_key_error() -> None:
    with pytest.raises(KeyNotFoundError):
        rewrap_for_storage(_HEADER, _KEY, KeyRef(ME, Purpose.STORAGE, 9), HOLDER)


def test_rewrap_checks_that_the_wrap_opens_before_returning() -> None:
    class Forgetful(SoftwareHsm):
        """Returns another key on unwrap, as SoftHSM once did under threads."""

        def unwrap(self, version: int, wrapped: bytes) -> bytes:
            blob = super().unwrap(version, wrapped)
            return bytes(32) + blob[32:]

    with pytest.raises(KeyUnwrapError, match="does not give back the data key"):
        rewrap_for_storage(_HEADER, _KEY, STORAGE_V1, Forgetful())


def test_another_gateways_storage_key_is_refused() -> None:
    stored = rewrap_for_storage(_HEADER, _KEY, STORAGE_V1, HOLDER)
    with pytest.raises(KeyUnwrapError, match="does not unwrap"):
        open_header(stored, ME, SoftwareHsm())


def test_a_storage_version_we_lack_is_no_usable_key() -> None:
    stored = rewrap_for_storage(_HEADER, _KEY, STORAGE_V1, HOLDER)
    with pytest.raises(NoUsableWrappedKeyError, match="gw-b/storage/1"):
        open_header(stored, ME, HOLDER, storage_versions=[2])


def test_the_storage_wrap_is_bound_to_its_header_and_key_reference() -> None:
    holder = SoftwareHsm()
    holder.generate(Purpose.STORAGE)  # v2
    core_digest = _HEADER.core_digest()
    # Wrapped under v1 but bound to v2: claiming it is v1 must fail the binding check.
    blob = _KEY + wrapping._storage_binding(KeyRef(ME, Purpose.STORAGE, 2), core_digest)
    entry = WrappedKey(WrapKind.STORAGE_A256KWP, STORAGE_V1, None, holder.wrap(1, blob))
    with pytest.raises(KeyUnwrapError, match="bound to another header or key reference"):
        open_header(_HEADER.with_wrapped_keys([entry]), ME, holder)
    # A valid wrap of this header moved into another header's list.
    stored = rewrap_for_storage(_HEADER, _KEY, STORAGE_V1, holder)
    other, _ = _seal(transfer_id="t-2")
    with pytest.raises(KeyUnwrapError, match="bound to another header"):
        open_header(other.with_wrapped_keys(stored.wrapped_keys), ME, holder)
    # Under v1, relabelled as v2 (which exists): v2 does not unwrap it.
    relabelled = WrappedKey(
        WrapKind.STORAGE_A256KWP,
        KeyRef(ME, Purpose.STORAGE, 2),
        None,
        stored.wrapped_keys[0].wrapped,
    )
    with pytest.raises(KeyUnwrapError):
        open_header(_HEADER.with_wrapped_keys([relabelled]), ME, holder)


# --- segments -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("index", "length", "final", "message"),
    [
        (0, SEG - 1, False, "a non-final segment holds exactly 64 bytes, got 63"),
        (0, SEG + 1, False, "a non-final segment holds exactly 64 bytes, got 65"),
        (0, SEG + 1, True, "a final segment holds at most 64 bytes, got 65"),
        (1, 0, True, "only segment 0 (an empty stream) may be empty"),
        (-1, SEG, False, "segment index must be between 0 and 4294967294, got -1"),
        (MAX_SEGMENTS, 1, True, "segment index must be between 0 and 4294967294, got 4294967295"),
        (
            MAX_SEGMENTS - 1,
            SEG,
            False,
            "segment 4294967294 must be final: a stream has at most 4294967295 segments",
        ),
    ],
)
def test_encrypt_segment_refuses_impossible_lengths(
    index: int, length: int, final: bool, message: str
) -> None:
    encryptor = StreamEncryptor(_HEADER, _KEY)
    with pytest.raises(ValueError) as caught:
        encryptor.encrypt_segment(index, bytes(length), final)
    assert str(caught.value) == message


def test_the_last_possible_segment_may_be_final() -> None:
    ciphertext = StreamEncryptor(_HEADER, _KEY).encrypt_segment(MAX_SEGMENTS - 1, b"x", True)
    decryptor = StreamDecryptor(_HEADER, _KEY, start_index=MAX_SEGMENTS - 1)
    assert decryptor.decrypt_segment(MAX_SEGMENTS - 1, ciphertext, True) == b"x"


def test_encryptor_and_decryptor_check_the_commitment() -> None:
    with pytest.raises(CommitmentError):
        StreamEncryptor(_HEADER, os.urandom(32))
    with pytest.raises(CommitmentError):
        StreamDecryptor(_HEADER, os.urandom(32))


@pytest.mark.parametrize(
    ("length", "shape"),
    [
        (0, [(0, True, 0)]),
        (1, [(0, True, 1)]),
        (SEG, [(0, True, SEG)]),
        (SEG + 1, [(0, False, SEG), (1, True, 1)]),
        (3 * SEG, [(0, False, SEG), (1, False, SEG), (2, True, SEG)]),
    ],
)
def test_segment_shapes(length: int, shape: list[tuple[int, bool, int]]) -> None:
    segments = _segments(_HEADER, _KEY, bytes(length))
    assert [(i, f, len(ct) - TAG_LEN) for i, f, ct in segments] == shape


class Trickle:
    """A reader that returns at most ``step`` bytes per read, like a pipe or a socket."""

    def __init__(self, data: bytes, step: int) -> None:
        self._src = io.BytesIO(data)
        self._step = step

    def read(self, size: int = -1, /) -> bytes:
        return self._src.read(self._step if size < 0 else min(size, self._step))


def test_short_reads_do_not_change_the_stream() -> None:
    plaintext = os.urandom(5 * SEG + 3)
    expected = _segments(_HEADER, _KEY, plaintext)
    encryptor = StreamEncryptor(_HEADER, _KEY)
    assert list(encryptor.iter_segments(Trickle(plaintext, 7))) == expected
    stream = _stream(_HEADER, _KEY, plaintext)
    out = io.BytesIO()
    assert read_stream(Trickle(stream, 5), out, ME, HOLDER) == len(plaintext)
    assert out.getvalue() == plaintext


def test_iter_segments_resumes_at_a_segment() -> None:
    plaintext = os.urandom(4 * SEG + 9)
    full = _segments(_HEADER, _KEY, plaintext)
    src = io.BytesIO(plaintext)
    src.seek(2 * SEG)
    tail = list(StreamEncryptor(_HEADER, _KEY).iter_segments(src, start_index=2))
    assert tail == full[2:]


def test_decryptor_enforces_strict_order() -> None:
    segments = _segments(_HEADER, _KEY, os.urandom(3 * SEG))
    decryptor = StreamDecryptor(_HEADER, _KEY)
    assert (decryptor.next_index, decryptor.done) == (0, False)
    with pytest.raises(SegmentOrderError, match="expected segment 0, got 1"):
        _feed(decryptor, segments[1])
    _feed(decryptor, segments[0])
    with pytest.raises(SegmentOrderError, match="expected segment 1, got 0 \\(a repeat"):
        _feed(decryptor, segments[0])
    with pytest.raises(TruncatedStreamError):
        decryptor.finish()
    _feed(decryptor, segments[1])
    _feed(decryptor, segments[2])
    assert (decryptor.next_index, decryptor.done) == (3, True)
    decryptor.finish()
    with pytest.raises(TrailingDataError, match="after the final segment 2"):
        _feed(decryptor, segments[2])
    with pytest.raises(TrailingDataError):
        decryptor.decrypt_segment(3, segments[2][2], True)


def test_a_failed_segment_leaves_the_decryptor_where_it_was() -> None:
    segments = _segments(_HEADER, _KEY, os.urandom(2 * SEG))
    decryptor = StreamDecryptor(_HEADER, _KEY)
    index, final, ciphertext = segments[0]
    with pytest.raises(SegmentAuthenticationError):
        decryptor.decrypt_segment(index, bytes([ciphertext[0] ^ 1]) + ciphertext[1:], final)
    with pytest.raises(SegmentAuthenticationError):
        decryptor.decrypt_segment(index, ciphertext, not final)
    with pytest.raises(SegmentLengthError):
        decryptor.decrypt_segment(index, ciphertext[:-1], final)
    assert decryptor.next_index == 0
    decryptor.decrypt_segment(index, ciphertext, final)
    assert decryptor.next_index == 1


def test_segments_of_another_stream_do_not_authenticate() -> None:
    other, other_key = _seal(transfer_id="t-other")
    foreign = _segments(other, other_key, os.urandom(SEG))
    with pytest.raises(SegmentAuthenticationError):
        _feed(StreamDecryptor(_HEADER, _KEY), foreign[0])


@pytest.mark.parametrize(
    ("index", "length", "final", "message"),
    [
        (0, 15, True, "final segment 0 has 15 bytes; it must have 16-80"),
        (0, SEG + TAG_LEN + 1, True, "final segment 0 has 81 bytes; it must have 16-80"),
        (0, SEG + TAG_LEN - 1, False, "segment 0 has 79 bytes; a non-final segment has 80"),
        (0, 0, False, "segment 0 has 0 bytes; a non-final segment has 80"),
    ],
)
def test_decryptor_checks_lengths(index: int, length: int, final: bool, message: str) -> None:
    with pytest.raises(SegmentLengthError) as caught:
        StreamDecryptor(_HEADER, _KEY).decrypt_segment(index, bytes(length), final)
    assert str(caught.value) == message


def test_an_empty_final_is_only_allowed_first() -> None:
    with pytest.raises(
        SegmentLengthError, match="final segment 1 has 16 bytes; it must have 17-80"
    ):
        StreamDecryptor(_HEADER, _KEY, start_index=1).decrypt_segment(1, bytes(16), True)


def test_resume_with_start_index() -> None:
    plaintext = os.urandom(5 * SEG + 10)
    segments = _segments(_HEADER, _KEY, plaintext)
    decryptor = StreamDecryptor(_HEADER, _KEY, start_index=3)
    assert decryptor.next_index == 3
    with pytest.raises(SegmentOrderError, match="expected segment 3, got 2"):
        _feed(decryptor, segments[2])
    tail = b"".join(_feed(decryptor, s) for s in segments[3:])
    decryptor.finish()
    assert tail == plaintext[3 * SEG :]


@pytest.mark.parametrize("start", [-1, MAX_SEGMENTS])
def test_start_index_range(start: int) -> None:
    with pytest.raises(ValueError) as caught:
        StreamDecryptor(_HEADER, _KEY, start_index=start)
    assert str(caught.value) == f"start index must be between 0 and 4294967294, got {start}"


def test_the_last_possible_segment_must_be_final() -> None:
    decryptor = StreamDecryptor(_HEADER, _KEY, start_index=MAX_SEGMENTS - 1)
    with pytest.raises(SegmentOrderError, match="a stream has at most 4294967295 segments"):
        decryptor.decrypt_segment(MAX_SEGMENTS - 1, bytes(SEG + TAG_LEN), False)


# --- stream files -------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, SEG - 1, SEG, SEG + 1, 2 * SEG, 7 * SEG + 13])
def test_stream_round_trip(length: int) -> None:
    plaintext = os.urandom(length)
    out = io.BytesIO()
    written = write_stream(_HEADER, _KEY, io.BytesIO(plaintext), out)
    segments = max(1, -(-length // SEG))
    assert written == len(out.getvalue()) == len(_RAW) + length + segments * TAG_LEN
    dst = io.BytesIO()
    assert read_stream(io.BytesIO(out.getvalue()), dst, ME, HOLDER) == length
    assert dst.getvalue() == plaintext


def test_read_stream_honours_the_version_filter() -> None:
    stream = _stream(_HEADER, _KEY, b"hello")
    with pytest.raises(NoUsableWrappedKeyError):
        read_stream(io.BytesIO(stream), io.BytesIO(), ME, HOLDER, transport_versions=[2])


def test_read_stream_writes_nothing_for_a_stream_missing_its_final_segment() -> None:
    stream = _stream(_HEADER, _KEY, os.urandom(2 * SEG))
    cut = stream[: -(SEG + TAG_LEN)]  # drop the final segment: segment 0 is at EOF
    out = io.BytesIO()
    with pytest.raises(TruncatedStreamError, match="ends with segment 0"):
        read_stream(io.BytesIO(cut), out, ME, HOLDER)
    assert out.getvalue() == b""


def test_read_stream_refuses_junk_instead_of_segments() -> None:
    with pytest.raises(SegmentLengthError):
        _open(_RAW + bytes(5))


# --- memory -------------------------------------------------------------------------------


class Zeros:
    """A lazily generated source of ``size`` zero bytes."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, size: int = -1, /) -> bytes:
        n = self.left if size < 0 else min(size, self.left)
        self.left -= n
        return bytes(n)


class Sink:
    """Counts and drops what is written."""

    def __init__(self) -> None:
        self.count = 0

    def write(self, data: bytes, /) -> int:
        self.count += len(data)
        return len(data)


MiB = 1024 * 1024


def _peak(run: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_iter_segments_memory_is_bounded_by_a_few_segments() -> None:
    header, key = _seal(segment_size=MiB)
    encryptor = StreamEncryptor(header, key)
    count = 0

    def run() -> None:
        nonlocal count
        for _, _, ciphertext in encryptor.iter_segments(Zeros(64 * MiB + 3)):
            count += len(ciphertext)

    peak = _peak(run)
    assert count == 64 * MiB + 3 + 65 * TAG_LEN
    # The segment being read, the ciphertext being made and the one the consumer still holds.
    assert peak < 4 * MiB, f"peak {peak} bytes for 1 MiB segments"


def test_write_and_read_stream_memory_is_bounded() -> None:
    header, key = _seal(segment_size=MiB)
    size = 32 * MiB + 5
    assert _peak(lambda: write_stream(header, key, Zeros(size), Sink())) < 4 * MiB
    stream = io.BytesIO()
    write_stream(header, key, Zeros(size), stream)
    src = io.BytesIO(stream.getvalue())
    sink = Sink()
    peak = _peak(lambda: read_stream(src, sink, ME, HOLDER))
    assert sink.count == size
    assert peak < 3 * MiB, f"peak {peak} bytes: one ciphertext and one plaintext segment"
