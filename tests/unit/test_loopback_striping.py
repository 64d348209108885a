"""Striping in process: one transfer over N Upload streams (``partners[].connections``).

A real lingang ``Sender`` striping over the loopback's ``upload_stripe`` into a real
frankfurt ``Receiver`` (``tests.loopback``): each stripe runs in its own thread as it would
on its own connection. What must hold: the data arrives byte-identical; segments that arrive
out of order across stripes are written strictly in order (the spool and the resume point
never run past the contiguous prefix) within a bounded reorder buffer; a cut stripe resumes
from the contiguous prefix with nothing lost or duplicated; a refusal on any stripe is the
refusal one stream gets.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest

from gateway.envelope import TAG_LEN
from gateway.errors import PartnerError
from gateway.receiver.intake import (
    REORDER_PER_STRIPE,
    Reorder,
    Stripe,
    StripeBrokenError,
    StripedSession,
)
from gateway.transfer import SegmentIn
from tests.loopback import SEGMENT, LinkCut, Loopback, flip
from tests.loopback_rig import assert_delivered, assert_held, assert_partner_error

Segments = Iterator[SegmentIn]
SEGMENT_LEN = SEGMENT + TAG_LEN
DEADLINE = 10.0


def _stripe_over(lb: Loopback, n: int) -> None:
    """lingang sends to frankfurt over ``n`` connections."""
    config = lb.lingang.config
    partners = tuple(
        replace(p, connections=n) if p.id == "frankfurt" else p for p in config.partners
    )
    lb.lingang.sender.reconfigure(replace(config, partners=partners))


def _send(lb: Loopback, token: str, data: bytes) -> None:
    chunks = [data[i : i + 50] for i in range(0, len(data), 50)]
    lb.lingang.sender.send("frankfurt", token, iter(chunks), len(data))


def _session(lb: Loopback) -> StripedSession:
    """The striped upload running at frankfurt, set up (waits for it: the session is
    registered by its first stream before that stream has made its reorder buffer)."""
    sessions: dict[tuple[str, str], StripedSession] = lb.frankfurt.receiver._ctx._stripes

    def set_up() -> bool:
        return any(session.reorder is not None for session in list(sessions.values()))

    _until(set_up, "no striped session set up")
    return next(iter(sessions.values()))


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        time.sleep(0.005)


def _recorded(into: dict[int, SegmentIn]) -> Callable[[Segments], Segments]:
    def tamper(segments: Segments) -> Segments:
        for segment in segments:
            into[segment.index] = segment
            yield segment

    return tamper


def test_three_stripes_deliver_byte_identical(lb: Loopback) -> None:
    _stripe_over(lb, 3)
    data = os.urandom(40 * SEGMENT + 5)
    token = lb.passport("dpo_stripe-3")
    calls = len(lb.link.calls)
    summary = lb.resend(token, data)
    assert lb.link.calls[calls:].count("upload") == 3
    assert_delivered(lb, "dpo_stripe-3", data, summary)


def test_one_connection_uploads_as_one_stream(lb: Loopback) -> None:
    """connections: 1 (the default) is today's single Upload, no stripe metadata."""
    data = os.urandom(10 * SEGMENT)
    calls = len(lb.link.calls)
    summary = lb.send("dpo_stripe-1", data)
    assert lb.link.calls[calls:] == ["key_set", "offer", "upload", "finish"]
    assert_delivered(lb, "dpo_stripe-1", data, summary)


def test_out_of_order_arrival_is_written_in_order_within_the_bound(lb: Loopback) -> None:
    """Stripe 1 holds back its first segment: the others fill the reorder buffer up to its
    bound and wait; the spool and the resume point stay at the contiguous prefix (segment 0);
    then stripe 1 goes and everything is written in order."""
    _stripe_over(lb, 3)
    data = os.urandom(30 * SEGMENT + 7)
    token = lb.passport("dpo_stripe-order")
    seen: dict[int, SegmentIn] = {}
    checked: list[str] = []
    window = REORDER_PER_STRIPE * 3

    def late(segments: Segments) -> Segments:
        session = _session(lb)
        reorder = session.reorder
        assert isinstance(reorder, Reorder)
        # stripes 0 and 2 run ahead until the sender's one slot per stripe stops them (4 is
        # stripe 1's): 2 and 3 wait at the receiver for 1
        _until(lambda: reorder.highest() == 3 and 0 in seen, "the others did not run ahead")
        time.sleep(0.05)  # the stopped ones stay stopped
        assert reorder.highest() == 3
        assert reorder.bytes <= window * SEGMENT_LEN
        row = lb.frankfurt.ledger.inbound("dpo_stripe-order")
        assert row is not None and row.next_segment == 0  # nothing past the prefix is durable
        partial = lb.frankfurt.spool.partial_path("dpo_stripe-order").read_bytes()
        assert partial == row.stored_header + seen[0].ciphertext
        checked.append("mid-transfer")
        for segment in segments:
            seen[segment.index] = segment
            yield segment
        assert reorder.peak_bytes <= window * SEGMENT_LEN
        checked.append("bound")

    lb.link.tamper_stripes = {0: _recorded(seen), 1: late, 2: _recorded(seen)}
    summary = lb.resend(token, data)
    assert checked == ["mid-transfer", "bound"]
    assert_delivered(lb, "dpo_stripe-order", data, summary)


