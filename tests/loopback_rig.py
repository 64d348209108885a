"""The loopback seen by a test: what each send attempt did, restarts, and the checks.

Shared by the in-process protocol tests (``tests/unit/test_loopback_*.py``): a :class:`Rig`
records the segments the sender released in each upload (before the link's ``tamper``), the
partner calls of the last attempt, and what the partner held at the offer; the ``assert_*``
helpers state what "held", "not visible" and "delivered" mean for a transfer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from gateway.config import PartnerConfig
from gateway.envelope import TAG_LEN
from gateway.errors import PartnerError
from gateway.receiver import Receiver
from gateway.sender import Progress, ReceiptSummary, Sender
from gateway.transfer import SegmentIn, TransferState, UploadResult
from tests.loopback import SEGMENT, LinkCut, Loopback, Segments

SHORT_FINAL = 6 * SEGMENT + 17  # 7 segments, the last one 17 bytes
EXACT = 6 * SEGMENT  # 6 segments, the last one full
SEGMENT_LEN = SEGMENT + TAG_LEN


def count_segments(size: int) -> int:
    return max(1, -(-size // SEGMENT))


# -- the rig ---------------------------------------------------------------------------------


@dataclass
class Rig:
    """The loopback, plus what each send attempt did on the link."""

    lb: Loopback
    uploads: list[list[SegmentIn]] = field(default_factory=list)  # released, before tampering
    last_calls: list[str] = field(default_factory=list)  # partner calls of the last attempt
    last_uploaded: list[int] = field(default_factory=list)  # segment indices it released
    last_held: int | None = None  # bytes the partner held at the offer ("resuming ...")

    def send(self, token: str, data: bytes, *, chunk: int = 50) -> ReceiptSummary:
        """One ``send`` of ``data`` under ``token`` by lingang's current sender."""
        chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]
        return self.send_chunks(token, iter(chunks), len(data))

    def send_chunks(self, token: str, chunks: Iterator[bytes], size: int | None) -> ReceiptSummary:
        calls, uploads = len(self.lb.link.calls), len(self.uploads)
        self.last_held = None

        def on_progress(progress: Progress) -> None:
            if progress.kind == "accepted":
                self.last_held = progress.done_bytes

        try:
            return self.lb.lingang.sender.send("frankfurt", token, chunks, size, on_progress)
        finally:
            self.last_calls = self.lb.link.calls[calls:]
            self.last_uploaded = [s.index for u in self.uploads[uploads:] for s in u]

    def sent(self, attempt: int = 0) -> list[SegmentIn]:
        """The segments the sender released in upload ``attempt`` (0: the first)."""
        return self.uploads[attempt]


