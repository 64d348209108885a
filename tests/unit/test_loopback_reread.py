"""A send of a handed-over file resumes from a point older than its replay window by reading
the file again -- in process, through the real ``LocalServicer`` (a real descriptor handed
over through ``FileTickets``), a real ``Sender`` and a real frankfurt ``Receiver``.

The replay window is shrunk to two segments, and the first upload breaks after segment 5
once the whole file was released: the partner's point (5) is then older than anything the
window holds (19 and 20). A handed-over file is read again from 5 and delivered
byte-identical -- each segment made again equal, byte for byte, to the one sent the first
time; a stream in the same place ends the send as before (send again to resume); a file
changed since the send started is refused before a changed segment leaves, and nothing
commits.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc
import pytest

from gateway._proto.xbgw.v1 import local_pb2
from gateway.envelope import TAG_LEN
from gateway.fdpass import FileTickets, Peer
from gateway.local import LocalServicer
from gateway.metrics import Metrics
from gateway.sender import Sender
from gateway.transfer import TransferState
from tests.loopback import SEGMENT, LinkCut, Loopback, Segments, make_loopback
from tests.loopback_rig import Rig, assert_not_visible, record_uploads
from tests.unit.test_loopback_resume import Aborted, LocalContext
from tests.unit.test_retry import FakeTimer

SIZE = 20 * SEGMENT + 9  # 21 segments, the last one 9 bytes
CUT = 5  # the partner holds segments 0..4 after the first upload
KEPT = 2  # segments the shrunk replay window keeps: 19 and 20
WAIT = 30  # seconds of --wait: the send goes on by itself after the cut (on a fake clock)


@dataclass
class Setup:
    rig: Rig
    tickets: FileTickets
    servicer: LocalServicer
    path: Path
    data: bytes

    @property
    def lb(self) -> Loopback:
        return self.rig.lb


@pytest.fixture
def s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    lb = make_loopback(tmp_path / "gateways")
    side = lb.lingang
    side.sender = Sender(
        side.config,
        side.keys,
        side.ring,
        side.ledger,
        lb.link,
        lambda: lb.now[0],
        timer=FakeTimer(),
    )
    # The window of the send keeps two segments (80 bytes each on the wire).
    monkeypatch.setattr("gateway.sender.REPLAY_BYTES", KEPT * (SEGMENT + TAG_LEN))
    rig = Rig(lb)
    record_uploads(rig, monkeypatch)
    tickets = FileTickets()
    servicer = LocalServicer(
        lambda: side.config,
        side.sender,
        side.ledger,
        side.spool,
        side.keys,
        lambda: True,
        Metrics(),
        file_tickets=tickets,
    )
    path = tmp_path / "data.bin"
    data = os.urandom(SIZE)
    path.write_bytes(data)
    try:
        yield Setup(rig, tickets, servicer, path, data)
    finally:
        tickets.close()
        lb.close()


def cut_after_all_released(
    then: Callable[[], None] = lambda: None,
) -> Callable[[Segments], Segments]:
    """The first upload: take every segment the sender releases (the window then holds only
    the last two), do ``then``, let ``CUT`` reach the partner, and break."""

    def tamper(segments: Segments) -> Segments:
        released = list(segments)
        then()
        yield from released[:CUT]
        raise LinkCut(f"after {CUT} segments")

    return tamper


def send_file(s: Setup, token: str) -> list[local_pb2.SendEvent]:
    """``xbgw send FILE``: the open file handed over, then a ``Send`` naming its ticket."""
    fd = os.open(s.path, os.O_RDONLY)
    ticket = s.tickets.deposit(fd, Peer(os.getpid(), os.getuid(), os.getgid()))
    start = local_pb2.SendStart(
        partner="frankfurt", passport=token, file_ticket=ticket, wait_seconds=WAIT
    )
    requests = iter([local_pb2.SendRequest(start=start)])
    return list(s.servicer.Send(requests, cast(grpc.ServicerContext, LocalContext())))


def send_stream(s: Setup, token: str) -> list[local_pb2.SendEvent]:
    """``xbgw send -`` from a pipe: the same bytes as ``data`` messages."""
    start = local_pb2.SendStart(
        partner="frankfurt", passport=token, size=len(s.data), wait_seconds=WAIT
    )
    requests = [
        local_pb2.SendRequest(start=start),
        *(local_pb2.SendRequest(data=s.data[i : i + 50]) for i in range(0, len(s.data), 50)),
    ]
    return list(s.servicer.Send(iter(requests), cast(grpc.ServicerContext, LocalContext())))


def indices(s: Setup, attempt: int) -> list[int]:
    return [segment.index for segment in s.rig.sent(attempt)]


def test_a_handed_over_file_resumes_from_before_the_window_byte_identical(s: Setup) -> None:
    s.lb.link.tamper = cut_after_all_released()
    events = send_file(s, s.lb.passport("dpo_reread-file", byte_limit=SIZE))

    assert events[-1].WhichOneof("kind") == "done"
    done = events[-1].done
    assert (done.plaintext_size, done.plaintext_sha256) == (
        SIZE,
        hashlib.sha256(s.data).hexdigest(),
    )
    resumed = [e.accepted.resume_from for e in events if e.WhichOneof("kind") == "accepted"]
    assert resumed == [0, CUT * SEGMENT]
    assert indices(s, 0) == list(range(21))
    assert indices(s, 1) == list(range(CUT, 21))  # nothing skipped, nothing sent twice
    # Segments 5..18 were made again from the file: the same bytes on the wire as the first
    # time (same key, nonce and plaintext); 19 and 20 came out of the window.
    first = {segment.index: segment.ciphertext for segment in s.rig.sent(0)}
    assert all(segment.ciphertext == first[segment.index] for segment in s.rig.sent(1))
    assert s.lb.link.calls.count("finish") == 1
    row = s.lb.frankfurt.ledger.inbound("dpo_reread-file")
    assert row is not None and row.state is TransferState.COMMITTED
    assert (row.received_bytes, row.final_received) == (SIZE, True)
    assert [r.transfer_id for r in s.lb.frankfurt.ledger.committed_inbound()] == ["dpo_reread-file"]
    assert s.lb.fetch("dpo_reread-file") == s.data
    outbound = s.lb.lingang.ledger.outbound("dpo_reread-file")
    assert outbound is not None and outbound.state is TransferState.DELIVERED
    assert outbound.receipt == row.receipt


def test_a_stream_in_the_same_place_still_ends_the_send(s: Setup) -> None:
    s.lb.link.tamper = cut_after_all_released()
    with pytest.raises(Aborted) as aborted:
        send_stream(s, s.lb.passport("dpo_reread-stream", byte_limit=SIZE))
    assert aborted.value.code is grpc.StatusCode.ABORTED
    assert aborted.value.details == (
        "partner frankfurt lost part of transfer dpo_reread-stream in the outage (the partner "
        "resumes from segment 5; this send keeps segments from 19 on): send the same data "
        "with the same passport again to resume"
    )
    assert len(s.rig.uploads) == 1
    row = s.lb.frankfurt.ledger.inbound("dpo_reread-stream")
    assert row is not None and row.state is TransferState.RECEIVING
    assert row.next_segment == CUT


def _change_in_place(s: Setup) -> None:
    with s.path.open("r+b") as f:
        f.seek(7 * SEGMENT + 3)  # inside segment 7
        f.write(bytes([s.data[7 * SEGMENT + 3] ^ 0x01]))


def _append(s: Setup) -> None:
    with s.path.open("ab") as f:
        f.write(b"+")


@pytest.mark.parametrize(
    ("change", "refused", "went"),
    [
        pytest.param(
            _change_in_place,
            "segment 7 of transfer dpo_reread-changed differs from what was sent before; "
            "resend the original data or use a new passport",
            [5, 6],
            id="changed-in-place",
        ),
        pytest.param(
            _append,
            f"the file of transfer dpo_reread-changed is {SIZE + 1} bytes now, {SIZE} when the "
            "send started: segment 5 cannot be read again as it was sent; resend the original "
            "data or use a new passport",
            [],
            id="grown",
        ),
    ],
)
def test_a_file_changed_since_the_send_started_is_refused(
    s: Setup, change: Callable[[Setup], None], refused: str, went: list[int]
) -> None:
    """Changed after the first pass read it, before the resume reads it again: segments that
    are unchanged go again, the changed one never leaves (its nonce would be reused), the
    send ends with the reason, and nothing is committed."""
    s.lb.link.tamper = cut_after_all_released(lambda: change(s))
    with pytest.raises(Aborted) as aborted:
        send_file(s, s.lb.passport("dpo_reread-changed", byte_limit=2 * SIZE))
    assert aborted.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert aborted.value.details == refused
    assert [segment.index for upload in s.rig.uploads[1:] for segment in upload] == went
    row = s.lb.frankfurt.ledger.inbound("dpo_reread-changed")
    assert row is not None and row.state is TransferState.RECEIVING
    assert not row.final_received and row.next_segment == CUT + len(went)
    assert_not_visible(s.lb, "dpo_reread-changed")
    assert s.lb.link.calls.count("finish") == 0
