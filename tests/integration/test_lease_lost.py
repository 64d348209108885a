"""A transfer's lease lost to another node: the old writer stops, and cannot move the resume
point the new holder continues from (issue 16).

Real parts: a real lingang ``Sender`` (``tests.loopback``) and frankfurt as two real
``Receiver`` nodes, A and B, each with its own ``Ledger`` (so its own lease holder) on one
real PostgreSQL database (:mod:`tests.postgres`), sharing one spool directory. A takeover is
made as it happens for real: node A's lease expires (set in the database: A "stalled"), and
node B takes it.

* the renewal finds the lease taken over: A's stream stops at the next segment, ABORTED with
  the reason, and its save point leaves the durable resume point where it was; B resumes
  from there and the data arrives byte-identical;
* A stalled so long that even its renewal never ran: the fence in the transaction that moves
  the resume point refuses A's next save point all the same;
* the fence locks the lease row: a takeover that comes while A's save point commits waits
  for it, and then finds the lease renewed;
* a send whose outbound lease another node took stops before its next chunk.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.config import Limits
from gateway.envelope import read_stream
from gateway.errors import LeaseLostError, PartnerError
from gateway.keyring import KeyRing
from gateway.ledger import Ledger
from gateway.ledger_leases import LeaseTakenError
from gateway.receiver import Receiver
from gateway.receiver.intake import SYNC_EVERY_SEGMENTS
from gateway.sender import Sender
from gateway.spool import Spool
from gateway.store.postgres import PostgresDatabase
from gateway.transfer import SegmentIn, TransferState
from tests.loopback import SEGMENT, Loopback, make_loopback
from tests.postgres import PASSWORD, Cluster, postgres  # noqa: F401
from tests.system.harness import wait_until

SEGMENTS = 100
TAKEOVER_AT = SYNC_EVERY_SEGMENTS + 8  # after the first durable point
LOST_WORDS = "this node lost the transfer's lease to another node"


@dataclass
class Nodes:
    lb: Loopback
    a: Ledger
    b: Ledger
    receivers: tuple[Receiver, Receiver]
    spool: Spool
    url: str


@pytest.fixture
def nodes(tmp_path: Path, postgres: Cluster) -> Iterator[Nodes]:  # noqa: F811
    lb = make_loopback(tmp_path, Limits(segment_size=SEGMENT, partner_wait_seconds=0))
    url = postgres.database("lease_lost")
    spool = Spool(tmp_path / "shared-spool")
    a, b = Ledger(PostgresDatabase(url, PASSWORD)), Ledger(PostgresDatabase(url, PASSWORD))
    a.announce_node("node-a")
    b.announce_node("node-b")
    a.lease_renew_seconds = 3600.0  # the test decides when node A renews (or never)
    receivers = (lb.frankfurt_node(a, spool), lb.frankfurt_node(b, spool))
    lb.link.receivers["frankfurt"] = (receivers[0], lb.frankfurt.config.partner("lingang"))
    try:
        yield Nodes(lb, a, b, receivers, spool, url)
    finally:
        lb.close()
        a.close()
        b.close()


def _take_over(expiring: Ledger, taker: Ledger, name: str) -> None:
    """``name``'s lease expires (its holder stalled) and ``taker`` takes it."""
    with expiring.store.transaction() as db:
        db.execute("UPDATE transfer_leases SET expires_at = 0 WHERE lease = ?", (name,))
    taker.take_lease(name)


def _resume_point(ledger: Ledger, transfer_id: str) -> int:
    row = ledger.inbound(transfer_id)
    return -1 if row is None else row.next_segment


def _taking_over_at(
    nodes: Nodes, transfer_id: str, renew: bool, after: list[int]
) -> Callable[[Iterator[SegmentIn]], Iterator[SegmentIn]]:
    """The upload to node A, with node B taking the transfer over once segment
    ``TAKEOVER_AT`` is due (the first durable point made); ``renew``: A's renewal runs then
    (and finds the lease lost). ``after`` counts the segments A is handed afterwards."""
    name = f"inbound/lingang/{transfer_id}"

    def tamper(segments: Iterator[SegmentIn]) -> Iterator[SegmentIn]:
        for index, segment in enumerate(segments):
            if index == TAKEOVER_AT:
                wait_until(
                    lambda: _resume_point(nodes.a, transfer_id) == SYNC_EVERY_SEGMENTS,
                    10,
                    "node A's first durable point",
                )
                _take_over(nodes.a, nodes.b, name)
                if renew:
                    assert nodes.a.renew_leases() == {name}
            if index >= TAKEOVER_AT:
                after.append(index)
            yield segment

    return tamper


