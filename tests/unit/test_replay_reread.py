"""``SegmentReplay`` with a source that can be read again (a handed-over file): what the
window let go is asked of ``reread``, one segment at a time, and nothing else is."""

from __future__ import annotations

import pytest

from gateway.retry import ReplayLostError, SegmentReplay
from gateway.transfer import SegmentIn
from tests.unit.test_retry import _segments


class Reread:
    """Segment ``i`` made again as ``_segments`` made it; records what was asked."""

    def __init__(self, count: int, fail_at: int | None = None) -> None:
        self.count = count
        self.fail_at = fail_at
        self.asked: list[int] = []

    def __call__(self, index: int) -> SegmentIn | None:
        self.asked.append(index)
        if index == self.fail_at:
            return None
        return SegmentIn("t1", index, index == self.count - 1, bytes([index]) * 10)


def test_what_the_window_let_go_is_read_again_then_the_kept_and_the_source() -> None:
    reread = Reread(8)
    replay = SegmentReplay(_segments(8), keep_bytes=30, reread=reread)
    first = replay.attempt(0)
    assert [next(first).index for _ in range(6)] == list(range(6))  # keeps 3, 4, 5
    again = replay.attempt(1)
    assert [(s.index, s.ciphertext) for s in again] == [(i, bytes([i]) * 10) for i in range(1, 8)]
    assert reread.asked == [1, 2]  # 3..5 from the window, 6 and 7 from the source
    assert list(first) == []


def test_a_point_before_where_the_source_started_is_read_again() -> None:
    """The first attempt started at 4 (the partner's point then); the partner now resumes
    from 2 (a node that took over from an older durable point)."""
    reread = Reread(6)
    source = (s for s in _segments(6) if s.index >= 4)
    replay = SegmentReplay(source, reread=reread, first=4)
    assert [s.index for s in replay.attempt(4)] == [4, 5]
    assert [s.index for s in replay.attempt(2)] == [2, 3, 4, 5]
    assert reread.asked == [2, 3]


def test_a_stream_cannot_go_back_before_where_its_source_started() -> None:
    source = (s for s in _segments(6) if s.index >= 4)
    replay = SegmentReplay(source, first=4)
    with pytest.raises(
        ReplayLostError, match="resumes from segment 2; this send keeps segments from 4"
    ):
        replay.attempt(2)


def test_a_segment_that_cannot_be_made_again_ends_the_attempt() -> None:
    """``reread`` refused (the pipeline keeps why): the stream ends there, no final segment."""
    reread = Reread(8, fail_at=2)
    replay = SegmentReplay(_segments(8), keep_bytes=30, reread=reread)
    assert [s.index for s in replay.attempt(0)] == list(range(8))
    assert [s.index for s in replay.attempt(0)] == [0, 1]
    assert reread.asked == [0, 1, 2]
