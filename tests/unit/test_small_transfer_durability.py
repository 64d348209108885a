"""A small transfer's durable writes: how many, in which order, and what a kill -9 leaves.

What is pinned (issue 14, small transfers): per one-call send, the sender makes one durable
ledger transaction (the outbound record with segment 0's tag) and the receiver one (the
commit, carrying the final resume point) with two file fsyncs (the spool file as it moves
into the inbox, and the inbox directory) -- no save point of its own inside ``Deliver``.
A real process killed with SIGKILL at each point of a ``Deliver`` leaves either the transfer
as offered (the resume point never ahead of the data) or a whole committed transfer, and a
resend from a new process over the same ledgers and spools delivers it once, byte-identical.
The group commit of a SQLite ledger (``ledger_base.GroupSync``): one fsync serves the commits
made while the previous one ran, none returns before an fsync that began after it, and a
failed fsync is the error of every commit it was to cover.
"""

from __future__ import annotations

import collections
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

import tests.loopback as loopback
from gateway import spool
from gateway.errors import StorageError
from gateway.ledger import Ledger
from gateway.ledger_base import GroupSync, LedgerBase
from gateway.receiver import Receiver
from gateway.signed import Signed
from gateway.store import Tx
from gateway.transfer import TransferState
from tests.fakes import SoftwareHsm
from tests.loopback import SEGMENT, Loopback, make_loopback
from tests.loopback_rig import assert_delivered
from tests.postgres import ledger_on, pg_url, postgres  # noqa: F401 - fixtures
from tests.system.harness import wait_until


def _side(ledger: LedgerBase, lb: Loopback) -> str:
    return "lingang" if ledger is lb.lingang.ledger else "frankfurt"


