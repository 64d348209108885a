"""However an upload ends before its final segment -- the link reset (the request iterator
raises), or gRPC ending the request stream cleanly when keepalive found the peer dead -- the
receiver makes every verified segment durable first and logs the resume point, so the next
attempt continues from there. In process: a real Sender and Receiver over the loopback."""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Iterator

import pytest

from gateway.errors import PartnerError
from gateway.transfer import SegmentIn
from tests.loopback import SEGMENT, Loopback, cut_after

Tamper = Callable[[Iterator[SegmentIn]], Iterator[SegmentIn]]


def _ends_quietly_after(n: int) -> Tamper:
    def tamper(segments: Iterator[SegmentIn]) -> Iterator[SegmentIn]:
        yield from itertools.islice(segments, n)  # then ends, as gRPC ends a dead stream

    return tamper


@pytest.mark.parametrize(
    ("tamper", "why"),
    [
        (cut_after(5), "the stream broke: LinkCut"),
        (_ends_quietly_after(5), "the stream ended before the final segment"),
    ],
)
def test_a_stream_that_ends_early_keeps_every_verified_segment(
    lb: Loopback, caplog: pytest.LogCaptureFixture, tamper: Tamper, why: str
) -> None:
    data = os.urandom(12 * SEGMENT + 3)
    token = lb.passport("dpo_early-end")
    lb.link.tamper = tamper
    with caplog.at_level(logging.INFO, "xbgw.receiver"), pytest.raises(PartnerError):
        lb.resend(token, data)
    row = lb.frankfurt.ledger.inbound("dpo_early-end")
    assert row is not None and (row.next_segment, row.received_bytes) == (5, 5 * SEGMENT)
    [line] = [r for r in caplog.records if "upload ended early" in r.getMessage()]
    assert line.getMessage() == f"upload ended early ({why}); resume point 5 is durable"
    assert line.transfer_id == "dpo_early-end"  # type: ignore[attr-defined]

    lb.resend(token, data)  # continues from segment 5
    assert lb.fetch("dpo_early-end") == data
