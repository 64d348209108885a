"""The audit log as the ledger stores it: proofs and roots from the stored nodes are the ones
``merkle`` computes from the leaves, on both databases, and each reads its nodes in one query."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.audit.merkle import consistency_proof, inclusion_proof, leaf_hash, root
from gateway.ledger import Ledger
from tests.postgres import ledger_on, pg_url, postgres  # noqa: F401 - fixtures

RECORDS = [f"record {i}".encode() for i in range(70)]
LEAVES = [leaf_hash(record) for record in RECORDS]


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    opened = ledger_on(request, tmp_path / "ledger.db")
    for record in RECORDS:
        opened.append_audit(record)
    yield opened
    opened.close()


def test_proofs_and_roots_from_the_stored_nodes_are_merkles(ledger: Ledger) -> None:
    for size in range(1, len(RECORDS) + 1):
        assert ledger.audit_root(size) == root(LEAVES[:size])
        for index in range(size):
            assert ledger.audit_inclusion(index, size) == inclusion_proof(LEAVES, index, size)
        for old in range(1, size + 1):
            assert ledger.audit_consistency(old, size) == consistency_proof(LEAVES, old, size)


def test_a_proof_reads_its_nodes_in_one_query(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.db")
    try:
        for record in RECORDS:
            ledger.append_audit(record)
        queries: list[str] = []
        ledger._db.set_trace_callback(
            lambda sql: queries.append(sql) if "FROM audit_nodes" in sql else None
        )
        for read in (
            lambda: ledger.audit_inclusion(5, 70),  # 7 nodes, one per level
            lambda: ledger.audit_consistency(13, 70),
            lambda: ledger.audit_root(69),  # three perfect subtrees
        ):
            queries.clear()
            read()
            assert len(queries) == 1, queries
    finally:
        ledger.close()


def test_a_missing_node_is_named(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.db")
    try:
        for record in RECORDS[:8]:
            ledger.append_audit(record)
        ledger._db.execute("DELETE FROM audit_nodes WHERE level = 2 AND idx = 1")
        with pytest.raises(LookupError, match="no node at level 2 index 1"):
            ledger.audit_inclusion(0, 8)
    finally:
        ledger.close()
