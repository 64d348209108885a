"""The hand-made Upload path (gateway.wire, gateway.partner, gateway.pipeline): the parser
reads every Segment protobuf (upb) reads, the same way, and refuses what upb refuses; the
pre-serialised messages are protobuf's bytes; the servicer sizes messages without
re-serialising them and refuses a malformed one with its reason."""

from __future__ import annotations

import itertools
import os
import random

import pytest
from google.protobuf.message import DecodeError

from gateway._proto.xbgw.v1 import partner_pb2
from gateway.envelope import TAG_LEN
from gateway.partner import _upload_segment
from gateway.partner_link import segment_wire
from gateway.wire import (
    SegmentFormatError,
    WireSegment,
    ciphertext_len,
    ciphertext_view,
    parse_segment,
    parse_upload_message,
    segment_head,
    varint,
)

Fields = tuple[str, int, bool, bytes]


def _upb(data: bytes) -> Fields | None:
    try:
        m = partner_pb2.Segment.FromString(data)
    except DecodeError:
        return None
    return (m.transfer_id, m.index, m.final, m.ciphertext)


def _mine(data: bytes) -> Fields | None:
    try:
        s = parse_segment(data)
    except SegmentFormatError:
        return None
    return (s.transfer_id, s.index, s.final, s.ciphertext)


def test_a_message_protobuf_wrote_is_read_without_copying_its_ciphertext() -> None:
    ciphertext = os.urandom((1 << 20) + TAG_LEN)
    data = partner_pb2.Segment(
        transfer_id="dpo_t1", index=300, final=True, ciphertext=ciphertext
    ).SerializeToString()
    segment = parse_segment(data)
    assert (segment.transfer_id, segment.index, segment.final) == ("dpo_t1", 300, True)
    assert segment.wire is data  # the ciphertext is a view of the received bytes
    assert ciphertext_view(segment) == ciphertext and ciphertext_len(segment) == len(ciphertext)
    assert segment.ciphertext == ciphertext


def test_fields_in_every_order_read_the_same() -> None:
    fields = [b"\x0a\x02t1", b"\x10\x07", b"\x18\x01", b"\x22\x03abc"]
    for order in itertools.permutations(fields):
        data = b"".join(order)
        assert _mine(data) == _upb(data) == ("t1", 7, True, b"abc")


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"\x10\x05\x10\x06", ("", 6, False, b"")),  # a repeated scalar: the last wins
        (b"\x18\x01\x18\x00", ("", 0, False, b"")),
        (b"\x22\x01a\x22\x02bc", ("", 0, False, b"bc")),  # bytes too
        (b"\x0a\x01a\x0a\x01b", ("b", 0, False, b"")),
        (b"\x18\x02", ("", 0, True, b"")),  # any non-zero varint is true
        (b"\x10" + varint(2**32 + 3), ("", 3, False, b"")),  # uint32 keeps the low 32 bits
        (b"\x20\x05\x12\x01a", ("", 0, False, b"")),  # known numbers, other wire types: skipped
        (b"\x48\x01\x51" + bytes(8) + b"\x5d" + bytes(4) + b"\x62\x01z", ("", 0, False, b"")),
        (b"\x2b\x08\x01\x33\x34\x2c\x10\x07", ("", 7, False, b"")),  # an unknown group, nested
        (b"\x2b\x00\x01\x2c", ("", 0, False, b"")),  # field 0 passes inside a skipped group
        (b"\x90\x80\x80\x80\x00\x05", ("", 5, False, b"")),  # a 5-byte tag
        (b"\x10" + b"\xff" * 9 + b"\x7f", ("", 2**32 - 1, False, b"")),  # a 10-byte varint
    ],
)
def test_what_protobuf_accepts_reads_as_protobuf_reads_it(data: bytes, expected: Fields) -> None:
    assert _upb(data) == expected
    assert _mine(data) == expected


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"\x10\x80", "ends inside a varint"),
        (b"\x80", "ends inside a varint"),
        (b"\x10" + b"\xff" * 10 + b"\x01", "longer than 10 bytes"),
        (b"\x22\x05abc", "claims 5 bytes, 3 are left"),
        (b"\x22\xff\xff\xff\xff\x0f", "claims 4294967295 bytes"),
        (b"\x0a\x01\xff", "not valid UTF-8"),
        (b"\x00\x01", "field number 0"),
        (b"\x0e", "wire type 6"),
        (b"\x2c", "never started"),
        (b"\x2b\x08\x01\x34", "ends with the end tag of 6"),
        (b"\x2b\x08\x01", "ends inside group 5"),
        (b"\x2d\x01\x02", "ends inside field 5"),
        (b"\x90\x80\x80\x80\x80\x00\x05", "tag longer than 5 bytes"),
        (b"\x2b" * 101, "nested deeper than 100"),
    ],
)
def test_what_protobuf_refuses_is_refused_with_where_and_why(data: bytes, reason: str) -> None:
    assert _upb(data) is None
    with pytest.raises(SegmentFormatError, match=reason):
        parse_segment(data)
    parsed = parse_upload_message(data)  # gRPC's deserialiser: never raises
    assert parsed.segment is None and parsed.error is not None and reason in parsed.error
    assert parsed.size == len(data)


