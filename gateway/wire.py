"""Domain values to and from their common wire messages: signed blobs and transfer states.

The one place a :class:`~gateway.transfer.TransferState` becomes a protobuf enum and back, so
the partner servicer, the local servicer, the gRPC partner link and the CLI cannot disagree.
"""

from __future__ import annotations

from gateway._proto.xbgw.v1 import common_pb2, partner_pb2
from gateway.signed import Signed
from gateway.transfer import SegmentIn, TransferState

_TO_WIRE: dict[TransferState, common_pb2.TransferState] = {
    TransferState.RECEIVING: common_pb2.TRANSFER_STATE_RECEIVING,
    TransferState.COMMITTED: common_pb2.TRANSFER_STATE_COMMITTED,
    TransferState.REFUSED: common_pb2.TRANSFER_STATE_REFUSED,
    TransferState.SENDING: common_pb2.TRANSFER_STATE_SENDING,
    TransferState.DELIVERED: common_pb2.TRANSFER_STATE_DELIVERED,
    TransferState.CANCELLED: common_pb2.TRANSFER_STATE_CANCELLED,
    TransferState.EXPIRED: common_pb2.TRANSFER_STATE_EXPIRED,
}
_FROM_WIRE: dict[int, TransferState] = {int(wire): state for state, wire in _TO_WIRE.items()}


def to_blob(signed: Signed) -> common_pb2.SignedBlob:
    return common_pb2.SignedBlob(body=signed.body, signature=signed.signature, kid=signed.kid)


def from_blob(blob: common_pb2.SignedBlob) -> Signed:
    return Signed(bytes(blob.body), bytes(blob.signature), blob.kid)


def deliver_request(
    passport: str, header: bytes, segment: SegmentIn, manifest: Signed
) -> partner_pb2.DeliverRequest:
    """The one message of a Deliver call: passport, envelope header, the one segment, the
    signed manifest."""
    return partner_pb2.DeliverRequest(
        passport=passport,
        envelope_header=header,
        segment=partner_pb2.Segment(
            transfer_id=segment.transfer_id,
            index=segment.index,
            final=segment.final,
            ciphertext=bytes(segment.ciphertext),
        ),
        manifest=to_blob(manifest),
    )


def state_to_wire(state: TransferState) -> common_pb2.TransferState:
    return _TO_WIRE[state]


def state_from_wire(value: int) -> TransferState | None:
    """The state a peer sent; None for UNSPECIFIED or a value newer than this gateway."""
    return _FROM_WIRE.get(value)


# -- the Segment message of Upload, serialised and parsed by hand ------------------------------
#
# Why by hand: protobuf (upb) copies a ``bytes`` field into the message when it parses, again
# on every read of ``message.ciphertext``, and ``ByteSize()``/``SerializeToString()``
# serialise the whole message again: three or four passes over each megabyte that carry no
# information. The Upload method is therefore registered without protobuf on both ends
# (``gateway.partner_link``, ``gateway.partner``): the sender builds the message around the
# ciphertext in one buffer, the receiver reads the fields where they lie.

#: ``Segment``'s fields (proto/xbgw/v1/partner.proto): number -> wire type.
_TRANSFER_ID, _INDEX, _FINAL, _CIPHERTEXT = 1, 2, 3, 4
_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = 0, 1, 2, 3, 4, 5
#: upb's nesting limit for groups (its default decode depth).
_MAX_DEPTH = 100


