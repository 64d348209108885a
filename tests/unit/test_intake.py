"""Intake: verify each segment, enforce the byte limit, spool, and move the durable point.

A real XBGW-STREAM-1 stream (sealed to a software key holder), a real SQLite ledger and a
real spool directory; only the HSM is a fake.
"""

from __future__ import annotations

import errno
import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from gateway import envelope
from gateway import spool as spool_module
from gateway.envelope import TAG_LEN, StreamContext, StreamDecryptor, StreamEncryptor
from gateway.errors import (
    ByteLimitError,
    OfferMismatchError,
    SegmentAuthenticationError,
    SegmentOrderError,
    TrailingDataError,
)
from gateway.keys import KeyRef, Purpose
from gateway.ledger import Inbound, Ledger
from gateway.receiver import intake as intake_module
from gateway.receiver.intake import Intake
from gateway.spool import Spool
from gateway.transfer import SegmentIn
from tests.fakes import SoftwareHsm

SENDER = "gw-a"
ME = "gw-b"
TID = "t-1"
SEG = 64  # the smallest segment size the format allows: many segments, few bytes
SEG_LEN = SEG + TAG_LEN
HOLDER = SoftwareHsm()


@dataclass
class Stream:
    header: envelope.Header
    header_bytes: bytes
    plaintext: bytes
    segments: list[SegmentIn]


def _make_stream(plaintext: bytes, transfer_id: str = TID) -> Stream:
    context = StreamContext(transfer_id, SENDER, ME, hashlib.sha256(b"passport").digest())
    header, data_key = envelope.seal_header(
        context,
        KeyRef(ME, Purpose.TRANSPORT, 1),
        HOLDER.public_key(Purpose.TRANSPORT, 1),
        SEG,
    )
    encryptor = StreamEncryptor(header, data_key)
    pieces = [plaintext[i : i + SEG] for i in range(0, len(plaintext), SEG)] or [b""]
    segments = [
        SegmentIn(
            transfer_id,
            index,
            index == len(pieces) - 1,
            encryptor.encrypt_segment(index, piece, index == len(pieces) - 1),
        )
        for index, piece in enumerate(pieces)
    ]
    return Stream(header, header.encode(), plaintext, segments)


class Receiver:
    """The receiving side's state for one transfer: ledger row, spool file, intakes."""

    def __init__(self, root: Path, stream: Stream, byte_limit: int = 10**9) -> None:
        self.stream = stream
        self.ledger = Ledger(root / "ledger.db")
        self.spool = Spool(root / "spool")
        self.ledger.create_inbound(
            transfer_id=TID,
            sender=SENDER,
            passport="passport",
            passport_digest=hashlib.sha256(b"passport").digest(),
            offered_header_digest=hashlib.sha256(stream.header_bytes).digest(),
            stored_header=stream.header_bytes,
            byte_limit=byte_limit,
            classification="internal",
            source_jurisdiction="CN-SH",
            dataset_sha256=None,
        )
        self.spool.open_partial(TID, stream.header_bytes, len(stream.header_bytes)).close()
        self.hasher = hashlib.sha256()

    def row(self) -> Inbound:
        row = self.ledger.inbound(TID)
        assert row is not None
        return row

    def intake(self) -> Intake:
        """An intake from the durable point, as the receiver opens one per upload."""
        row = self.row()
        data_key = envelope.open_header(self.stream.header, ME, HOLDER)
        decryptor = StreamDecryptor(self.stream.header, data_key, start_index=row.next_segment)
        partial = self.spool.open_partial(
            TID, self.stream.header_bytes, self.durable_length(row.next_segment)
        )
        return Intake(
            self.ledger, TID, decryptor, self.hasher, partial, row.received_bytes, row.byte_limit
        )

    def durable_length(self, segments: int) -> int:
        return len(self.expected_file(segments))

    def file(self) -> bytes:
        return self.spool.partial_path(TID).read_bytes()

    def expected_file(self, segments: int) -> bytes:
        return self.stream.header_bytes + b"".join(
            s.ciphertext for s in self.stream.segments[:segments]
        )


class MakeReceiver(Protocol):
    def __call__(self, stream: Stream, byte_limit: int = ...) -> Receiver: ...


