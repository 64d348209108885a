"""Compliance thresholds across the nodes of one gateway, on a real PostgreSQL: sends decided
on two nodes at once cannot all slip under a threshold, because judging and recording a
transfer (``Border.reserving``) holds the database's counters lock, not only each node's own.

The borders, claims and expected refusal are those of ``tests/unit/compliance/test_border.py``
(where the same race runs on one node); here each node has its own ``Ledger`` (its own
connection pool) on one database, and its own ``Border``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway import ledger as ledger_module
from gateway.errors import StorageError
from gateway.ledger import Ledger
from gateway.store.postgres import PostgresDatabase
from tests.postgres import PASSWORD, Cluster, postgres  # noqa: F401
from tests.unit.compliance.test_border import (
    MID_2026,
    THRESHOLD_100K,
    border,
    claims,
    egress,
    race_sends,
    record_send,
)

DEADLINE = 30.0


@pytest.fixture
def two_nodes(postgres: Cluster) -> Iterator[tuple[Ledger, Ledger]]:  # noqa: F811
    url = postgres.database("counters")
    a = Ledger(PostgresDatabase(url, PASSWORD))
    b = Ledger(PostgresDatabase(url, PASSWORD))
    yield a, b
    a.close()
    b.close()


def test_sends_decided_on_two_nodes_at_once_cannot_all_slip_under_the_threshold(
    two_nodes: tuple[Ledger, Ledger],
) -> None:
    """Eight sends of 20,000 subjects each, four on each node, decided at the same moment
    with nothing sent this year: exactly four get through (80,000), and each of the other
    four is refused as the fifth that would reach the threshold of 100,000. With only each
    node's own lock, the two nodes would each let four through: 160,000."""
    now = [float(MID_2026)]
    borders = [border(node, now) for node in two_nodes]
    allowed, refused = race_sends(list(zip(borders, two_nodes, strict=True)), 8, "dpo_t-", DEADLINE)
    assert len(allowed) == 4, allowed
    assert refused == [THRESHOLD_100K.format(before=80_000, subjects=20_000, after=100_000)] * 4
    for node in two_nodes:  # both nodes now see the four in flight
        assert node.compliance_counts("egress", "acme", 2026) == (80_000, 0)


def test_a_node_that_cannot_get_the_lock_in_time_refuses_with_the_reason(
    two_nodes: tuple[Ledger, Ledger], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node a holds the counters lock (deciding a transfer); node b gives up after the wait,
    with UNAVAILABLE and a reason, having recorded nothing; once a is done, b decides."""
    a, b = two_nodes
    monkeypatch.setattr(ledger_module, "COUNTERS_LOCK_SECONDS", 1)
    now = [float(MID_2026)]
    on_b = border(b, now)
    with a.counters_locked(), pytest.raises(StorageError) as busy, on_b.reserving():
        pytest.fail("the block ran without the lock")  # pragma: no cover
    assert busy.value.grpc_status == "UNAVAILABLE"
    assert str(busy.value) == (
        "the compliance counters' lock was not granted within 1 s: another node of this "
        "gateway has been deciding a transfer that long (is the database overloaded?); "
        "nothing was recorded: retry"
    )
    with on_b.reserving():
        record_send(b, "dpo_after", egress(on_b, claims(20_000), "dpo_after", again=True))
    assert a.compliance_counts("egress", "acme", 2026) == (20_000, 0)
