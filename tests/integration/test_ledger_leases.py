"""The one-writer-per-transfer guard across nodes: transfer leases in a real PostgreSQL
shared by two ledgers (two nodes) -- exclusive while live, taken over once expired, kept
alive by renewal -- and on SQLite, nothing written at all."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from gateway.errors import TransferConflictError
from gateway.ledger import Ledger
from gateway.ledger_leases import LeaseTakenError
from gateway.receiver.context import Context
from gateway.store.postgres import PostgresDatabase
from tests.postgres import PASSWORD, Cluster, postgres  # noqa: F401
from tests.system.harness import wait_until


@pytest.fixture
def two_nodes(postgres: Cluster) -> Iterator[tuple[Ledger, Ledger]]:  # noqa: F811
    """Two ledgers on one database, each with its own pool and holder name: two nodes."""
    url = postgres.database("leases")
    a = Ledger(PostgresDatabase(url, PASSWORD))
    b = Ledger(PostgresDatabase(url, PASSWORD))
    a.announce_node("node-a")
    b.announce_node("node-b")
    yield a, b
    a.close()
    b.close()


def _expires_at(ledger: Ledger, name: str) -> float:
    row = ledger.store.one("SELECT expires_at FROM transfer_leases WHERE lease = ?", (name,))
    return float(row[0])


def _server_now(ledger: Ledger) -> float:
    return float(ledger.store.one("SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8")[0])


def _holder(ledger: Ledger, name: str) -> str | None:
    row = ledger.store.one("SELECT holder FROM transfer_leases WHERE lease = ?", (name,))
    return None if row is None else str(row[0])


def test_a_live_lease_is_exclusive_and_dropping_it_frees_it(
    two_nodes: tuple[Ledger, Ledger],
) -> None:
    a, b = two_nodes
    a.take_lease("inbound/gw/t-1")
    a.take_lease("inbound/gw/t-1")  # its own: taken again (a restarted stream on one node)
    with pytest.raises(LeaseTakenError, match="held by another node"):
        b.take_lease("inbound/gw/t-1")
    b.take_lease("inbound/gw/t-2")  # another transfer is free
    assert _holder(a, "inbound/gw/t-1") == "node-a"
    a.drop_lease("inbound/gw/t-1")
    assert _holder(a, "inbound/gw/t-1") is None
    b.take_lease("inbound/gw/t-1")
    assert _holder(a, "inbound/gw/t-1") == "node-b"
    with pytest.raises(LeaseTakenError):
        a.take_lease("inbound/gw/t-1")


def test_two_nodes_racing_for_one_lease_one_wins_each_round(
    two_nodes: tuple[Ledger, Ledger],
) -> None:
    """50 rounds, both nodes at once (a barrier): exactly one holds the lease each time."""
    nodes = {"a": two_nodes[0], "b": two_nodes[1]}
    barrier = threading.Barrier(2)
    won: dict[str, list[bool]] = {"a": [], "b": []}

    def node(name: str) -> None:
        for round_ in range(50):
            barrier.wait(timeout=30)
            try:
                nodes[name].take_lease(f"outbound/race-{round_}")
            except LeaseTakenError:
                won[name].append(False)
            else:
                won[name].append(True)

    threads = [threading.Thread(target=node, args=(name,)) for name in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert all(x != y for x, y in zip(won["a"], won["b"], strict=True)), won


def test_a_stalled_nodes_lease_expires_and_is_taken_over(
    two_nodes: tuple[Ledger, Ledger],
) -> None:
    """Node a stops renewing (as a dead node does): once its lease expires, b takes it, and
    a learns at its next renewal that it was taken over."""
    a, b = two_nodes
    a.lease_seconds = 0.5
    a.lease_renew_seconds = 3600.0  # never renews within the test: a stalled node
    a.take_lease("inbound/gw/t-9")
    with pytest.raises(LeaseTakenError):
        b.take_lease("inbound/gw/t-9")
    expiry = _expires_at(a, "inbound/gw/t-9")
    wait_until(lambda: _server_now(b) > expiry, 10, "the lease to expire")
    b.take_lease("inbound/gw/t-9")
    assert _holder(b, "inbound/gw/t-9") == "node-b"
    assert a.renew_leases() == {"inbound/gw/t-9"}
    a.drop_lease("inbound/gw/t-9")  # its drop does not remove b's lease
    assert _holder(b, "inbound/gw/t-9") == "node-b"


def test_a_renewed_lease_outlives_its_first_expiry(two_nodes: tuple[Ledger, Ledger]) -> None:
    """The renewal thread keeps a running stream's lease alive past its lifetime."""
    a, b = two_nodes
    a.lease_seconds = 0.6  # renewed every 0.2 s
    a.take_lease("inbound/gw/t-3")
    first = _expires_at(a, "inbound/gw/t-3")
    wait_until(lambda: _server_now(b) > first + 0.3, 10, "the first expiry to pass")
    assert _expires_at(a, "inbound/gw/t-3") > first
    with pytest.raises(LeaseTakenError):
        b.take_lease("inbound/gw/t-3")
    assert a.renew_leases() == set()


def test_closing_a_node_gives_its_leases_up(postgres: Cluster) -> None:  # noqa: F811
    url = postgres.database("leases")
    a = Ledger(PostgresDatabase(url, PASSWORD))
    b = Ledger(PostgresDatabase(url, PASSWORD))
    try:
        a.take_lease("outbound/t-5")
        with pytest.raises(LeaseTakenError):
            b.take_lease("outbound/t-5")
        a.close()
        b.take_lease("outbound/t-5")  # at once, not after the lease's lifetime
    finally:
        b.close()


def _context(ledger: Ledger) -> Context:
    """A receiver context with only what its guard uses (the ledger)."""
    none = cast(Any, None)
    return Context(none, none, none, ledger, none, none, none, none)


def test_the_receivers_guard_refuses_a_transfer_another_node_writes(
    two_nodes: tuple[Ledger, Ledger],
) -> None:
    """Context.busy on two nodes: the second is refused in the words the sender retries on
    (" is busy on another stream; "), and takes the transfer once the first ends."""
    a, b = (_context(ledger) for ledger in two_nodes)
    with a.busy("t-7", "upload", "gw-x"):
        busy = pytest.raises(TransferConflictError, match=r" is busy on another stream; upload")
        with busy, b.busy("t-7", "upload", "gw-x"):
            pass
        with b.busy("t-7", "upload", "gw-other"):  # another sender's id is another transfer
            pass
    with b.busy("t-7", "offer", "gw-x"):
        assert _holder(two_nodes[1], "inbound/gw-x/t-7") == "node-b"
    assert _holder(two_nodes[1], "inbound/gw-x/t-7") is None


def test_on_sqlite_the_guard_writes_nothing(tmp_path: Path) -> None:
    """One node owns a SQLite ledger: the in-memory guard is the whole guard, no writes."""
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    try:
        ctx = _context(ledger)
        before = ledger._db.total_changes
        with ctx.busy("t-1", "upload", "gw-x"):
            busy = pytest.raises(TransferConflictError, match=" is busy on another stream; ")
            with busy, ctx.busy("t-1", "upload", "gw-x"):
                pass
        ledger.take_lease("outbound/t-1")
        ledger.drop_lease("outbound/t-1")
        assert ledger._db.total_changes == before
        tables = ledger._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        assert "transfer_leases" not in {row[0] for row in tables}
    finally:
        ledger.close()