@pytest.fixture
def make_receiver(tmp_path: Path) -> Iterator[MakeReceiver]:
    made: list[Receiver] = []

    def make(stream: Stream, byte_limit: int = 10**9) -> Receiver:
        receiver = Receiver(tmp_path / f"r{len(made)}", stream, byte_limit)
        made.append(receiver)
        return receiver

    yield make
    for receiver in made:
        receiver.ledger.close()


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _with_ciphertext(segment: SegmentIn, ciphertext: bytes) -> SegmentIn:
    return SegmentIn(segment.transfer_id, segment.index, segment.final, ciphertext)


# --- good streams -----------------------------------------------------------------------------


def test_good_stream_is_spooled_hashed_and_made_durable(make_receiver: MakeReceiver) -> None:
    stream = _make_stream(os.urandom(5 * SEG + 17))
    receiver = make_receiver(stream)
    intake = receiver.intake()
    intake.run(stream.segments)
    intake.close()
    assert intake.received == len(stream.plaintext)
    assert intake.decryptor.done
    assert receiver.file() == receiver.expected_file(6)
    assert receiver.hasher.digest() == hashlib.sha256(stream.plaintext).digest()
    row = receiver.row()
    assert (row.next_segment, row.received_bytes, row.final_received) == (
        6,
        len(stream.plaintext),
        True,
    )