def test_a_cut_stripe_resumes_from_the_contiguous_prefix(lb: Loopback) -> None:
    _stripe_over(lb, 3)
    data = os.urandom(40 * SEGMENT + 5)
    token = lb.passport("dpo_stripe-cut")
    seen: dict[int, SegmentIn] = {}

    def cut(segments: Segments) -> Segments:
        for count, segment in enumerate(segments):
            if count == 3:  # 1, 4, 7 went; 10 is lost with the connection
                raise LinkCut("after 3 segments of stripe 1")
            seen[segment.index] = segment
            yield segment

    lb.link.tamper_stripes = {0: _recorded(seen), 1: cut, 2: _recorded(seen)}
    with pytest.raises(PartnerError) as first:
        lb.resend(token, data)
    assert_partner_error(first.value, "UNAVAILABLE")  # transient: a send with --wait goes on
    row = lb.frankfurt.ledger.inbound("dpo_stripe-cut")
    assert row is not None
    prefix = row.next_segment
    assert 1 <= prefix <= 10
    assert_held(lb, "dpo_stripe-cut", [seen[i] for i in range(prefix)])

    resumed: dict[int, SegmentIn] = {}
    lb.link.tamper_stripes = {k: _recorded(resumed) for k in range(3)}
    summary = lb.resend(token, data)
    assert sorted(resumed) == list(range(prefix, 41))  # nothing resent, nothing skipped
    assert_delivered(lb, "dpo_stripe-cut", data, summary)


def test_fewer_segments_than_connections_go_on_as_many_stripes(lb: Loopback) -> None:
    """A stream names its transfer in its first segment, so a stripe with nothing to carry
    could not join: two segments over four connections go as two stripes, not four."""
    _stripe_over(lb, 4)
    data = os.urandom(SEGMENT + 7)
    token = lb.passport("dpo_stripe-few")
    calls = len(lb.link.calls)
    summary = lb.resend(token, data)
    assert lb.link.calls[calls:].count("upload") == 2
    assert_delivered(lb, "dpo_stripe-few", data, summary)


def test_a_resume_near_the_end_stripes_over_what_is_left(lb: Loopback) -> None:
    """Stripe 0 is cut before the final segment, once frankfurt holds all the others: the
    resume has one segment left for four connections and sends it as one stripe."""
    _stripe_over(lb, 4)
    data = os.urandom(8 * SEGMENT + 3)  # segments 0-8; stripe 0 carries 0, 4 and 8
    token = lb.passport("dpo_stripe-end")

    def all_but_the_last_taken() -> bool:
        reorder = _session(lb).reorder
        assert reorder is not None
        return reorder.highest() == -1 and reorder._next == 8

    def cut(segments: Segments) -> Segments:
        for segment in segments:
            if segment.index == 8:
                _until(all_but_the_last_taken, "segments 0-7 were not all taken")
                raise LinkCut("before the final segment")
            yield segment

    lb.link.tamper_stripes = {0: cut}
    with pytest.raises(PartnerError) as first:
        lb.resend(token, data)
    assert_partner_error(first.value, "UNAVAILABLE")
    row = lb.frankfurt.ledger.inbound("dpo_stripe-end")
    assert row is not None
    assert row.next_segment == 8

    resumed: dict[int, SegmentIn] = {}
    lb.link.tamper_stripes = {k: _recorded(resumed) for k in range(4)}
    calls = len(lb.link.calls)
    summary = lb.resend(token, data)
    assert sorted(resumed) == [8]
    assert lb.link.calls[calls:].count("upload") == 1
    assert_delivered(lb, "dpo_stripe-end", data, summary)


def test_a_tampered_segment_on_stripe_2_is_refused_as_on_one_stream(lb: Loopback) -> None:
    _stripe_over(lb, 3)
    data = os.urandom(20 * SEGMENT)
    token = lb.passport("dpo_stripe-flip")
    seen: dict[int, SegmentIn] = {}

    def flipped(segments: Segments) -> Segments:
        for segment in segments:
            yield flip(segment) if segment.index == 2 else segment

    lb.link.tamper_stripes = {0: _recorded(seen), 1: _recorded(seen), 2: flipped}
    with pytest.raises(PartnerError) as refused:
        lb.resend(token, data)
    assert_partner_error(refused.value, "DATA_LOSS", "segment 2 failed authentication")
    assert_held(lb, "dpo_stripe-flip", [seen[0], seen[1]])


