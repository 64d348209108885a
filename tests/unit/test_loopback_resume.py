"""Resume, in process: breaks, restarts and crashes lose nothing and duplicate nothing.

A real lingang ``Sender`` wired to a real frankfurt ``Receiver`` (``tests.loopback``): real
ledgers, spools, envelope, passports, manifests and receipts; only the HSM and the network are
stand-ins. Every transfer that may end must end with the plaintext fetched byte-identical,
listed once in the inbox, no partial file left, and the sender's record delivered with the
receipt the receiver keeps. After a break the next send must continue from the receiver's
durable resume point -- shown by the offer (the bytes the partner holds, as ``xbgw send``
prints them), the segments that went on the wire, and the receiver's ledger and spool.

What each case replaces:

tests/system/test_resume.py

* ``test_reset_connection_resumes_from_the_partners_point`` --
  ``test_resume_at_every_segment_boundary`` (every cut point, a short and an exact-multiple
  final segment) and ``test_link_drop_with_the_pipeline_full_resumes`` (the sender's
  pipeline abandoned mid-stream, as a reset connection leaves it).
* ``test_sender_daemon_killed_mid_stream_resumes_after_restart`` --
  ``test_sender_restart_resumes_from_the_outbound_record``.
* ``test_receiver_daemon_killed_mid_stream_resumes_from_its_last_sync`` --
  ``test_receiver_killed_resumes_from_its_last_durable_point`` (and the three
  ``test_receiver_restart_*``: the offered key and the running hash re-derived).
* ``test_local_client_killed_mid_send_delivers_nothing_partial`` and
  ``test_source_shrinking_mid_send_is_not_delivered_short`` --
  ``test_local_stream_ending_short_delivers_nothing`` (through the real ``LocalServicer``,
  whose guard holds a local stream to its declared size).
* ``test_break_after_final_segment_resumes_to_the_receipt`` --
  ``test_break_after_the_final_segment_finishes_with_the_manifest_alone`` and
  ``test_manifest_refused_after_the_final_segment_then_finishes``.
* ``test_resume_with_different_data_is_refused`` --
  ``test_changed_source_on_resume_is_refused_locally``.
* ``test_delivered_passport_is_refused_by_the_sender`` and
  ``test_spent_passport_is_refused_by_the_receiver`` -- in ``test_loopback_refusals.py``.

tests/unit/test_receiver_recovery.py (deleted; it built a Receiver with ``__new__``)

* both cases -- ``test_crash_between_spool_rename_and_ledger_commit``: the committed file is
  re-hashed when the partial is gone; the partial is preferred while it exists.

Also: ``test_reply_lost_after_the_partner_acted`` (offer, upload, finish),
``test_shrinking_source_on_resume_is_refused``, ``test_held_data_corrupted_on_disk_restarts``,
``test_held_data_lost_restarts_from_zero``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NoReturn, cast

import grpc
import pytest

from gateway import local as local_module
from gateway._proto.xbgw.v1 import local_pb2
from gateway.config import PartnerConfig
from gateway.errors import PartnerError, SourceChangedError, SourceSizeError
from gateway.keys import Purpose
from gateway.local import LocalServicer
from gateway.metrics import Metrics
from gateway.receiver.intake import SYNC_EVERY_SEGMENTS
from gateway.transfer import OfferResult, TransferState
from tests.fakes import SoftwareHsm
from tests.loopback import SEGMENT, Loopback, cut_after, make_loopback
from tests.loopback_rig import (
    EXACT,
    SEGMENT_LEN,
    SHORT_FINAL,
    Rig,
    assert_delivered,
    assert_held,
    assert_partner_error,
    broken_after,
    count_segments,
    record_uploads,
    restart_receiver,
    restart_sender,
)


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    lb = make_loopback(tmp_path)
    made = Rig(lb)
    record_uploads(made, monkeypatch)
    try:
        yield made
    finally:
        lb.close()


# -- breaks of the link ----------------------------------------------------------------------


def _boundaries() -> list[object]:
    cases: list[object] = []
    for label, size in (("short-final", SHORT_FINAL), ("exact-multiple", EXACT)):
        for cut in range(count_segments(size) + 1):
            cases.append(pytest.param(size, cut, id=f"{label}-cut{cut}"))
    return cases


@pytest.mark.parametrize(("size", "cut"), _boundaries())
def test_resume_at_every_segment_boundary(rig: Rig, size: int, cut: int) -> None:
    """The link drops after ``cut`` segments; the same passport continues from there."""
    lb = rig.lb
    data = os.urandom(size)
    count = count_segments(size)
    token = lb.passport("dpo_resume-boundary")
    lb.link.tamper = broken_after(cut)
    with pytest.raises(PartnerError) as first:
        rig.send(token, data)
    assert_partner_error(
        first.value, "UNAVAILABLE", "partner frankfurt is unreachable during the upload"
    )
    assert rig.last_calls == ["key_set", "offer", "upload"]
    assert len(rig.sent(0)) == count
    assert_held(lb, "dpo_resume-boundary", rig.sent(0)[:cut])

    summary = rig.send(token, data)
    held = min(cut * SEGMENT, size)
    assert rig.last_held == held
    if cut == count:  # the partner holds everything: the manifest alone finishes
        assert rig.last_calls == ["offer", "finish"]
    else:
        assert rig.last_calls == ["offer", "upload", "finish"]
    assert rig.last_uploaded == list(range(cut, count))
    assert_delivered(lb, "dpo_resume-boundary", data, summary)


def test_link_drop_with_the_pipeline_full_resumes(rig: Rig) -> None:
    """A real mid-stream drop: the sender abandons a pipeline whose queue is still full."""
    lb = rig.lb
    data = os.urandom(40 * SEGMENT + 5)
    token = lb.passport("dpo_resume-full-pipeline")
    lb.link.tamper = cut_after(5)
    with pytest.raises(PartnerError) as first:
        rig.send(token, data)
    assert_partner_error(first.value, "UNAVAILABLE", "unreachable", "after 5 segments")
    assert_held(lb, "dpo_resume-full-pipeline", rig.sent(0)[:5])

    summary = rig.send(token, data)
    assert rig.last_held == 5 * SEGMENT
    assert rig.last_uploaded == list(range(5, 41))
    assert_delivered(lb, "dpo_resume-full-pipeline", data, summary)


def test_break_after_the_final_segment_finishes_with_the_manifest_alone(rig: Rig) -> None:
    lb = rig.lb
    data = os.urandom(SHORT_FINAL)
    token = lb.passport("dpo_resume-final")
    lb.link.tamper = broken_after(7)
    with pytest.raises(PartnerError):
        rig.send(token, data)
    assert_held(lb, "dpo_resume-final", rig.sent(0))

    summary = rig.send(token, data)
    assert rig.last_calls == ["offer", "finish"]
    assert "upload" not in rig.last_calls and rig.last_uploaded == []
    assert rig.last_held == len(data)
    assert_delivered(lb, "dpo_resume-final", data, summary)


def test_manifest_refused_after_the_final_segment_then_finishes(rig: Rig) -> None:
    """Frankfurt pins the wrong key for lingang: Finish says UNAUTHENTICATED after a complete
    upload -- not a refusal for good. With the right key back, no segment goes again."""
    lb = rig.lb
    data = os.urandom(SHORT_FINAL)
    token = lb.passport("dpo_resume-unauthenticated")
    receiver, peer = lb.link.receivers["frankfurt"]
    wrong = replace(peer, signing_public_key=SoftwareHsm().public_key(Purpose.SIGNING, 1))
    lb.link.receivers["frankfurt"] = (receiver, wrong)
    with pytest.raises(PartnerError) as first:
        rig.send(token, data)
    assert_partner_error(
        first.value,
        "UNAUTHENTICATED",
        "refused the manifest",
        "does not verify under the pinned key of lingang",
    )
    assert rig.last_calls == ["key_set", "offer", "upload", "finish"]
    assert_held(lb, "dpo_resume-unauthenticated", rig.sent(0))

    lb.link.receivers["frankfurt"] = (receiver, peer)
    summary = rig.send(token, data)
    assert rig.last_calls == ["offer", "finish"]
    assert rig.last_held == len(data)
    assert_delivered(lb, "dpo_resume-unauthenticated", data, summary)


@pytest.mark.parametrize("call", ["offer", "upload", "finish"])
def test_reply_lost_after_the_partner_acted(rig: Rig, call: str) -> None:
    """The partner did the work, the reply never came; a resend ends with one commit and the
    receipt the partner signed the first time."""
    lb = rig.lb
    data = os.urandom(SHORT_FINAL)
    token = lb.passport("dpo_resume-lost-reply")
    commits: list[tuple[str, int]] = []
    lb.frankfurt.receiver.on_commit = lambda partner, size: commits.append((partner, size))
    lb.link.lose_reply = {call}
    with pytest.raises(PartnerError) as first:
        rig.send(token, data)
    assert_partner_error(first.value, "UNAVAILABLE", "connection reset before the reply")
    row = lb.frankfurt.ledger.inbound("dpo_resume-lost-reply")
    assert row is not None
    outbound = lb.lingang.ledger.outbound("dpo_resume-lost-reply")
    assert outbound is not None and outbound.state is TransferState.SENDING

    if call == "offer":
        assert_held(lb, "dpo_resume-lost-reply", [])
    elif call == "upload":
        assert_held(lb, "dpo_resume-lost-reply", rig.sent(0))
    else:  # committed at frankfurt; lingang never heard
        assert row.state is TransferState.COMMITTED and row.receipt is not None
        assert commits == [("lingang", len(data))]

    summary = rig.send(token, data)
    if call == "offer":
        assert (rig.last_calls, rig.last_held) == (["offer", "upload", "finish"], 0)
    else:
        assert (rig.last_calls, rig.last_held) == (["offer", "finish"], len(data))
    if call == "finish":
        assert summary.receipt == row.receipt  # the same receipt, not a second commit
    assert commits == [("lingang", len(data))]
    assert_delivered(lb, "dpo_resume-lost-reply", data, summary)


# -- restarts --------------------------------------------------------------------------------


def test_receiver_restart_between_offer_and_upload(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The data key the offer unwrapped is gone: the upload unwraps the stored header."""
    lb = rig.lb
    data = os.urandom(SHORT_FINAL)
    original = lb.link.offer

    def offer_then_restart(partner: PartnerConfig, passport: str, header: bytes) -> OfferResult:
        result = original(partner, passport, header)
        restart_receiver(lb)
        return result

    monkeypatch.setattr(lb.link, "offer", offer_then_restart)
    summary = rig.send(lb.passport("dpo_restart-offered"), data)
    assert rig.last_calls == ["key_set", "offer", "upload", "finish"]
    assert_delivered(lb, "dpo_restart-offered", data, summary)


