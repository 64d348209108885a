"""A partner that is unreachable or busy for a while, in process: the send waits with backoff
(on a fake clock), resumes from the partner's point by itself, delivers byte-identical with one
receipt -- and never retries a refusal.

The link fails on purpose at each partner call (key set, offer, upload mid-stream, manifest);
everything else is the real sender and receiver of ``tests.loopback``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import PartnerConfig
from gateway.errors import PartnerError, TransferConflictError
from gateway.retry import Waiting
from gateway.sender import Progress, ReceiptSummary, Sender
from tests.loopback import SEGMENT, Loopback, Segments, cut_after, make_loopback
from tests.loopback_rig import Rig, assert_delivered, record_uploads
from tests.unit.test_retry import FakeTimer


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Rig, FakeTimer]]:
    lb = make_loopback(tmp_path)
    lb.link.no_deliver.add("frankfurt")  # the three calls (Deliver: test_loopback_oneshot)
    timer = FakeTimer()
    side = lb.lingang
    side.sender = Sender(
        side.config, side.keys, side.ring, side.ledger, lb.link, lambda: lb.now[0], timer=timer
    )
    made = Rig(lb)
    record_uploads(made, monkeypatch)
    try:
        yield made, timer
    finally:
        lb.close()


def _send(
    lb: Loopback, token: str, data: bytes, wait: float, events: list[Progress] | None = None
) -> ReceiptSummary:
    chunks = iter([data[i : i + 50] for i in range(0, len(data), 50)])
    report = events.append if events is not None else (lambda _p: None)
    return lb.lingang.sender.send("frankfurt", token, chunks, len(data), report, wait)


def _failing(
    monkeypatch: pytest.MonkeyPatch,
    lb: Loopback,
    call: str,
    times: int,
    error: Callable[[], Exception],
) -> list[int]:
    """Make the link's ``call`` raise ``error()`` the first ``times`` times; count calls."""
    original = getattr(lb.link, call)
    made = [0]

    def flaky(*args: Any) -> Any:
        made[0] += 1
        if made[0] <= times:
            raise error()
        return original(*args)

    monkeypatch.setattr(lb.link, call, flaky)
    return made


def _unreachable(call: str) -> Callable[[], Exception]:
    return lambda: PartnerError(
        f"partner frankfurt is unreachable during {call}: failed to connect to all addresses; "
        "Connection refused"
    )


def _waits(events: list[Progress]) -> list[Waiting]:
    return [e.waiting for e in events if e.waiting is not None]


