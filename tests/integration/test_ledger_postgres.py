"""The ledger on a real PostgreSQL shared by two nodes: a passport is spent once whichever
node it reaches, the audit log stays one log, and the schema is migrated by
``xbgw db migrate`` only -- refused while a live node runs an older schema."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from gateway.errors import StorageError
from gateway.ledger import Inbound, Ledger
from gateway.ledger_schema import SCHEMA_VERSION, migrate, schema_version
from gateway.store.postgres import PostgresDatabase
from tests.postgres import PASSWORD, Cluster, postgres  # noqa: F401

ROUNDS = 100


@pytest.fixture
def two_nodes(postgres: Cluster) -> Iterator[tuple[Ledger, Ledger]]:  # noqa: F811
    """Two ledgers on one database, each with its own connection pool: two nodes."""
    url = postgres.database("race")
    a = Ledger(PostgresDatabase(url, PASSWORD))
    b = Ledger(PostgresDatabase(url, PASSWORD))
    yield a, b
    a.close()
    b.close()


def _offer(ledger: Ledger, transfer_id: str, node: str) -> Inbound | None:
    return ledger.create_inbound(
        transfer_id=transfer_id,
        sender=f"gw-a-via-{node}",
        passport=f"passport-{transfer_id}",
        passport_digest=hashlib.sha256(transfer_id.encode()).digest(),
        offered_header_digest=b"\x01" * 32,
        stored_header=b"HEADER",
        byte_limit=1000,
        classification="internal",
        source_jurisdiction="CN-SH",
        dataset_sha256=None,
        audit=f"offer {transfer_id} at {node}".encode(),
    )


def test_the_same_passport_at_two_nodes_at_once_is_accepted_once(
    two_nodes: tuple[Ledger, Ledger],
) -> None:
    """100 rounds: both nodes offered the same passport at the same moment (a barrier);
    exactly one accepts each time, and the audit log gains one leaf per acceptance -- no
    gap, no fork."""
    nodes = {"n1": two_nodes[0], "n2": two_nodes[1]}
    barrier = threading.Barrier(2)
    results: dict[str, list[Inbound | None]] = {"n1": [], "n2": []}

    def node(name: str) -> None:
        for round_ in range(ROUNDS):
            barrier.wait(timeout=30)
            results[name].append(_offer(nodes[name], f"race-{round_}", name))

    threads = [threading.Thread(target=node, args=(name,)) for name in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    winners = [
        [name for name in nodes if results[name][round_] is not None] for round_ in range(ROUNDS)
    ]
    assert all(len(won) == 1 for won in winners), winners
    assert {won[0] for won in winners} == {"n1", "n2"}  # a real race: both nodes won some
    for round_, won in enumerate(winners):
        row = nodes["n1"].inbound(f"race-{round_}")
        assert row is not None and row.sender == f"gw-a-via-{won[0]}"
    a = nodes["n1"]
    assert a.audit_size() == ROUNDS
    leaves = a.audit_records(0, ROUNDS + 1)
    assert [index for index, _ in leaves] == list(range(ROUNDS))
    assert sorted(record for _, record in leaves) == sorted(
        f"offer race-{r} at {won[0]}".encode() for r, won in enumerate(winners)
    )
    assert a.audit_root(ROUNDS) == nodes["n2"].audit_root(ROUNDS)


def test_a_second_offer_of_a_spent_passport_is_refused_at_the_other_node(
    two_nodes: tuple[Ledger, Ledger],
) -> None:
    a, b = two_nodes
    assert _offer(a, "t-1", "n1") is not None
    assert _offer(b, "t-1", "n2") is None
    row = b.inbound("t-1")
    assert row is not None and row.sender == "gw-a-via-n1"


def test_a_node_refuses_a_database_without_the_schema_and_migrate_brings_it(
    postgres: Cluster,  # noqa: F811
) -> None:
    url = postgres.empty_database("fresh")
    database = PostgresDatabase(url, PASSWORD)
    try:
        with pytest.raises(StorageError, match=r"schema version 0, older .*xbgw db migrate"):
            Ledger(database)
        assert migrate(database) == (0, SCHEMA_VERSION)
        assert migrate(database) == (SCHEMA_VERSION, SCHEMA_VERSION)  # nothing pending
        ledger = Ledger(database)
        assert ledger.key_versions() == []
    finally:
        database.close()


def test_a_database_of_a_newer_xbgw_is_refused(postgres: Cluster) -> None:  # noqa: F811
    url = postgres.database("newer")
    with psycopg.connect(url, password=PASSWORD, autocommit=True) as db:
        db.execute(
            "INSERT INTO schema_migrations VALUES (%s, 0, 'a newer xbgw')", (SCHEMA_VERSION + 1,)
        )
    database = PostgresDatabase(url, PASSWORD)
    try:
        assert schema_version(database) == SCHEMA_VERSION + 1
        with pytest.raises(StorageError, match="newer than this xbgw") as caught:
            Ledger(database)
        assert caught.value.grpc_status == "FAILED_PRECONDITION"
        with pytest.raises(StorageError, match="newer than this xbgw"):
            migrate(database)
    finally:
        database.close()


def test_migrate_is_refused_while_a_live_node_runs_an_older_schema(
    postgres: Cluster,  # noqa: F811
) -> None:
    """An older node (schema 5) still heartbeating: refused, naming it; once its heartbeat
    is older than the live window (it died), the migration goes ahead."""
    url = postgres.empty_database("older")
    database = PostgresDatabase(url, PASSWORD)
    try:
        with database.transaction() as db:
            db.execute(
                "CREATE TABLE nodes (node TEXT PRIMARY KEY, schema_version INTEGER NOT NULL, "
                "started_at INTEGER NOT NULL, seen_at INTEGER NOT NULL)"
            )
            now = int(time.time())
            db.execute("INSERT INTO nodes VALUES ('old-node:1', 5, ?, ?)", (now, now))
        with pytest.raises(StorageError, match=r"old-node:1 \(schema 5\).*xbgw db migrate"):
            migrate(database)
        assert schema_version(database) == 0  # nothing applied: one transaction
        with database.transaction() as db:
            db.execute("UPDATE nodes SET seen_at = ?", (now - 3600,))
        assert migrate(database) == (0, SCHEMA_VERSION)
    finally:
        database.close()


def test_nodes_announce_themselves_and_leave_on_close(postgres: Cluster) -> None:  # noqa: F811
    url = postgres.database("nodes")
    ledger = Ledger(PostgresDatabase(url, PASSWORD))
    ledger.announce_node("node-a")
    assert [(n, v) for n, v, _ in ledger.nodes()] == [("node-a", SCHEMA_VERSION)]
    ledger.close()
    reader = Ledger(PostgresDatabase(url, PASSWORD))
    try:
        assert reader.nodes() == []  # a clean stop leaves; a dead node ages out
    finally:
        reader.close()


def test_an_unreachable_database_is_a_storage_error_without_the_password(
    postgres: Cluster,  # noqa: F811
) -> None:
    url = postgres.url("nosuchdb").replace("xbgw@", "xbgw:secret-in-url@")
    with pytest.raises(StorageError, match="cannot connect to the ledger database") as caught:
        PostgresDatabase(url, PASSWORD)
    assert "secret-in-url" not in str(caught.value)
    assert PASSWORD not in str(caught.value)