@pytest.mark.parametrize("cut", [1, 3, 6, 7], ids=lambda n: f"cut{n}")
def test_receiver_restart_mid_stream_rehashes_what_it_holds(rig: Rig, cut: int) -> None:
    """The running hash and the data key are gone: both come back from the ledger and spool,
    and the manifest agrees with what was re-hashed (at 7 the final segment is held too)."""
    lb = rig.lb
    data = os.urandom(SHORT_FINAL)
    token = lb.passport("dpo_restart-mid")
    lb.link.tamper = broken_after(cut)
    with pytest.raises(PartnerError):
        rig.send(token, data)
    assert_held(lb, "dpo_restart-mid", rig.sent(0)[:cut])
    restart_receiver(lb)

    summary = rig.send(token, data)
    assert rig.last_held == min(cut * SEGMENT, len(data))
    assert rig.last_uploaded == list(range(cut, 7))
    assert_delivered(lb, "dpo_restart-mid", data, summary)


def test_receiver_restart_after_commit_returns_the_stored_receipt(rig: Rig) -> None:
    lb = rig.lb
    data = os.urandom(EXACT)
    token = lb.passport("dpo_restart-committed")
    lb.link.lose_reply = {"finish"}
    with pytest.raises(PartnerError):
        rig.send(token, data)
    row = lb.frankfurt.ledger.inbound("dpo_restart-committed")
    assert row is not None and row.state is TransferState.COMMITTED
    restart_receiver(lb)

    summary = rig.send(token, data)
    assert rig.last_calls == ["offer", "finish"]
    assert summary.receipt == row.receipt
    assert_delivered(lb, "dpo_restart-committed", data, summary)


