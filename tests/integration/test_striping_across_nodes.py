"""A striped upload whose stripes reach different nodes of one gateway (issue 16).

Behind a TCP balancer each of a partner's connections lands on some node; the stripes of
one upload may land on two. The node without the transfer's lease refuses its stripes as
held by another node, so striping can never succeed there: the sender must go on unstriped
over one connection instead of retrying the split attempt until its wait runs out.

After a split the partner's uploads go unstriped for a while (a balancer keeps each
connection where it placed it).

Real parts: a real lingang ``Sender`` (``tests.loopback``) and frankfurt as two real
``Receiver`` nodes on one real PostgreSQL ledger (:mod:`tests.postgres`, each node its own
``Ledger`` and so its own lease holder) and one spool directory. The in-process link stands
in for the network and the balancer: stripe ``i`` goes to node ``i mod 2``, every other call
to node A.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from gateway.config import GatewayConfig, Limits, PartnerConfig
from gateway.envelope import read_stream
from gateway.errors import XbgwError
from gateway.ledger import Ledger
from gateway.receiver import Receiver, intake
from gateway.receiver.intake import Stripe
from gateway.spool import Spool
from gateway.store.postgres import PostgresDatabase
from gateway.striping import HELD_BY_ANOTHER_NODE
from gateway.transfer import SegmentIn, TransferState, UploadResult, refused_by, unreachable
from tests.loopback import SEGMENT, LinkCut, Loopback, make_loopback
from tests.postgres import PASSWORD, Cluster, postgres  # noqa: F401
from tests.system.harness import wait_until

Segments = Iterator[SegmentIn]


@dataclass
class Nodes:
    lb: Loopback
    receivers: tuple[Receiver, Receiver]
    ledgers: tuple[Ledger, Ledger]
    spool: Spool
    #: The stripes each node was handed, and how each ended ("ok" or the error's text).
    stripes: list[tuple[int, int, str]]
    #: lingang's configuration, with ``connections: 2`` to frankfurt.
    striped: GatewayConfig | None = None


@pytest.fixture
def nodes(
    tmp_path: Path,
    postgres: Cluster,  # noqa: F811
) -> Iterator[Nodes]:
    # Some patience (busy refusals are retried): without the fallback the split attempt is
    # retried until this runs out, then the send fails.
    limits = Limits(segment_size=SEGMENT, partner_wait_seconds=4)
    lb = make_loopback(tmp_path, limits)
    url = postgres.database("striping_nodes")
    spool = Spool(tmp_path / "shared-spool")
    ledgers = (Ledger(PostgresDatabase(url, PASSWORD)), Ledger(PostgresDatabase(url, PASSWORD)))
    a, b = (lb.frankfurt_node(ledger, spool) for ledger in ledgers)
    peer = lb.frankfurt.config.partner("lingang")
    lb.link.receivers["frankfurt"] = (a, peer)
    made = Nodes(lb, (a, b), ledgers, spool, [])
    lb.link.upload_stripe = _balanced(made, peer)  # type: ignore[method-assign,assignment]
    config = lb.lingang.config
    partners = tuple(
        replace(p, connections=2) if p.id == "frankfurt" else p for p in config.partners
    )
    made.striped = replace(config, partners=partners)
    lb.lingang.sender.reconfigure(made.striped)
    try:
        yield made
    finally:
        lb.close()
        for ledger in ledgers:
            ledger.close()


def _balanced(
    nodes: Nodes, peer: PartnerConfig
) -> Callable[
    [PartnerConfig, Segments, Stripe, Callable[[Callable[[], object]], None]], UploadResult
]:
    """``upload_stripe`` through a balancer that put lane ``i`` on node ``i mod 2``; a cancel
    from the sender cuts the stream at its next segment, as gRPC's would.

    The odd stripes reach node B only once stripe 0 has handed node A a segment beyond A's
    reorder window: A holds the transfer, and its stream is left waiting for room (segment 1
    never comes) -- the case only the receiver's end of a cancelled stripe ends at once."""
    handed: dict[int, int] = {}

    def upload_stripe(
        partner: PartnerConfig,
        segments: Segments,
        stripe: Stripe,
        on_abort: Callable[[Callable[[], object]], None],
    ) -> UploadResult:
        node = stripe.index % 2
        receiver = nodes.receivers[node]
        cancelled: list[bool] = []
        transfer: list[str] = []

        def cancel() -> None:
            # What gRPC does: the stream's iterator raises at its next read, and the servicer's
            # callback ends the attempt (gateway.partner: Receiver.end_stripes).
            cancelled.append(True)
            if transfer:
                receiver.end_stripes(peer.id, transfer[0], stripe)

        on_abort(cancel)

        def cut_when_cancelled() -> Segments:
            # A cancelled call's request iterator raises at its next read, even at its end.
            for segment in segments:
                if cancelled:
                    raise LinkCut(f"stripe {stripe.index} cancelled by the sender")
                transfer[:] = [segment.transfer_id]
                handed[stripe.index] = handed.get(stripe.index, 0) + 1
                yield segment
            if cancelled:
                raise LinkCut(f"stripe {stripe.index} cancelled by the sender")

        stream: Segments = cut_when_cancelled()
        if node == 1 and nodes.receivers[0] is not nodes.receivers[1]:
            # Segment 2 x window - 2 on stripe 0: beyond the window of node A's buffer, which
            # waits for segment 1. Meanwhile this stripe's segments are taken as gRPC's send
            # buffer takes them (the sender feeds no stream far ahead of another).
            beyond = intake.REORDER_PER_STRIPE * stripe.count
            early: list[SegmentIn] = []

            def stalled() -> bool:
                if handed.get(0, 0) >= beyond:
                    return True
                segment = next(stream, None)
                if segment is not None:
                    early.append(segment)
                return segment is None

            wait_until(stalled, 10.0, "stripe 0 to stall at node A's reorder window")
            stream = itertools.chain(early, stream)
        try:
            result = receiver.upload(peer, stream, stripe)
        except XbgwError as error:
            nodes.stripes.append((stripe.index, node, str(error)))
            raise refused_by(partner.id, "upload", error.grpc_status, str(error)) from None
        except LinkCut as cut:
            nodes.stripes.append((stripe.index, node, str(cut)))
            raise unreachable(partner.id, "upload", f"connection reset ({cut})") from None
        nodes.stripes.append((stripe.index, node, "ok"))
        return result

    return upload_stripe