def _committed_data(nodes: Nodes, transfer_id: str) -> bytes:
    out = io.BytesIO()
    with nodes.spool.open_committed(transfer_id) as src:
        read_stream(src, out, nodes.lb.frankfurt.id, nodes.lb.frankfurt.keys)
    return out.getvalue()


@pytest.mark.parametrize("renew", [True, False], ids=["renewal-finds-it", "stalled-renewal"])
def test_a_stream_whose_lease_was_taken_over_stops_and_the_new_holder_resumes(
    nodes: Nodes, renew: bool
) -> None:
    lb = nodes.lb
    transfer_id = f"dpo_lease-lost-{renew}"
    data = os.urandom(SEGMENTS * SEGMENT - 5)
    token = lb.passport(transfer_id.removeprefix("dpo_"))
    after: list[int] = []
    lb.link.tamper = _taking_over_at(nodes, transfer_id, renew, after)
    with pytest.raises(PartnerError) as refused:
        lb.resend(token, data)
    assert refused.value.grpc_status == "ABORTED", refused.value
    assert LOST_WORDS in str(refused.value) and "the sender resumes there" in str(refused.value)
    if renew:  # stopped at the next segment (a few more were in the hand-over queue)
        assert len(after) <= 8, after
    # (Without the renewal, the fence of its next save point found it: it stops then.)
    # Node A moved nothing: the durable point is the one from before the takeover.
    assert _resume_point(nodes.b, transfer_id) == SYNC_EVERY_SEGMENTS

    # The sender, routed to node B (the holder), resumes from there and completes.
    lb.link.receivers["frankfurt"] = (nodes.receivers[1], lb.frankfurt.config.partner("lingang"))
    summary = lb.resend(token, data)
    row = nodes.a.inbound(transfer_id)
    assert row is not None and row.state is TransferState.COMMITTED
    assert row.receipt == summary.receipt
    assert _committed_data(nodes, transfer_id) == data
    holder = nodes.b.store.one("SELECT count(*) FROM transfer_leases")
    assert int(holder[0]) == 0  # B dropped it at the end; A's drop deleted nothing of B's


def test_the_fence_holds_a_takeover_until_the_save_point_commits(nodes: Nodes) -> None:
    """Node A's save point renews the lease in its own transaction and locks its row: B's
    takeover, made while that transaction is open (A's lease had expired), waits for the
    commit -- and then finds the lease renewed. No interleaving lets both write."""
    a, b = nodes.a, nodes.b
    name = "inbound/lingang/t-fence"
    a.take_lease(name)
    with a.store.transaction() as db:
        db.execute("UPDATE transfer_leases SET expires_at = 0 WHERE lease = ?", (name,))
    outcome: list[BaseException | None] = []
    with a.store.transaction() as db:
        a._fence_inbound(db, "t-fence")  # what record_progress does first

        def take() -> None:
            try:
                b.take_lease(name)
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        taker = threading.Thread(target=take)
        taker.start()
        wait_until(
            lambda: bool(
                b.store.one(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE 'INSERT INTO transfer_leases%'"
                )[0]
            ),
            10,
            "node B's takeover to wait for the lease row",
        )
        assert not outcome
    taker.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], LeaseTakenError), outcome
    a.check_lease(name)  # still A's


def test_a_send_whose_lease_another_node_took_stops(nodes: Nodes) -> None:
    """lingang's own sender on the shared database: node B takes ``outbound/<id>`` over,
    node A's renewal finds it, and the send stops before its next chunk -- ABORTED, with
    what happened -- instead of racing node B to the partner."""
    lb = nodes.lb
    side = lb.lingang
    sender = Sender(
        side.config,
        side.keys,
        KeyRing(side.id, nodes.a, side.keys, side.config.keys, clock=lambda: lb.now[0]),
        nodes.a,
        lb.link,
        clock=lambda: lb.now[0],
    )
    lb.link.receivers["frankfurt"] = (lb.frankfurt.receiver, lb.frankfurt.config.partner("lingang"))
    transfer_id = "dpo_send-lease-lost"
    token = lb.passport("send-lease-lost")
    read: list[int] = []

    def chunks() -> Iterator[bytes]:
        for index in range(40):
            if index == 20:
                _take_over(nodes.a, nodes.b, f"outbound/{transfer_id}")
                assert nodes.a.renew_leases() == {f"outbound/{transfer_id}"}
            read.append(index)
            yield bytes([index]) * SEGMENT

    with pytest.raises(LeaseLostError, match="this node lost the send's lease") as lost:
        sender.send("frankfurt", token, chunks(), 40 * SEGMENT)
    assert lost.value.grpc_status == "ABORTED"
    assert read[-1] == 20, read  # the chunk read when the lease was found lost: no more