def record_uploads(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every segment the sender releases (the link's ``tamper`` applies after this)."""
    original = rig.lb.link.upload

    def upload(partner: PartnerConfig, segments: Segments) -> UploadResult:
        released: list[SegmentIn] = []
        rig.uploads.append(released)

        def recorded() -> Segments:
            for segment in segments:
                released.append(segment)
                yield segment

        return original(partner, recorded())

    monkeypatch.setattr(rig.lb.link, "upload", upload)


def broken_after(n: int) -> Callable[[Segments], Segments]:
    """The link drops after ``n`` segments reached the receiver.

    Unlike ``cut_after`` it first takes everything the sender released, so the sender's
    pipeline ends at once (``cut_after`` leaves it full, and abandoning a full pipeline costs
    the sender about a second of polling: see test_link_drop_with_the_pipeline_full_resumes).
    To the receiver the two are the same break.
    """

    def tamper(segments: Segments) -> Segments:
        released = list(segments)
        yield from released[:n]
        raise LinkCut(f"after {n} segments")

    return tamper


def restart_receiver(lb: Loopback) -> Receiver:
    """Frankfurt's receiver again on the same ledger and spool: its working set is gone."""
    side = lb.frankfurt
    receiver = Receiver(
        side.config,
        side.keys,
        side.ring,
        side.ledger,
        side.spool,
        clock=lambda: lb.now[0],
    )
    side.receiver = receiver
    lb.link.receivers["frankfurt"] = (receiver, side.config.partner("lingang"))
    return receiver


def restart_sender(lb: Loopback) -> Sender:
    """Lingang's sender again on the same ledger: no data key, no key set in memory."""
    side = lb.lingang
    sender = Sender(
        side.config,
        side.keys,
        side.ring,
        side.ledger,
        lb.link,
        clock=lambda: lb.now[0],
    )
    side.sender = sender
    return sender


# -- checks ----------------------------------------------------------------------------------


def assert_partner_error(error: BaseException, status: str, *fragments: str) -> None:
    assert isinstance(error, PartnerError), repr(error)
    assert error.grpc_status == status, f"{error.grpc_status}: {error}"
    for fragment in fragments:
        assert fragment in str(error), f"{fragment!r} not in {str(error)!r}"


def assert_not_visible(lb: Loopback, transfer_id: str) -> None:
    """Nothing of the transfer is in frankfurt's inbox."""
    assert transfer_id not in [row.transfer_id for row in lb.frankfurt.ledger.committed_inbound()]
    assert not lb.frankfurt.spool.committed_path(transfer_id).exists()


def assert_held(
    lb: Loopback, transfer_id: str, kept: list[SegmentIn], *, untrusted_tail: bool = False
) -> None:
    """Still receiving, durably holding exactly ``kept``; nothing visible; sender not done.

    ``untrusted_tail``: the spool file may run on past the durable point (the next upload
    cuts it back there before it appends).
    """
    row = lb.frankfurt.ledger.inbound(transfer_id)
    assert row is not None
    assert row.state is TransferState.RECEIVING
    assert row.next_segment == len(kept)
    assert row.received_bytes == sum(len(s.ciphertext) - TAG_LEN for s in kept)
    assert row.final_received == (bool(kept) and kept[-1].final)
    held = lb.frankfurt.spool.partial_path(transfer_id).read_bytes()
    durable = row.stored_header + b"".join(s.ciphertext for s in kept)
    assert held.startswith(durable) if untrusted_tail else held == durable
    assert_not_visible(lb, transfer_id)
    outbound = lb.lingang.ledger.outbound(transfer_id)
    assert outbound is not None and outbound.state is TransferState.SENDING
    assert outbound.receipt is None


def assert_delivered(lb: Loopback, transfer_id: str, data: bytes, summary: ReceiptSummary) -> None:
    """Committed with every byte, listed once, no partial left, fetched byte-identical; the
    sender recorded the very receipt the receiver signed."""
    digest = hashlib.sha256(data).digest()
    row = lb.frankfurt.ledger.inbound(transfer_id)
    assert row is not None
    assert row.state is TransferState.COMMITTED
    assert (row.received_bytes, row.final_received) == (len(data), True)
    assert row.next_segment == count_segments(len(data))
    assert row.plaintext_sha256 == digest
    listed = [r.transfer_id for r in lb.frankfurt.ledger.committed_inbound()]
    assert listed.count(transfer_id) == 1
    assert not lb.frankfurt.spool.partial_path(transfer_id).exists()
    assert lb.fetch(transfer_id) == data
    assert (summary.transfer_id, summary.partner) == (transfer_id, "frankfurt")
    assert (summary.plaintext_sha256, summary.plaintext_size) == (digest, len(data))
    assert summary.receipt == row.receipt
    outbound = lb.lingang.ledger.outbound(transfer_id)
    assert outbound is not None and outbound.state is TransferState.DELIVERED
    assert outbound.receipt == row.receipt
    assert (outbound.plaintext_size, outbound.plaintext_sha256) == (len(data), digest)
    assert lb.lingang.ledger.segment_tags(transfer_id, 0, 1 << 32) == {}
