"""The local send queue: slots, a first-in-first-out line, leaving it, and its limits.

No threads wait here and nothing sleeps: a ticket's ``changed`` event is what a waiting send
blocks on, so each test looks at it directly; the clock is a fake.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any, cast

import pytest

from gateway.envelope import TAG_LEN, cut_segments
from gateway.errors import XbgwError
from gateway.pipeline import DIGEST_BATCH, Budget, Lease, Pipeline
from gateway.send_queue import Place, SendQueue, SendQueueFullError, Ticket


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _queue(slots: int = 2, waiting: int = 3, capacity: int = 100) -> SendQueue:
    return SendQueue(slots, waiting, capacity, clock=FakeClock())


def _enter(queue: SendQueue, count: int) -> list[Ticket]:
    return [queue.enter() for _ in range(count)]


def test_sends_run_at_once_while_slots_are_free_then_wait_in_arrival_order() -> None:
    queue = _queue(slots=2, waiting=5)
    first, second, third, fourth = _enter(queue, 4)
    assert first.running and second.running
    assert first.changed.is_set() and second.changed.is_set()
    assert queue.place(first) is None
    assert not third.running and not third.changed.is_set()
    assert queue.place(third) == Place(position=1, running=2)
    assert queue.place(fourth) == Place(position=2, running=2)
    assert (queue.running, queue.waiting) == (2, 2)


def test_a_freed_slot_goes_to_the_longest_waiting_and_everyone_moves_up() -> None:
    queue = _queue(slots=1, waiting=5)
    running, a, b, c = _enter(queue, 4)
    queue.leave(running)
    assert a.running and a.changed.is_set()
    assert not b.changed.is_set() and not c.changed.is_set()  # they look again on their own
    assert queue.place(b) == Place(1, 1)
    assert queue.place(c) == Place(2, 1)
    queue.leave(a)
    assert b.running and queue.place(c) == Place(1, 1)


def test_a_caller_that_goes_away_leaves_the_line_and_wakes_its_own_wait() -> None:
    queue = _queue(slots=1, waiting=5)
    _running, a, gone, c = _enter(queue, 4)
    queue.leave(gone)
    assert gone.gone and gone.changed.is_set() and not gone.running
    assert queue.place(gone) is None
    assert queue.place(a) == Place(1, 1)
    assert queue.place(c) == Place(2, 1)  # moved up past the one that left
    assert queue.waiting == 2
    queue.leave(gone)  # leaving twice (callback and ``finally``) changes nothing
    assert (queue.running, queue.waiting) == (1, 2)


def test_a_full_line_refuses_with_how_many_wait_and_a_departure_makes_room() -> None:
    queue = _queue(slots=2, waiting=3)
    tickets = _enter(queue, 5)
    with pytest.raises(SendQueueFullError) as refused:
        queue.enter()
    assert refused.value.grpc_status == "RESOURCE_EXHAUSTED"
    assert isinstance(refused.value, XbgwError)
    message = str(refused.value)
    assert "2 local sends are running and 3 are waiting" in message
    assert "limits.max_queued_sends 3" in message
    queue.leave(tickets[4])
    assert queue.place(queue.enter()) == Place(3, 2)


def test_no_line_means_refused_as_soon_as_the_slots_are_taken() -> None:
    queue = _queue(slots=1, waiting=0)
    queue.enter()
    with pytest.raises(SendQueueFullError, match="1 local sends are running and 0 are waiting"):
        queue.enter()


def test_capacity_holds_even_when_a_reload_raises_the_limits() -> None:
    queue = _queue(slots=1, waiting=1, capacity=3)
    _enter(queue, 2)
    queue.configure(slots=1, max_waiting=50)
    queue.enter()
    with pytest.raises(SendQueueFullError):
        queue.enter()  # the server has threads for three sends, whatever the config says


def test_more_slots_on_reload_start_waiting_sends_in_order_and_fewer_stop_none() -> None:
    queue = _queue(slots=1, waiting=5)
    running, a, b, c = _enter(queue, 4)
    queue.configure(slots=3, max_waiting=5)
    assert a.running and b.running and not c.running
    assert queue.place(c) == Place(1, 3)
    queue.configure(slots=1, max_waiting=5)
    assert running.running and a.running and b.running  # nobody is stopped
    queue.leave(running)
    queue.leave(a)
    assert not c.running  # two still run, one slot: c waits for b
    queue.leave(b)
    assert c.running


def test_waited_is_measured_on_the_queue_clock() -> None:
    clock = FakeClock()
    queue = SendQueue(1, 5, 10, clock=clock)
    queue.enter()
    waiting = queue.enter()
    clock.now += 42.5
    assert queue.waited(waiting) == 42.5


def test_a_ticket_wait_returns_at_once_when_granted() -> None:
    queue = _queue(slots=1, waiting=1)
    running = queue.enter()
    waiting = queue.enter()
    queue.leave(running)
    waiting.wait(timeout=60)  # already set: returns without waiting
    assert waiting.running


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        SendQueue(0, 1, 1)
    with pytest.raises(ValueError):
        SendQueue(1, -1, 1)


# -- the pipelines' shared buffer budget (gateway.pipeline) ------------------------------------


def test_a_lease_is_held_to_its_own_limit_and_to_the_shared_budget() -> None:
    budget = Budget(10)
    stop = threading.Event()
    mine, other = Lease(budget, 6), Lease(budget, 6)
    assert mine.take(4, stop)
    assert not mine.take(4, stop, wait=False)  # 8 > its limit of 6
    assert mine.take(2, stop, wait=False)
    assert other.take(4, stop, wait=False)
    assert not other.take(1, stop, wait=False)  # the budget is spent
    mine.give(3)
    assert other.take(1, stop, wait=False)
    assert budget.free == 2


def test_closing_a_lease_returns_all_it_holds_and_refuses_more() -> None:
    budget = Budget(10)
    stop = threading.Event()
    lease = Lease(budget, 10)
    assert lease.take(7, stop)
    lease.give(100)  # never more than it holds
    assert budget.free == 10 and lease.held == 0
    assert lease.take(5, stop)
    lease.close()
    assert budget.free == 10
    assert not lease.take(1, stop)  # closed: no wait, no room


def test_a_stopped_pipeline_does_not_wait_for_room() -> None:
    budget = Budget(4)
    stop = threading.Event()
    assert Lease(budget, 4).take(4, stop)
    stop.set()
    assert not Lease(budget, 4).take(1, stop)  # would wait for ever otherwise


def test_a_segment_larger_than_the_budget_moves_when_nothing_else_is_held() -> None:
    budget = Budget(4)
    stop = threading.Event()
    lease = Lease(budget, 2)
    assert lease.take(9, stop, wait=False)
    assert not Lease(budget, 4).take(1, stop, wait=False)
    lease.close()
    assert budget.free == 4


class _Ledger:
    """What a pipeline asks of the ledger: the tags recorded so far."""

    def __init__(self) -> None:
        self.tags: dict[int, bytes] = {}

    def segment_tags(self, transfer_id: str, first: int, last: int) -> dict[int, bytes]:
        return {i: t for i, t in self.tags.items() if first <= i < last}

    def record_segment_tags(self, transfer_id: str, tags: list[tuple[int, bytes]]) -> None:
        self.tags.update(tags)


class _Encryptor:
    """Ciphertext = plaintext + a 16-byte tag: enough to move segments through."""

    def __init__(self, segment_size: int) -> None:
        self.header = SimpleNamespace(segment_size=segment_size)

    def encrypt_segment(self, index: int, plaintext: bytes, final: bool) -> bytes:
        return plaintext + index.to_bytes(16, "big")


def test_pipelines_sharing_a_small_budget_all_finish_and_give_it_all_back() -> None:
    """Room for one batch among four sends: each hands on part-filled batches when
    room runs out instead of waiting while holding it, so none deadlocks the others."""
    segment = 64
    slot = segment + TAG_LEN
    budget = Budget(slot * DIGEST_BATCH)
    results: dict[int, bytes] = {}

    def run(number: int) -> None:
        data = bytes([number]) * (segment * 37 + 5)
        pipeline = Pipeline(
            cast(Any, _Ledger()), f"t{number}", cast(Any, _Encryptor(segment)), 0, _ignore, budget
        )
        pipeline.start(cut_segments([data], segment))
        out = b"".join(s.ciphertext[:-TAG_LEN] for s in pipeline.segments())
        pipeline.raise_failure()
        results[number] = out

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a pipeline deadlocked"
    assert results == {n: bytes([n]) * (segment * 37 + 5) for n in range(4)}
    assert budget.free == budget.total


def _ignore(done: int) -> None:
    pass