def test_mutated_messages_read_as_upb_reads_them() -> None:
    """Differential: pieces of valid and odd fields, mutated at random, 30,000 times."""
    rnd = random.Random(14)
    pieces = [
        b"\x0a\x03abc", b"\x10\x85\x01", b"\x18\x01", b"\x22\x04wxyz", b"\x2d\x01\x02\x03\x04",
        b"\x29" + bytes(8), b"\x2b\x08\x01\x2c", b"\x48\x01", b"\x00\x01", b"\x02\x01z",
        b"\x2b", b"\x2c", b"\x33", b"\x34", b"\x03", b"\x04", b"\x0a\x02\xc3\xa9",
    ]  # fmt: skip
    for _ in range(30_000):
        data = bytearray(b"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 6))))
        for _ in range(rnd.randint(0, 3)):
            if data:
                at = rnd.randrange(len(data))
                roll = rnd.random()
                if roll < 0.4:
                    data[at] = rnd.randrange(256)
                elif roll < 0.7:
                    del data[at:]
                else:
                    data.insert(at, rnd.randrange(256))
        assert _mine(bytes(data)) == _upb(bytes(data)), bytes(data).hex()


@pytest.mark.parametrize("transfer_id", ["", "dpo_t", "tränsfer"])
@pytest.mark.parametrize("index", [0, 1, 128, 2**32 - 1])
@pytest.mark.parametrize("final", [False, True])
@pytest.mark.parametrize("length", [0, 16, (1 << 20) + TAG_LEN])
def test_a_head_and_its_ciphertext_are_protobufs_message(
    transfer_id: str, index: int, final: bool, length: int
) -> None:
    ciphertext = os.urandom(length)
    head = segment_head(transfer_id, index, final, length)
    expected = partner_pb2.Segment(
        transfer_id=transfer_id, index=index, final=final, ciphertext=ciphertext
    ).SerializeToString()
    assert head + ciphertext == expected
    built = WireSegment(transfer_id, index, final, head + ciphertext, len(head), len(expected))
    assert segment_wire(built) is built.wire  # sent as built: no copy
    assert parse_segment(expected).ciphertext == ciphertext


def test_a_received_message_that_is_not_canonical_is_reserialised_to_send() -> None:
    data = b"\x22\x03abc\x10\x07"  # ciphertext first: valid, but not protobuf's order
    segment = parse_segment(data)
    assert segment_wire(segment) == b"\x10\x07\x22\x03abc"


def test_setting_the_ciphertext_rebuilds_the_message() -> None:
    segment = parse_segment(b"\x0a\x01t\x22\x02ab")
    segment.ciphertext = b"xyz"
    assert segment_wire(segment) == b"\x0a\x01t\x22\x03xyz" == segment.wire


def test_the_servicer_sizes_both_kinds_of_message_without_reserialising() -> None:
    ciphertext = os.urandom(1000)
    message = partner_pb2.Segment(transfer_id="t", index=2, final=True, ciphertext=ciphertext)
    data = message.SerializeToString()
    from_raw, raw_size = _upload_segment(parse_upload_message(data))
    from_pb, pb_size = _upload_segment(message)
    assert raw_size == pb_size == message.ByteSize() == len(data)
    assert from_raw is not None and from_pb is not None
    for s in (from_raw, from_pb):
        assert (s.transfer_id, s.index, s.final, s.ciphertext) == ("t", 2, True, ciphertext)
    padded = data + b"\x7a\x05" + bytes(5)  # an unknown field counts: the bytes were received
    assert _upload_segment(parse_upload_message(padded))[1] == len(padded)
