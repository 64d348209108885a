"""The sender's upload path holds bounded memory: the pre-serialised Segment bytes are the
ones protobuf would send, and the replay windows of all sends are paid out of the pipelines'
one budget, shed under pressure without deadlock (gateway.partner_link, gateway.pipeline,
gateway.retry)."""

from __future__ import annotations

import gc
import os
import threading
import weakref
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import pytest

from gateway._proto.xbgw.v1 import partner_pb2
from gateway.envelope import TAG_LEN, cut_segments
from gateway.partner_link import segment_wire
from gateway.pipeline import Budget, Lease, Pipeline
from gateway.retry import SegmentReplay
from gateway.transfer import SegmentIn

# -- the wire bytes of an upload ----------------------------------------------------------------


@pytest.mark.parametrize("transfer_id", ["", "t", "0f" * 100, "tränsfer-ü"])
@pytest.mark.parametrize("index", [0, 1, 127, 128, 16_383, 16_384, 2**32 - 1])
@pytest.mark.parametrize("final", [False, True])
@pytest.mark.parametrize("size", [0, 1, 127, 128, (1 << 20) + TAG_LEN])
def test_a_segment_goes_on_the_wire_as_protobuf_would_send_it(
    transfer_id: str, index: int, final: bool, size: int
) -> None:
    ciphertext = os.urandom(size)
    wire = segment_wire(SegmentIn(transfer_id, index, final, ciphertext))
    message = partner_pb2.Segment(
        transfer_id=transfer_id, index=index, final=final, ciphertext=ciphertext
    )
    assert wire == message.SerializeToString()
    parsed = partner_pb2.Segment.FromString(wire)
    assert (parsed.transfer_id, parsed.index, parsed.final, parsed.ciphertext) == (
        transfer_id,
        index,
        final,
        ciphertext,
    )


# -- the replay window inside the budget ------------------------------------------------------


class _Room:
    def __init__(self) -> None:
        self.dropped = 0

    def drop(self, size: int) -> None:
        self.dropped += size


def _segments(count: int, size: int = 10) -> Iterator[SegmentIn]:
    for i in range(count):
        yield SegmentIn("t1", i, i == count - 1, bytes([i]) * size)


def test_a_window_pays_back_what_it_lets_go_and_keeps_the_newest_when_shedding() -> None:
    room = _Room()
    replay = SegmentReplay(_segments(4), keep_bytes=20, room=room)
    reader = replay.attempt(0)
    assert [next(reader).index for _ in range(3)] == [0, 1, 2]
    assert room.dropped == 10  # segment 0 fell out of the 20-byte window
    assert replay.shed() and room.dropped == 20  # the oldest kept (1) goes
    assert replay.shed() and room.dropped == 30  # the newest's room goes, the segment stays
    assert not replay.shed()  # nothing left to give
    assert [s.index for s in replay.attempt(2)] == [2, 3]  # the newest is still replayable
    assert room.dropped == 30  # the unpaid newest is not paid back twice when it falls out


def test_a_lease_sheds_its_own_window_before_it_waits_for_room() -> None:
    budget = Budget(30)
    stop = threading.Event()
    lease = Lease(budget, 30)
    shed_calls: list[int] = []

    def shed() -> bool:
        shed_calls.append(lease.kept)
        if not lease.kept:
            return False
        lease.drop(10)
        return True

    lease.shed_with(shed)
    assert lease.take(30, stop)
    lease.keep(10, 10)
    lease.keep(10, 8)  # a short (final) segment: the rest of its slot comes back at once
    assert (lease.held, lease.kept, budget.free) == (10, 18, 2)
    assert lease.take(10, stop, wait=False)  # no free room: the window shed for it
    assert shed_calls == [18] and (lease.held, lease.kept, budget.free) == (20, 8, 2)
    lease.close()
    assert budget.free == budget.total and lease.kept == 0


def _pipeline(number: int, budget: Budget, segment: int) -> Pipeline:
    ledger = SimpleNamespace(
        tags={},
        segment_tags=lambda _t, first, last: {},
        record_segment_tags=lambda _t, tags: None,
    )
    encryptor = SimpleNamespace(
        header=SimpleNamespace(segment_size=segment),
        encrypt_segment=lambda index, plaintext, final: plaintext + index.to_bytes(16, "big"),
    )
    return Pipeline(
        cast(Any, ledger), f"t{number}", cast(Any, encryptor), 0, lambda _d: None, budget
    )


def test_sends_whose_windows_fill_the_budget_all_finish_and_give_it_all_back() -> None:
    """Room for two segments among four sends, each with a window of four: the windows
    alone could hold the budget for ever; each producer short of room sheds its own."""
    segment = 64
    slot = segment + TAG_LEN
    budget = Budget(2 * slot)
    results: dict[int, bytes] = {}
    most_kept = [0]

    def run(number: int) -> None:
        data = bytes([number]) * (segment * 37 + 5)
        pipeline = _pipeline(number, budget, segment)
        pipeline.start(cut_segments([data], segment))
        replay = pipeline.replay(keep_bytes=4 * slot)
        out = []
        for s in replay.attempt(0):
            out.append(s.ciphertext[:-TAG_LEN])
            most_kept[0] = max(most_kept[0], budget.total - budget.free)
        pipeline.raise_failure()
        results[number] = b"".join(out)

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a pipeline deadlocked"
    assert results == {n: bytes([n]) * (segment * 37 + 5) for n in range(4)}
    assert budget.free == budget.total
    assert most_kept[0] <= budget.total


def test_a_lone_send_keeps_its_whole_window_and_frees_it_with_the_send() -> None:
    segment = 64
    slot = segment + TAG_LEN
    budget = Budget(32 * slot)
    pipeline = _pipeline(0, budget, segment)
    pipeline.start(cut_segments([b"x" * (segment * 20)], segment))
    replay = pipeline.replay(keep_bytes=4 * slot)
    assert len(list(replay.attempt(0))) == 20
    assert [s.index for s in replay.attempt(16)] == [16, 17, 18, 19]  # nothing shed
    window = weakref.ref(replay)
    pipeline.raise_failure()
    assert budget.free == budget.total
    del replay
    gc.disable()  # freed by reference counting, not by the cycle collector
    try:
        assert window() is None
    finally:
        gc.enable()