def test_a_stripe_out_of_order_is_refused(lb: Loopback) -> None:
    _stripe_over(lb, 3)
    data = os.urandom(20 * SEGMENT)
    token = lb.passport("dpo_stripe-skip")

    def skip_first(segments: Segments) -> Segments:
        next(segments)
        yield from segments

    lb.link.tamper_stripes = {1: skip_first}
    with pytest.raises(PartnerError) as refused:
        lb.resend(token, data)
    assert_partner_error(
        refused.value, "OUT_OF_RANGE", "expected segment 1 on stripe 1 of 3, got 4"
    )


def _segment(index: int) -> SegmentIn:
    return SegmentIn("t", index, False, bytes(SEGMENT_LEN))


def _stripe(index: int) -> Stripe:
    """Stripe ``index`` of 2 of one attempt."""
    return Stripe(index, 2, "ab" * 4)


def test_the_reorder_buffer_holds_at_most_its_window() -> None:
    """The receiver's own bound, whatever a sender does: a segment ``window`` or more ahead
    of the worker waits, and is refused UNAVAILABLE once it waited too long."""
    reorder = Reorder(start=0, window=4)
    for index in (1, 2, 3):
        assert reorder.put(_segment(index), 0.0)
    with pytest.raises(StripeBrokenError, match="segment 4 waited 0 s for segment 0"):
        reorder.put(_segment(4), 0.0)
    assert reorder.bytes == 3 * SEGMENT_LEN
    assert reorder.put(_segment(0), 0.0)
    assert [s.index for s in reorder.take()] == [0, 1, 2, 3]
    assert reorder.bytes == 4 * SEGMENT_LEN  # the worker's batch still counts
    waiting = threading.Thread(target=reorder.put, args=(_segment(7), DEADLINE))
    waiting.start()  # 7 >= floor 0 + 4: waits until the worker comes back for more
    _until(lambda: reorder.waiting == 1, "segment 7 did not wait for room")
    assert reorder.highest() == -1
    reorder.close()
    assert reorder.take() == []  # the batch is done: room for 4..7, but the end came first
    waiting.join(DEADLINE)
    assert reorder.peak_bytes == 4 * SEGMENT_LEN


def test_a_stream_waits_for_room_before_it_reads_its_next_message() -> None:
    """Memory: a stripe too far ahead of the worker leaves its next message unread (in
    gRPC's flow-control window, which holds it anyway) rather than holding it while it
    waits -- 8 stripes held 8 segments on top of the reorder buffer."""
    session = StripedSession("t", _stripe(0))
    reorder = Reorder(start=0, window=2, stripes=2)
    pulled: list[int] = []

    def stripe_zero() -> Segments:
        for index in (0, 2, 4):
            pulled.append(index)
            yield _segment(index)

    feeding = threading.Thread(target=session._feed, args=(_stripe(0), stripe_zero(), reorder))
    feeding.start()
    _until(lambda: reorder.waiting == 1, "stripe 0 did not wait for room for segment 2")
    assert pulled == [0]  # segment 2 (>= floor 0 + window 2) is not read yet
    assert reorder.put(_segment(1), 0.0)  # stripe 1's
    assert [s.index for s in reorder.take()] == [0, 1]
    worker = threading.Thread(target=reorder.take)  # done with 0..1: room up to 3
    worker.start()
    worker.join(DEADLINE)
    _until(lambda: reorder.waiting == 1 and pulled == [0, 2], "segment 2 was not read")
    assert reorder.highest() == -1  # segment 2 went to the worker; 4 is not read
    reorder.close()
    feeding.join(DEADLINE)
    assert pulled == [0, 2] and not feeding.is_alive()


def test_room_stops_waiting_once_the_needed_stream_ended() -> None:
    """The stream carrying the segment the worker needs ended without it: waiting for room
    is no use, so the others read on (and end, or are held by ``put`` as before)."""
    reorder = Reorder(start=0, window=2, stripes=2)
    assert reorder.room(1, 0.0)  # within the window
    reorder.stream_ended(1)  # not the stream of segment 0: still no room for 3
    with pytest.raises(StripeBrokenError, match="segment 3 waited 0 s for segment 0"):
        reorder.room(3, 0.0)
    reorder.stream_ended(0)  # segment 0 can no longer come
    assert reorder.room(3, 0.0)
    reorder.fail(StripeBrokenError("over"))
    assert not reorder.room(1, 0.0)
