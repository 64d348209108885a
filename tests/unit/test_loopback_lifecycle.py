"""The data lifecycle through a real sender and receiver in one process (``tests/loopback``):
cancel on either side, expiry, inbox retention, ack and delete, with a clock the test moves.

What each test pins: the ledger row stays with its final state, the data (partial or
committed file, stored data key) goes, an audit record says so on the side that decided, and
anything that comes later for the transfer is refused with the reason.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from gateway.audit.records import decode
from gateway.config import RetentionConfig
from gateway.errors import (
    PartnerError,
    TransferBusyError,
    TransferEndedError,
    TransferError,
    UnknownTransferError,
    XbgwError,
)
from gateway.retention import Lifecycle
from tests.loopback import Loopback, Side, cut_after

DATA = bytes(range(256)) * 2  # 8 segments of 64 bytes
DAY = 86_400


def lifecycle(lb: Loopback, side: Side, **retention: int) -> Lifecycle:
    config = dataclasses.replace(side.config, retention=RetentionConfig(**retention))
    return Lifecycle(
        lambda: config,
        side.ledger,
        side.receiver.ends(),
        side.sender.hold,
        lb.link,
        clock=lambda: lb.now[0],
        tell_seconds=0.0,
    )


def interrupted(lb: Loopback, jti: str, ttl: int = 3600) -> str:
    """A send cut after 3 segments: unfinished on both sides, a partial file at frankfurt."""
    token = lb.passport(jti, ttl=ttl)
    lb.link.tamper = cut_after(3)
    with pytest.raises(PartnerError, match="unreachable"):
        lb.resend(token, DATA)
    assert lb.frankfurt.spool.partial_path(jti).stat().st_size > 0
    return token


def kinds(side: Side, transfer_id: str) -> list[dict[str, object]]:
    """The audit records of ``side`` about ``transfer_id``, in order."""
    records = side.ledger.audit_records(0, side.ledger.audit_size())
    found = [decode(record) for _, record in records]
    return [r for r in found if r.get("transfer_id") == transfer_id]


def assert_error(error: BaseException, kind: type[XbgwError], status: str, *words: str) -> None:
    assert isinstance(error, kind), error
    assert error.grpc_status == status, error
    for word in words:
        assert word in str(error), (word, str(error))


# -- cancel on the sending side ---------------------------------------------------------------


def test_sender_cancel_ends_both_sides_and_refuses_a_resend(lb: Loopback) -> None:
    token = interrupted(lb, "dpo_t-out")
    done = lifecycle(lb, lb.lingang).cancel("dpo_t-out", "wrong file")
    assert (done.direction, done.state.value, done.partner_told) == ("out", "cancelled", True)
    out = lb.lingang.ledger.outbound("dpo_t-out")
    assert out is not None and out.state.value == "cancelled" and out.stored_header == b""
    assert out.ended is not None and (out.ended.by, out.ended.reason) == ("lingang", "wrong file")
    assert lb.lingang.ledger.segment_tags("dpo_t-out", 0, 100) == {}
    held = lb.frankfurt.ledger.inbound("dpo_t-out")
    assert held is not None and held.state.value == "cancelled" and held.stored_header == b""
    assert not lb.frankfurt.spool.partial_path("dpo_t-out").exists()
    [mine] = [r for r in kinds(lb.lingang, "dpo_t-out") if r["kind"] == "transfer.cancelled"]
    [theirs] = [r for r in kinds(lb.frankfurt, "dpo_t-out") if r["kind"] == "transfer.cancelled"]
    assert (mine["direction"], mine["by"], theirs["direction"], theirs["by"]) == (
        "out",
        "lingang",
        "in",
        "lingang",
    )
    assert "wrong file" not in json.dumps([mine, theirs])  # the words stay in the ledger
    with pytest.raises(TransferEndedError) as caught:
        lb.resend(token, DATA)
    assert_error(caught.value, TransferEndedError, "FAILED_PRECONDITION", "cancelled by lingang")


def test_a_second_cancel_only_tells_the_partner_again(lb: Loopback) -> None:
    interrupted(lb, "dpo_t-again")
    life = lifecycle(lb, lb.lingang)
    life.cancel("dpo_t-again", "")
    size = lb.lingang.ledger.audit_size()
    again = life.cancel("dpo_t-again", "")
    assert again.state.value == "cancelled" and again.partner_told
    assert "already cancelled by lingang" in again.detail
    assert lb.lingang.ledger.audit_size() == size  # one record per cancel decided


def test_a_send_running_now_is_busy_not_cancelled(lb: Loopback) -> None:
    interrupted(lb, "dpo_t-busy")
    with lb.lingang.sender.hold("dpo_t-busy"), pytest.raises(TransferBusyError) as caught:
        lifecycle(lb, lb.lingang).cancel("dpo_t-busy", "")
    assert_error(caught.value, TransferBusyError, "ABORTED", "being sent right now", "again")
    out = lb.lingang.ledger.outbound("dpo_t-busy")
    assert out is not None and out.state.value == "sending"


def test_an_unreachable_partner_is_reported_and_the_cancel_stands(lb: Loopback) -> None:
    interrupted(lb, "dpo_t-away")
    lb.link.lose_reply.add("cancel")  # the partner acted, the answer never came
    done = lifecycle(lb, lb.lingang).cancel("dpo_t-away", "")
    assert done.state.value == "cancelled" and not done.partner_told
    assert "unreachable" in done.detail and "expires the transfer itself" in done.detail


def test_a_delivered_transfer_cannot_be_cancelled(lb: Loopback) -> None:
    lb.send("dpo_t-done", DATA)
    with pytest.raises(TransferError) as sent:
        lifecycle(lb, lb.lingang).cancel("dpo_t-done", "")
    assert_error(sent.value, TransferError, "FAILED_PRECONDITION", "xbgw inbox delete dpo_t-done")
    with pytest.raises(TransferError) as received:
        lifecycle(lb, lb.frankfurt).cancel("dpo_t-done", "")
    assert_error(received.value, TransferError, "FAILED_PRECONDITION", "committed", "delete")
    row = lb.frankfurt.ledger.inbound("dpo_t-done")
    assert row is not None and row.state.value == "committed"


# -- cancel on the receiving side -------------------------------------------------------------


def test_receiver_cancel_refuses_the_senders_resume_with_the_reason(lb: Loopback) -> None:
    token = interrupted(lb, "dpo_t-in")
    done = lifecycle(lb, lb.frankfurt).cancel("dpo_t-in", "not expected")
    assert (done.direction, done.state.value) == ("in", "cancelled")
    assert not lb.frankfurt.spool.partial_path("dpo_t-in").exists()
    with pytest.raises(PartnerError) as caught:
        lb.resend(token, DATA)
    assert_error(
        caught.value,
        PartnerError,
        "FAILED_PRECONDITION",
        "cancelled by frankfurt at",
        "(not expected)",
    )
    [record] = [r for r in kinds(lb.frankfurt, "dpo_t-in") if r["kind"] == "transfer.cancelled"]
    assert (record["by"], record["partner"]) == ("frankfurt", "lingang")


def test_only_the_transfers_sender_may_cancel_it_at_the_receiver(lb: Loopback) -> None:
    interrupted(lb, "dpo_t-own")
    ends = lb.frankfurt.receiver.ends()
    stranger = dataclasses.replace(lb.frankfurt.config.partner("lingang"), id="rome")
    with pytest.raises(UnknownTransferError) as other:
        ends.cancel("dpo_t-own", "", stranger)
    with pytest.raises(UnknownTransferError) as none:
        ends.cancel("t-nope", "", stranger)
    assert other.value.grpc_status == none.value.grpc_status == "NOT_FOUND"
    assert str(other.value).replace("dpo_t-own", "X") == str(none.value).replace("t-nope", "X")
    row = lb.frankfurt.ledger.inbound("dpo_t-own")
    assert row is not None and row.state.value == "receiving"


def test_upload_and_finish_of_a_cancelled_transfer_are_refused(lb: Loopback) -> None:
    interrupted(lb, "dpo_t-late")
    lifecycle(lb, lb.frankfurt).cancel("dpo_t-late", "")
    peer = lb.frankfurt.config.partner("lingang")
    from gateway.transfer import SegmentIn

    with pytest.raises(TransferEndedError, match="cancelled by frankfurt"):
        lb.frankfurt.receiver.upload(peer, iter([SegmentIn("dpo_t-late", 3, False, b"x" * 80)]))


# -- expiry -----------------------------------------------------------------------------------


def test_unfinished_transfers_expire_after_exp_plus_grace_on_both_sides(lb: Loopback) -> None:
    token = interrupted(lb, "dpo_t-exp", ttl=10)
    sender, receiver = (lifecycle(lb, s, unfinished_grace=60) for s in (lb.lingang, lb.frankfurt))
    lb.now[0] += 10 + 59
    assert sender.sweep().expired == 0 and receiver.sweep().expired == 0
    lb.now[0] += 1
    assert sender.sweep().expired == 1 and receiver.sweep().expired == 1
    out, held = lb.lingang.ledger.outbound("dpo_t-exp"), lb.frankfurt.ledger.inbound("dpo_t-exp")
    assert out is not None and out.state.value == "expired"
    assert held is not None and held.state.value == "expired"
    assert not lb.frankfurt.spool.partial_path("dpo_t-exp").exists()
    for side in (lb.lingang, lb.frankfurt):
        [record] = [r for r in kinds(side, "dpo_t-exp") if r["kind"] == "transfer.expired"]
        assert record["passport_exp"] == held.expires_at
    assert sender.sweep().expired == 0  # once
    with pytest.raises(XbgwError):
        lb.resend(token, DATA)


def test_a_transfer_being_received_is_not_expired_under_it(lb: Loopback) -> None:
    interrupted(lb, "dpo_t-held", ttl=1)
    lb.now[0] += 2
    receiver = lifecycle(lb, lb.frankfurt, unfinished_grace=0)
    with lb.frankfurt.receiver.hold("dpo_t-held"):
        assert receiver.sweep().busy == 1
    assert receiver.sweep().expired == 1


# -- inbox retention, ack, delete -------------------------------------------------------------


def test_fetched_items_go_after_retention_fetched(lb: Loopback) -> None:
    lb.send("dpo_t-f", DATA)
    life = lifecycle(lb, lb.frankfurt, fetched=100)
    assert life.sweep().deleted == 0  # never fetched: kept
    lb.frankfurt.ledger.mark_fetched("dpo_t-f", int(lb.now[0]))
    lb.now[0] += 99
    assert life.sweep().deleted == 0
    lb.now[0] += 1
    assert life.sweep().deleted == 1
    row = lb.frankfurt.ledger.inbound("dpo_t-f")
    assert row is not None and row.deleted_cause == "fetched" and row.stored_header == b""
    assert row.receipt is not None  # the record and its receipt stay
    assert not lb.frankfurt.spool.committed_path("dpo_t-f").exists()
    [record] = [r for r in kinds(lb.frankfurt, "dpo_t-f") if r["kind"] == "inbox.deleted"]
    assert record["cause"] == "fetched"


def test_acknowledged_and_unfetched_rules(lb: Loopback) -> None:
    lb.send("dpo_t-a", DATA)
    lb.send("dpo_t-u", DATA)
    life = lifecycle(lb, lb.frankfurt, acknowledged=10, unfetched=DAY, fetched=0)
    done = life.acknowledge(["dpo_t-a", "dpo_t-a"])
    assert (done.changed, done.unchanged) == (["dpo_t-a"], [])
    assert life.acknowledge(["dpo_t-a"]).unchanged == ["dpo_t-a"]
    lb.now[0] += 10
    assert life.sweep().deleted == 1
    lb.now[0] += DAY
    assert life.sweep().deleted == 1
    causes = {t: lb.frankfurt.ledger.inbound(t).deleted_cause for t in ("dpo_t-a", "dpo_t-u")}  # type: ignore[union-attr]
    assert causes == {"dpo_t-a": "acknowledged", "dpo_t-u": "unfetched"}


def test_inbox_delete_is_now_audited_and_all_or_nothing_on_unknown_ids(lb: Loopback) -> None:
    lb.send("dpo_t-d", DATA)
    life = lifecycle(lb, lb.frankfurt)
    with pytest.raises(UnknownTransferError, match="nothing was changed"):
        life.delete(["dpo_t-d", "t-unknown"])
    assert lb.frankfurt.spool.committed_path("dpo_t-d").exists()
    done = life.delete(["dpo_t-d"])
    assert done.changed == ["dpo_t-d"] and not lb.frankfurt.spool.committed_path("dpo_t-d").exists()
    assert life.delete(["dpo_t-d"]).unchanged == ["dpo_t-d"]
    [record] = [r for r in kinds(lb.frankfurt, "dpo_t-d") if r["kind"] == "inbox.deleted"]
    assert record["cause"] == "operator"
    assert lb.frankfurt.ledger.inbox_page(10, None) == []


def test_a_file_left_by_a_crash_after_the_decision_is_swept(lb: Loopback) -> None:
    lb.send("dpo_t-left", DATA)
    lb.frankfurt.ledger.delete_inbox_data("dpo_t-left", int(lb.now[0]), "operator")  # no unlink
    assert lb.frankfurt.spool.committed_path("dpo_t-left").exists()
    assert lifecycle(lb, lb.frankfurt).sweep().leftovers == 1
    assert not lb.frankfurt.spool.committed_path("dpo_t-left").exists()
