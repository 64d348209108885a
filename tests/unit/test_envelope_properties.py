"""Properties of XBGW-STREAM-1: every plaintext round-trips, every single bit flip is caught."""

from __future__ import annotations

import hashlib
import io

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.envelope import (
    MAX_SEGMENTS,
    TAG_LEN,
    Header,
    StreamContext,
    StreamDecryptor,
    StreamEncryptor,
    read_stream,
    rewrap_for_storage,
    seal_header,
    write_stream,
)
from gateway.errors import EnvelopeError
from gateway.keys import KeyRef, Purpose
from tests.fakes import SoftwareHsm

ME = "gw-b"
HOLDER = SoftwareHsm()
TRANSPORT_V1 = KeyRef(ME, Purpose.TRANSPORT, 1)
STORAGE_V1 = KeyRef(ME, Purpose.STORAGE, 1)
CONTEXT = StreamContext("t-prop", "gw-a", ME, hashlib.sha256(b"passport").digest())

# Moderate example counts: the whole file runs in a few seconds.
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _seal(segment_size: int) -> tuple[Header, bytes]:
    return seal_header(CONTEXT, TRANSPORT_V1, HOLDER.public_key(Purpose.TRANSPORT, 1), segment_size)


@st.composite
def plaintexts(draw: st.DrawFn) -> tuple[int, bytes]:
    """A segment size in 64..4096 and a plaintext of 0 .. about 5 segments."""
    segment_size = draw(st.integers(64, 4096))
    length = draw(
        st.one_of(
            st.integers(0, 5 * segment_size + 1),
            # Lengths at segment boundaries, where off-by-one errors live.
            st.integers(0, 5).map(lambda n: n * segment_size),
            st.integers(1, 5).map(lambda n: n * segment_size + 1),
        )
    )
    return segment_size, draw(st.binary(min_size=length, max_size=length))


@SETTINGS
@given(plaintexts())
def test_any_plaintext_round_trips(case: tuple[int, bytes]) -> None:
    segment_size, plaintext = case
    header, key = _seal(segment_size)
    out = io.BytesIO()
    written = write_stream(header, key, io.BytesIO(plaintext), out)
    segments = max(1, -(-len(plaintext) // segment_size))
    assert written == len(header.encode()) + len(plaintext) + segments * TAG_LEN
    back = io.BytesIO()
    assert read_stream(io.BytesIO(out.getvalue()), back, ME, HOLDER) == len(plaintext)
    assert back.getvalue() == plaintext


@SETTINGS
@given(plaintexts())
def test_segment_api_round_trips_and_is_canonical(case: tuple[int, bytes]) -> None:
    segment_size, plaintext = case
    header, key = _seal(segment_size)
    encryptor = StreamEncryptor(header, key)
    segments = list(encryptor.iter_segments(io.BytesIO(plaintext)))
    assert [final for _, final, _ in segments] == [False] * (len(segments) - 1) + [True]
    assert all(len(ct) == segment_size + TAG_LEN for _, final, ct in segments if not final)
    decryptor = StreamDecryptor(header, key)
    assert b"".join(decryptor.decrypt_segment(i, ct, f) for i, f, ct in segments) == plaintext
    decryptor.finish()
    assert decryptor.next_index == len(segments) < MAX_SEGMENTS


@st.composite
def flipped_streams(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A stream (sometimes re-wrapped to storage), one bit of it flipped anywhere."""
    segment_size = draw(st.integers(64, 256))
    length = draw(st.integers(0, 4 * segment_size))
    header, key = _seal(segment_size)
    if draw(st.booleans()):
        header = rewrap_for_storage(header, key, STORAGE_V1, HOLDER)
    out = io.BytesIO()
    write_stream(header, key, io.BytesIO(draw(st.binary(min_size=length, max_size=length))), out)
    stream = bytearray(out.getvalue())
    header_len = len(header.encode())
    # Half the time in the header, where each field has its own check.
    in_header = draw(st.booleans())
    position = draw(
        st.integers(0, header_len - 1) if in_header else st.integers(0, len(stream) - 1)
    )
    stream[position] ^= 1 << draw(st.integers(0, 7))
    return bytes(stream), in_header


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flipped_streams())
def test_any_single_bit_flip_is_detected(case: tuple[bytes, bool]) -> None:
    stream, in_header = case
    event("flip in the header" if in_header else "flip anywhere")
    out = io.BytesIO()
    try:
        read_stream(io.BytesIO(stream), out, ME, HOLDER)
    except EnvelopeError:
        return
    raise AssertionError("a flipped bit went unnoticed")