def varint(value: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative ``value``."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def segment_head(transfer_id: str, index: int, final: bool, length: int) -> bytes:
    """The bytes of a serialised ``Segment`` that come before its ``length`` bytes of
    ciphertext: ``head + ciphertext`` is ``Segment(...).SerializeToString()`` byte for byte.

    Proto3's rules as upb applies them: fields in number order, a field at its default value
    (empty, 0, false) left out -- so the ciphertext, field 4, is always last."""
    head = bytearray()
    encoded = transfer_id.encode("utf-8")
    if encoded:
        head += b"\x0a" + varint(len(encoded)) + encoded
    if index:
        head += b"\x10" + varint(index)
    if final:
        head += b"\x18\x01"
    if length:
        head += b"\x22" + varint(length)
    return bytes(head)


class WireSegment(SegmentIn):
    """A segment and the serialised ``Segment`` message it travels in, one object.

    ``wire[start:end]`` is the ciphertext: :func:`ciphertext_view` reads it without a copy,
    and the sender hands ``wire`` to gRPC as it is. ``ciphertext`` (what the rest of the code
    and the tests see) is still ``bytes``, made on demand; setting it rebuilds the message.
    """

    __slots__ = ("end", "start", "wire")

    def __init__(
        self, transfer_id: str, index: int, final: bool, wire: bytes, start: int, end: int
    ) -> None:
        # SegmentIn.__init__ is not called: it would set ciphertext, which is the view.
        self.transfer_id = transfer_id
        self.index = index
        self.final = final
        self.wire = wire
        self.start = start
        self.end = end

    @property
    def ciphertext(self) -> bytes:
        return self.wire[self.start : self.end]

    @ciphertext.setter
    def ciphertext(self, value: bytes) -> None:
        head = segment_head(self.transfer_id, self.index, self.final, len(value))
        self.wire, self.start, self.end = head + value, len(head), len(head) + len(value)


def ciphertext_view(segment: SegmentIn) -> memoryview:
    """The segment's ciphertext without copying it (for AES-GCM, hashing, file writes)."""
    if isinstance(segment, WireSegment):
        return memoryview(segment.wire)[segment.start : segment.end]
    return memoryview(segment.ciphertext)


def ciphertext_len(segment: SegmentIn) -> int:
    """``len(segment.ciphertext)`` without making the bytes of a :class:`WireSegment`."""
    if isinstance(segment, WireSegment):
        return segment.end - segment.start
    return len(segment.ciphertext)


class SegmentFormatError(ValueError):
    """The bytes of an Upload message are not a ``Segment`` protobuf would accept."""


class ParsedSegment:
    """One Upload message as received: its size, and either its segment or why it is not
    one (the servicer refuses it with the reason, so the sender learns what was wrong)."""

    __slots__ = ("error", "segment", "size")

    def __init__(self, size: int, segment: WireSegment | None, error: str | None) -> None:
        self.size = size
        self.segment = segment
        self.error = error


def parse_upload_message(data: bytes) -> ParsedSegment:
    """gRPC's request deserialiser for Upload: never raises (a raising deserialiser makes
    gRPC end the call as INTERNAL with no reason the servicer could log or send)."""
    try:
        return ParsedSegment(len(data), parse_segment(data), None)
    except SegmentFormatError as exc:
        return ParsedSegment(len(data), None, str(exc))


def parse_segment(data: bytes) -> WireSegment:
    """Read a serialised ``Segment`` with protobuf's (upb's) semantics, without copying the
    ciphertext: fields in any order; a repeated scalar or bytes field -- the last one wins;
    unknown fields (and known numbers with another wire type) skipped, groups included;
    ``transfer_id`` must be UTF-8; ``index`` keeps the low 32 bits of its varint.

    Every length is checked against the bytes left before it is used:
    ``SegmentFormatError`` names the offset and what is wrong there."""
    transfer_id = ""
    index = 0
    final = False
    start = end = 0
    pos, limit = 0, len(data)
    while pos < limit:
        at = pos
        number, kind, pos = _tag(data, pos)
        if kind == _EGROUP:
            raise SegmentFormatError(f"byte {at}: end of a group that was never started")
        if kind == _LEN:
            length, pos = _varint(data, pos)
            if length > limit - pos:
                raise SegmentFormatError(
                    f"byte {at}: field {number} claims {length} bytes, {limit - pos} are left"
                )
            if number == _TRANSFER_ID:
                try:
                    transfer_id = data[pos : pos + length].decode("utf-8")
                except UnicodeDecodeError:
                    raise SegmentFormatError(f"byte {at}: transfer_id is not valid UTF-8") from None
            elif number == _CIPHERTEXT:
                start, end = pos, pos + length
            pos += length
        elif kind == _VARINT:
            value, pos = _varint(data, pos)
            if number == _INDEX:
                index = value & 0xFFFFFFFF
            elif number == _FINAL:
                final = value != 0
        else:
            pos = _skip(data, pos, number, kind, 0)
    return WireSegment(transfer_id, index, final, data, start, end)


def _tag(data: bytes, pos: int, in_group: bool = False) -> tuple[int, int, int]:
    """A field's tag: ``(number, wire type, position after it)``. Like upb, a tag has at most
    5 bytes; field number 0 is refused at the top level but passes inside a skipped group."""
    at = pos
    tag, pos = _varint(data, pos)
    number, kind = tag >> 3, tag & 7
    if pos - at > 5:
        raise SegmentFormatError(f"byte {at}: a field tag longer than 5 bytes")
    if tag > 0xFFFFFFFF or (number == 0 and not in_group):
        raise SegmentFormatError(f"byte {at}: field number {number} is not a valid field number")
    if kind > _I32:
        raise SegmentFormatError(f"byte {at}: wire type {kind} does not exist")
    return number, kind, pos


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """A varint of at most 10 bytes (upb's limit); ``(value, position after it)``."""
    value = shift = 0
    for i in range(pos, min(pos + 10, len(data))):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value & 0xFFFFFFFFFFFFFFFF, i + 1
        shift += 7
    if len(data) - pos < 10:
        raise SegmentFormatError(f"byte {pos}: the message ends inside a varint")
    raise SegmentFormatError(f"byte {pos}: a varint longer than 10 bytes")


def _skip(data: bytes, pos: int, number: int, kind: int, depth: int) -> int:
    """Past one unknown field's value (``kind`` not LEN or VARINT: those the caller reads)."""
    if kind in (_I64, _I32):
        width = 8 if kind == _I64 else 4
        if width > len(data) - pos:
            raise SegmentFormatError(f"byte {pos}: the message ends inside field {number}")
        return pos + width
    # A group: fields up to the end-group tag of the same number.
    if depth >= _MAX_DEPTH:
        raise SegmentFormatError(f"byte {pos}: groups nested deeper than {_MAX_DEPTH}")
    while pos < len(data):
        at = pos
        inner, inner_kind, pos = _tag(data, pos, in_group=True)
        if inner_kind == _EGROUP:
            if inner != number:
                raise SegmentFormatError(
                    f"byte {at}: group {number} ends with the end tag of {inner}"
                )
            return pos
        if inner_kind == _LEN:
            length, pos = _varint(data, pos)
            if length > len(data) - pos:
                raise SegmentFormatError(
                    f"byte {at}: field {inner} claims {length} bytes, {len(data) - pos} are left"
                )
            pos += length
        elif inner_kind == _VARINT:
            _, pos = _varint(data, pos)
        else:
            pos = _skip(data, pos, inner, inner_kind, depth + 1)
    raise SegmentFormatError(f"the message ends inside group {number}")