def test_receiver_killed_resumes_from_its_last_durable_point(rig: Rig) -> None:
    """A kill leaves no save at the end of the stream: the ledger's point is the last periodic
    sync and the spool file holds more (perhaps torn) bytes. They are cut off, not trusted."""
    lb = rig.lb
    sync = SYNC_EVERY_SEGMENTS
    data = os.urandom((sync + 8) * SEGMENT + 9)
    token = lb.passport("dpo_receiver-killed")
    lb.link.tamper = broken_after(sync + 5)
    with pytest.raises(PartnerError):
        rig.send(token, data)
    # The state a SIGKILL after the periodic sync at ``sync`` leaves: the resume point there,
    # the file longer than it, with a torn write at its end.
    lb.frankfurt.ledger.record_progress("dpo_receiver-killed", sync, sync * SEGMENT, False)
    partial = lb.frankfurt.spool.partial_path("dpo_receiver-killed")
    with partial.open("ab") as torn:
        torn.write(os.urandom(SEGMENT // 2))
    restart_receiver(lb)

    summary = rig.send(token, data)
    assert rig.last_held == sync * SEGMENT
    assert rig.last_uploaded == list(range(sync, sync + 9))
    assert_delivered(lb, "dpo_receiver-killed", data, summary)


@pytest.mark.parametrize("when", ["mid-stream", "after-final", "finish-reply-lost"])
def test_sender_restart_resumes_from_the_outbound_record(rig: Rig, when: str) -> None:
    """A new Sender on the same ledger: the data key comes back from the stored header (no
    key-set request, no new header), and the partner's point decides where it resumes."""
    lb = rig.lb
    data = os.urandom(SHORT_FINAL)
    token = lb.passport("dpo_sender-restart")
    if when == "finish-reply-lost":
        lb.link.lose_reply = {"finish"}
    else:
        lb.link.tamper = broken_after(3 if when == "mid-stream" else 7)
    with pytest.raises(PartnerError):
        rig.send(token, data)
    before = lb.lingang.ledger.outbound("dpo_sender-restart")
    assert before is not None and before.state is TransferState.SENDING
    restart_sender(lb)

    summary = rig.send(token, data)
    assert "key_set" not in rig.last_calls
    assert rig.last_uploaded == ([3, 4, 5, 6] if when == "mid-stream" else [])
    assert rig.last_held == (3 * SEGMENT if when == "mid-stream" else len(data))
    after = lb.lingang.ledger.outbound("dpo_sender-restart")
    assert after is not None
    assert (after.sent_header, after.stored_header) == (before.sent_header, before.stored_header)
    assert_delivered(lb, "dpo_sender-restart", data, summary)


# -- the source on resume --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changed", "kept_after"),
    [
        pytest.param(0, 10, id="held-by-the-receiver"),
        pytest.param(12, 10, id="sent-but-not-stored"),
        pytest.param(17, 16, id="in-a-later-batch"),
    ],
)
def test_changed_source_on_resume_is_refused_locally(
    rig: Rig, changed: int, kept_after: int
) -> None:
    """Same passport, other bytes: the sender refuses before a reused nonce leaves the process
    (SourceChangedError, raised locally -- not a partner refusal). Segments released before the
    changed one went out whole, so the receiver may move on to ``kept_after``; nothing ever
    commits, and the original data then resumes."""
    lb = rig.lb
    original = os.urandom(20 * SEGMENT)
    token = lb.passport("dpo_source-changed")
    lb.link.tamper = broken_after(10)
    with pytest.raises(PartnerError):
        rig.send(token, original)
    assert len(lb.lingang.ledger.segment_tags("dpo_source-changed", 0, 1 << 32)) == 20

    other = bytearray(original)
    other[changed * SEGMENT + 7] ^= 0x01
    with pytest.raises(SourceChangedError) as refused:
        rig.send(token, bytes(other))
    assert refused.value.grpc_status == "FAILED_PRECONDITION"
    assert f"segment {changed} of transfer dpo_source-changed differs from what was sent" in str(
        refused.value
    )
    assert rig.last_calls == (["offer", "upload"] if kept_after > 10 else ["offer"])
    assert_held(lb, "dpo_source-changed", rig.sent(0)[:kept_after])

    summary = rig.send(token, original)
    assert rig.last_held == kept_after * SEGMENT
    assert_delivered(lb, "dpo_source-changed", original, summary)


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param(lambda d: d[: 3 * SEGMENT], id="shrunk-to-a-boundary"),
        pytest.param(lambda d: d[:-1], id="one-byte-short"),
        pytest.param(lambda d: d + b"+", id="one-byte-longer"),
    ],
)
def test_shrinking_source_on_resume_is_refused(rig: Rig, changed: Callable[[bytes], bytes]) -> None:
    """A shorter (or longer) source moves the final flag into a segment sent before as
    non-final (or out of one sent as final): another nonce input, another tag -- refused."""
    lb = rig.lb
    data = os.urandom(EXACT)
    token = lb.passport("dpo_source-shrunk")
    lb.link.tamper = broken_after(2)
    with pytest.raises(PartnerError):
        rig.send(token, data)

    with pytest.raises(SourceChangedError, match="differs from what was sent before"):
        rig.send(token, changed(data))
    assert_held(lb, "dpo_source-shrunk", rig.sent(0)[:2])
    summary = rig.send(token, data)
    assert_delivered(lb, "dpo_source-shrunk", data, summary)


