"""Deliver: a transfer of one segment in one partner call -- offer, upload, finish.

Why a call of its own: a small transfer spent three round trips (offer, upload, finish) and
the threads of a streaming upload on a few kilobytes; over a 200 ms link that was ~640 ms.
Deliver carries the passport, the envelope header, the one (final) segment and the signed
manifest, and answers with the receipt.

Why it is safe: it runs the receiver's own three steps (``offer``, ``upload``, ``finish``)
in that order, so every check, refusal (status and message), audit record and durable state
is theirs -- nothing is decided here. A failure part-way leaves what the three calls would
have left: an offered transfer a resend resumes (by either path), a refused one, nothing at
all. Repeated after a lost reply, the offer answers "committed" and the finish gives back
the same receipt, so a retry never commits twice.

What it saves besides round trips: the segment, already in memory, is taken in the calling
thread (``Intake`` starts no thread for it), the data key unwrapped at the offer serves the
upload, and the finish reuses the upload's running hash -- the storage key is not used.
And one save point, not two: the upload leaves its resume point to the finish, which makes
the data and the resume point durable with the commit (``intake.OneCall``): a crash before
the commit leaves the transfer as offered (a resend uploads again), never a resume point
ahead of the data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from gateway.config import PartnerConfig
from gateway.errors import OfferMismatchError
from gateway.receiver.intake import OneCall
from gateway.signed import Signed
from gateway.transfer import FinishResult, OfferResult, SegmentIn, UploadResult


class Steps(Protocol):
    """The receiver's three steps (``gateway.receiver.Receiver`` is one)."""

    def offer(self, peer: PartnerConfig, token: str, header: bytes) -> OfferResult: ...

    def upload(
        self,
        peer: PartnerConfig,
        segments: Iterable[SegmentIn],
        *,
        owner_checked: bool = False,
    ) -> UploadResult: ...

    def finish(
        self,
        peer: PartnerConfig,
        transfer_id: str,
        manifest: Signed,
        one_call: UploadResult | None = None,
        *,
        owner_checked: bool = False,
    ) -> FinishResult: ...


def deliver(
    steps: Steps,
    peer: PartnerConfig,
    token: str,
    header: bytes,
    segment: SegmentIn,
    manifest: Signed,
    on_step: Callable[[str], None] = lambda _: None,
) -> FinishResult:
    """Offer, upload ``segment`` unless the partner's earlier attempt already did, finish.

    ``on_step`` is told each step as it starts ("offer", "upload", "finish"): a refusal is
    the last one's, and the servicer names it so the sender reads it as that call's."""
    on_step("offer")
    offered = steps.offer(peer, token, header)
    transfer_id = offered.transfer_id
    uploaded = None
    # next_segment > 0: an earlier attempt's segment is held (a one-segment transfer's only
    # segment is its final one), so only the finish is left -- which checks that itself.
    if not offered.committed and offered.next_segment == 0:
        on_step("upload")
        if segment.transfer_id != transfer_id:
            raise OfferMismatchError(
                f"the delivery's segment is for {segment.transfer_id!r}, not for transfer "
                f"{transfer_id!r} its passport names"
            )
        uploaded = steps.upload(peer, OneCall([segment]), owner_checked=True)
    on_step("finish")
    # The offer of this very call found the transfer to be the peer's (or made it so): the
    # upload and the finish skip their early ownership reads (each reads the row again under
    # the transfer's guard, where its state is checked).
    return steps.finish(peer, transfer_id, manifest, uploaded, owner_checked=True)