def test_stripes_on_two_nodes_go_on_unstriped_and_deliver(
    nodes: Nodes, caplog: pytest.LogCaptureFixture
) -> None:
    lb = nodes.lb
    data = os.urandom(30 * SEGMENT + 7)
    token = lb.passport("dpo_split-stripes")
    calls = len(lb.link.calls)
    began = time.monotonic()
    with caplog.at_level(logging.INFO, logger="xbgw.sender"):
        summary = lb.resend(token, data)
    # Not held up by the holder's half of the split attempt: its stream, cancelled while it
    # waited for room in the reorder buffer, ended at once (not after STRIPE_WAIT_SECONDS).
    assert time.monotonic() - began < intake.STRIPE_WAIT_SECONDS / 4

    # The first attempt was striped, and one node refused its stripe as held by the other.
    assert any(HELD_BY_ANOTHER_NODE in how for _, _, how in nodes.stripes), nodes.stripes
    # Then one stream (LoopbackLink.upload: node A), no stripe after it.
    after = lb.link.calls[calls:]
    assert after[-2:] == ["upload", "finish"], after
    said = [r for r in caplog.records if "reached different nodes" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]
    assert getattr(said[0], "outcome", None) == "unstriped"

    # Delivered byte-identical, committed once in the shared ledger, nothing partial left.
    row = nodes.ledgers[1].inbound("dpo_split-stripes")  # read from the other node
    assert row is not None and row.state is TransferState.COMMITTED
    assert row.receipt == summary.receipt
    assert not nodes.spool.partial_path("dpo_split-stripes").exists()
    out = io.BytesIO()
    with nodes.spool.open_committed("dpo_split-stripes") as src:
        read_stream(src, out, lb.frankfurt.id, lb.frankfurt.keys)
    assert out.getvalue() == data
    outbound = lb.lingang.ledger.outbound("dpo_split-stripes")
    assert outbound is not None and outbound.state is TransferState.DELIVERED

    # The partner's next upload does not stripe (it would only split again), until a reload.
    tried = len(nodes.stripes)
    calls = len(lb.link.calls)
    lb.send("dpo_after-split", os.urandom(30 * SEGMENT))
    assert len(nodes.stripes) == tried
    assert lb.link.calls[calls:] == ["offer", "upload", "finish"]
    assert nodes.striped is not None
    lb.lingang.sender.reconfigure(nodes.striped)
    lb.send("dpo_after-reload", os.urandom(30 * SEGMENT))
    assert len(nodes.stripes) > tried  # striped (and split) again


def test_stripes_on_one_node_still_stripe(nodes: Nodes) -> None:
    """The fallback is for split stripes only: both lanes on node A stripe as before."""
    lb = nodes.lb
    a = nodes.receivers[0]
    peer = lb.frankfurt.config.partner("lingang")
    nodes.receivers = (a, a)
    lb.link.upload_stripe = _balanced(nodes, peer)  # type: ignore[method-assign,assignment]
    data = os.urandom(30 * SEGMENT + 7)
    calls = len(lb.link.calls)
    lb.send("dpo_one-node", data)
    assert sorted(i for i, _, how in nodes.stripes if how == "ok") == [0, 1]
    assert "upload" not in lb.link.calls[calls:]  # no unstriped stream