# -- the local stream ending short (LocalServicer's guard, in process) ------------------------


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


@dataclass
class LocalContext:
    """What ``LocalServicer.Send`` asks of its gRPC context."""

    active: bool = True

    def is_active(self) -> bool:
        return self.active

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return True  # the call never ends early here: Send's own ``finally`` frees its slot

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise Aborted(code, details)


def local_send(
    lb: Loopback, token: str, data: bytes, *, size: int, active: bool = True
) -> list[local_pb2.SendEvent]:
    """``xbgw send`` as the local servicer sees it: start, then ``data`` in 50-byte messages."""
    servicer = LocalServicer(
        lambda: lb.lingang.config,
        lb.lingang.sender,
        lb.lingang.ledger,
        lb.lingang.spool,
        lb.lingang.keys,
        lambda: True,
        Metrics(),
    )
    requests = [
        local_pb2.SendRequest(
            start=local_pb2.SendStart(partner="frankfurt", passport=token, size=size)
        ),
        *(local_pb2.SendRequest(data=data[i : i + 50]) for i in range(0, len(data), 50)),
    ]
    context = cast(grpc.ServicerContext, LocalContext(active))
    return list(servicer.Send(iter(requests), context))


def test_progress_events_are_spaced_and_the_last_one_always_goes(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client shows a rate, not every segment: progress events come at most
    ``PROGRESS_EVERY`` apart, and the one for the whole size always comes."""
    monkeypatch.setattr(local_module, "PROGRESS_EVERY", 3600.0)
    lb = rig.lb
    data = os.urandom(12 * SEGMENT + 5)
    events = local_send(lb, lb.passport("dpo_local-progress"), data, size=len(data))
    sent = [e.progress.bytes_sent for e in events if e.WhichOneof("kind") == "progress"]
    assert len(sent) == 2 and sent[-1] == len(data), sent
    assert events[-1].WhichOneof("kind") == "done"


@pytest.mark.parametrize(
    ("declared", "active"),
    [
        pytest.param(True, True, id="source-shrunk-mid-send"),
        pytest.param(False, False, id="client-died-size-unknown"),
    ],
)
def test_local_stream_ending_short_delivers_nothing(rig: Rig, declared: bool, active: bool) -> None:
    """The local stream ends before the data does (file truncated while read, or the client
    died): never the final segment. The partner keeps a resumable prefix -- exactly the
    segments the sender encrypted and released -- and the full data then resumes."""
    lb = rig.lb
    data = os.urandom(40 * SEGMENT + 17)
    token = lb.passport("dpo_local-short")
    prefix = data[: 20 * SEGMENT + 20]
    with pytest.raises(Aborted) as aborted:
        local_send(lb, token, prefix, size=len(data) if declared else 0, active=active)
    assert aborted.value.code is grpc.StatusCode.INVALID_ARGUMENT
    expected = (
        f"ended after {len(prefix)} of {len(data)} bytes"
        if declared
        else "the local client went away before the end of its data"
    )
    assert expected in aborted.value.details
    assert "nothing was delivered" in aborted.value.details

    row = lb.frankfurt.ledger.inbound("dpo_local-short")
    assert row is not None and row.state is TransferState.RECEIVING
    assert not row.final_received and row.next_segment * SEGMENT < len(prefix)
    released = rig.sent(0) if rig.uploads else []
    assert_held(lb, "dpo_local-short", released)
    # Nothing in between was lost: every segment whose tag was recorded reached the partner.
    assert len(lb.lingang.ledger.segment_tags("dpo_local-short", 0, 1 << 32)) == row.next_segment

    events = local_send(lb, token, data, size=len(data))
    kinds = [event.WhichOneof("kind") for event in events]
    assert kinds[0] == "accepted" and kinds[-1] == "done"
    assert events[0].accepted.resume_from == row.received_bytes
    done = events[-1].done
    assert (done.plaintext_size, done.plaintext_sha256) == (
        len(data),
        hashlib.sha256(data).hexdigest(),
    )
    inbound = lb.frankfurt.ledger.inbound("dpo_local-short")
    assert inbound is not None and inbound.state is TransferState.COMMITTED
    assert lb.fetch("dpo_local-short") == data


# -- the spool after a crash -----------------------------------------------------------------


@pytest.mark.parametrize("restarted", [False, True], ids=["running", "restarted"])
@pytest.mark.parametrize("case", ["partial-gone", "partial-and-stale-committed"])
def test_crash_between_spool_rename_and_ledger_commit(rig: Rig, case: str, restarted: bool) -> None:
    """Finish after a crash that came between the rename into the inbox and the ledger commit.

    partial-gone: the rename happened (``spool.commit`` by hand); the retried Finish hashes the
    committed file (after a restart nothing else is left to hash) and commits it.
    partial-and-stale-committed: both names exist, the committed one stale garbage; the
    partial is what is hashed and what ends in the inbox.
    """
    lb = rig.lb
    data = os.urandom(5 * SEGMENT + 7)
    token = lb.passport("dpo_crash-rename")
    lb.link.tamper = broken_after(6)
    with pytest.raises(PartnerError):
        rig.send(token, data)
    spool = lb.frankfurt.spool
    if case == "partial-gone":
        spool.commit("dpo_crash-rename")
        assert not spool.partial_path("dpo_crash-rename").exists()
    else:
        spool.committed_path("dpo_crash-rename").write_bytes(b"stale garbage")
    row = lb.frankfurt.ledger.inbound("dpo_crash-rename")
    assert row is not None and row.state is TransferState.RECEIVING
    assert "dpo_crash-rename" not in [
        r.transfer_id for r in lb.frankfurt.ledger.committed_inbound()
    ]
    if restarted:
        restart_receiver(lb)

    summary = rig.send(token, data)
    assert rig.last_calls == ["offer", "finish"]
    assert_delivered(lb, "dpo_crash-rename", data, summary)


def test_held_data_corrupted_on_disk_restarts(rig: Rig) -> None:
    """A byte of a held segment flips on disk (the receiver restarted, so it re-hashes): the
    upload refuses with PartialLostError and resets to 0; a resend then sends everything."""
    lb = rig.lb
    data = os.urandom(SHORT_FINAL)
    token = lb.passport("dpo_held-corrupt")
    lb.link.tamper = broken_after(3)
    with pytest.raises(PartnerError):
        rig.send(token, data)
    row = lb.frankfurt.ledger.inbound("dpo_held-corrupt")
    assert row is not None
    partial = lb.frankfurt.spool.partial_path("dpo_held-corrupt")
    held = bytearray(partial.read_bytes())
    held[len(row.stored_header) + SEGMENT_LEN + 5] ^= 0x20  # inside segment 1
    partial.write_bytes(bytes(held))
    restart_receiver(lb)

    with pytest.raises(PartnerError) as lost:
        rig.send(token, data)
    assert_partner_error(
        lost.value,
        "FAILED_PRECONDITION",
        "refused the upload",
        "failed verification (changed on disk?); offer it again to restart from segment 0",
    )
    assert rig.last_held == 3 * SEGMENT
    assert_held(lb, "dpo_held-corrupt", [], untrusted_tail=True)

    summary = rig.send(token, data)
    assert (rig.last_held, rig.last_uploaded) == (0, list(range(7)))
    assert_delivered(lb, "dpo_held-corrupt", data, summary)


@pytest.mark.parametrize("restarted", [False, True], ids=["running", "restarted"])
@pytest.mark.parametrize("loss", ["deleted", "truncated"])
def test_held_data_lost_restarts_from_zero(rig: Rig, loss: str, restarted: bool) -> None:
    """The partial file is gone (or shorter than the durable point) mid-stream: the upload
    refuses with PartialLostError and resets to 0; a resend sends everything."""
    lb = rig.lb
    data = os.urandom(SHORT_FINAL)
    token = lb.passport("dpo_held-lost")
    lb.link.tamper = broken_after(4)
    with pytest.raises(PartnerError):
        rig.send(token, data)
    partial = lb.frankfurt.spool.partial_path("dpo_held-lost")
    if loss == "deleted":
        partial.unlink()
    else:
        os.truncate(partial, partial.stat().st_size - SEGMENT_LEN - 1)
    if restarted:
        restart_receiver(lb)

    with pytest.raises(PartnerError) as lost:
        rig.send(token, data)
    fragment = "is gone" if loss == "deleted" else "is shorter than its resume point"
    assert_partner_error(lost.value, "FAILED_PRECONDITION", "refused the upload", fragment)
    assert "offer it again to restart from segment 0" in str(lost.value)
    assert_held(lb, "dpo_held-lost", [])

    summary = rig.send(token, data)
    assert (rig.last_held, rig.last_uploaded) == (0, list(range(7)))
    assert_delivered(lb, "dpo_held-lost", data, summary)


# -- held data that changed or vanished, and the declared size ------------------------------


def _flip_in_partial(rig: Rig, transfer_id: str, segment: int) -> None:
    row = rig.lb.frankfurt.ledger.inbound(transfer_id)
    assert row is not None
    partial = rig.lb.frankfurt.spool.partial_path(transfer_id)
    held = bytearray(partial.read_bytes())
    held[len(row.stored_header) + segment * SEGMENT_LEN + 5] ^= 0x20
    partial.write_bytes(bytes(held))


def test_held_data_changed_on_disk_while_the_receiver_runs_restarts(rig: Rig) -> None:
    """The running hash in the working set stands for the held bytes only while the partial
    file is unchanged: a segment changed on disk between two uploads is verified again,
    fails, and the transfer restarts from 0 (it is never committed unreadable)."""
    lb = rig.lb
    data = os.urandom(SHORT_FINAL)
    token = lb.passport("dpo_held-changed")
    lb.link.tamper = broken_after(3)
    with pytest.raises(PartnerError):
        rig.send(token, data)
    _flip_in_partial(rig, "dpo_held-changed", 1)  # no restart: the receiver keeps its running hash
    with pytest.raises(PartnerError, match="restart from segment 0"):
        rig.send(token, data)
    summary = rig.send(token, data)
    assert_delivered(lb, "dpo_held-changed", data, summary)


def test_held_data_corrupted_after_the_final_segment_restarts(rig: Rig) -> None:
    """Held data corrupted after the final segment arrived (receiver restarted): Finish
    re-hashes, fails, resets the resume point to 0; the next send uploads all and finishes."""
    lb = rig.lb
    data = os.urandom(SHORT_FINAL)
    token = lb.passport("dpo_held-bad-final")
    lb.link.tamper = broken_after(7)
    with pytest.raises(PartnerError):
        rig.send(token, data)
    _flip_in_partial(rig, "dpo_held-bad-final", 1)
    restart_receiver(lb)
    with pytest.raises(PartnerError):
        rig.send(token, data)  # the held data is bad: refused once, fine
    summary = rig.send(token, data)
    assert_delivered(lb, "dpo_held-bad-final", data, summary)


@pytest.mark.parametrize("restarted", [False, True])
def test_partial_lost_after_the_final_segment_restarts(rig: Rig, restarted: bool) -> None:
    """The partial file lost after the final segment arrived: Finish resets to segment 0
    (as the same loss mid-stream does) instead of failing on the missing file forever."""
    lb = rig.lb
    data = os.urandom(SHORT_FINAL)
    token = lb.passport("dpo_held-gone-final")
    lb.link.tamper = broken_after(7)
    with pytest.raises(PartnerError):
        rig.send(token, data)
    lb.frankfurt.spool.partial_path("dpo_held-gone-final").unlink()
    if restarted:
        restart_receiver(lb)
    with pytest.raises(PartnerError):
        rig.send(token, data)
    summary = rig.send(token, data)
    assert_delivered(lb, "dpo_held-gone-final", data, summary)


def test_sender_holds_the_data_to_its_declared_size(rig: Rig) -> None:
    """Whoever calls it, the sender never lets a stream shorter than its declared size
    become the final segment (nor one longer): nothing is committed, the prefix resumes."""
    lb = rig.lb
    data = os.urandom(SHORT_FINAL)
    token = lb.passport("dpo_declared-size")
    with pytest.raises(SourceSizeError, match=f"ended after 100 of {len(data)} bytes"):
        rig.send_chunks(token, iter([data[:100]]), len(data))
    row = lb.frankfurt.ledger.inbound("dpo_declared-size")
    assert row is not None and row.state is TransferState.RECEIVING and not row.final_received
    with pytest.raises(SourceSizeError, match="runs past the declared size of 100 bytes"):
        rig.send_chunks(token, iter([data]), 100)
    summary = rig.send(token, data)
    assert_delivered(lb, "dpo_declared-size", data, summary)
