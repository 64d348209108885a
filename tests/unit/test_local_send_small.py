"""``LocalServicer.SendSmall`` in process: the real servicer, Sender and Receiver (loopback).

What is checked: a small payload is delivered in one partner call, run in the calling thread
(no worker thread, no event queue) and counted like any send; data over the segment size, or
not of its declared size, is refused before anything is sent; a refusal is the one ``Send``
gives (status and message); admission is ``Send``'s queue -- a small send waits for a slot in
line, is refused when the line is full or when waiting small sends hold too much data, and
stops waiting when its caller goes away.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn, cast

import grpc
import pytest

import gateway.local
from gateway._proto.xbgw.v1 import local_pb2
from gateway.config import Limits
from gateway.local import LocalServicer
from gateway.metrics import Metrics
from gateway.send_queue import SendQueue
from tests.loopback import SEGMENT, Loopback, make_loopback
from tests.system.harness import wait_until

DEADLINE = 10.0


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


@dataclass
class Context:
    """What the local servicer asks of its gRPC context; ``end()`` is the caller going away."""

    callbacks: list[Callable[[], None]] = field(default_factory=list)

    def is_active(self) -> bool:
        return True

    def add_callback(self, callback: Callable[[], None]) -> bool:
        self.callbacks.append(callback)
        return True

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise Aborted(code, details)

    def end(self) -> None:
        for callback in self.callbacks:
            callback()


@dataclass
class Rig:
    lb: Loopback
    servicer: LocalServicer
    queue: SendQueue
    metrics: Metrics


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    # One send slot and a line of 4, as the servicer re-reads them from the configuration.
    limits = Limits(
        segment_size=SEGMENT, partner_wait_seconds=0, max_concurrent_transfers=1, max_queued_sends=4
    )
    lb = make_loopback(tmp_path, limits)
    queue = SendQueue(1, 4, 8)
    metrics = Metrics()
    servicer = LocalServicer(
        lambda: lb.lingang.config,
        lb.lingang.sender,
        lb.lingang.ledger,
        lb.lingang.spool,
        lb.lingang.keys,
        lambda: True,
        metrics,
        send_queue=queue,
    )
    try:
        yield Rig(lb, servicer, queue, metrics)
    finally:
        lb.close()


def small(
    rig: Rig, token: str, data: bytes, context: Context | None = None, **fields: Any
) -> local_pb2.ReceiptSummary:
    request = local_pb2.SendSmallRequest(partner="frankfurt", passport=token, data=data, **fields)
    return rig.servicer.SendSmall(request, cast(grpc.ServicerContext, context or Context()))


def streamed(rig: Rig, token: str, data: bytes) -> list[local_pb2.SendEvent]:
    start = local_pb2.SendStart(partner="frankfurt", passport=token, size=len(data))
    requests = [local_pb2.SendRequest(start=start), local_pb2.SendRequest(data=data)]
    return list(rig.servicer.Send(iter(requests), cast(grpc.ServicerContext, Context())))


def aborted(call: Callable[[], object]) -> Aborted:
    with pytest.raises(Aborted) as caught:
        call()
    return caught.value


def delivered(rig: Rig) -> float:
    value = rig.metrics.registry.get_sample_value(
        "xbgw_transfers_total",
        {"direction": "out", "partner": "frankfurt", "outcome": "delivered"},
    )
    return value or 0.0


def test_a_small_send_is_one_partner_call_in_the_calling_thread(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    lb = rig.lb
    small(rig, lb.passport("warm"), b"warm")  # the key set is fetched once, then cached
    lb.link.calls.clear()
    threads: list[int] = []
    send = lb.lingang.sender.send

    def recording(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_ident())
        return send(*args, **kwargs)

    monkeypatch.setattr(lb.lingang.sender, "send", recording)
    data = b"d" * SEGMENT  # a whole segment still fits
    summary = small(rig, lb.passport("one"), data, size=len(data))
    assert lb.link.calls == ["deliver"]
    assert threads == [threading.get_ident()]
    assert summary.transfer_id == "dpo_one" and summary.plaintext_size == len(data)
    assert summary.plaintext_sha256 == hashlib.sha256(data).hexdigest()
    assert summary.signed_by == "frankfurt/signing/1"
    assert lb.fetch("dpo_one") == data
    assert delivered(rig) == 2.0
    assert rig.queue.running == 0 and rig.servicer._in_flight() == []


def test_data_over_the_segment_size_is_refused_before_anything_is_sent(rig: Rig) -> None:
    lb = rig.lb
    got = aborted(lambda: small(rig, lb.passport("big"), b"b" * (SEGMENT + 1)))
    assert got.code is grpc.StatusCode.INVALID_ARGUMENT
    assert got.details == (
        f"SendSmall carries at most limits.segment_size ({SEGMENT}) bytes; this request has "
        f"{SEGMENT + 1}: use Send, which streams the data (or hands a file over)"
    )
    assert lb.link.calls == [] and lb.lingang.ledger.outbound("dpo_big") is None
    assert rig.queue.running == 0 and rig.queue.waiting == 0


def test_a_declared_size_that_is_not_the_data_s_is_refused(rig: Rig) -> None:
    got = aborted(lambda: small(rig, rig.lb.passport("size"), b"12345", size=6))
    assert got.code is grpc.StatusCode.INVALID_ARGUMENT
    assert got.details == "the send declares 6 bytes; its data has 5"
    assert rig.lb.link.calls == []


@pytest.mark.parametrize("where", ["sender", "receiver"])
def test_a_refusal_is_the_one_send_gives(rig: Rig, where: str) -> None:
    """Refused by lingang's own check of the passport, or by frankfurt's at the offer step
    (lingang's clock behind: it still sees the passport valid) -- through Deliver for the
    small send, through Offer for the streamed one."""
    lb = rig.lb
    issued = lb.now[0]
    token = lb.passport("late", ttl=10)
    lb.now[0] += 10 + lb.lingang.config.limits.passport_leeway_seconds
    if where == "receiver":
        lb.lingang.sender._clock = lambda: issued + 1
    one = aborted(lambda: small(rig, token, b"x" * 40))
    three = aborted(lambda: streamed(rig, token, b"x" * (SEGMENT + 40)))
    assert one.code is three.code is grpc.StatusCode.PERMISSION_DENIED
    assert one.details == three.details and "expired at" in one.details
    calls = {"sender": [], "receiver": ["key_set", "deliver", "offer"]}[where]
    assert lb.link.calls == calls
    refused = rig.metrics.registry.get_sample_value(
        "xbgw_transfers_total",
        {"direction": "out", "partner": "frankfurt", "outcome": "refused"},
    )
    assert refused == 2.0


def test_a_small_send_waits_for_a_slot_in_line(rig: Rig) -> None:
    held = rig.queue.enter()  # the one slot
    assert held.running
    out: list[local_pb2.ReceiptSummary] = []
    worker = threading.Thread(target=lambda: out.append(small(rig, rig.lb.passport("q"), b"q")))
    worker.start()
    try:
        wait_until(lambda: rig.queue.waiting == 1, DEADLINE, "the small send to queue")
        assert rig.lb.link.calls == []
        assert rig.servicer._small_waiting == 1
    finally:
        rig.queue.leave(held)
        worker.join(DEADLINE)
    assert not worker.is_alive() and out[0].transfer_id == "dpo_q"
    assert rig.servicer._small_waiting == 0 and rig.queue.running == 0


def test_a_full_line_refuses_at_once(rig: Rig) -> None:
    config = rig.lb.lingang.config
    no_line = replace(config, limits=replace(config.limits, max_queued_sends=0))
    rig.servicer._config = lambda: no_line
    held = rig.queue.enter()
    try:
        got = aborted(lambda: small(rig, rig.lb.passport("full"), b"f"))
    finally:
        rig.queue.leave(held)
    assert got.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limits.max_queued_sends 0" in got.details
    assert rig.lb.link.calls == []


def test_small_sends_in_line_hold_a_bounded_amount_of_data(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway.local, "WAITING_SMALL_BYTES", 40)
    held = rig.queue.enter()
    try:
        got = aborted(lambda: small(rig, rig.lb.passport("held"), b"h" * 41))
    finally:
        rig.queue.leave(held)
    assert got.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert got.details == (
        "every send slot is taken and small sends waiting for one already hold 0 bytes (at "
        "most 40); retry shortly, or use Send, which waits without holding its data"
    )
    assert rig.queue.waiting == 0 and rig.lb.link.calls == []
    # With a slot free it runs at once: the bound is only on waiting.
    assert small(rig, rig.lb.passport("held"), b"h" * 41).plaintext_size == 41


def test_a_caller_that_goes_away_stops_waiting(rig: Rig) -> None:
    held = rig.queue.enter()
    context = Context()
    errors: list[Aborted] = []

    def run() -> None:
        try:
            small(rig, rig.lb.passport("gone"), b"g", context)
        except Aborted as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        wait_until(lambda: rig.queue.waiting == 1, DEADLINE, "the small send to queue")
        context.end()
        worker.join(DEADLINE)
    finally:
        rig.queue.leave(held)
    assert not worker.is_alive()
    assert [e.code for e in errors] == [grpc.StatusCode.CANCELLED]
    assert rig.queue.waiting == 0 and rig.servicer._small_waiting == 0
    assert rig.lb.link.calls == [] and rig.lb.lingang.ledger.outbound("dpo_gone") is None
    assert rig.lb.frankfurt.ledger.inbound("dpo_gone") is None