@pytest.mark.parametrize("call", ["key_set", "offer", "finish"])
def test_a_partner_unreachable_at_a_call_is_waited_for(
    rig: tuple[Rig, FakeTimer], monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    (r, timer), data = rig, os.urandom(7 * SEGMENT + 3)
    lb = r.lb
    made = _failing(monkeypatch, lb, call, 5, _unreachable(call))
    events: list[Progress] = []
    summary = _send(lb, lb.passport(f"dpo_outage-{call}"), data, 60, events)
    assert_delivered(lb, f"dpo_outage-{call}", data, summary)
    assert made[0] == 6
    waits = _waits(events)
    assert [w.attempt for w in waits] == [1, 2, 3, 4, 5]
    assert all("unreachable" in w.reason and w.wait == 60 for w in waits)
    assert len(timer.slept) == 5 and sum(timer.slept) < 60
    assert [e.kind for e in events].count("waiting") == 5


def test_a_stream_cut_again_and_again_resumes_by_itself(
    rig: tuple[Rig, FakeTimer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three cuts mid-upload, each after a few more segments: every attempt continues where
    the partner stands (the segments in flight replayed from memory), one receipt."""
    (r, _timer), data = rig, os.urandom(20 * SEGMENT + 9)
    lb = r.lb
    original = lb.link.upload
    uploads = [0]

    def cutting(partner: PartnerConfig, segments: Segments) -> Any:
        uploads[0] += 1
        if uploads[0] <= 3:
            lb.link.tamper = cut_after(4)
        return original(partner, segments)

    monkeypatch.setattr(lb.link, "upload", cutting)
    events: list[Progress] = []
    summary = _send(lb, lb.passport("dpo_cut-thrice"), data, 30, events)
    assert_delivered(lb, "dpo_cut-thrice", data, summary)
    assert uploads[0] == 4
    assert len(_waits(events)) == 3
    starts = [attempt[0].index for attempt in r.uploads]
    assert starts[0] == 0 and starts == sorted(starts)  # never back before the partner's point
    assert starts[-1] > 0
    assert lb.link.calls.count("finish") == 1


def test_busy_partner_is_waited_for_and_its_one_writer_guard_too(
    rig: tuple[Rig, FakeTimer], monkeypatch: pytest.MonkeyPatch
) -> None:
    (r, _timer), data = rig, os.urandom(3 * SEGMENT)
    lb = r.lb
    _failing(
        monkeypatch,
        lb,
        "offer",
        2,
        lambda: PartnerError(
            "partner frankfurt refused the offer (RESOURCE_EXHAUSTED): partner lingang already "
            "has 16 requests in flight, its limit (limits.max_concurrent_transfers); retry "
            "when one has finished",
            "RESOURCE_EXHAUSTED",
        ),
    )
    # The manifest meets the receiver's real one-writer guard (an older stream still there).
    guard = lb.frankfurt.receiver._ctx.busy("dpo_busy-twice", "upload")
    original_finish = lb.link.finish
    finishes = [0]

    def finish(*args: Any) -> Any:
        finishes[0] += 1
        if finishes[0] == 1:
            guard.__enter__()
        elif finishes[0] == 2:
            guard.__exit__(None, None, None)  # the older stream ends
        return original_finish(*args)

    monkeypatch.setattr(lb.link, "finish", finish)
    events: list[Progress] = []
    summary = _send(lb, lb.passport("dpo_busy-twice"), data, 30, events)
    assert_delivered(lb, "dpo_busy-twice", data, summary)
    reasons = [w.reason for w in _waits(events)]
    assert sum("requests in flight" in x for x in reasons) == 2
    assert any("busy on another stream" in x for x in reasons)


def test_a_refusal_is_never_retried(
    rig: tuple[Rig, FakeTimer], monkeypatch: pytest.MonkeyPatch
) -> None:
    (r, timer), data = rig, os.urandom(SEGMENT)
    lb = r.lb
    made = _failing(
        monkeypatch,
        lb,
        "offer",
        1,
        lambda: PartnerError(
            "partner frankfurt refused the offer (PERMISSION_DENIED): not allowed",
            "PERMISSION_DENIED",
        ),
    )
    events: list[Progress] = []
    with pytest.raises(PartnerError, match="PERMISSION_DENIED"):
        _send(lb, lb.passport("dpo_refused"), data, 60, events)
    assert made[0] == 1 and timer.slept == [] and _waits(events) == []


def test_the_send_gives_up_when_the_wait_is_spent(
    rig: tuple[Rig, FakeTimer], monkeypatch: pytest.MonkeyPatch
) -> None:
    (r, timer), data = rig, os.urandom(SEGMENT)
    lb = r.lb
    made = _failing(monkeypatch, lb, "offer", 10_000, _unreachable("the offer"))
    events: list[Progress] = []
    with pytest.raises(PartnerError, match="unreachable during the offer"):
        _send(lb, lb.passport("dpo_never-back"), data, 20, events)
    assert sum(timer.slept) == pytest.approx(20)
    assert made[0] == len(timer.slept) + 1
    assert _waits(events)[-1].waited + _waits(events)[-1].retry_in == pytest.approx(20)


def test_zero_wait_fails_at_the_first_failure(
    rig: tuple[Rig, FakeTimer], monkeypatch: pytest.MonkeyPatch
) -> None:
    (r, timer), data = rig, os.urandom(SEGMENT)
    lb = r.lb
    made = _failing(monkeypatch, lb, "offer", 1, _unreachable("the offer"))
    with pytest.raises(PartnerError, match="unreachable"):
        _send(lb, lb.passport("dpo_no-wait"), data, 0)
    assert made[0] == 1 and timer.slept == []


def test_a_conflict_that_is_not_busy_is_final(
    rig: tuple[Rig, FakeTimer], monkeypatch: pytest.MonkeyPatch
) -> None:
    (r, timer), data = rig, os.urandom(SEGMENT)
    lb = r.lb
    made = _failing(
        monkeypatch,
        lb,
        "offer",
        1,
        lambda: PartnerError(
            f"partner frankfurt refused the offer (FAILED_PRECONDITION): "
            f"{TransferConflictError('transfer x was refused for good')}",
            "FAILED_PRECONDITION",
        ),
    )
    with pytest.raises(PartnerError, match="refused for good"):
        _send(lb, lb.passport("dpo_conflict"), data, 60)
    assert made[0] == 1 and timer.slept == []
