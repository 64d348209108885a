"""Waiting for a partner: the backoff schedule on a fake clock, what is worth a retry, and the
replay of released segments across upload attempts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.errors import LeaseLostError, PartnerBusyError, TransferConflictError
from gateway.ledger_leases import LEASE_SECONDS, lease_lost_message
from gateway.retry import Backoff, Patience, ReplayLostError, SegmentReplay, Waiting
from gateway.transfer import SegmentIn, refused_by, transient, unreachable


class FakeTimer:
    """Time passes only when someone sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_backoff_doubles_from_a_fifth_of_a_second_to_five() -> None:
    steps = [Backoff().delay(attempt, draw=0.0) for attempt in range(1, 9)]
    assert steps == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])


def test_jitter_only_shortens_a_step_and_at_most_by_half() -> None:
    assert Backoff().delay(4, draw=0.999) == pytest.approx(0.8, abs=0.01)
    assert Backoff().delay(4, draw=0.5) == pytest.approx(1.2)


def test_patience_reports_each_wait_and_gives_up_at_the_deadline() -> None:
    timer = FakeTimer()
    patience = Patience(12, timer, draw=lambda: 0.0)
    seen: list[Waiting] = []
    while patience.pause("partner frankfurt is unreachable", seen.append):
        pass
    assert sum(timer.slept) == pytest.approx(12)  # the last pause ends at the deadline
    assert timer.slept[:4] == pytest.approx([0.2, 0.4, 0.8, 1.6])
    assert [w.attempt for w in seen] == list(range(1, len(seen) + 1))
    fourth = seen[3]
    assert (fourth.reason, fourth.attempt, fourth.wait) == (
        "partner frankfurt is unreachable",
        4,
        12,
    )
    assert fourth.retry_in == pytest.approx(1.6)
    assert fourth.waited == pytest.approx(1.4)
    assert seen[-1].waited + seen[-1].retry_in == pytest.approx(12)


def test_zero_wait_gives_up_at_once_without_sleeping() -> None:
    timer = FakeTimer()
    seen: list[Waiting] = []
    assert not Patience(0, timer).pause("x", seen.append)
    assert timer.slept == [] and seen == []


def test_progress_starts_a_fresh_wait() -> None:
    timer = FakeTimer()
    patience = Patience(10, timer, draw=lambda: 0.0)
    for _ in range(5):
        assert patience.pause("x", lambda _w: None)
    timer.now += 100  # a long stretch of progress
    patience.progressed()
    seen: list[Waiting] = []
    assert patience.pause("x", seen.append)
    assert (seen[0].attempt, seen[0].waited) == (1, 0)
    assert seen[0].retry_in == pytest.approx(0.2)


# -- what is worth a retry ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        unreachable("frankfurt", "offer", "failed to connect to all addresses"),
        unreachable("frankfurt", "upload", "Socket closed"),
        refused_by("frankfurt", "finish", "UNAVAILABLE", "the gateway is shutting down"),
        refused_by("frankfurt", "offer", "DEADLINE_EXCEEDED", "Deadline Exceeded"),
        # The partner's own two "busy" refusals, worded as its error types word them.
        refused_by(
            "frankfurt",
            "offer",
            "RESOURCE_EXHAUSTED",
            str(
                PartnerBusyError(
                    "partner lingang already has 16 requests in flight, its limit "
                    "(limits.max_concurrent_transfers); retry when one has finished"
                )
            ),
        ),
        refused_by(
            "frankfurt",
            "finish",
            "FAILED_PRECONDITION",
            str(
                TransferConflictError("transfer t1 is busy on another stream; finish again shortly")
            ),
        ),
        refused_by(
            "frankfurt",
            "upload",
            "ABORTED",
            str(LeaseLostError(lease_lost_message("inbound/lingang/dpo_t1", LEASE_SECONDS))),
        ),
    ],
    ids=["connect", "cut", "draining", "deadline", "busy", "one-writer", "lease-lost"],
)
def test_transient_failures_are_retried(error: Exception) -> None:
    assert isinstance(error, type(unreachable("a", "offer", "")))
    assert transient(error)


@pytest.mark.parametrize(
    ("status", "details"),
    [
        ("PERMISSION_DENIED", "passport t1 is not for this gateway"),
        ("FAILED_PRECONDITION", "no usable wrapped key; fetch a fresh key set"),
        ("INVALID_ARGUMENT", "manifest does not match"),
        ("RESOURCE_EXHAUSTED", "the data is 10 bytes; passport t1 allows 5"),
        ("RESOURCE_EXHAUSTED", "storage full on the receiver"),
        ("ALREADY_EXISTS", "passport t1 was used"),
        ("UNAUTHENTICATED", "bad signature"),
        ("UNKNOWN", "Exception calling application"),
        ("ABORTED", "the transfer was aborted"),
    ],
)
def test_refusals_are_final(status: str, details: str) -> None:
    assert not transient(refused_by("frankfurt", "offer", status, details))


# -- replay of released segments ---------------------------------------------------------------


def _segments(count: int, size: int = 10) -> Iterator[SegmentIn]:
    for i in range(count):
        yield SegmentIn("t1", i, i == count - 1, bytes([i]) * size)


def test_an_attempt_resumes_from_a_kept_segment_then_reads_on() -> None:
    replay = SegmentReplay(_segments(6), keep_bytes=30)
    first = replay.attempt(0)
    assert [next(first).index for _ in range(4)] == [0, 1, 2, 3]
    again = replay.attempt(2)  # the partner holds 0 and 1
    assert [s.index for s in again] == [2, 3, 4, 5]
    assert list(first) == []  # the older attempt's stream ends


def test_a_resume_point_older_than_what_is_kept_is_refused() -> None:
    replay = SegmentReplay(_segments(6), keep_bytes=30)
    assert [s.index for s in replay.attempt(0)] == list(range(6))
    with pytest.raises(
        ReplayLostError, match="resumes from segment 2; this send keeps segments from 3"
    ):
        replay.attempt(2)
    assert list(replay.attempt(6)) == []  # everything held: nothing left to upload


def test_a_segment_pulled_by_a_dead_calls_thread_is_not_lost() -> None:
    """gRPC's request thread may take one more segment after its call failed, and drop it."""
    replay = SegmentReplay(_segments(4))
    dead = replay.attempt(0)
    assert [next(dead).index, next(dead).index] == [0, 1]  # 1 never went on the wire
    new = replay.attempt(1)  # the partner holds segment 0
    assert list(dead) == []  # the dead stream takes nothing more
    assert [s.index for s in new] == [1, 2, 3]