def test_background_syncs_move_the_point_during_the_stream(
    make_receiver: MakeReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a sync every 2 segments, the point moves before the stream ends."""
    monkeypatch.setattr(intake_module, "SYNC_EVERY_SEGMENTS", 2)
    stream = _make_stream(os.urandom(9 * SEG))  # 9 full segments, the last one final
    receiver = make_receiver(stream)
    intake = receiver.intake()
    seen: list[int] = []

    def feed() -> Iterator[SegmentIn]:
        for segment in stream.segments:
            if segment.final:
                # Segments 0-7 are handed over and the queue holds at most QUEUE_DEPTH, so
                # the worker is done with segment 1 and has asked for point 2: wait for it.
                deadline = time.monotonic() + 5
                while receiver.row().next_segment < 2 and time.monotonic() < deadline:
                    time.sleep(0.001)
                seen.append(receiver.row().next_segment)
                assert receiver.row().received_bytes == seen[-1] * SEG
                # Every point the ledger reports is backed by the bytes already on disk.
                assert len(receiver.file()) >= receiver.durable_length(seen[-1])
            yield segment

    intake.run(feed())
    intake.close()
    assert seen
    assert seen[0] >= 2  # a background sync was recorded before the stream ended
    assert seen[0] % 2 == 0  # points are requested every 2 segments
    row = receiver.row()
    assert (row.next_segment, row.received_bytes, row.final_received) == (9, 9 * SEG, True)
    assert receiver.file() == receiver.expected_file(9)


def test_every_resume_point_follows_a_sync_that_covers_it(
    make_receiver: MakeReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fdatasync first, then the ledger: a point is never ahead of the synced bytes."""
    monkeypatch.setattr(intake_module, "SYNC_EVERY_SEGMENTS", 4)
    stream = _make_stream(os.urandom(20 * SEG + 1))
    receiver = make_receiver(stream)
    events: list[tuple[str, int]] = []
    real_sync = spool_module.PartialFile.sync
    real_record = Ledger.record_progress

    def sync(self: spool_module.PartialFile) -> None:
        real_sync(self)
        events.append(("synced", self.path.stat().st_size))

    def record(
        self: Ledger, transfer_id: str, next_segment: int, received: int, final: bool
    ) -> None:
        events.append(("point", next_segment))
        real_record(self, transfer_id, next_segment, received, final)

    monkeypatch.setattr(spool_module.PartialFile, "sync", sync)
    monkeypatch.setattr(Ledger, "record_progress", record)

    def feed() -> Iterator[SegmentIn]:
        for segment in stream.segments:
            if segment.final:  # let the background sync of point 20 finish first
                deadline = time.monotonic() + 5
                while receiver.row().next_segment < 20 and time.monotonic() < deadline:
                    time.sleep(0.001)
            yield segment

    intake = receiver.intake()
    intake.run(feed())
    intake.close()
    points = [value for kind, value in events if kind == "point"]
    # Background points (coalesced when the disk is slower than the stream), then the last.
    assert points[-2:] == [20, 21]
    assert all(point % 4 == 0 for point in points[:-1])
    assert points == sorted(points)
    synced = 0
    for kind, value in events:
        if kind == "synced":
            synced = value
        else:
            assert synced >= receiver.durable_length(value)


def test_many_segments_with_the_default_sync_interval(make_receiver: MakeReceiver) -> None:
    count = intake_module.SYNC_EVERY_SEGMENTS * 2 + 3
    stream = _make_stream(os.urandom(count * SEG - 1))
    receiver = make_receiver(stream)
    intake = receiver.intake()
    intake.run(stream.segments)
    intake.close()
    assert receiver.file() == receiver.expected_file(count)
    assert receiver.row().next_segment == count
    assert receiver.hasher.digest() == hashlib.sha256(stream.plaintext).digest()


def test_empty_stream(make_receiver: MakeReceiver) -> None:
    stream = _make_stream(b"")
    receiver = make_receiver(stream)
    intake = receiver.intake()
    intake.run(stream.segments)
    intake.close()
    row = receiver.row()
    assert (row.next_segment, row.received_bytes, row.final_received) == (1, 0, True)
    assert receiver.file() == receiver.expected_file(1)
    assert len(receiver.file()) == len(stream.header_bytes) + TAG_LEN


def test_broken_stream_resumes_where_it_stopped(make_receiver: MakeReceiver) -> None:
    """Upload in two streams: the second continues from the first one's durable point."""
    stream = _make_stream(os.urandom(7 * SEG + 5))
    receiver = make_receiver(stream)
    first = receiver.intake()
    first.run(stream.segments[:3])  # the connection drops after segment 2
    first.close()
    row = receiver.row()
    assert (row.next_segment, row.received_bytes, row.final_received) == (3, 3 * SEG, False)
    second = receiver.intake()
    second.run(stream.segments[3:])
    second.close()
    assert receiver.file() == receiver.expected_file(8)
    assert receiver.hasher.digest() == hashlib.sha256(stream.plaintext).digest()
    row = receiver.row()
    assert (row.next_segment, row.received_bytes, row.final_received) == (
        8,
        len(stream.plaintext),
        True,
    )


def test_close_without_new_segments_keeps_the_point(make_receiver: MakeReceiver) -> None:
    stream = _make_stream(os.urandom(3 * SEG))
    receiver = make_receiver(stream)
    intake = receiver.intake()
    intake.run([])
    intake.close()
    assert receiver.row().next_segment == 0
    assert receiver.file() == stream.header_bytes


# --- tampering and protocol errors ------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, 3, 5])
def test_flipped_segment_stops_at_the_last_verified_segment(
    make_receiver: MakeReceiver, bad: int
) -> None:
    stream = _make_stream(os.urandom(5 * SEG + 9))
    receiver = make_receiver(stream)
    segments = list(stream.segments)
    segments[bad] = _with_ciphertext(segments[bad], _flip(segments[bad].ciphertext, 77))
    intake = receiver.intake()
    with pytest.raises(SegmentAuthenticationError, match=f"segment {bad}.* failed authentication"):
        intake.run(segments)
    intake.close()  # what verified stays, durably
    row = receiver.row()
    assert (row.next_segment, row.received_bytes, row.final_received) == (bad, bad * SEG, False)
    assert receiver.file() == receiver.expected_file(bad)
    assert receiver.hasher.digest() == hashlib.sha256(stream.plaintext[: bad * SEG]).digest()
    assert row.state == "receiving"


def test_after_a_flipped_segment_the_good_one_is_accepted(make_receiver: MakeReceiver) -> None:
    stream = _make_stream(os.urandom(4 * SEG + 1))
    receiver = make_receiver(stream)
    tampered = list(stream.segments)
    tampered[2] = _with_ciphertext(tampered[2], _flip(tampered[2].ciphertext, 0))
    intake = receiver.intake()
    with pytest.raises(SegmentAuthenticationError):
        intake.run(tampered)
    intake.close()
    retry = receiver.intake()
    retry.run(stream.segments[2:])
    retry.close()
    assert receiver.file() == receiver.expected_file(5)
    assert receiver.hasher.digest() == hashlib.sha256(stream.plaintext).digest()
    assert receiver.row().final_received is True


def test_byte_limit_is_enforced_before_appending(make_receiver: MakeReceiver) -> None:
    stream = _make_stream(os.urandom(5 * SEG))
    limit = 3 * SEG + 10  # segment 3 would cross it
    receiver = make_receiver(stream, byte_limit=limit)
    intake = receiver.intake()
    with pytest.raises(ByteLimitError, match=f"exceeds its limit of {limit} bytes"):
        intake.run(stream.segments)
    intake.discard()  # what the receiver does before refusing the transfer
    assert intake.received == 3 * SEG
    assert receiver.file() == receiver.expected_file(3)
    assert receiver.hasher.digest() == hashlib.sha256(stream.plaintext[: 3 * SEG]).digest()


def test_byte_limit_counts_bytes_of_earlier_streams(make_receiver: MakeReceiver) -> None:
    stream = _make_stream(os.urandom(4 * SEG))
    receiver = make_receiver(stream, byte_limit=3 * SEG)
    first = receiver.intake()
    first.run(stream.segments[:2])
    first.close()
    second = receiver.intake()
    assert second.received == 2 * SEG
    with pytest.raises(ByteLimitError):
        second.run(stream.segments[2:])
    second.discard()
    assert receiver.file() == receiver.expected_file(3)


def test_a_stream_of_exactly_the_limit_is_accepted(make_receiver: MakeReceiver) -> None:
    stream = _make_stream(os.urandom(3 * SEG + 7))
    receiver = make_receiver(stream, byte_limit=3 * SEG + 7)
    intake = receiver.intake()
    intake.run(stream.segments)
    intake.close()
    assert receiver.row().received_bytes == 3 * SEG + 7
    assert receiver.row().final_received is True


def test_segment_after_the_final_one_is_refused(make_receiver: MakeReceiver) -> None:
    stream = _make_stream(os.urandom(2 * SEG + 3))
    receiver = make_receiver(stream)
    extra = SegmentIn(TID, 3, False, b"\x00" * SEG_LEN)
    intake = receiver.intake()
    with pytest.raises(TrailingDataError, match=r"segment 3 arrived after the final segment$"):
        intake.run([*stream.segments, extra])
    intake.close()
    assert receiver.file() == receiver.expected_file(3)
    row = receiver.row()
    assert (row.next_segment, row.received_bytes, row.final_received) == (3, 2 * SEG + 3, True)


def test_segment_for_another_transfer_is_refused(make_receiver: MakeReceiver) -> None:
    stream = _make_stream(os.urandom(3 * SEG))
    receiver = make_receiver(stream)
    other = _make_stream(os.urandom(3 * SEG), transfer_id="t-2")
    intake = receiver.intake()
    with pytest.raises(OfferMismatchError, match="segment for 't-2' inside the upload of 't-1'"):
        intake.run([stream.segments[0], other.segments[1], stream.segments[2]])
    intake.close()
    assert receiver.file() == receiver.expected_file(1)
    assert receiver.row().next_segment == 1


def test_out_of_order_segment_is_refused(make_receiver: MakeReceiver) -> None:
    stream = _make_stream(os.urandom(4 * SEG))
    receiver = make_receiver(stream)
    intake = receiver.intake()
    with pytest.raises(SegmentOrderError, match="expected segment 1, got 2"):
        intake.run([stream.segments[0], stream.segments[2]])
    intake.close()
    assert receiver.file() == receiver.expected_file(1)
    assert receiver.row().next_segment == 1


def test_segments_after_a_failure_are_not_taken(make_receiver: MakeReceiver) -> None:
    """Once a segment fails, nothing more is read from the wire beyond the queue."""
    stream = _make_stream(os.urandom(40 * SEG))
    receiver = make_receiver(stream)
    tampered = list(stream.segments)
    tampered[1] = _with_ciphertext(tampered[1], _flip(tampered[1].ciphertext, 9))
    pulled = 0

    def feed() -> Iterator[SegmentIn]:
        nonlocal pulled
        for segment in tampered:
            pulled += 1
            yield segment

    intake = receiver.intake()
    with pytest.raises(SegmentAuthenticationError):
        intake.run(feed())
    intake.close()
    assert pulled < len(tampered)
    assert receiver.file() == receiver.expected_file(1)


# --- a failed append (disk full) ---------------------------------------------------------


def test_failed_append_does_not_move_the_point_past_the_file(
    make_receiver: MakeReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = _make_stream(os.urandom(5 * SEG))
    receiver = make_receiver(stream)
    real_append = spool_module.PartialFile.append
    calls = 0

    def disk_full_at_third(self: spool_module.PartialFile, data: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_append(self, data)

    monkeypatch.setattr(spool_module.PartialFile, "append", disk_full_at_third)
    intake = receiver.intake()
    with pytest.raises(OSError, match="No space left"):
        intake.run(stream.segments)
    intake.close()  # what the receiver does after any failure but the byte limit
    monkeypatch.undo()
    row = receiver.row()
    assert receiver.file() == receiver.expected_file(2)
    assert (row.next_segment, row.received_bytes) == (2, 2 * SEG)
    receiver.intake().close()  # the transfer can resume