def test_a_small_send_makes_one_durable_commit_a_side_and_two_file_fsyncs(
    lb: Loopback, monkeypatch: pytest.MonkeyPatch
) -> None:
    lb.send("warm", b"w" * SEGMENT)  # the key set is fetched and learnt once
    seen: collections.Counter[tuple[str, str]] = collections.Counter()
    tags_at_delivery: list[dict[int, bytes]] = []
    real_tx = LedgerBase._tx

    def counting_tx(self: LedgerBase, durable: bool = True) -> AbstractContextManager[Tx]:
        seen[(_side(self, lb), "durable" if durable else "not durable")] += 1
        return real_tx(self, durable)

    def counting(name: str) -> Callable[[int], None]:
        real = getattr(os, name)

        def call(fd: int) -> None:
            where = os.readlink(f"/proc/self/fd/{fd}")
            seen[("lingang" if "/lingang/" in where else "frankfurt", name)] += 1
            real(fd)

        return call

    real_deliver = lb.link.deliver

    def deliver(*args: object) -> object:
        tags_at_delivery.append(lb.lingang.ledger.segment_tags("dpo_small", 0, 1))
        return real_deliver(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(LedgerBase, "_tx", counting_tx)
    monkeypatch.setattr(os, "fsync", counting("fsync"))  # the ledger's and the spool's
    monkeypatch.setattr(os, "fdatasync", counting("fdatasync"))
    monkeypatch.setattr(lb.link, "deliver", deliver)
    data = os.urandom(SEGMENT)
    summary = lb.send("small", data)
    assert_delivered(lb, "dpo_small", data, summary)
    assert len(tags_at_delivery) == 1 and list(tags_at_delivery[0]) == [0]  # before it left
    # Sender: the record with the tag (durable), the delivery (not). Receiver: the offer
    # (not durable), the commit with its resume point (durable); the spool file's fsync as
    # it moves into the inbox and the inbox's; each durable commit one fsync of the log.
    assert seen == {
        ("lingang", "durable"): 1,
        ("lingang", "not durable"): 1,
        ("lingang", "fsync"): 1,
        ("frankfurt", "not durable"): 1,
        ("frankfurt", "durable"): 1,
        ("frankfurt", "fsync"): 3,
    }


def test_the_resume_point_waits_for_the_commit_inside_deliver(
    lb: Loopback, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Deliver that fails after its upload, before its commit, leaves the ledger at the
    point from before the call; the resend uploads again and commits once."""
    data = os.urandom(SEGMENT - 3)
    token = lb.passport("early")
    real_finish = Receiver.finish
    rows = []

    def failing_finish(self: Receiver, *args: object, **kwargs: object) -> object:
        rows.append(lb.frankfurt.ledger.inbound("dpo_early"))
        raise StorageError("the disk went away (test)")

    monkeypatch.setattr(Receiver, "finish", failing_finish)
    with pytest.raises(Exception, match="disk went away"):
        lb.resend(token, data)
    [row] = rows
    assert row is not None and row.state is TransferState.RECEIVING
    assert (row.next_segment, row.received_bytes, row.final_received) == (0, 0, False)
    monkeypatch.setattr(Receiver, "finish", real_finish)
    summary = lb.resend(token, data)
    assert_delivered(lb, "dpo_early", data, summary)


# -- a real process killed at each point of a Deliver ----------------------------------------

#: Where the child kills itself: (what to replace, its attribute, "before" or "after" it runs).
KILL_POINTS = {
    "after-upload": (Receiver, "finish", "before"),
    "after-rename": (spool, "_fsync_dir", "after"),
    "after-commit": (Receiver, "_commit_proof", "before"),
}


def _same_keys(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """``make_loopback`` makes its HSMs in one order (issuer, lingang, frankfurt): hand it
    the same three each time, so a second loopback opens what the first wrote."""
    made = [SoftwareHsm() for _ in range(3)]
    handed: list[SoftwareHsm] = []

    def factory() -> SoftwareHsm:
        hsm = made[len(handed) % 3]
        handed.append(hsm)
        return hsm

    monkeypatch.setattr(loopback, "SoftwareHsm", factory)
    return handed.clear


def _killed_at(point: str) -> None:
    owner, name, when = KILL_POINTS[point]
    real = getattr(owner, name)

    def kill(*args: object, **kwargs: object) -> object:
        if when == "after":
            real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("not reached")

    setattr(owner, name, kill)


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_deliver_killed_at_any_point_leaves_nothing_or_a_whole_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    again = _same_keys(monkeypatch)
    data = os.urandom(SEGMENT - 1)
    token_file = tmp_path / "token"
    pid = os.fork()
    if pid == 0:  # the child: one process with both gateways, killed mid-Deliver
        try:
            child = make_loopback(tmp_path / "gw")
            token = child.passport("killed")
            token_file.write_text(token)
            _killed_at(point)
            child.resend(token, data)
        finally:
            os._exit(3)  # not killed: the parent sees exit status 3, not SIGKILL
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    again()
    lb = make_loopback(tmp_path / "gw")
    try:
        row = lb.frankfurt.ledger.inbound("dpo_killed")
        assert row is not None
        if point == "after-commit":
            assert row.state is TransferState.COMMITTED
            assert (row.next_segment, row.final_received) == (1, True)
            assert lb.fetch("dpo_killed") == data
        else:  # as offered: nothing of the data counts yet
            assert row.state is TransferState.RECEIVING
            assert (row.next_segment, row.received_bytes, row.final_received) == (0, 0, False)
        summary = lb.resend(token_file.read_text(), data)
        assert_delivered(lb, "dpo_killed", data, summary)
        commits = [
            r for _, r in lb.frankfurt.ledger.audit_records(0, lb.frankfurt.ledger.audit_size())
        ]
        assert sum(b'"transfer.committed"' in r and b"dpo_killed" in r for r in commits) == 1
    finally:
        lb.close()


# -- the group commit --------------------------------------------------------------------------


class _Disk:
    """An fsync stand-in: slow enough for callers to pile up; records what it covered."""

    def __init__(self, group: GroupSync) -> None:
        self.group = group
        self.started: list[int] = []  # issued numbers when each fsync began
        self.fail_next = False
        self.gate = threading.Event()
        self.gate.set()

    def fsync(self) -> None:
        self.started.append(self.group._issued)
        self.gate.wait(5)
        if self.fail_next:
            self.fail_next = False
            raise StorageError("fsync failed (test)")


def test_one_fsync_serves_the_commits_made_while_the_last_ran(tmp_path: Path) -> None:
    group = GroupSync(tmp_path / "log-wal")
    disk = _Disk(group)
    group._fsync = disk.fsync  # type: ignore[method-assign]
    disk.gate.clear()
    done: list[int] = []

    def commit(which: int) -> None:
        group.sync()
        done.append(which)

    first = threading.Thread(target=commit, args=(0,))
    first.start()
    wait_until(lambda: bool(disk.started), 5, "the first fsync to start")
    waiting = [threading.Thread(target=commit, args=(1,)) for _ in range(7)]
    for thread in waiting:
        thread.start()
    wait_until(lambda: group._issued == 8, 5, "seven more commits to wait")
    assert done == []  # nobody returns before its fsync ends
    disk.gate.set()
    for thread in [first, *waiting]:
        thread.join(5)
    assert sorted(done) == [0, 1, 1, 1, 1, 1, 1, 1]
    # The first fsync covered the first commit; one more covered the seven that came during it.
    assert disk.started == [1, 8]
    assert (group.fsyncs, group.commits) == (2, 8)


def test_a_failed_fsync_fails_every_commit_it_covered_and_only_those(tmp_path: Path) -> None:
    group = GroupSync(tmp_path / "log-wal")
    disk = _Disk(group)
    group._fsync = disk.fsync  # type: ignore[method-assign]
    disk.fail_next = True
    with pytest.raises(StorageError, match="fsync failed"):
        group.sync()
    group.sync()  # the next round is its own
    assert disk.started == [1, 2]


def test_the_real_log_is_fsynced_by_a_durable_commit(
    lb: Loopback, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    lb.frankfurt.ledger.append_audit(b'{"kind":"test"}')
    assert synced == [str(lb.frankfurt.ledger.store.where) + "-wal"]


# -- the ledger rows of a one-call transfer, on both databases ---------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    opened = ledger_on(request, tmp_path / "ledger.sqlite3")
    yield opened
    opened.close()


def test_the_outbound_record_carries_segment_0s_tag_and_is_what_was_stored(
    ledger: Ledger,
) -> None:
    created = ledger.create_outbound(
        transfer_id="out-1",
        partner="gw-b",
        passport_digest=b"\x01" * 32,
        sent_header=b"sent",
        stored_header=b"stored",
        expires_at=2_000_000_000,
        segment_tags=[(0, b"\x05" * 16)],
    )
    assert created == ledger.outbound("out-1")  # built, not read back: the same row
    assert ledger.segment_tags("out-1", 0, 1) == {0: b"\x05" * 16}
    # A tag recorded: the send released a segment, so its record is never discarded.
    assert not ledger.discard_unsent_outbound("out-1")


def test_the_commit_of_a_one_call_transfer_records_its_resume_point(ledger: Ledger) -> None:
    created = ledger.create_inbound(
        transfer_id="in-1",
        sender="gw-a",
        passport="tok.en.sig",
        passport_digest=b"\x07" * 32,
        offered_header_digest=b"\x08" * 32,
        stored_header=b"\x00header",
        byte_limit=1 << 20,
        classification="general",
        source_jurisdiction="CN-SH",
        dataset_sha256=None,
    )
    assert created is not None and created == ledger.inbound("in-1")
    receipt = Signed(b'{"receipt":1}', bytes(64), "gw-b/signing/1")
    ledger.commit_inbound("in-1", b"\x09" * 32, receipt, 1_700_000_000, arrived=(1, 4096))
    row = ledger.inbound("in-1")
    assert row is not None and row.state is TransferState.COMMITTED
    assert (row.next_segment, row.received_bytes, row.final_received) == (1, 4096, True)
    assert row.receipt == receipt
